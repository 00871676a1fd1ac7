"""The built-in ``jsonl`` handler: an append-only archive, one JSON object per line.

Its lines are the record format of :mod:`wsroute.records`, which doubles as
the dead-letter format: ``wsroute replay`` reads such a file back. Built on
the public plugin API only.

Durability: ``handle()`` returns once its line went to the kernel with
``os.write`` on an ``O_APPEND`` descriptor; there is no Python-side buffer, so a
handled message survives the daemon being killed (``fsync = true`` extends that
to a power loss). A write that fails halfway is cut back off the file, so the
file never holds a torn line written by a live process; a line torn by a crash
is closed with a newline at the next start.

Outage or failure (:mod:`wsroute.outage`): a full disk (``ENOSPC``, or a
quota: ``EDQUOT``) is an **outage** — the write is cut back, ``handle()``
raises :class:`~wsroute.Unavailable`, and the daemon holds the message and
writes it again once there is space; any other error (no permission, a
read-only file system) is a **failure**.

Give each file one writer: the rollback truncates to the size before the write,
which would cut another process's lines written in between.

With the handler's ``batch`` key, a batch is written in one ``os.write`` (and
synced once): all its lines or none. A body the codec validated as JSON is
copied into its line as received, without being decoded and encoded again.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass, field

import anyio
import anyio.to_thread

from wsroute import HandlerContext, Issue, Message, Unavailable, check_output_file
from wsroute.records import encode_record, parse_record, record

__all__ = ["JsonlHandler", "encode_record", "parse_record", "record"]

# Rotation (logrotate's rename, or a delete) is noticed by comparing inodes, at
# most this often: a stat per message would cost more than the write.
_REOPEN_CHECK = 1.0
# A full disk: wait for space (an outage), do not fail the message.
_FULL = (errno.ENOSPC, errno.EDQUOT)


class JsonlHandler:
    """Append each message to a file as one JSON object per line.

    Each line has ``connection``, ``key``, ``seq``, ``received_at``, ``fields`` and
    ``body`` (bytes as base64, with ``"body_encoding": "base64"``); dead letters
    add ``reason``, ``handler``, ``error`` and ``attempts``. A message counts as
    handled once its line is in the file (not in a buffer); a rotated or deleted
    file is reopened within a second.
    """

    @dataclass
    class Options:
        path: str = field(
            metadata={
                "doc": "The file to append to. Its folder must exist; the file is created.",
                "schema": {"minLength": 1},
            }
        )
        fsync: bool = field(
            default=False,
            metadata={
                "doc": "Also fsync before a message counts as handled (survives power loss); "
                "workers writing at the same time share one fsync."
            },
        )
        mode: str = field(
            default="0640",
            metadata={
                "doc": "Permissions of a file this handler creates, in octal (umask applies)."
            },
        )

        def __post_init__(self) -> None:
            if not self.path:
                raise ValueError("path must not be empty")
            try:
                permissions = int(self.mode, 8)
            except ValueError:
                permissions = -1
            if not 0 <= permissions <= 0o777:
                raise ValueError(f'mode must be octal permissions like "0640", got {self.mode!r}')

        @property
        def permissions(self) -> int:
            """``mode`` as a number."""
            return int(self.mode, 8)

    @classmethod
    def check(cls, options: Options) -> list[Issue]:
        """Before the start: the file's folder exists (or is a state directory), is writable."""
        return check_output_file(options.path, "path")

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options
        self._ctx = ctx
        self._fd = -1
        self._identity: tuple[int, int] | None = None
        self._checked_at = 0.0
        # Set when a failed write could not be rolled back: repair the tail first.
        self._dirty = False
        self._appended = 0
        self._synced = 0
        self._sync_lock: anyio.Lock | None = None

    @property
    def path(self) -> str:
        """The file this handler appends to."""
        return self.options.path

    async def start(self) -> None:
        """Open the file (an error names a missing folder) and close a torn last line."""
        self._open()

    async def handle(self, message: Message) -> None:
        """Append one line; return once it is in the file (and synced, with ``fsync``).

        A full disk raises :class:`~wsroute.Unavailable` (an outage).
        """
        await self._append_lines(encode_record(message))

    async def handle_batch(self, messages: list[Message]) -> None:
        """Append the batch's lines in one write: all of them are handled, or none."""
        await self._append_lines(b"".join([encode_record(message) for message in messages]))

    async def _append_lines(self, data: bytes) -> None:
        try:
            self.append(data)
            if self.options.fsync:
                await self._sync(self._appended)
        except OSError as exc:
            if exc.errno in _FULL:
                raise Unavailable(str(exc), engine="jsonl") from exc
            raise

    async def stop(self) -> None:
        """Sync (with ``fsync``) and close the file."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            if self.options.fsync:
                _sync_fd(fd)
        finally:
            os.close(fd)

    # -- the file

    def _open(self) -> None:
        path = self.options.path
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, self.options.permissions)
        except FileNotFoundError:
            folder = os.path.dirname(os.path.abspath(path))
            raise FileNotFoundError(
                f'jsonl: cannot open "{path}": the folder "{folder}" does not exist '
                f"(create it; under systemd, StateDirectory= does)"
            ) from None
        except OSError as exc:
            raise OSError(exc.errno, f'jsonl: cannot open "{path}": {exc.strerror}') from None
        try:
            st = os.fstat(fd)
            self._identity = (st.st_dev, st.st_ino)
            self._checked_at = time.monotonic()
            self._close_torn_line(fd)
        except BaseException:
            os.close(fd)
            raise
        old, self._fd = self._fd, fd
        if old >= 0:
            try:
                if self.options.fsync:
                    _sync_fd(old)
            finally:
                os.close(old)

    def _close_torn_line(self, fd: int) -> None:
        """A last line without its newline was torn by a crash: end it, so ours stay whole."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return
        if os.pread(fd, 1, st.st_size - 1) != b"\n":
            self._write(fd, b"\n")
            self._ctx.log.warning("jsonl_torn_line_closed", path=self.options.path)

    def _reopen_if_rotated(self) -> None:
        now = time.monotonic()
        if self._fd >= 0 and now - self._checked_at < _REOPEN_CHECK:
            return
        self._checked_at = now
        try:
            st = os.stat(self.options.path)
            identity: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            identity = None
        if self._fd >= 0 and identity == self._identity:
            return
        was_open = self._fd >= 0
        try:
            self._open()
        except OSError:
            self._checked_at = 0.0  # try again with the next message
            raise
        if was_open:
            self._ctx.log.info("jsonl_reopened", path=self.options.path)

    def _write(self, fd: int, data: bytes, st: os.stat_result | None = None) -> None:
        """Write all of ``data`` or none of it: a failure truncates back, then raises."""
        if st is None:
            st = os.fstat(fd)
        regular = stat.S_ISREG(st.st_mode)
        before = st.st_size
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(errno.EIO, "short write")
                view = view[written:]
        except OSError as exc:
            if regular:
                try:
                    if os.fstat(fd).st_size > before:
                        os.ftruncate(fd, before)
                except OSError:
                    self._dirty = True
            raise OSError(
                exc.errno, f'jsonl: cannot append to "{self.options.path}": {exc.strerror}'
            ) from exc

    def append(self, data: bytes) -> None:
        """Append complete lines (each ending in a newline) in one write, or raise ``OSError``.

        Synchronous and unbuffered: when it returns, the lines are in the file.
        """
        self._reopen_if_rotated()
        st = os.fstat(self._fd)
        if st.st_nlink == 0 and stat.S_ISREG(st.st_mode):
            # Removed under us: lines written now would be counted handled and be gone.
            self._checked_at = 0.0
            self._reopen_if_rotated()
            st = os.fstat(self._fd)
        if self._dirty:
            self._close_torn_line(self._fd)
            self._dirty = False
            st = os.fstat(self._fd)
        self._write(self._fd, data, st)
        self._appended += 1

    async def _sync(self, upto: int) -> None:
        """fsync covering append number ``upto``; one fsync serves everyone waiting."""
        if self._sync_lock is None:
            self._sync_lock = anyio.Lock()
        async with self._sync_lock:
            if self._synced >= upto:
                return
            # A duplicate descriptor: a rotation may close ours while the thread syncs.
            target, fd = self._appended, os.dup(self._fd)
            try:
                await anyio.to_thread.run_sync(_sync_fd, fd)
            finally:
                os.close(fd)
            self._synced = target


def _sync_fd(fd: int) -> None:
    try:
        os.fdatasync(fd)
    except OSError as exc:
        # Pipes and character devices cannot be synced; there is nothing to wait for.
        if exc.errno not in (errno.EINVAL, errno.EROFS):
            raise
