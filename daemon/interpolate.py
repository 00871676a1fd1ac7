"""``${...}`` references in the string values of a parsed TOML config.

The loader calls :func:`interpolate` once, between parsing and type
conversion, so that every string value of the file (in tables, inline tables
and arrays, at any depth; never keys) may use:

``${VAR}``
    the environment variable ``VAR``; unset is an error, set-but-empty gives ``""``.
``${VAR:-default}``
    ``VAR``, or the literal ``default`` when ``VAR`` is unset or empty.
``${file:/path}``
    the contents of a UTF-8 file, one trailing newline stripped; a relative
    path is taken from the config file's folder. At most 1 MiB, a regular file
    only (:data:`~wsroute.inputs.MAX_VALUE_FILE_BYTES`): ``/dev/zero`` or a FIFO
    is refused, not read.
``${credential:NAME}``
    a systemd credential: the file ``$CREDENTIALS_DIRECTORY/NAME``
    (``LoadCredential=``/``SetCredential=`` in the unit), one trailing newline stripped.
``$$``
    a literal ``$``. A ``$`` followed by anything but ``{`` or ``$`` is kept as
    is, so ``"$connected"`` needs no escaping.

Every problem becomes a :class:`~wsroute.exceptions.ConfigIssue` naming the
dotted key path of the value; no message ever contains what a reference
expanded to (it may be a secret). What was substituted where is returned as
:class:`Expansion` records so the loader can keep later error messages about
those values free of secrets too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .credentials import looks_encrypted
from .exceptions import ConfigError, ConfigIssue
from .inputs import MAX_VALUE_FILE_BYTES, InputRefused, read_file
from .validate import join_path

__all__ = ["Expansion", "Interpolation", "expand", "interpolate"]

# "$$", a complete "${...}", or a "${" that is never closed.
_TOKEN = re.compile(r"\$\$|\$\{([^}]*)\}|\$\{")
_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FORMS = "${VAR}, ${VAR:-default}, ${file:/path} or ${credential:NAME}"


@dataclass(frozen=True)
class Expansion:
    """One string value that contained references: where, as written, and as expanded.

    ``substituted`` holds what each reference was replaced with, so that error
    messages about the value can be redacted; ``secrets`` those of them read
    from ``${file:...}`` and ``${credential:...}``, which the loader registers
    for masking in every log line. Never log ``value``, ``substituted`` or ``secrets``.
    """

    path: str
    template: str
    value: str = field(repr=False)
    substituted: tuple[str, ...] = field(repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False, compare=False)


@dataclass
class Interpolation:
    """The result of :func:`interpolate`.

    ``document`` is a copy of the input with every reference expanded; a value
    whose expansion failed is left as written, and its path is in ``failed``
    (path → the value as written) so the loader can leave out follow-up errors
    about it. ``issues`` says why each failed.
    """

    document: dict[str, Any]
    issues: list[ConfigIssue] = field(default_factory=list)
    expansions: list[Expansion] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def interpolate(
    document: Mapping[str, Any],
    environ: Mapping[str, str],
    *,
    base_dir: str | None = None,
    path: str = "",
) -> Interpolation:
    """Expand the references in every string value of a parsed TOML document.

    Call it on what ``tomllib`` returned, before type conversion. ``environ``
    is the environment to read (pass ``os.environ`` in the daemon, a dict in
    tests); ``base_dir`` is where relative ``${file:...}`` paths start
    (default: the working directory). It never raises for a bad reference:
    every problem is collected in the result's ``issues``.
    """
    result = Interpolation(document={})
    result.document = _walk(dict(document), environ, base_dir, path, result)
    return result


def expand(
    text: str, environ: Mapping[str, str], *, base_dir: str | None = None, path: str = ""
) -> str:
    """Expand the references in one string; raise :class:`ConfigError` if any fails.

    For a value outside a config document (a CLI option, a plugin's own
    setting) that should accept the same ``${...}`` forms.
    """
    issues: list[ConfigIssue] = []
    secrets: list[str] = []
    value, _ = _expand(text, environ, base_dir, path, issues, secrets)
    if issues:
        raise ConfigError(issues)
    from .logging import register_secrets

    register_secrets(secrets)  # file and credential contents: masked in every log line
    return value


def _walk(
    value: Any, environ: Mapping[str, str], base_dir: str | None, path: str, result: Interpolation
) -> Any:
    if isinstance(value, str):
        if "$" not in value:
            return value
        before = len(result.issues)
        secrets: list[str] = []
        expanded, substituted = _expand(value, environ, base_dir, path, result.issues, secrets)
        if len(result.issues) > before:
            result.failed[path] = value
            return value
        if substituted:
            result.expansions.append(
                Expansion(path, value, expanded, tuple(substituted), tuple(secrets))
            )
        return expanded
    if isinstance(value, dict):
        return {
            k: _walk(v, environ, base_dir, join_path(path, k), result) for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            _walk(v, environ, base_dir, join_path(path, i), result) for i, v in enumerate(value)
        ]
    return value


def _expand(
    text: str,
    environ: Mapping[str, str],
    base_dir: str | None,
    path: str,
    issues: list[ConfigIssue],
    secrets: list[str] | None = None,
) -> tuple[str, list[str]]:
    """Expand one string; append an issue per failing reference (all of them, not the first).

    What ``${file:...}`` and ``${credential:...}`` references read is also appended
    to ``secrets``.
    """
    out: list[str] = []
    substituted: list[str] = []
    pos = 0
    for match in _TOKEN.finditer(text):
        out.append(text[pos : match.start()])
        pos = match.end()
        token = match.group(0)
        if token == "$$":
            out.append("$")
            continue
        body = match.group(1)
        if body is None:
            issues.append(ConfigIssue(path, 'unterminated "${" (write $$ for a literal "$")'))
            continue
        try:
            value = _resolve(body, environ, base_dir)
        except _Failure as exc:
            issues.append(ConfigIssue(path, str(exc)))
            continue
        out.append(value)
        substituted.append(value)
        if secrets is not None and body.startswith(("file:", "credential:")):
            secrets.append(value)
    out.append(text[pos:])
    return "".join(out), substituted


class _Failure(Exception):
    """A reference that cannot be expanded; the text names the reference, never a value."""


def _resolve(body: str, environ: Mapping[str, str], base_dir: str | None) -> str:
    if body.startswith("file:"):
        return _read_file(body[len("file:") :], base_dir)
    if body.startswith("credential:"):
        return _read_credential(body[len("credential:") :], environ)
    name, sep, default = body.partition(":-")
    if not _VAR.fullmatch(name):
        raise _Failure(
            f'invalid reference "${{{body}}}": expected {_FORMS} (write $$ for a literal "$")'
        )
    value = environ.get(name)
    if sep:
        return value if value else default
    if value is None:
        raise _Failure(
            f"environment variable {name} is not set (write ${{{name}:-default}} for a default)"
        )
    return value


def _read_file(file_path: str, base_dir: str | None) -> str:
    if not file_path:
        raise _Failure('"${file:}" needs a path: ${file:/etc/wsroute/token}')
    full = os.path.join(base_dir, file_path) if base_dir else file_path
    try:
        data = read_file(full, MAX_VALUE_FILE_BYTES)
    except InputRefused as exc:
        raise _Failure(f"cannot read ${{file:{file_path}}}: {exc} ({full})") from None
    return _text(data, f"${{file:{file_path}}}")


def _read_credential(name: str, environ: Mapping[str, str]) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise _Failure(
            f'invalid credential name "{name}" in "${{credential:{name}}}": '
            'a credential is a plain file name, without "/"'
        )
    directory = environ.get("CREDENTIALS_DIRECTORY")
    what = f'cannot read credential "{name}"'
    if not directory:
        raise _Failure(
            f"{what}: $CREDENTIALS_DIRECTORY is not set "
            f"(systemd sets it for LoadCredential={name}:... in the unit; "
            "`wsroute check` and `test` take --credentials-dir DIR)"
        )
    if not os.path.isdir(directory):
        raise _Failure(f"{what}: $CREDENTIALS_DIRECTORY {directory} is not a directory")
    full = os.path.join(directory, name)
    try:
        data = read_file(full, MAX_VALUE_FILE_BYTES)
    except InputRefused as exc:
        raise _Failure(f"{what} from $CREDENTIALS_DIRECTORY {directory}: {exc} ({full})") from None
    if looks_encrypted(data):
        raise _Failure(
            f'credential "{name}" in {directory} is encrypted (systemd-creds): only systemd '
            "can read it, so check the config under systemd: systemd-run --pipe --wait "
            f"-p LoadCredentialEncrypted={name}:{full} wsroute check -c FILE"
        )
    return _text(data, f'credential "{name}"')


def _text(data: bytes, what: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Failure(f"{what} is not UTF-8 text") from None
    # One trailing line ending, as `echo secret > file` leaves it; a PEM keeps its inner newlines.
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    return text
