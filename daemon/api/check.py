"""``wsroute check`` for ``[daemon.api] listen``: what ``wsroute run`` would refuse, found first.

:func:`listen_issues` tries each address as the daemon would open it, without
keeping it: a Unix socket's folder must exist (or be the runtime directory
the shipped units create at start, ``/run/wsroute``) and be a folder we may
create the socket in, and nothing but a stale socket may be at its path (a file, a
folder or a symlink there is refused, as the daemon refuses it); a TCP
address must be bindable. An address held by a running wsroute — the daemon
this check precedes a ``systemctl reload`` of — is not a problem: the probe
asks it ``GET /health``.

Invariant: nothing is left behind (no socket file, no bound port), and it runs
only in ``wsroute check``: inside the daemon the probe would ask itself on
its own event loop.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import stat

from ..config import ApiSection, parse_listen
from ..exceptions import ConfigIssue

__all__ = ["listen_issues"]

_KEY = "daemon.api.listen"
_PROBE_TIMEOUT = 2.0
# A daemon listening on every address is asked on the loopback one.
_ANY_HOST = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def listen_issues(section: ApiSection) -> list[ConfigIssue]:
    """What would stop ``wsroute run`` from opening each ``listen`` address."""
    issues = []
    for address in dict.fromkeys(section.listen):
        kind, where = parse_listen(address)
        if kind == "unix":
            assert isinstance(where, str)
            problem = _unix_problem(where)
        else:
            assert isinstance(where, int)
            problem = _tcp_problem(kind, where)
        if problem is not None:
            issues.append(ConfigIssue(_KEY, f"cannot listen on {address}: {problem}"))
    return issues


#: The longest path a Unix socket can be bound at (``sun_path`` less its NUL, on Linux).
_MAX_SOCKET_PATH = 107

#: What the shipped units create at start with ``RuntimeDirectory=``: ``/run/wsroute``,
#: and ``/run/wsroute-NAME`` for the instance ``wsroute@NAME``.
_RUNTIME_DIRECTORY = re.compile(r"/run/wsroute(-[^/]+)?")


def _created_at_start(folder: str) -> bool:
    """A runtime directory systemd makes when the unit starts (and removes at stop):
    missing while the daemon is stopped, which is when ``check`` runs first."""
    folder = os.path.normpath(folder)
    named = os.environ.get("RUNTIME_DIRECTORY", "").split(":")
    return folder in {os.path.normpath(p) for p in named if p} or bool(
        _RUNTIME_DIRECTORY.fullmatch(folder)
    )


def _unix_problem(path: str) -> str | None:
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        return f"a Unix socket path has at most {_MAX_SOCKET_PATH} bytes"
    folder = os.path.dirname(path) or "/"
    try:
        info = os.stat(folder)
    except FileNotFoundError as exc:
        if _created_at_start(folder):
            return None  # RuntimeDirectory= creates it, owned by the daemon's user
        return f"its folder {folder}: {exc.strerror or exc}"
    except OSError as exc:
        return f"its folder {folder}: {exc.strerror or exc}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{folder} is not a folder"
    if os.geteuid() != 0 and not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot create a socket in {folder}: Permission denied"
    try:
        here = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    if not stat.S_ISSOCK(here.st_mode):
        return "a file that is not a socket is in the way"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_PROBE_TIMEOUT)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return None  # stale: the daemon removes it at start
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        probe.close()
    return None if _wsroute_answers(path=path) else "another process listens there"


def _tcp_problem(host: str, port: int) -> str | None:
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return exc.strerror or str(exc)
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio binds
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and _wsroute_answers(
                host=_ANY_HOST.get(host, host), port=port
            ):
                continue
            return exc.strerror or str(exc)
        finally:
            sock.close()
    return None


def _wsroute_answers(*, path: str | None = None, host: str = "", port: int = 0) -> bool:
    """Whether a wsroute API answers ``GET /health`` there (``{"status": "ok"}``)."""
    try:
        if path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(_PROBE_TIMEOUT)
        else:
            sock = socket.create_connection((host, port), timeout=_PROBE_TIMEOUT)
    except OSError:
        return False
    with sock:
        try:
            if path is not None:
                sock.connect(path)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: wsroute\r\nConnection: close\r\n\r\n")
            answer = b""
            while len(answer) < 4096:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except OSError:
            return False
    head, _, body = answer.partition(b"\r\n\r\n")
    try:
        return head.split(b" ", 2)[1] == b"200" and json.loads(body) == {"status": "ok"}
    except (IndexError, ValueError):
        return False
