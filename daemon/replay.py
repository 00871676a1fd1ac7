"""``wsroute replay``: feed dead-lettered (or captured) jsonl records back to handlers.

Each line of a file the ``jsonl`` handler wrote becomes a message again:

- a record a handler dead-lettered (``handler`` set) goes to that handler only,
  so handlers that already succeeded do not see it twice (``--through-routes``
  routes it like a fresh message instead);
- a record of an undecodable frame (``reason = "decode_error"``) is decoded
  again with its connection's codec (a fixed codec config may now read it);
- any other record (a capture) goes through the routes.

No upstream is connected: handlers that send upstream get a SendError and
their retries and dead letters apply. Replay delivers at least once: make the
handlers you replay into idempotent, and move the file aside first if the
config's dead-letter handler appends to it.
"""

from __future__ import annotations

import anyio
import structlog

from .config import Config
from .exceptions import DecodeError
from .logging import configure
from .plugin import Frame, Message
from .service import Service, plan

__all__ = ["replay"]

log = structlog.get_logger("wsroute.replay")


def _read(path: str) -> tuple[list[Message], int]:
    from .plugins.jsonl import parse_record

    messages: list[Message] = []
    bad = 0
    with open(path, "rb") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                messages.append(parse_record(line))
            except ValueError as exc:
                bad += 1
                log.error("replay_record_invalid", line=number, error=str(exc))
    return messages, bad


def replay(config: Config, path: str, *, through_routes: bool = False) -> int:
    """Replay ``path``; exit status 0 when every record was handled again, else 1."""
    configure(config.daemon.log_level, config.daemon.log_format)
    the_plan = plan(config)
    messages, bad = _read(path)
    service = Service(the_plan, connect=False)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            for message in messages:
                await _feed(service, message, through_routes)
            service.shutdown()

    anyio.run(main, backend="asyncio")
    dead_letter_names = {r.dead_letter.name for r in service.runners.values() if r.dead_letter}
    failed = sum(
        r.stats.dead_lettered + r.stats.dropped
        for name, r in service.runners.items()
        if name not in dead_letter_names
    )
    log.info("replay_done", records=len(messages), invalid=bad, failed_again=failed)
    return 0 if failed == 0 and bad == 0 else 1


async def _feed(service: Service, message: Message, through_routes: bool) -> None:
    info = message.dead_letter
    if info is not None and info.reason == "decode_error":
        codec = service.plan.codecs.get(message.connection)
        if codec is None:
            log.error("replay_no_codec", connection=message.connection, seq=message.seq)
            return
        try:
            message = codec.decode(
                Frame(message.connection, message.raw, message.seq, message.received_at)
            )
        except DecodeError as exc:
            log.error("replay_still_undecodable", seq=message.seq, error=str(exc))
            return
    else:
        message = message.replace(dead_letter=None)
    target = None if info is None or through_routes else service.runners.get(info.handler or "")
    if target is not None:
        await target.put(message)
        return
    pending = service.dispatcher.dispatch(message)
    if pending is not None:
        await pending
