"""The TOML config: typed sections, the loader, lint, and the generated reference.

One concept per module:

- :mod:`.schema`: the dataclasses a config becomes, what the daemon consumes;
- :mod:`.load`: :func:`load` / :func:`loads`, text to a valid :class:`Config`
  in passes, or one :class:`~wsroute.exceptions.ConfigError` listing every problem;
  :func:`load_partial`, the valid part of a broken file (for the plugin phase);
- :mod:`.secret_values`: the values the logs must mask;
- :mod:`.issues`: problems reworded for the user (key paths, lines, no secrets);
- :mod:`.lint`: warnings, what is valid but most likely a mistake;
- :mod:`.paths` and :mod:`.lines`: dotted key paths, and where they are set in the text;
- :mod:`.lookup`: the codec a connection uses, what a reload can keep;
- :mod:`.reference`: docs/config.md, the Markdown template ``reference.md``
  filled in from the schema (``python -m wsroute.config --reference``).

Invariant: this package's names are what the rest of the daemon imports; they
are re-exported here so that nothing imports a module of the package directly.
"""

from ..exceptions import ConfigError
from .lines import line_of
from .load import load, load_partial, loads
from .lookup import codec_reference, unchanged_connections, unchanged_sources
from .paths import split_path
from .reference import reference_markdown
from .schema import (
    BUILTIN_CODECS,
    DELIVERY_KEYS,
    LIFECYCLE_KEYS,
    NAMED_SECTIONS,
    SECTIONS,
    ApiSection,
    CodecSection,
    Config,
    ConnectionSection,
    DaemonSection,
    EverySection,
    ExpectSection,
    HandlerSection,
    ReconnectSection,
    RouteSection,
    SourceSection,
    StepSection,
    StructSection,
    TlsSection,
    parse_listen,
)
from .secret_values import resolved_secrets

__all__ = [
    "BUILTIN_CODECS",
    "DELIVERY_KEYS",
    "LIFECYCLE_KEYS",
    "NAMED_SECTIONS",
    "SECTIONS",
    "ApiSection",
    "CodecSection",
    "Config",
    "ConfigError",
    "ConnectionSection",
    "DaemonSection",
    "EverySection",
    "ExpectSection",
    "HandlerSection",
    "ReconnectSection",
    "RouteSection",
    "SourceSection",
    "StepSection",
    "StructSection",
    "TlsSection",
    "codec_reference",
    "line_of",
    "load",
    "load_partial",
    "loads",
    "parse_listen",
    "reference_markdown",
    "resolved_secrets",
    "split_path",
    "unchanged_connections",
    "unchanged_sources",
]
