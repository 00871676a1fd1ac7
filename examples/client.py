"""The classic hand-written WebSocket client, written with ``wsroute.connect``.

The flow many scripts start from: connect, log in with a JSON frame, subscribe
with a binary command (an ``int32`` opcode before a JSON body), handle the
replies by opcode in a callback, and send the release command
(``struct.pack("<ib", 0, 0)``) before closing. Here wsroute's connection does
the rest: it reconnects with backoff and jitter, pings, replays the login and
the subscription after every reconnect, and pauses reading the socket when
this program falls behind.

Run it against the reference upstream that ``wsroute demo`` embeds::

    python examples/client.py ws://127.0.0.1:PORT/ --messages 20

It prints one line per message and exits 0 after ``--messages`` of them
(0: until Ctrl-C). See docs/library.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

import anyio
import structlog

import wsroute

OPCODE_TICK = 1
OPCODE_SUBSCRIBE = 2
RELEASE = ("<ib", [0, 0])  # struct.pack("<ib", 0, 0)

# The upstream's frames: binary ones are an int32 opcode, then a JSON body;
# text ones are JSON objects with a "type". Either way the route key is the
# message's key: the opcode, or the type.
CODEC_OPTIONS = {
    "header": "<i",
    "fields": ["opcode"],
    "body": "json",
    "key": "opcode",
    "text": "json",
    "text_key": "type",
}


def on_tick(message: wsroute.Message) -> None:
    body = message.body
    print(f"tick {body['service']} #{body['n']}: {body['price']}", flush=True)


def on_subscribed(message: wsroute.Message) -> None:
    print(f"subscribed to {message.body['subscribed']}", flush=True)


def on_text(message: wsroute.Message) -> None:
    print(f"{message.key}: {message.body}", flush=True)


# The callback of the classic client, one function per opcode (or text type).
HANDLERS: dict[Any, Callable[[wsroute.Message], None]] = {
    OPCODE_TICK: on_tick,
    OPCODE_SUBSCRIBE: on_subscribed,
    "welcome": on_text,
    "news": on_text,
    "pong": on_text,
}


async def run(url: str, messages: int, user: str) -> int:
    async with wsroute.connect(
        url,
        codec="struct",
        codec_options=CODEC_OPTIONS,
        # Sent after every connect and reconnect: log in, subscribe, wait for the reply.
        on_connect=[
            {"json": {"role": "admin", "user_id": user}},
            {"struct": ("<i", [OPCODE_SUBSCRIBE]), "json": ["first", "test"]},
            {"expect": {"key": OPCODE_SUBSCRIBE, "timeout": 5}},
        ],
        # Sent before the close frame when this program closes the connection.
        on_close=[{"struct": RELEASE}],
        every=[{"interval": 10, "json": {"op": "ping"}}],  # the application heartbeat
        ping_interval=20,
        reconnect={"initial": 0.5, "max": 10},
        ready_timeout=30,
    ) as conn:
        handled = 0
        async for message in conn:
            handle = HANDLERS.get(message.key)
            if handle is None:
                print(f"unknown message {message.key!r}", flush=True)
            else:
                handle(message)
            handled += 1
            if messages and handled >= messages:
                break
    print(f"released and closed after {handled} messages", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="ws:// or wss:// URL of the upstream")
    parser.add_argument("--messages", type=int, default=0, help="stop after this many (0: never)")
    parser.add_argument("--user", default="example", help="user_id of the login frame")
    args = parser.parse_args(argv)
    # wsroute logs with structlog: keep its connection events to warnings and errors.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        return anyio.run(run, args.url, args.messages, args.user)
    except KeyboardInterrupt:
        return 130
    except wsroute.ConfigError as exc:
        print(f"client.py: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
