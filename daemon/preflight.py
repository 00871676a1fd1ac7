"""Start-time preconditions: what ``wsroute check`` can know before the daemon runs.

Loading the config and its plugins (:func:`wsroute.plan.plan`) checks what
the file says. :func:`preflight` then checks what starting it needs from the
machine, cheaply and without the network:

- every TLS file named by a ``tls`` table (a connection's, or one in a
  handler's or source's options, such as the ``webhook`` sink's) exists and is
  readable;
- each handler, source and codec plugin's optional ``check`` hook, called with
  its validated options: ``@classmethod check(cls, options) -> Iterable[str |
  Issue]``. The built-in ``jsonl`` handler checks the folder of its file with
  it, through :func:`check_output_file`.

``wsroute check`` reports the problems, ``wsroute run`` refuses to start on an
error (exit 78), and a reload whose preconditions fail is rejected while the
old config keeps running (:func:`checked` does both).

Who runs the check matters for what can be known about permissions: a
``check`` that does not run as root is taken to run as the daemon's user (the
same user that runs ``wsroute run``, or ``systemd-run -p User=...``), so a
folder it cannot write to is an error. Run as root, it cannot tell what the
daemon's user (under ``DynamicUser=``, a user that does not exist before the
first start) may do: a folder only root can write to is then a warning.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import pwd
import re
import stat
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .exceptions import ConfigError, ConfigIssue
from .plugin import Issue
from .validate import join_path

if TYPE_CHECKING:
    from .config import TlsSection
    from .plan import Plan

__all__ = ["check_output_file", "checked", "preflight", "state_directories"]

#: What the shipped units create with ``StateDirectory=``: ``/var/lib/wsroute``,
#: and ``/var/lib/wsroute-NAME`` for the instance ``wsroute@NAME``.
_STATE_DIRECTORY = re.compile(r"/var/lib/wsroute(-[^/]+)?")


def state_directories() -> list[str]:
    """The folders ``$STATE_DIRECTORY`` names (systemd may list several, separated by ``:``).

    Besides these, ``/var/lib/wsroute`` and ``/var/lib/wsroute-NAME`` count as
    state directories: the shipped units create them at start.
    """
    return [os.path.normpath(p) for p in os.environ.get("STATE_DIRECTORY", "").split(":") if p]


def _is_state_directory(folder: str) -> bool:
    folder = os.path.normpath(folder)
    return folder in state_directories() or _STATE_DIRECTORY.fullmatch(folder) is not None


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _access(path: str, mode: int) -> bool:
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def check_output_file(path: str, key: str | None = "path") -> list[Issue]:
    """Problems the daemon would have creating or appending to the file ``path``.

    For a plugin's ``check`` hook (the ``jsonl`` handler's uses it); ``key`` is
    the option the problems are reported under. Errors: the folder does not
    exist — unless it is a state directory, which systemd creates at start
    (:func:`state_directories`) — or is not a folder, ``path`` is a folder, or
    the user running the check cannot write there. Run as root, a folder or
    file only root can write to is a warning: the daemon's user is not known.
    """
    target = os.path.abspath(path)
    folder = os.path.dirname(target)
    if os.path.isdir(target):
        return [Issue(f'"{path}" is a folder, not a file', key)]
    if not os.path.lexists(folder):
        if _is_state_directory(folder):
            return []  # StateDirectory= creates it, owned by the daemon's user
        return [
            Issue(
                f'the folder "{folder}" does not exist (create it; under systemd, '
                "StateDirectory= creates the state directory, /var/lib/wsroute, at start)",
                key,
            )
        ]
    if not os.path.isdir(folder):
        return [Issue(f'"{folder}" is not a folder', key)]
    probe, mode = (target, os.W_OK) if os.path.exists(target) else (folder, os.W_OK | os.X_OK)
    if os.geteuid() != 0:
        if _access(probe, mode):
            return []
        return [Issue(f'"{probe}" is not writable by {_user()}, who would run the daemon', key)]
    if _is_state_directory(folder):
        return []  # systemd hands the state directory to the daemon's user
    st = os.stat(probe)
    if st.st_uid == 0 and not st.st_mode & 0o022:
        return [
            Issue(
                f'checked as root: only root can write to "{probe}" '
                f"(mode {stat.S_IMODE(st.st_mode):04o}); the daemon's user may not. "
                "Run wsroute check as that user to know",
                key,
                warning=True,
            )
        ]
    return []


def _unreadable(file: str) -> str | None:
    """Why ``file`` cannot be read by the user running this, or ``None``."""
    try:
        if stat.S_ISDIR(os.stat(file).st_mode):
            return "a folder, not a file"
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return "no such file"
    except PermissionError:
        return f"not readable by {_user()}"
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    return None


def tls_issues(tls: TlsSection, path: str) -> list[ConfigIssue]:
    """The files a ``tls`` table names that cannot be read, each under its key path."""
    issues: list[ConfigIssue] = []
    for key in ("ca_file", "cert_file", "key_file"):
        file = getattr(tls, key)
        if file:
            problem = _unreadable(file)
            if problem is not None:
                issues.append(ConfigIssue(f"{path}.{key}", f'cannot read "{file}": {problem}'))
    return issues


def _tls_tables(value: Any, path: str) -> Iterator[tuple[TlsSection, str]]:
    """Every ``tls`` table inside a plugin's options, with its key path."""
    from .config import TlsSection

    if isinstance(value, TlsSection):
        yield value, path
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _tls_tables(getattr(value, f.name, None), join_path(path, f.name))
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                yield from _tls_tables(item, join_path(path, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _tls_tables(item, join_path(path, index))


def _hook(obj: Any) -> Any:
    """A plugin's ``check`` hook: a classmethod or staticmethod (or a factory's attribute)."""
    if inspect.isclass(obj):
        static = inspect.getattr_static(obj, "check", None)
        if not isinstance(static, classmethod | staticmethod):
            return None  # an instance method called check is something else
    hook = getattr(obj, "check", None)
    return hook if callable(hook) else None


def _sub_path(path: str, key: str) -> str:
    for part in key.split("."):
        path = join_path(path, part)
    return path


def hook_issues(obj: Any, options: Any, path: str, what: str) -> list[ConfigIssue]:
    """Call ``obj.check(options)`` if the plugin has the hook; its problems as ConfigIssues."""
    hook = _hook(obj)
    if hook is None:
        return []
    try:
        problems: Iterable[Any] = list(hook(options))
    except Exception as exc:  # the plugin's bug: reported, not a traceback
        return [ConfigIssue(path, f"{what}: check() raised {type(exc).__name__}: {exc}")]
    issues: list[ConfigIssue] = []
    for problem in problems:
        if isinstance(problem, Issue):
            where = _sub_path(path, problem.key) if problem.key else path
            issues.append(ConfigIssue(where, problem.message, warning=problem.warning))
        elif isinstance(problem, str):
            issues.append(ConfigIssue(path, problem))
        else:
            issues.append(
                ConfigIssue(
                    path,
                    f"{what}: check() returned a {type(problem).__name__}, expected str or Issue",
                )
            )
    return issues


def _codec_issues(plan: Plan) -> list[ConfigIssue]:
    from .config import codec_reference
    from .registry import Registry, build_options

    config = plan.config
    wanted = [name for name, codec in plan.codecs.items() if _hook(type(codec)) is not None]
    if not wanted:
        return []
    registry = Registry.discover(config.daemon.plugin_paths)
    issues: list[ConfigIssue] = []
    done: set[str] = set()
    for name in wanted:
        section = config.connections.get(name) or config.sources[name]
        kind = "connections" if name in config.connections else "sources"
        path = (
            f"codecs.{section.codec}" if section.codec in config.codecs else f"{kind}.{name}.codec"
        )
        if path in done:
            continue
        done.add(path)
        plugin, table = codec_reference(config, name)
        found: list[ConfigIssue] = []
        info = registry.codec(plugin)
        options = build_options(info, table, path, found)
        if not found:
            issues.extend(hook_issues(info.obj, options, path, f'codec plugin "{info.name}"'))
    return issues


def preflight(plan: Plan) -> list[ConfigIssue]:
    """Every start-time precondition of ``plan`` that fails: errors and warnings, with key paths."""
    config = plan.config
    issues: list[ConfigIssue] = []
    for name, section in config.connections.items():
        issues.extend(tls_issues(section.tls, f"connections.{name}.tls"))
    for kind, plans in (("handlers", plan.handlers), ("sources", plan.sources)):
        for name, item in plans.items():
            path = f"{kind}.{name}"
            for tls, where in _tls_tables(item.options, path):
                issues.extend(tls_issues(tls, where))
            what = f'{kind[:-1]} plugin "{item.info.name}"'
            issues.extend(hook_issues(item.info.obj, item.options, path, what))
    issues.extend(_codec_issues(plan))
    return issues


def checked(plan: Plan) -> list[ConfigIssue]:
    """Run :func:`preflight`: raise ConfigError listing the errors; return the warnings.

    The warnings are also added to ``plan.config.warnings``.
    """
    issues = preflight(plan)
    errors = [issue for issue in issues if not issue.warning]
    if errors:
        raise ConfigError(errors, source=plan.config.path)
    warnings = [issue for issue in issues if issue.warning]
    plan.config.warnings.extend(warnings)
    return warnings
