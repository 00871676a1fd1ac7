"""Typed conversion of TOML values, with every problem reported by its key path.

One mechanism serves the core config and plugin ``Options`` alike: a dataclass
describes a table, and :func:`convert` turns a parsed TOML value into an
instance, appending a :class:`~wsroute.exceptions.ConfigIssue` for each problem
instead of stopping at the first. Supported annotations: ``str``, ``int``,
``float``, ``bool``, ``bytes`` (written as hex), :data:`~wsroute.Duration`,
:data:`~wsroute.Size`, ``Literal[...]``, ``X | None``, unions, ``list[T]``,
``tuple[T, ...]``, ``dict[str, T]``, ``Any`` and nested dataclasses.

A dataclass field can carry documentation for ``wsroute plugins`` and the config
reference: ``field(default=..., metadata={"doc": "..."})``. A field whose value
is a secret says ``metadata={"secret": True}``: :func:`secret_values` finds its
strings, which the daemon then masks in every log line. A number, a duration
or a size can carry its bounds: ``metadata={"minimum": 1}`` (also ``"maximum"``,
and ``"above": 0`` for a strict lower bound); :func:`convert` refuses a value
outside them and the JSON Schema (``wsroute schema``) states them, so an editor
and ``wsroute check`` agree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import decimal
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from .exceptions import ConfigError, ConfigIssue
from .plugin import Duration, OptionError, Size

__all__ = [
    "BOUNDS",
    "INVALID",
    "FieldDoc",
    "bounds_problem",
    "convert",
    "convert_or_raise",
    "describe_type",
    "did_you_mean",
    "field_docs",
    "format_duration",
    "format_size",
    "join_path",
    "option_issue",
    "parse_duration",
    "parse_size",
    "secret_values",
]

T = TypeVar("T")


class _Invalid:
    """Returned by :func:`convert` where a value could not be converted."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB)\s*$")
_SIZE_UNITS = {
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}


#: The longest duration any key takes (365 days): a longer one is a typo, and past
#: about 292 years the standard library's timeouts overflow.
MAX_DURATION = 365 * 86400.0
#: The largest size any key takes (1 TiB).
MAX_SIZE = 2**40
#: Integers are TOML's: 64-bit signed.
_INT_RANGE = range(-(2**63), 2**63)


def parse_duration(text: str) -> float:
    """``"250ms"`` → 0.25, ``"1m30s"`` → 90.0; ``ValueError`` for anything else."""
    compact = text.strip()
    if not compact:
        raise ValueError(text)
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(compact):
        if match.start() != pos:
            raise ValueError(text)
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
        while pos < len(compact) and compact[pos] == " ":
            pos += 1
    if pos != len(compact):
        raise ValueError(text)
    return total


def parse_size(text: str) -> int:
    """``"1MiB"`` → 1048576; ``ValueError`` for anything else."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(text)
    # Decimal: exact, and a 400-digit number is large, not an OverflowError.
    return int(decimal.Decimal(match.group(1)) * _SIZE_UNITS[match.group(2)])


def format_duration(seconds: float) -> str:
    """The TOML spelling of a duration: 0.5 → ``"500ms"``, 30 → ``"30s"``."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    """The TOML spelling of a size: 1048576 → ``"1MiB"``."""
    for unit in ("GiB", "MiB", "KiB"):
        if size and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return f"{size}B"


def join_path(path: str, key: str | int) -> str:
    """Extend a dotted key path: ``join_path("a", "b")`` → ``a.b``; ints become ``[i]``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
        key = '"' + key.replace('"', '\\"') + '"'
    return f"{path}.{key}" if path else key


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """`` (did you mean "x"?)`` when a choice is close to ``word``, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _show(value: Any) -> str:
    """A value as it would be written in TOML, shortened."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = '"' + value.replace('"', '\\"') + '"'
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, list):
        text = "an array"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_type(tp: Any) -> str:
    """A short human name of an annotation, for errors and docs."""
    if tp is Duration:
        return "duration"
    if tp is Size:
        return "size"
    if tp is Any:
        return "any"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return "table"
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Literal:
        return " | ".join(_show(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(describe_type(a) for a in args if a is not type(None))
    if origin in (list, tuple):
        return f"array of {describe_type(args[0])}" if args else "array"
    if origin is dict:
        return f"table of {describe_type(args[1])}" if len(args) == 2 else "table"
    return {
        str: "string",
        int: "integer",
        float: "number",
        bool: "boolean",
        bytes: "hex bytes",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def _expected(tp: Any) -> str:
    if tp is Duration:
        return 'a duration like "30s"'
    if tp is Size:
        return 'a size like "1MiB"'
    if tp is bytes:
        return 'hex bytes like "02 00 00 00"'
    name = describe_type(tp)
    article = "an" if name[:1] in "aeiou" else "a"
    return f"{article} {name}"


def convert(tp: Any, value: Any, path: str, issues: list[ConfigIssue]) -> Any:
    """Convert ``value`` to the annotation ``tp``; on failure append issues, return INVALID."""
    if tp is Any:
        return value
    if isinstance(value, float) and not math.isfinite(value):
        issues.append(ConfigIssue(path, f"expected a finite number, got {_show(value)}"))
        return INVALID
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT_RANGE:
        issues.append(ConfigIssue(path, "expected a 64-bit integer, got a larger one"))
        return INVALID
    if tp is Duration:
        if isinstance(value, str):
            try:
                seconds = parse_duration(value)
            except ValueError:
                pass
            else:
                if seconds <= MAX_DURATION:
                    return Duration(seconds)
                issues.append(
                    ConfigIssue(
                        path, f'expected a duration of at most 8760h (365 days), got "{value}"'
                    )
                )
                return INVALID
        elif value == 0 and isinstance(value, int | float) and not isinstance(value, bool):
            return Duration(0.0)
        return _fail(issues, path, tp, value)
    if tp is Size:
        size: int | None = None
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                size = parse_size(value)
        elif _whole(value) and value >= 0:
            size = int(value)
        if size is None:
            return _fail(issues, path, tp, value)
        if size > MAX_SIZE:
            issues.append(
                ConfigIssue(path, f"expected a size of at most 1024GiB, got {_show(value)}")
            )
            return INVALID
        return Size(size)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, path, issues)
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and True in args and 1 in args):
            return value
        hint = (
            did_you_mean(value, [a for a in args if isinstance(a, str)])
            if isinstance(value, str)
            else ""
        )
        issues.append(
            ConfigIssue(path, f"expected one of {describe_type(tp)}, got {_show(value)}{hint}")
        )
        return INVALID
    if origin in (Union, types.UnionType):
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:
            return convert(arms[0], value, path, issues)
        for arm in arms:
            scratch: list[ConfigIssue] = []
            result = convert(arm, value, path, scratch)
            if not scratch:
                return result
        lists = [a for a in arms if get_origin(a) in (list, tuple)]
        if isinstance(value, list) and len(lists) == 1:
            return convert(lists[0], value, path, issues)  # the array's own items' errors
        issues.append(ConfigIssue(path, f"expected {describe_type(tp)}, got {_show(value)}"))
        return INVALID
    if origin in (list, tuple):
        if not isinstance(value, list):
            return _fail(issues, path, tp, value)
        item_type = args[0] if args else Any
        before = len(issues)
        items = [convert(item_type, v, join_path(path, i), issues) for i, v in enumerate(value)]
        if len(issues) > before:
            return INVALID
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            return _fail(issues, path, tp, value)
        value_type = args[1] if len(args) == 2 else Any
        before = len(issues)
        table = {k: convert(value_type, v, join_path(path, k), issues) for k, v in value.items()}
        return INVALID if len(issues) > before else table
    if tp is bool:
        return value if isinstance(value, bool) else _fail(issues, path, tp, value)
    if tp is int:
        # 3.0 too: a JSON Schema "integer" (what an editor checks) cannot tell it from 3.
        return int(value) if _whole(value) else _fail(issues, path, tp, value)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return _fail(issues, path, tp, value)
    if tp is str:
        return value if isinstance(value, str) else _fail(issues, path, tp, value)
    if tp is bytes:
        if isinstance(value, str):
            try:
                return bytes.fromhex(value)
            except ValueError:
                pass
        return _fail(issues, path, tp, value)
    raise TypeError(f"{path}: unsupported annotation {tp!r}")


def _whole(value: Any) -> bool:
    """An integer, or a float with nothing after the point (``3.0``) in TOML's integer range."""
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return value.is_integer() and int(value) in _INT_RANGE
    return isinstance(value, int)


def _fail(issues: list[ConfigIssue], path: str, tp: Any, value: Any) -> Any:
    issues.append(ConfigIssue(path, f"expected {_expected(tp)}, got {_show(value)}"))
    return INVALID


@functools.lru_cache(maxsize=512)  # a reload converts the same classes again
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as exc:  # a plugin's annotations that do not resolve
        raise TypeError(f"cannot resolve the annotations of {cls.__qualname__}: {exc}") from exc


def _convert_dataclass(cls: type, value: Any, path: str, issues: list[ConfigIssue]) -> Any:
    if not isinstance(value, dict):
        issues.append(ConfigIssue(path, f"expected a table, got {_show(value)}"))
        return INVALID
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    before = len(issues)
    for key in value:
        if key not in fields:
            issues.append(
                ConfigIssue(join_path(path, key), f"unknown key{did_you_mean(key, fields)}")
            )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in value:
            field_path = join_path(path, name)
            converted = convert(hints[name], value[name], field_path, issues)
            if converted is not INVALID and converted is not None:
                out_of_bounds = bounds_problem(hints[name], f.metadata, converted)
                if out_of_bounds:
                    issues.append(ConfigIssue(field_path, out_of_bounds))
            kwargs[name] = converted
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            issues.append(ConfigIssue(join_path(path, name), "missing required key"))
    if len(issues) > before:
        return INVALID
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a __post_init__ that rejects the combination
        issues.append(option_issue(cls, path, exc))
        return INVALID


#: The metadata keys of a field's bounds (inclusive, except "above").
BOUNDS = ("minimum", "above", "maximum")


def bounds_problem(tp: Any, metadata: Mapping[str, Any], value: Any) -> str | None:
    """What is wrong with a converted number, duration or size, given its field's bounds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    low, above, high = (metadata.get(key) for key in BOUNDS)
    note = f" ({metadata['bound_note']})" if metadata.get("bound_note") else ""

    def show(number: float) -> str:
        if _unwrap(tp) is Size:
            return format_size(int(number))
        if _unwrap(tp) is Duration:
            return format_duration(float(number))
        return f"{number!r}"

    if low is not None and high is not None and not low <= value <= high:
        return f"must be between {show(low)} and {show(high)}, got {show(value)}"
    if low is not None and value < low:
        if low == 0:
            return f"must not be negative, got {show(value)}"
        return f"must be at least {show(low)}{note}, got {show(value)}"
    if above is not None and value <= above:
        return f"must be above {above!r}"
    if high is not None and value > high:
        return f"must be at most {show(high)}, got {show(value)}"
    return None


def _unwrap(tp: Any) -> Any:
    """``X`` for ``X | None``."""
    if get_origin(tp) in (Union, types.UnionType):
        arms = [a for a in get_args(tp) if a is not type(None)]
        if len(arms) == 1:
            return arms[0]
    return tp


# "limit must be above 0", "limit: must be above 0", "restart.initial must be above 0".
_LEADING_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)(?::\s*|\s+)")
# "ack_timeout and connect_timeout must be above 0" is about two keys: left at the table.
_NOT_ONE_KEY = re.compile(r"(?:and|or|nor)\b|,")


def option_issue(cls: type | None, path: str, exc: BaseException) -> ConfigIssue:
    """A dataclass's (or a plugin constructor's) complaint, at the key path it is about.

    An :class:`~wsroute.OptionError` names its key; a plain ``ValueError`` whose
    message starts with a field name of ``cls`` (``"limit must be above 0"`` or
    ``"limit: ..."``; dotted for a nested table: ``"restart.initial must..."``) is
    moved to that field's path with the name taken off the message. Anything
    else stays at ``path``, the table.
    """
    if isinstance(exc, OptionError):
        return ConfigIssue(_join_dotted(path, exc.key), exc.message)
    message = str(exc)
    match = _LEADING_KEY.match(message)
    names: set[str] = set()
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        names = {f.name for f in dataclasses.fields(cls)}
    if not match or match.group(1).split(".")[0] not in names:
        return ConfigIssue(path, message)
    rest = message[match.end() :]
    if not rest or _NOT_ONE_KEY.match(rest):
        return ConfigIssue(path, message)
    return ConfigIssue(_join_dotted(path, match.group(1)), rest)


def _join_dotted(path: str, key: str) -> str:
    for part in key.split("."):
        path = join_path(path, part)
    return path


def convert_or_raise(tp: type[T], value: Any, path: str = "") -> T:
    """:func:`convert`, raising :class:`ConfigError` with every issue when there is one."""
    issues: list[ConfigIssue] = []
    result = convert(tp, value, path, issues)
    if issues:
        raise ConfigError(issues)
    return typing.cast(T, result)


def secret_values(obj: Any) -> list[str]:
    """The strings of every field marked ``metadata={"secret": True}`` in a converted
    dataclass (nested dataclasses included); in lists and the values of tables too."""
    found: list[str] = []
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return found
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name, None)
        if f.metadata.get("secret"):
            _strings(value, found)
        elif dataclasses.is_dataclass(value):
            found.extend(secret_values(value))
    return found


def _strings(value: Any, found: list[str]) -> None:
    if isinstance(value, str):
        found.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _strings(item, found)
    elif isinstance(value, list | tuple):
        for item in value:
            _strings(item, found)


@dataclass(frozen=True)
class FieldDoc:
    """One option of a dataclass, for ``wsroute plugins`` and the config reference."""

    name: str
    type: str
    default: str | None
    doc: str
    required: bool
    #: The bounds, as text: ``"at least 1"``, ``"above 0"``; empty when there are none.
    bounds: str = ""


def field_docs(cls: type) -> Iterator[FieldDoc]:
    """Describe the fields of an options dataclass: name, type, default and doc."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        if f.default is not dataclasses.MISSING:
            default: str | None = _default_text(tp, f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = _default_text(tp, f.default_factory())
        else:
            default = None
        yield FieldDoc(
            name=f.name,
            type=describe_type(tp),
            default=default,
            doc=str(f.metadata.get("doc", "")),
            required=default is None and f.default is dataclasses.MISSING,
            bounds=_bounds_text(tp, f.metadata),
        )


def _bounds_text(tp: Any, metadata: Mapping[str, Any]) -> str:
    low, above, high = (metadata.get(key) for key in BOUNDS)

    def show(number: float) -> str:
        if _unwrap(tp) is Size:
            return format_size(int(number))
        return f"{number!r}"

    if low is not None and high is not None:
        return f"{show(low)} to {show(high)}"
    parts = []
    if low is not None:
        parts.append(f"at least {show(low)}")
    if above is not None:
        parts.append(f"above {above!r}")
    if high is not None:
        parts.append(f"at most {show(high)}")
    return ", ".join(parts)


def _default_text(tp: Any, value: Any) -> str:
    if tp is Duration and isinstance(value, int | float):
        return f'"{format_duration(value)}"'
    if tp is Size and isinstance(value, int):
        return f'"{format_size(value)}"'
    if value is None:
        return "(none)"
    if dataclasses.is_dataclass(value):
        return "(table)"
    if isinstance(value, bytes):
        return f'"{value.hex()}"'
    if isinstance(value, dict) and not value:
        return "{}"
    if isinstance(value, list | tuple) and not value:
        return "[]"
    return _show(value)
