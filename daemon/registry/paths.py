"""Path security: ``plugin_paths`` folders and the files loaded from them.

Plugins run with the daemon's rights, so a ``plugin_paths`` folder, and each
module loaded from it (with its package folder, ``__pycache__`` and compiled
copy), must be owned by root or the daemon's user and writable by nobody else
(sshd's StrictModes rule).

Invariant: nothing from a ``plugin_paths`` folder is executed unless these checks
passed for the folder and for every file the import reads; any other state is a
:class:`PluginError` naming the path and the fix.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import stat

from ..exceptions import PluginError

__all__ = ["check_module_files", "check_plugin_path", "check_secure"]


def check_secure(path: str, what: str) -> None:
    """Refuse ``path`` unless only root or our own user can change it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise PluginError(f'{what} "{path}" does not exist') from None
    except OSError as exc:
        raise PluginError(f'{what} "{path}": {exc.strerror}') from exc
    uid = os.getuid()
    problems = []
    if st.st_uid not in (0, uid):
        problems.append(f"it is owned by uid {st.st_uid}")
    writers = [
        who for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if st.st_mode & bit
    ]
    if writers:
        mode = stat.S_IMODE(st.st_mode)
        problems.append(f"it is writable by {' and '.join(writers)} (mode {mode:04o})")
    if problems:
        owners = "root" if uid == 0 else f"root or uid {uid} (the daemon's user)"
        raise PluginError(
            f'refusing {what} "{path}": {"; ".join(problems)}. Plugins run with the '
            f"daemon's rights, so only {owners} may own it and nobody else may write it "
            f"(fix: chown, chmod go-w)"
        )


def check_plugin_path(path: str) -> str:
    """Check one ``plugin_paths`` folder; return its real path or raise :class:`PluginError`.

    Its ``__pycache__`` is checked too: a planted ``.pyc`` is as good as a planted module.
    """
    real = os.path.realpath(path)
    if not os.path.exists(real):
        raise PluginError(f'plugin path "{path}" does not exist')
    if not os.path.isdir(real):
        raise PluginError(f'plugin path "{path}" is not a folder')
    check_secure(real, "plugin path")
    cache_dir = os.path.join(real, "__pycache__")
    if os.path.isdir(cache_dir):
        check_secure(cache_dir, "plugin cache folder")
    return real


def check_module_files(spec: importlib.machinery.ModuleSpec) -> None:
    """Check the files a plugin-path module is loaded from (and their compiled copies)."""
    if spec.origin and os.path.isfile(spec.origin):
        origin = os.path.realpath(spec.origin)
        check_secure(origin, "plugin module")
        if spec.submodule_search_locations:
            check_secure(os.path.dirname(origin), "plugin package")
        folder = os.path.join(os.path.dirname(origin), "__pycache__")
        if os.path.isdir(folder):
            check_secure(folder, "plugin cache folder")
            compiled = importlib.util.cache_from_source(origin)
            if os.path.exists(compiled):
                check_secure(compiled, "compiled plugin module")
    else:  # a namespace package: only folders
        for location in spec.submodule_search_locations or ():
            check_secure(os.path.realpath(location), "plugin package")
