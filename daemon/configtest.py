"""``wsroute test``: config unit tests, a frame through the real codec and routes, no network.

Each ``[[tests]]`` table of a tests file (:mod:`wsroute.config.cases`) names
a connection and a frame; the frame is built like an ``on_connect`` step
(:func:`~wsroute.encode_outgoing`), decoded by the connection's configured
codec plugin (the instance :func:`~wsroute.plan.plan` builds for the daemon)
and looked up in a :class:`~wsroute.router.Router` compiled from the config's
routes, as the dispatcher does. What happened is compared with ``expect``.

Invariant: the answer is the daemon's own. Decoding and routing are never
reimplemented here, and nothing opens a connection. Handlers are started only
for a test that says ``start = true``: then each handler the message reaches
is built from its table, started, handed the message and stopped, as the
daemon would (what it sends to a connection is recorded, not sent).
Exit status: 0 every test passed, 1 some failed, 78 a bad config or tests file.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import anyio
import anyio.to_thread

from .codec import encode_outgoing
from .config import Config
from .config.cases import ExpectTable, TestCase, load_cases
from .exceptions import DecodeError, EncodeError
from .failures import describe_failure
from .plan import Plan
from .plugin import Frame, Message
from .registry import create_handler
from .router import Router

__all__ = ["Outcome", "compare", "outcome_of", "run_tests", "start_handlers"]

#: Exit status when a test fails (a bad file is 78, EX_CONFIG).
EX_FAILED = 1


@dataclass
class Outcome:
    """What the daemon does with one frame: decoded and routed, or refused by the codec."""

    key: Any = None
    fields: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    body_error: str | None = None
    routes: list[str] = field(default_factory=list)
    handlers: list[str] = field(default_factory=list)
    unmatched_to: str | None = None
    decode_error: str | None = None
    dead_letter: str | None = None
    message: Message | None = field(default=None, repr=False, compare=False)


def router_of(config: Config) -> Router[str]:
    """The config's routes compiled the way the daemon compiles them, with handler names."""
    rules = [
        (name, route.connection, route.keys, route.handlers)
        for name, route in config.routes.items()
    ]
    return Router.compile(rules, config.daemon.unmatched)


def outcome_of(plan: Plan, router: Router[str], case: TestCase, seq: int = 1) -> Outcome:
    """Decode the case's frame with the connection's codec and route it. Raises
    :class:`~wsroute.EncodeError` when the frame cannot be built."""
    config = plan.config
    data = encode_outgoing(case.frame.outgoing())
    frame = Frame(case.connection, data, seq, time.time())
    try:
        message = plan.codecs[case.connection].decode(frame)
    except Exception as exc:  # as a connection's reader does: any codec failure is a decode error
        error = (
            exc
            if isinstance(exc, DecodeError)
            else DecodeError(f"codec raised {type(exc).__name__}: {exc}")
        )
        source = config.sources.get(case.connection)
        letter = (source.dead_letter if source else None) or config.daemon.dead_letter
        return Outcome(decode_error=str(error), dead_letter=letter)
    result = Outcome(key=message.key, fields=dict(message.fields), message=message)
    try:
        result.body = message.body
    except DecodeError as exc:  # a lazily decoded body: the handler reading it would fail
        result.body_error = str(exc)
    result.routes = router.matching_routes(case.connection, message.key)
    result.handlers = list(router.lookup(case.connection, message.key))
    if not result.handlers:
        result.routes = []  # a "$" key from upstream: matches routes' keys, but is never routed
        result.unmatched_to = config.daemon.unmatched
    return result


def compare(expect: ExpectTable, outcome: Outcome) -> list[str]:
    """The differences between what a test expects and what happened, one line each."""
    if expect.decode_error is not None:
        if outcome.decode_error is None:
            return [
                "decode_error: expected a decode error, got a message with key "
                + _show(outcome.key)
            ]
        found = []
        if isinstance(expect.decode_error, str) and expect.decode_error not in outcome.decode_error:
            found.append(
                f"decode_error: expected an error containing {_show(expect.decode_error)}, "
                f"got {_show(outcome.decode_error)}"
            )
        if expect.dead_letter is not None and expect.dead_letter != outcome.dead_letter:
            found.append(
                f"dead_letter: expected {_show(expect.dead_letter)}, "
                f"got {_show(outcome.dead_letter)}"
            )
        return found
    if outcome.decode_error is not None:
        return [f"decode error: {outcome.decode_error}"]
    found = []
    if expect.key is not None and not _same(expect.key, outcome.key):
        found.append(f"key: expected {_show(expect.key)}, got {_show(outcome.key)}")
    if expect.fields is not None:
        found.extend(_diff("fields", expect.fields, _plain(outcome.fields), expect.subset))
    if expect.body is not None:
        if outcome.body_error is not None:
            found.append(f"body: cannot be decoded: {outcome.body_error}")
        else:
            found.extend(_diff("body", expect.body, _plain(outcome.body), expect.subset))
    if expect.routes is not None and expect.routes != outcome.routes:
        found.append(f"routes: expected {_show(expect.routes)}, got {_show(outcome.routes)}")
    if expect.handlers is not None and expect.handlers != outcome.handlers:
        found.append(f"handlers: expected {_show(expect.handlers)}, got {_show(outcome.handlers)}")
    if expect.unmatched is not None and expect.unmatched != (not outcome.handlers):
        got = f"routed to {_show(outcome.handlers)}" if outcome.handlers else "no route matched"
        found.append(f"unmatched: expected {str(expect.unmatched).lower()}, but {got}")
    return found


def _diff(path: str, expected: Any, actual: Any, subset: bool) -> list[str]:
    """Where two decoded values differ, by key path; ``subset``: extra keys in tables allowed."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = []
        for key, value in expected.items():
            where = f"{path}.{key}"
            if key not in actual:
                found.append(f"{where}: expected {_show(value)}, missing")
            else:
                found.extend(_diff(where, value, actual[key], subset))
        if not subset:
            for key in actual:
                if key not in expected:
                    found.append(f"{path}.{key}: not expected, got {_show(actual[key])}")
        return found
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        found = []
        for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
            found.extend(_diff(f"{path}[{i}]", want, got, subset))
        return found
    if _same(expected, actual):
        return []
    return [f"{path}: expected {_show(expected)}, got {_show(actual)}"]


def _same(expected: Any, actual: Any) -> bool:
    # JSON true is not 1, and 1 is 1.0 (TOML cannot tell a float 1.0 from what JSON wrote).
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, float) and isinstance(actual, float) and math.isnan(expected):
        return math.isnan(actual)
    return bool(expected == actual)


def _plain(value: Any) -> Any:
    """A decoded value as a test writes it: tuples as arrays, bytes as hex (like ``raw``)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex(" ")
    return value


def _show(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=repr)
    except ValueError:
        return repr(value)


async def start_handlers(plan: Plan, names: Sequence[str], message: Message) -> list[str]:
    """Build, start, feed and stop each handler, as the daemon would; the errors, one line each.

    One attempt each (no retries: a test shows the first error), within the
    handler's ``timeout``.
    """
    # The plugin author's kit runs a handler's lifecycle exactly as the daemon does;
    # imported here, so that a run without start = true never loads it.
    from .testing.build import run_handler
    from .testing.context import RecordingContext

    problems = []
    connections = [*plan.config.connections, *plan.config.sources]
    for name in names:
        handler = plan.handlers[name]
        ctx = RecordingContext(name, connections=connections)
        step = "build"
        try:
            instance = create_handler(handler.info, handler.options, ctx)
            step = "start"
            async with run_handler(instance):
                step = "handle"
                with anyio.fail_after(float(handler.section.timeout) or None):
                    await _hand_over(instance, handler.section.batch is not None, message)
                step = "stop"
        except Exception as exc:
            problems.append(f"handler {name}: {step} failed: {describe_failure(exc)}")
    return problems


async def _hand_over(instance: Any, batched: bool, message: Message) -> None:
    handle_batch = getattr(instance, "handle_batch", None)
    if batched and handle_batch is not None:
        failures = (
            await handle_batch([message])
            if inspect.iscoroutinefunction(handle_batch)
            else await anyio.to_thread.run_sync(handle_batch, [message])
        )
        if failures:
            raise next(iter(failures.values()))
        return
    if inspect.iscoroutinefunction(instance.handle):
        await instance.handle(message)
    else:
        await anyio.to_thread.run_sync(instance.handle, message)


def _run_case(plan: Plan, router: Router[str], case: TestCase, seq: int) -> list[str]:
    try:
        outcome = outcome_of(plan, router, case, seq)
    except EncodeError as exc:
        return [f"frame: cannot be built: {exc}"]
    problems = compare(case.expect, outcome)
    if case.start and outcome.message is not None and outcome.handlers:
        problems += anyio.run(start_handlers, plan, outcome.handlers, outcome.message)
    return problems


def run_tests(plan: Plan, paths: Sequence[str], out: TextIO) -> int:
    """Run the tests of every file against ``plan``: one line per test, a summary.

    :class:`~wsroute.exceptions.ConfigError` for a bad tests file (before any test runs).
    """
    suites = [(path, load_cases(path, plan.config)) for path in paths]
    router = router_of(plan.config)
    passed = failed = 0
    for path, cases in suites:
        for seq, case in enumerate(cases, 1):
            problems = _run_case(plan, router, case, seq)
            if problems:
                failed += 1
                where = f"{path}, line {case.line}" if case.line else path
                print(f"FAIL  {case.name}  ({where})", file=out)
                for problem in problems:
                    print(f"      {problem}", file=out)
            else:
                passed += 1
                print(f"ok    {case.name}", file=out)
    total = passed + failed
    summary = f"{total} test{'s' if total != 1 else ''}: {passed} passed, {failed} failed"
    print(summary, file=out)
    return EX_FAILED if failed else 0
