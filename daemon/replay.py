"""``wsroute replay``: feed dead-lettered (or captured) jsonl records back to handlers.

Each line of a file the ``jsonl`` handler wrote becomes a message again:

- a record a handler dead-lettered (``handler`` set) goes to that handler only,
  so handlers that already succeeded do not see it twice (``--through-routes``
  routes it like a fresh message instead); when the config has no such handler
  the record fails, with a line that says so, and is never routed;
- a record of an undecodable frame (``reason = "decode_error"``) holds the
  frame byte for byte (its body); it is decoded again with its connection's
  codec (a fixed codec config may now read it), then routed;
- a record of a message whose body could not be built (``"frame": true``: a
  codec with ``validate = false`` let an invalid body through) holds the frame
  the same way; it is decoded again, then goes to its handler as above;
- any other record (a capture) goes through the routes.

Every record is accounted for. A record fails again when its frame still
cannot be decoded, or a handler gives up on it: it is then dead-lettered again
— to the dead-letter handler the daemon would use (the handler's, or
``[daemon] dead_letter``), or with ``--failed FILE`` appended to that file as
a jsonl record of the same shape — or, with nowhere to go, logged as
``message_lost``. A malformed line, or one longer than
:data:`~wsroute.inputs.MAX_RECORD_BYTES`, is reported with its line number and
counted as failed, and a record no route takes is counted as failed too. The
summary line on stderr counts the records read, handled, dead-lettered again
and failed; the exit status is 0 when every record was handled, 1 otherwise,
66 when the file cannot be read (or the ``--failed`` file cannot be opened); only
a regular file is read, one record at a time.

No upstream is connected: handlers that send upstream get a SendError and
their retries and dead letters apply. Replay never drops: every handler's
``overflow`` is ``block`` here. Replay delivers at least once: make the
handlers you replay into idempotent, and move the file aside first if the
config's dead-letter handler appends to it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

import anyio
import structlog

from .ack import Ack
from .config import Config
from .exceptions import ConfigError, ConfigIssue, DecodeError, PluginError
from .handler import HandlerRunner
from .inputs import MAX_RECORD_BYTES, InputRefused, open_records, records
from .logging import configure
from .plugin import DeadLetter, Frame, Message
from .service import Service, plan

__all__ = ["EX_NOINPUT", "replay"]

#: The exit status when the file to replay cannot be read (sysexits' EX_NOINPUT).
EX_NOINPUT = 66

log = structlog.get_logger("wsroute.replay")


def _records(path: str, file: BinaryIO) -> Iterator[tuple[int, Message | None]]:
    """The records of ``file`` one at a time with their line numbers (``None`` for a
    malformed line, each reported), so that memory holds one record, whatever the
    file's size."""
    from .records import parse_record

    for number, line in records(file):
        if line is None:
            print(
                f"wsroute: {path}:{number}: record larger than the limit of "
                f"{MAX_RECORD_BYTES // 2**20} MiB",
                file=sys.stderr,
            )
            yield number, None
            continue
        if not line.strip():
            continue
        try:
            yield number, parse_record(line)
        except ValueError as exc:
            print(f"wsroute: {path}:{number}: {exc}", file=sys.stderr)
            yield number, None


class _Tally:
    """What became of the records: each ends handled, dead-lettered again, or failed."""

    def __init__(self) -> None:
        self.read = 0
        self.handled = 0
        self.dead_lettered = 0
        self.failed = 0
        self.unsettled = 0
        self.fed = False
        self.settled = anyio.Event()

    def count(self, outcome: _Outcome) -> None:
        if outcome.failed or not outcome.targets:
            self.failed += 1
            if not outcome.targets and not outcome.failed:
                log.warning("replay_unmatched", **outcome.about)
        elif outcome.dead_lettered:
            self.dead_lettered += 1
        else:
            self.handled += 1
        self.unsettled -= 1
        self.check()

    def check(self) -> None:
        if self.fed and self.unsettled == 0:
            self.settled.set()


class _Outcome(Ack):
    """One record's deliveries: settled once each handler handled or dead-lettered it."""

    __slots__ = ("about", "counted", "dead_lettered", "failed", "tally", "targets")

    def __init__(self, tally: _Tally, message: Message) -> None:
        super().__init__(self._settled)
        self.tally = tally
        self.about: dict[str, Any] = {
            "connection": message.connection,
            "key": message.key,
            "seq": message.seq,
        }
        self.targets = 0
        self.dead_lettered = False
        self.failed = False
        self.counted = False
        tally.unsettled += 1

    def add(self, count: int) -> None:
        self.targets += count
        super().add(count)

    def _settled(self) -> None:
        if not self.counted:
            self.counted = True
            self.tally.count(self)


class _DeadLetters:
    """Stands in for a runner's dead-letter runner while records are replayed.

    It notes which records were dead-lettered again, and which found nowhere to
    go (no dead-letter handler: the runner logs ``message_lost``). With
    ``--failed``, it appends the dead letters to that file instead.
    """

    def __init__(self, target: HandlerRunner | None, failed: _FailedFile | None) -> None:
        self.target = None if failed is not None else target
        self.failed = failed
        self.name = failed.path if failed is not None else (target.name if target else None)

    @property
    def dead_letter(self) -> HandlerRunner | None:
        return None if self.target is None else self.target.dead_letter

    @property
    def full(self) -> bool:
        return self.target is not None and self.target.full

    async def wait_below_limit(self) -> None:
        if self.target is not None:
            await self.target.wait_below_limit()

    def accept_dead_letter(self, letter: Message, ack: Ack | None = None) -> bool:
        outcome = ack if isinstance(ack, _Outcome) else None
        if self.failed is not None:
            try:
                self.failed.write(letter)
            except OSError as exc:
                print(f"wsroute: cannot append to {self.failed.path}: {exc}", file=sys.stderr)
                if outcome is not None:
                    outcome.failed = True
                return False
            if outcome is not None:
                outcome.dead_lettered = True
                outcome.done()
            return True
        if self.target is None or not self.target.accept_dead_letter(letter, ack):
            if outcome is not None:
                outcome.failed = True
            return False
        if outcome is not None:
            outcome.dead_lettered = True
        return True


class _FailedFile:
    """``--failed FILE``: the records that failed again, appended as jsonl lines."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, letter: Message) -> None:
        from .records import encode_record

        line = memoryview(encode_record(letter))
        while line:
            line = line[os.write(self.fd, line) :]

    def close(self) -> None:
        os.close(self.fd)


def replay(
    config: Config,
    path: str,
    *,
    through_routes: bool = False,
    failed_path: str | None = None,
) -> int:
    """Replay ``path``: 0 when every record was handled again, 1 if not, 66 if unreadable."""
    configure(config.daemon.log_level, config.daemon.log_format)
    try:
        file = open_records(path)
    except InputRefused as exc:
        print(f"wsroute: cannot read {path}: {exc}", file=sys.stderr)
        return EX_NOINPUT
    with file:
        return _replay(config, path, file, through_routes, failed_path)


def _replay(
    config: Config, path: str, file: BinaryIO, through_routes: bool, failed_path: str | None
) -> int:
    # Offline, nothing is gained by dropping: every handler waits for room instead.
    config.handlers = {
        name: dataclasses.replace(section, overflow="block")
        for name, section in config.handlers.items()
    }
    the_plan = plan(config)
    failed: _FailedFile | None = None
    if failed_path is not None:
        try:
            failed = _FailedFile(failed_path)
        except OSError as exc:
            print(f"wsroute: cannot open {failed_path}: {exc.strerror or exc}", file=sys.stderr)
            return EX_NOINPUT
    # Offline: no connection opens, so the preflight of `run` (TLS files of the
    # machine the daemon runs on) does not apply here.
    service = Service(the_plan, connect=False, preflight=False)
    tally = _Tally()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            saved = {name: runner.dead_letter for name, runner in service.runners.items()}
            for runner in service.runners.values():
                runner.dead_letter = cast(HandlerRunner, _DeadLetters(runner.dead_letter, failed))
            daemon = _DeadLetters(service.dispatcher.dead_letter, failed)
            try:
                for number, message in _records(path, file):
                    tally.read += 1
                    if message is None:
                        tally.failed += 1
                        continue
                    missing = None if through_routes else _missing_handler(service, message)
                    if missing is not None:
                        tally.failed += 1
                        print(
                            f'wsroute: {path}:{number}: no handler named "{missing}" in this '
                            "config: the record goes to the handler that dead-lettered it "
                            "only (--through-routes routes it instead)",
                            file=sys.stderr,
                        )
                        continue
                    await _feed(service, message, through_routes, tally, daemon)
                tally.fed = True
                tally.check()
                await tally.settled.wait()
            finally:
                for name, target in saved.items():
                    service.runners[name].dead_letter = target
                service.shutdown()

    try:
        anyio.run(main, backend="asyncio")
    except BaseExceptionGroup as group:
        # A handler that cannot start is a config problem (exit 78), as at `wsroute run`.
        domain, rest = group.split((ConfigError, PluginError))
        if domain is None or rest is not None:
            raise
        raise ConfigError(_issues(domain)) from None
    finally:
        if failed is not None:
            failed.close()
    where = f" (to {failed_path})" if failed is not None else ""
    print(
        f"wsroute: replay {path}: {tally.read} read, {tally.handled} handled, "
        f"{tally.dead_lettered} dead-lettered again{where}, {tally.failed} failed",
        file=sys.stderr,
    )
    log.info(
        "replay_done",
        read=tally.read,
        handled=tally.handled,
        dead_lettered=tally.dead_lettered,
        failed=tally.failed,
    )
    return 0 if tally.handled == tally.read else 1


def _missing_handler(service: Service, message: Message) -> str | None:
    """The handler that dead-lettered the record when this config lacks it: such a
    record goes to that handler only, never through the routes."""
    handler = message.dead_letter.handler if message.dead_letter is not None else None
    return handler if handler is not None and handler not in service.runners else None


def _issues(group: BaseExceptionGroup[Any]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            issues.extend(_issues(error))
        elif isinstance(error, ConfigError):
            issues.extend(error.issues)
        else:
            issues.append(ConfigIssue("", str(error)))
    return issues


async def _feed(
    service: Service,
    message: Message,
    through_routes: bool,
    tally: _Tally,
    daemon: _DeadLetters,
) -> None:
    info = message.dead_letter
    # A decode_error record, or one whose body could not be built ("frame": true,
    # parsed with its raw frame): decode the frame again.
    if info is not None and (info.reason == "decode_error" or message.raw):
        decoded = _decode(service, message)
        if isinstance(decoded, str):  # still undecodable: dead-letter it again
            letter = message.replace(dead_letter=DeadLetter(reason="decode_error", error=decoded))
            outcome = _Outcome(tally, letter)
            outcome.add(1)
            log.error(
                "replay_still_undecodable",
                connection=message.connection,
                seq=message.seq,
                error=decoded,
            )
            if not daemon.accept_dead_letter(letter, outcome):
                log.error(
                    "message_lost",
                    reason="decode_error",
                    error=decoded,
                    connection=message.connection,
                    seq=message.seq,
                    dead_letter=None,
                )
                outcome.done()
            return
        message = decoded
    else:
        message = message.replace(dead_letter=None)
    outcome = _Outcome(tally, message)
    target = None if info is None or through_routes else service.runners.get(info.handler or "")
    if target is not None:
        outcome.add(1)
        target.acks[id(message)] = outcome
        await target.put(message)
        return
    pending = service.dispatcher.dispatch(message, outcome)
    if pending is not None:
        await pending


def _decode(service: Service, message: Message) -> Message | str:
    """The record's frame decoded with its connection's codec, or why it cannot be."""
    codec = service.plan.codecs.get(message.connection)
    if codec is None:
        return f"no connection or source named {message.connection!r} in this config"
    # The record's body is the frame (parse_record also gives it back as raw).
    data = message.raw or message.body
    if not isinstance(data, bytes | str):
        return "the record holds no frame (its body is neither text nor base64 bytes)"
    frame = Frame(message.connection, data, message.seq, message.received_at)
    try:
        return codec.decode(frame)
    except DecodeError as exc:
        return str(exc)
    except Exception as exc:  # a codec bug, as the connection treats it
        return f"codec raised {type(exc).__name__}: {exc}"
