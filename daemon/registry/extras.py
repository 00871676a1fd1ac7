"""Import failures: the error for a plugin that cannot be imported, naming the extra to install.

Which pip extra of ``wsroute`` installs a missing module is read from the
distribution's own metadata: ``Requires-Dist: redis>=5.0.1; extra == "redis"``
maps the top-level module ``redis`` to the extra ``redis``.

Invariant: the core names none of its plugins or their client libraries; a new
extra in ``pyproject.toml`` is picked up with no change here, and without the
metadata (wsroute not installed) the error simply names no extra.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Mapping
from functools import cache

from ..exceptions import PluginError
from .metadata import SELF_DIST, normalise

__all__ = ["MissingExtra", "extra_for", "import_failure", "install_command"]

_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA = re.compile(r"""\bextra\s*==\s*(["'])(?P<extra>[^"']+)\1""")


def _modules_of(dist: str) -> set[str]:
    """The top-level module names a distribution that is not installed is taken to provide.

    Its name as an identifier (``nats-py`` → ``nats_py``), and that name without a
    ``py-``/``python-`` prefix or ``-py``/``-python`` suffix (``nats-py`` → ``nats``).
    """
    name = normalise(dist).replace("-", "_")
    names = {name}
    for prefix in ("python_", "py_"):
        if name.startswith(prefix):
            names.add(name.removeprefix(prefix))
    for suffix in ("_python", "_py"):
        if name.endswith(suffix):
            names.add(name.removesuffix(suffix))
    return names


# Extras no plugin should be told to install: the developer's tools.
_NOT_FOR_PLUGINS = frozenset({"dev"})


@cache
def _extras() -> Mapping[str, str]:
    """Top-level module → the extra of ``wsroute`` that installs it, from the installed metadata.

    A module several extras install maps to the extra that installs the fewest
    distributions, the first declared on a tie; ``dev`` (the developer's tools,
    which repeat the sinks' libraries) is never named.
    """
    try:
        requires = importlib.metadata.requires(SELF_DIST) or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    by_extra: dict[str, list[str]] = {}
    for requirement in requires:
        spec, _, marker = requirement.partition(";")
        in_extra = _EXTRA.search(marker)
        name = _NAME.match(spec)
        if in_extra is None or name is None or normalise(name[1]) == SELF_DIST:
            continue  # a core dependency, or an extra made of other extras ("all")
        if in_extra["extra"] in _NOT_FOR_PLUGINS:
            continue
        by_extra.setdefault(in_extra["extra"], []).append(name[1])
    modules: dict[str, str] = {}
    for extra, dists in sorted(by_extra.items(), key=lambda item: len(item[1])):  # stable
        for dist in dists:
            for module in _modules_of(dist):
                modules.setdefault(module, extra)
    return modules


def extra_for(module: str) -> str | None:
    """The extra of ``wsroute`` that installs the (missing) module ``module``, if one does."""
    return _extras().get(module.partition(".")[0])


class MissingExtra(PluginError):
    """A plugin's import failed on a module that an extra of ``wsroute`` installs.

    ``module`` is the missing module and ``extra`` the extra that installs it:
    ``wsroute plugins`` shows a built-in plugin in this state as not installed
    (information), not as an error.
    """

    def __init__(self, message: str, *, module: str, extra: str) -> None:
        super().__init__(message)
        self.module = module
        self.extra = extra

    @property
    def install(self) -> str:
        """The command that installs the extra: ``pip install 'wsroute[redis]'``."""
        return install_command(self.extra)


def install_command(extra: str) -> str:
    """``pip install 'wsroute[EXTRA]'``."""
    return f"pip install '{SELF_DIST}[{extra}]'"


def import_failure(where: str, exc: BaseException) -> PluginError:
    """The error for a plugin (``where``) whose import raised ``exc``.

    A missing module that an extra installs gives a :class:`MissingExtra`.
    """
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        extra = extra_for(exc.name)
        if extra is not None:
            return MissingExtra(
                f'{where} needs the module "{exc.name}", which is not installed: '
                f"install the extra with {install_command(extra)}",
                module=exc.name,
                extra=extra,
            )
        return PluginError(
            f'{where} cannot be imported: it needs the module "{exc.name}", which is not installed'
        )
    return PluginError(f"{where} failed to import: {type(exc).__name__}: {exc}")
