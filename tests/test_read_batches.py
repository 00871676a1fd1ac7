"""A socket read's frames go through the hot path together, and come out as one by one.

The built-in codecs decode a read in one loop (``decode_many``), the dispatcher
routes it in runs (``Dispatcher.dispatch_many``), each handler queue takes a run
in one step (``offer_many``). Each test here holds the batch path against the
frame-at-a-time path it replaces, on the same input: the same messages, the
same queues, drops, counters, and the same point where a full ``block`` queue
makes the reader wait.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Awaitable
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsroute import Message
from wsroute.codec import JsonCodec, StructCodec
from wsroute.config import HandlerSection
from wsroute.dispatch import Dispatcher
from wsroute.exceptions import DecodeError
from wsroute.handler import HandlerRunner, MemoryBudget
from wsroute.plugin import Frame
from wsroute.router import Router

Data = bytes | str


def _fields(message: Message) -> tuple[Any, ...]:
    return (
        message.connection,
        message.key,
        message.fields,
        message.raw,
        message.seq,
        message.received_at,
        message.body_json,
        message.body,
    )


def _one_by_one(codec: Any, frames: list[Data], seq: int) -> list[tuple[Any, ...] | str]:
    out: list[tuple[Any, ...] | str] = []
    for index, data in enumerate(frames):
        try:
            out.append(_fields(codec.decode(Frame("c", data, seq + index + 1, 7.0))))
        except DecodeError:
            out.append("error")
    return out


def _in_loops(codec: Any, frames: list[Data], seq: int) -> list[tuple[Any, ...] | str]:
    """What the connection does: the loop, and ``decode`` for each frame it stops at."""
    out: list[tuple[Any, ...] | str] = []
    index = 0
    while index < len(frames):
        messages: list[Message] = []
        stop = codec.decode_many("c", frames, index, seq, 7.0, messages)
        assert index <= stop <= len(frames)
        out.extend(_fields(m) for m in messages)
        assert len(messages) == stop - index
        if stop == len(frames):
            break
        try:
            out.append(_fields(codec.decode(Frame("c", frames[stop], seq + stop + 1, 7.0))))
        except DecodeError:
            out.append("error")
        index = stop + 1
    return out


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)
_bodies = st.one_of(
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["type", "k"]), _json_values).map(
        lambda v: json.dumps(v).encode()
    ),
    st.binary(max_size=12),  # mostly not JSON
    st.just(b'{"type": "big", "pad": "' + b"x" * 1100 + b'"}'),  # a lazy body
)
_struct_frames = st.lists(
    st.one_of(
        st.tuples(st.integers(-3, 3), _bodies).map(lambda t: struct.pack("<i", t[0]) + t[1]),
        st.binary(max_size=5),  # shorter than the header, or no body
        _bodies.map(lambda b: b.decode("latin-1")),  # a text frame
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(frames=_struct_frames, seq=st.integers(0, 5))
def test_struct_codec_loop_decodes_as_decode_does(frames: list[Data], seq: int) -> None:
    codec = StructCodec(StructCodec.Options(header="<i", fields=["opcode"]))
    assert _in_loops(codec, frames, seq) == _one_by_one(codec, frames, seq)


@settings(max_examples=200, deadline=None)
@given(
    frames=st.lists(st.one_of(_bodies, _bodies.map(lambda b: b.decode("latin-1"))), max_size=12),
    key=st.sampled_from(["type", "k.type"]),
)
def test_json_codec_loop_decodes_as_decode_does(frames: list[Data], key: str) -> None:
    codec = JsonCodec(JsonCodec.Options(key=key))
    assert _in_loops(codec, frames, 0) == _one_by_one(codec, frames, 0)


def _world(
    policies: list[tuple[str, int]], unmatched: bool
) -> tuple[Dispatcher, list[HandlerRunner]]:
    """Handlers a, b, c (not started: their queues only fill) and u for unmatched;
    key 1 goes to a and b, key 2 to b and c, key 3 to c alone, key 9 nowhere."""
    budget = MemoryBudget()
    runners = [
        HandlerRunner(
            name,
            HandlerSection(plugin="test", overflow=policy, queue=limit, queue_bytes=limit * 90),
            _Never(),
            budget=budget,
        )
        for name, (policy, limit) in zip("abcu", policies, strict=True)
    ]
    a, b, c, u = runners
    router = Router.compile(
        [("one", None, [1], [a, b]), ("two", None, [2], [b, c]), ("three", None, [3], [c])],
        u if unmatched else None,
    )
    return Dispatcher(router, budget=budget), runners


class _Never:
    async def handle(self, message: Message) -> None:  # pragma: no cover - never started
        raise AssertionError("not started")


def _blocks(pending: Awaitable[None] | None) -> bool:
    """Whether the reader waits for room in a queue (not for a yield to a dropping handler)."""
    name = getattr(pending, "__qualname__", "")
    close = getattr(pending, "close", None)
    if close is not None:
        close()  # never awaited: nobody drains these queues
    return name.endswith("_wait")


def _state(dispatcher: Dispatcher, runners: list[HandlerRunner]) -> list[Any]:
    state: list[Any] = [dict(dispatcher.unmatched)]
    for runner in runners:
        state.append(
            (runner.stats.received, runner.stats.dropped, runner.queued, runner.queued_raw)
        )
    return state


_policy = st.tuples(st.sampled_from(["block", "drop-oldest", "drop-newest"]), st.integers(1, 6))


@settings(max_examples=200, deadline=None)
@given(
    policies=st.lists(_policy, min_size=4, max_size=4),
    unmatched=st.booleans(),
    keys=st.lists(st.sampled_from([1, 1, 1, 2, 3, 9]), min_size=1, max_size=20),
    sizes=st.lists(st.integers(1, 200), min_size=20, max_size=20),
)
def test_a_read_is_routed_as_its_frames_one_by_one_would_be(
    policies: list[tuple[str, int]], unmatched: bool, keys: list[int], sizes: list[int]
) -> None:
    anyio.run(_compare, policies, unmatched, keys, sizes)


async def _compare(
    policies: list[tuple[str, int]], unmatched: bool, keys: list[int], sizes: list[int]
) -> None:
    messages = [
        Message("c", key, None, raw=b"x" * sizes[n], seq=n + 1) for n, key in enumerate(keys)
    ]
    single, runners_1 = _world(policies, unmatched)
    read = len(messages)
    for index, message in enumerate(messages):
        if _blocks(single.dispatch(message)):
            read = index + 1  # the reader waits with this frame read
            break
    many, runners_2 = _world(policies, unmatched)
    routed = 0
    while routed < len(messages):  # a yield to a dropping handler is not a stop
        outcome = many.dispatch_many(messages[routed:])
        if outcome is None:
            routed = len(messages)
            break
        count, pending = outcome
        assert count >= 1
        routed += count
        if _blocks(pending):
            break
    assert routed == read
    assert _state(many, runners_2) == _state(single, runners_1)


@pytest.mark.anyio
async def test_offer_many_takes_a_run_in_one_step_and_stops_where_a_block_queue_fills() -> None:
    runner = HandlerRunner("h", HandlerSection(plugin="test", queue=5), _Never())
    first = [Message("c", 1, None, raw=b"ab", seq=n) for n in range(3)]
    assert runner.offer_many(first) == 3
    assert (runner.stats.received, runner.queued, runner.queued_raw) == (3, 3, 6)
    assert runner.offer_many(first) == 2  # the queue holds 5
    assert runner.offer_many([]) == 0
    assert (runner.stats.received, runner.queued, runner.queued_raw) == (5, 5, 10)
    assert runner.budget.raw == 10


@pytest.mark.anyio
@pytest.mark.parametrize("limit", [1, 4])
async def test_a_message_larger_than_queue_bytes_still_goes_through_alone(limit: int) -> None:
    runner = HandlerRunner(
        "h", HandlerSection(plugin="test", queue=10, queue_bytes=3 * limit), _Never()
    )
    big = [Message("c", 1, None, raw=b"x" * 50, seq=n) for n in range(3)]
    assert runner.offer_many(big) == 1
    assert runner.queued == 1
