"""The built-in ``log`` handler: one structured log line per message.

Useful while wiring a config (route a key to ``log`` and watch it arrive) and as
the smallest example of the plugin API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from wsroute import HandlerContext, Message

__all__ = ["LogHandler", "shorten"]


def shorten(body: Any, limit: int) -> str:
    """``body`` as one line of text, cut to ``limit`` characters (the rest counted, not shown).

    Text stays as it is, bytes show as a Python bytes literal, anything else
    as compact JSON.
    """
    if isinstance(body, str):
        text = body
    elif isinstance(body, bytes | bytearray | memoryview):
        text = repr(bytes(body))
    else:
        try:
            text = msgspec.json.encode(body, enc_hook=repr).decode()
        except (TypeError, ValueError, msgspec.EncodeError):
            text = repr(body)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more)"


class LogHandler:
    """Log each message as one structured line (event "message").

    The line carries ``connection``, ``key``, ``seq``, ``fields`` and the body,
    shortened to ``max_body`` characters.
    """

    @dataclass
    class Options:
        level: Literal["debug", "info", "warning"] = field(
            default="info", metadata={"doc": "Log level of the lines."}
        )
        max_body: int = field(
            default=200,
            metadata={"doc": "Longest body shown, in characters; 0 leaves the body out."},
        )

        def __post_init__(self) -> None:
            if self.max_body < 0:
                raise ValueError("max_body must not be negative")

    def __init__(self, options: Options, ctx: HandlerContext) -> None:
        self.options = options
        self._write: Callable[..., Any] = getattr(ctx.log, options.level)

    async def handle(self, message: Message) -> None:
        """Write the log line."""
        line: dict[str, Any] = {
            "connection": message.connection,
            "key": message.key,
            "seq": message.seq,
            "fields": message.fields,
        }
        limit = self.options.max_body
        if limit:
            line["body"] = shorten(message.body, limit)
        self._write("message", **line)
