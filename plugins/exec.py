"""The built-in ``exec`` handler: pipe messages to an external program.

Two modes:

- ``long-lived`` (the default): one child process, fed one JSON line per
  message on its stdin, in the ``jsonl`` record format. When the child exits
  it is started again, with capped exponential backoff; messages wait for it
  within the handler's ``timeout``.
- ``per-message``: one process per message, the JSON line on its stdin; at most
  ``max_processes`` run at once. A message is handled when its process exits
  with status 0; any other status fails it, with the tail of the process's
  stderr in the error.

When a long-lived child's message counts as handled:

- by default, once its line is in the pipe (``os.write``, nothing held in a
  Python buffer): it survives the daemon being killed, as the child reads on.
  But lines still in the pipe when the *child* dies are lost with it — up to
  the pipe's capacity (64 KiB on Linux), like any Unix pipeline;
- with ``ack = true``, once the program answered it: it writes one line to
  stdout per line read, in order (what the line says does not matter, unless
  it is a reply, below). Lines not answered when the child exits fail, the
  daemon retries them with the next child: at least once, and a message that
  crashes the program every time ends as a dead letter.

With ``reply_connection`` set, every line the program writes to stdout is a
JSON value sent upstream through that connection (``ctx.send(json=...)``;
``null`` sends nothing); otherwise the program's stdout, like its stderr in
``long-lived`` mode, goes where the daemon's goes (the journal, under systemd).

Batches (the handler's ``batch`` key): ``long-lived`` writes a batch's lines
in one write; with ``ack``, each line still needs its own answer, and the lines
the program did not answer before it exited are reported failed, alone.
``per-message`` runs a process per message of the batch, ``max_processes`` at
once. Bodies the codec validated as JSON go into the lines as received.

The child never inherits systemd's notify variables (``NOTIFY_SOCKET``,
``WATCHDOG_*``...): its environment is the daemon's, minus those, plus ``env``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.abc
import msgspec

from wsroute import Duration, HandlerContext, Message, SendError, Size, WsrouteError
from wsroute.process import child_environ
from wsroute.records import encode_record

__all__ = ["ExecError", "ExecHandler", "RestartOptions"]

_STDERR_TAIL = 500


class ExecError(WsrouteError, RuntimeError):
    """The program could not take a message: it exited, failed, or is not running."""


@dataclass
class RestartOptions:
    """``restart = { initial = "0.5s", max = "30s" }``: when a long-lived child exits."""

    initial: Duration = field(
        default=Duration(0.5), metadata={"doc": "Delay before the first restart."}
    )
    max: Duration = field(
        default=Duration(30.0), metadata={"doc": "Cap on the delay; it doubles per quick exit."}
    )
    reset_after: Duration = field(
        default=Duration(10.0),
        metadata={"doc": "A child that ran this long resets the delay to `initial`."},
    )

    def __post_init__(self) -> None:
        if self.initial <= 0:
            raise ValueError("restart.initial must be above 0")
        if self.max < self.initial:
            raise ValueError("restart.max must not be below restart.initial")


class _Answer:
    """A line written to a child with ``ack``: done when the child answers it, or exits."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: ExecError | None = None

    def settle(self, error: ExecError | None = None) -> None:
        self.error = error
        self.done.set()

    async def wait(self) -> None:
        await self.done.wait()
        if self.error is not None:
            raise self.error


class _Child:
    """One running long-lived child: the process, the write end of its stdin pipe, and
    (with ``ack``) the lines it has yet to answer, oldest first."""

    __slots__ = ("answers", "exited", "process", "started_at", "stdin")

    def __init__(self, process: anyio.abc.Process, stdin: int) -> None:
        self.process = process
        self.stdin = stdin
        self.started_at = time.monotonic()
        self.answers: deque[_Answer] = deque()
        self.exited = False


class ExecHandler:
    """Pipe each message, as one JSON line, to an external program.

    ``long-lived``: one child fed a line per message, restarted with backoff if
    it exits. ``per-message``: a process per message, at most ``max_processes``
    at once; exit status 0 means handled. The program's stdout lines can be sent
    upstream as JSON replies (``reply_connection``).
    """

    @dataclass
    class Options:
        command: list[str] = field(
            metadata={"doc": 'The program and its arguments, no shell: ["/usr/bin/tool", "-q"].'}
        )
        mode: Literal["long-lived", "per-message"] = field(
            default="long-lived",
            metadata={"doc": "One child fed a line per message, or one process per message."},
        )
        max_processes: int = field(
            default=4, metadata={"doc": "per-message: at most this many processes at once."}
        )
        ack: bool = field(
            default=False,
            metadata={
                "doc": "long-lived: the program answers each line with one stdout line, in "
                "order; a message is handled once answered (at least once, even if it dies)."
            },
        )
        reply_connection: str | None = field(
            default=None,
            metadata={
                "doc": "Send each stdout line (a JSON value) upstream through this connection; "
                "unset: stdout goes to the daemon's."
            },
        )
        env: dict[str, str] = field(
            default_factory=dict,
            metadata={
                "doc": "Extra environment variables (systemd's notify variables never pass on)."
            },
        )
        cwd: str | None = field(
            default=None, metadata={"doc": "Working directory (default: the daemon's)."}
        )
        restart: RestartOptions = field(
            default_factory=RestartOptions,
            metadata={"doc": "long-lived: backoff between restarts of an exited child."},
        )
        stop_timeout: Duration = field(
            default=Duration(5.0),
            metadata={
                "doc": "long-lived: at stop, wait this long after closing stdin, then SIGTERM, "
                "then as long again before SIGKILL."
            },
        )
        max_line: Size = field(
            default=Size(2**20),
            metadata={"doc": "Longest stdout line taken as a reply; longer ones are skipped."},
        )

        def __post_init__(self) -> None:
            if not self.command or not self.command[0]:
                raise ValueError("command must name a program")
            if shutil.which(self.command[0]) is None:
                raise ValueError(f"command: program not found: {self.command[0]!r}")
            if self.max_processes < 1:
                raise ValueError(f"max_processes must be at least 1, got {self.max_processes}")
            if self.max_line < 1:
                raise ValueError("max_line must be above 0")
            if self.cwd is not None and not os.path.isdir(self.cwd):
                raise ValueError(f"cwd: no such folder: {self.cwd!r}")

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options
        self._ctx = ctx
        self._env = child_environ(dict(os.environ, **options.env))
        self._slots = anyio.Semaphore(options.max_processes)
        self._write_lock = anyio.Lock()
        self._child: _Child | None = None
        self._running = anyio.Event()
        self._stopping = anyio.Event()
        self._delay: float = options.restart.initial
        self._json = msgspec.json.Decoder()

    @property
    def pid(self) -> int | None:
        """The long-lived child's process ID while it runs (for logs and tests)."""
        child = self._child
        return None if child is None else child.process.pid

    # -- lifecycle

    async def stop(self) -> None:
        """long-lived: close the child's stdin, wait ``stop_timeout``, then terminate it."""
        self._stopping.set()
        child = self._child
        try:
            if child is not None:
                await self._close_stdin(child)
                await self._reap(child)
        finally:
            if child is not None and child.process.returncode is None:
                child.process.kill()  # our own stop was cut short: leave nothing behind

    # -- handling

    async def handle(self, message: Message) -> None:
        """Write the message's line to the child, or run a process for it."""
        line = encode_record(message)
        if self.options.mode == "per-message":
            await self._run_once(line)
            return
        answers = await self._feed(line, 1)
        if answers:
            await answers[0].wait()  # bounded by the handler's timeout

    async def handle_batch(self, messages: list[Message]) -> dict[int, BaseException] | None:
        """Write the batch's lines in one write (``long-lived``), or run a process for each
        (``per-message``); report the messages that failed."""
        failures: dict[int, BaseException] = {}
        if self.options.mode == "per-message":

            async def one(index: int, message: Message) -> None:
                try:
                    await self.handle(message)
                except Exception as exc:
                    failures[index] = exc

            async with anyio.create_task_group() as group:
                for index, message in enumerate(messages):
                    group.start_soon(one, index, message)
            return failures or None
        data = b"".join([encode_record(message) for message in messages])
        answers = await self._feed(data, len(messages))
        for index, answer in enumerate(answers):
            try:
                await answer.wait()  # bounded by the handler's timeout
            except ExecError as exc:
                failures[index] = exc
        return failures or None

    async def _feed(self, data: bytes, lines: int) -> list[_Answer]:
        """Write whole lines to the long-lived child; with ``ack``, the answers to wait for."""
        while True:
            child = self._child
            if child is None:
                if self._stopping.is_set():
                    raise ExecError("the program is stopping")
                await self._running.wait()  # bounded by the handler's timeout
                continue
            async with self._write_lock:
                if child is not self._child:  # it exited while we waited for the lock
                    continue
                await self._write(child, data)
                if not self.options.ack:
                    return []
                if child.exited:  # gone, though something else still holds its stdin
                    raise ExecError(f"the program (pid {child.process.pid}) exited")
                # Queued under the lock: answers come back in the order lines went out.
                answers = [_Answer() for _ in range(lines)]
                child.answers.extend(answers)
            return answers

    async def _write(self, child: _Child, line: bytes) -> None:
        """Write the whole line into the pipe, or fail leaving no torn line behind."""
        view = memoryview(line)
        try:
            while view:
                try:
                    written = os.write(child.stdin, view)
                except BlockingIOError:
                    await anyio.wait_writable(child.stdin)  # the child is busy: wait, bounded
                    continue
                view = view[written:]
        except BrokenPipeError:
            raise ExecError(f"the program (pid {child.process.pid}) exited") from None
        except BaseException:
            if len(view) not in (0, len(line)):
                # Half a line is in the pipe: the next one would corrupt the stream.
                # Restart the child rather than feed it garbage.
                self._ctx.log.error(
                    "exec_torn_line", pid=child.process.pid, action="terminating the program"
                )
                child.process.terminate()
            raise

    async def _run_once(self, line: bytes) -> None:
        options = self.options
        replies = options.reply_connection is not None
        async with self._slots:
            result = await anyio.run_process(
                options.command,
                input=line,
                stdout=subprocess.PIPE if replies else None,
                stderr=subprocess.PIPE,
                check=False,
                cwd=options.cwd,
                env=self._env,
            )
        errors = (result.stderr or b"").decode(errors="replace").strip()
        if result.returncode != 0:
            tail = errors[-_STDERR_TAIL:]
            raise ExecError(
                f"{options.command[0]} exited with status {result.returncode}"
                + (f": {tail}" if tail else "")
            )
        if errors:
            self._ctx.log.info("exec_stderr", stderr=errors[-_STDERR_TAIL:])
        if replies and result.stdout:
            for reply in result.stdout.split(b"\n"):
                await self._reply(reply)

    # -- the long-lived child

    async def _spawn(self) -> _Child:
        options = self.options
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            process = await anyio.open_process(
                options.command,
                stdin=read_end,
                stdout=subprocess.PIPE if options.reply_connection or options.ack else None,
                stderr=None,
                cwd=options.cwd,
                env=self._env,
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        os.set_blocking(write_end, False)
        return _Child(process, write_end)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """long-lived: start the child, wait for it to exit, start it again after a delay.

        Reports started once the first child runs (or failed to start: logged and
        retried). Cancelled (before ``stop()``): the child's stdin is closed and it
        is given ``stop_timeout`` to exit, then SIGTERM, then SIGKILL.
        """
        if self.options.mode != "long-lived":
            task_status.started()
            return
        log = self._ctx.log
        restart = self.options.restart
        first = True
        while not self._stopping.is_set():
            try:
                child = await self._spawn()
            except OSError as exc:
                log.error("exec_start_failed", command=self.options.command[0], error=str(exc))
                ran_for = 0.0
            else:
                log.info("exec_started", pid=child.process.pid, mode="long-lived")
                self._child = child
                self._running.set()
                if first:
                    task_status.started()
                    first = False
                status = await self._serve(child)
                self._child = None
                self._running = anyio.Event()
                await self._close_stdin(child)
                ran_for = time.monotonic() - child.started_at
                if self._stopping.is_set():
                    log.info("exec_stopped", pid=child.process.pid, status=status)
                    return
                log.warning(
                    "exec_exited",
                    pid=child.process.pid,
                    status=status,
                    ran_for=round(ran_for, 3),
                )
            if first:
                task_status.started()
                first = False
            if ran_for >= restart.reset_after:
                self._delay = restart.initial
            delay, self._delay = self._delay, min(restart.max, self._delay * 2)
            log.info("exec_restart_scheduled", delay=delay)
            await anyio.sleep(delay)

    async def _serve(self, child: _Child) -> int:
        """Read the child's stdout (if piped) until it exits; return its exit status."""
        process = child.process
        try:
            if process.stdout is None:
                return await process.wait()
            read_all = anyio.Event()
            async with anyio.create_task_group() as group:
                group.start_soon(self._read_lines, child, process.stdout, read_all)
                status = await process.wait()
                # Its last lines may still be in the pipe: read them, briefly.
                with anyio.move_on_after(1.0):
                    await read_all.wait()
                group.cancel_scope.cancel()
            return status
        finally:
            child.exited = True
            unanswered = len(child.answers)
            while child.answers:
                child.answers.popleft().settle(
                    ExecError(f"the program (pid {process.pid}) exited before answering")
                )
            if unanswered:
                self._ctx.log.warning("exec_unanswered", pid=process.pid, count=unanswered)
            with anyio.CancelScope(shield=True):
                if process.returncode is None:  # cancelled (stop): end the child gracefully
                    self._stopping.set()
                    await self._close_stdin(child)
                    await self._reap(child)
                await process.aclose()

    async def _read_lines(
        self, child: _Child, stdout: anyio.abc.ByteReceiveStream, done: anyio.Event
    ) -> None:
        """Take each complete stdout line as an answer or a reply, until stdout closes."""
        limit = self.options.max_line
        buffer = bytearray()
        skipping = False
        try:
            async for chunk in stdout:
                buffer += chunk
                while (end := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[: end + 1]
                    await self._on_line(child, b"" if skipping else line)
                    skipping = False
                if len(buffer) > limit:
                    self._ctx.log.warning("exec_line_too_long", max_line=limit)
                    buffer.clear()
                    skipping = True
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        finally:
            done.set()

    async def _on_line(self, child: _Child, line: bytes) -> None:
        """One stdout line: with ``ack`` the answer to the oldest line written; a reply."""
        if self.options.reply_connection is not None and line.strip() != b"null":
            await self._reply(line)
        if not self.options.ack:
            return
        if not child.answers:
            self._ctx.log.warning("exec_unexpected_answer", pid=child.process.pid)
            return
        child.answers.popleft().settle()

    async def _reply(self, line: bytes) -> None:
        """Send one stdout line upstream; a line that cannot go is logged, not retried."""
        if not line.strip():
            return
        connection = self.options.reply_connection
        assert connection is not None
        try:
            value: Any = self._json.decode(line)
        except msgspec.DecodeError as exc:
            self._ctx.log.warning("exec_reply_invalid", error=str(exc), line=line[:200])
            return
        try:
            await self._ctx.send(connection, json=value)
        except SendError as exc:
            self._ctx.log.warning("exec_reply_failed", connection=connection, error=str(exc))

    async def _close_stdin(self, child: _Child) -> None:
        """Close our end of the child's stdin: it reads EOF. Idempotent."""
        async with self._write_lock:  # never under a writer's feet (the number could be reused)
            if child.stdin < 0:
                return
            fd, child.stdin = child.stdin, -1
            anyio.notify_closing(fd)
            os.close(fd)

    async def _reap(self, child: _Child) -> None:
        """Wait for a child told to stop; SIGTERM, then SIGKILL, if it does not exit."""
        process = child.process
        timeout = self.options.stop_timeout
        for escalate in (None, process.terminate, process.kill):
            if escalate is not None:
                if process.returncode is not None:
                    return
                self._ctx.log.warning(
                    "exec_stop_timeout", pid=process.pid, action=escalate.__name__
                )
                escalate()
            with anyio.move_on_after(timeout):
                await process.wait()
                return
