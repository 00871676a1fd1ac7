"""Issues as the user reads them: at the right key path, one line each, with lines, no secrets.

Invariant: these functions only reword, move, drop or annotate issues that
the loader's passes found; they never find new problems. No interpolated
value survives in a message (it may be a secret): it is shown as written, or
as ``***``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

from ..exceptions import ConfigIssue
from ..interpolate import Expansion
from ..validate import _show as show_value
from .lines import line_in, line_index
from .paths import within


def without_follow_ups(issues: list[ConfigIssue], failed: Mapping[str, str]) -> list[ConfigIssue]:
    """Leave out errors that only repeat that a value could not be interpolated.

    A value whose ``${...}`` failed stays as written; a type or reference error
    at its path (or a ``__post_init__`` complaint quoting it) would only
    confuse, since the interpolation error already names the key.
    """
    if not failed:
        return issues
    kept = []
    for issue in issues:
        follow_up = False
        for path, template in failed.items():
            if within(path, issue.path) or (
                within(issue.path, path)
                and (show_value(template) in issue.message or repr(template) in issue.message)
            ):
                follow_up = True
                break
        if not follow_up:
            kept.append(issue)
    return kept


def finish(
    issues: Iterable[ConfigIssue], text: str, expansions: Sequence[Expansion]
) -> list[ConfigIssue]:
    """Secrets redacted, one line each, line numbers added, sorted by line.

    (A ``__post_init__`` complaint about one key is already at that key's path:
    :func:`~wsroute.validate.option_issue`.)
    """
    index = line_index(text)
    done = []
    for issue in issues:
        message = _redact(issue, expansions)
        message = " ".join(message.split("\n"))
        line = issue.line if issue.line is not None else line_in(index, issue.path)
        done.append(dataclasses.replace(issue, message=message, line=line))
    done.sort(key=lambda issue: issue.line if issue.line is not None else math.inf)
    return done


def _redact(issue: ConfigIssue, expansions: Sequence[Expansion]) -> str:
    """The issue's message with no interpolated value in it: it may be a secret.

    A whole value is shown as written (``"Bearer ${TOKEN}"``); anything left of
    a substituted piece becomes ``***``.
    """
    message = issue.message
    related = [e for e in expansions if within(issue.path, e.path) or within(e.path, issue.path)]
    for expansion in related:
        for shown, written in (
            (show_value(expansion.value), show_value(expansion.template)),
            (repr(expansion.value), repr(expansion.template)),
        ):
            message = message.replace(shown, written)
    for expansion in related:
        for piece in expansion.substituted:
            # Very short pieces ("1", "ws") would garble the message and reveal little.
            if len(piece) >= 4:
                message = message.replace(piece, "***")
    return message
