"""A plugin's failure is reported by its own exception, not the exception group around it."""

from __future__ import annotations

import anyio
import pytest
from structlog.testing import capture_logs

from wsroute.failures import describe_failure
from wsroute.testing import deliver, message


def test_a_plain_exception_is_its_type_and_message() -> None:
    assert describe_failure(ValueError("rejected key 'subscribed'")) == (
        "ValueError: rejected key 'subscribed'"
    )
    assert describe_failure(TimeoutError()) == "TimeoutError"


def test_a_group_is_its_leaves_the_first_named_the_others_listed() -> None:
    inner = ExceptionGroup("inner", [KeyError("b"), TimeoutError()])
    group = ExceptionGroup("unhandled errors in a TaskGroup", [ValueError("a"), inner])
    assert describe_failure(ExceptionGroup("one", [ValueError("a")])) == "ValueError: a"
    assert describe_failure(group) == "ValueError: a (and 2 more: KeyError: 'b'; TimeoutError)"
    many = ExceptionGroup("many", [ValueError(str(i)) for i in range(6)])
    assert describe_failure(many) == (
        "ValueError: 0 (and 5 more: ValueError: 1; ValueError: 2; ValueError: 3; 2 more)"
    )


class _Rejecting:
    """Fails inside a task group of its own, as a plugin with parallel work does."""

    async def handle(self, msg: object) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._reject)

    async def _reject(self) -> None:
        raise ValueError("rejected key 'subscribed'")


@pytest.mark.anyio
async def test_dead_letters_and_logs_carry_the_leaf_exception() -> None:
    with capture_logs() as logs:
        delivery = await deliver(
            _Rejecting(), [message({}, key="subscribed")], delivery={"retries": 0}
        )
    (letter,) = delivery.dead_letters
    assert letter.dead_letter is not None
    assert letter.dead_letter.error == "ValueError: rejected key 'subscribed'"
    failed = [entry for entry in logs if entry["event"] == "handler_failed"]
    assert [entry["error"] for entry in failed] == ["ValueError: rejected key 'subscribed'"]
