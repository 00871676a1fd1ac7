"""``python -m wsroute.config --reference``: print the config reference (docs/config.md).

Invariant: a command-line shell around :func:`~wsroute.config.reference.reference_markdown`;
it writes nothing but the reference to stdout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .reference import reference_markdown


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wsroute.config", description="The wsroute config schema."
    )
    parser.add_argument(
        "--reference", action="store_true", help="print the config reference (Markdown)"
    )
    args = parser.parse_args(argv)
    if not args.reference:
        parser.print_usage(sys.stderr)
        return 2
    sys.stdout.write(reference_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
