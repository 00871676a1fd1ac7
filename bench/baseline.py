"""The bare ``websockets`` receive loop: what wsroute is compared with.

``async for message in ws: count += 1`` on one or more connections, with
``websockets``' defaults (compression is not negotiated unless ``--deflate``:
the upstream declines it), measured from outside exactly like ``wsroute run``: it prints the
same done line as the ``benchcount`` plugin (see ``bench/plugins/benchcount.py``)
when ``--expect`` messages arrived, then waits to be terminated, so the driver
can read its CPU time and RSS first.

``--latency`` decodes each frame's JSON body (msgspec, as wsroute's codec
does) to get its send timestamp; ``--delay`` sleeps per message like the slow
handler; ``--uvloop`` runs on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import msgspec
from websockets.asyncio.client import connect

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins"))

from benchcount import Tally


async def receive(url: str, tally: Tally, args: argparse.Namespace, opened: list[Any]) -> None:
    """One connection's receive loop; the body is the whole point of the baseline."""
    kwargs: dict[str, Any] = {"compression": "deflate" if args.deflate else None, "proxy": None}
    if args.max_queue is not None:
        kwargs["max_queue"] = args.max_queue
    async with connect(url, **kwargs) as ws:
        opened.append(ws)
        if args.latency:
            decode = msgspec.json.Decoder().decode
            async for message in ws:
                body = message[4:] if isinstance(message, bytes) else message
                tally.record(decode(body)["ts"])
                tally.count += 1
                if tally.count == tally.expect:
                    tally.report()
        elif args.delay:
            async for _message in ws:
                await asyncio.sleep(args.delay)
                if tally.count % tally.every == 0:
                    tally.progress()
                tally.count += 1
                if tally.count == tally.expect:
                    tally.report()
        else:
            async for _message in ws:
                tally.count += 1
                if tally.count == tally.expect:
                    tally.report()


async def main(args: argparse.Namespace) -> None:
    tally = Tally(args.expect, latency=args.latency, label="baseline", every=args.every)
    opened: list[Any] = []
    tasks = [
        asyncio.ensure_future(receive(args.url, tally, args, opened))
        for _ in range(args.connections)
    ]
    # Stay alive (connections open) after the upstream closes: the driver
    # terminates this process once it has read the CPU time.
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.Event().wait()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="The bare websockets receive loop.")
    p.add_argument("--url", required=True)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--expect", type=int, required=True, help="messages in all")
    p.add_argument("--latency", action="store_true")
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--every", type=int, default=1000, help="with --delay: progress lines")
    p.add_argument("--max-queue", type=int, default=None, help="websockets max_queue")
    p.add_argument("--uvloop", action="store_true")
    p.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    return p


if __name__ == "__main__":
    arguments = _parser().parse_args()
    if arguments.uvloop:
        import uvloop

        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
