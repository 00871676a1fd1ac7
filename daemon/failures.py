"""A plugin's exception as the user reads it: in logs, dead letters, `wsroute test`, /status.

Invariant: the text names what actually went wrong — the innermost exception's
type and message — never the wrapper it travelled in. A task group (anyio,
asyncio) wraps whatever a plugin's tasks raised in an ``ExceptionGroup``, whose
own message ("unhandled errors in a TaskGroup (1 sub-exception)") says nothing;
its leaves are what the plugin raised. With several leaves, the first is named
and the others listed after it.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["describe_failure"]

# Leaves listed after the first, at most: a line stays readable.
_LISTED = 3


def describe_failure(error: BaseException) -> str:
    """``"ValueError: rejected key 'subscribed'"``; for an exception group, its leaves:
    ``"ValueError: a (and 2 more: KeyError: 'b'; TimeoutError)"``."""
    leaves = list(_leaves(error))
    first = _one(leaves[0])
    others = leaves[1:]
    if not others:
        return first
    listed = "; ".join(_one(leaf) for leaf in others[:_LISTED])
    if len(others) > _LISTED:
        listed += f"; {len(others) - _LISTED} more"
    return f"{first} (and {len(others)} more: {listed})"


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup) and error.exceptions:
        for member in error.exceptions:
            yield from _leaves(member)
    else:
        yield error


def _one(error: BaseException) -> str:
    text = str(error)
    name = type(error).__name__
    return f"{name}: {text}" if text else name
