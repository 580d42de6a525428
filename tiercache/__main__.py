"""Command line: ``python -m tiercache demo [--url URL] [--trace]``.

Since: 0.1.0
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ._version import __version__

__all__ = ["build_parser", "main"]

ENV_URL = "TIERCACHE_URL"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m tiercache``."""
    parser = argparse.ArgumentParser(
        prog="python -m tiercache",
        description="tiercache: an in-process L1 cache in front of a Redis L2.",
    )
    parser.add_argument("--version", action="version", version=f"tiercache {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="walk through the cache at work, printing what each tier does and how fast",
        description=(
            "Walk through tiercache at work: a cold load, L1 hits, an L2 hit after an L1 "
            "eviction, a second instance reading through Redis, get_many/set_many, memoize, "
            "and the stats() counters with the latency of each tier. Without a URL it runs "
            "on an embedded in-process Redis (fakeredis: pip install 'tiercache[demo]'). "
            "Finishes in about a second."
        ),
    )
    demo.add_argument(
        "--url",
        default=os.environ.get(ENV_URL) or None,
        help=(
            "Redis to use, e.g. redis://localhost:6379/0 (default: $TIERCACHE_URL, else an "
            "embedded fakeredis server). The demo writes only under the "
            "'tiercache-demo' namespace and clears it before and after."
        ),
    )
    demo.add_argument(
        "--trace",
        action="store_true",
        help=(
            "finish by recording a load, an L1 hit, an L2 hit and a memoized call through the "
            "OpenTelemetry SDK (pip install opentelemetry-sdk) and printing their span tree"
        ),
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run

        url: str | None = args.url
        try:
            return run(url, trace=bool(args.trace))
        except BrokenPipeError:
            # Output piped into `head` or a closed pager: stop quietly, as Unix tools do.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 1
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
