"""``python -m benchmarks [--quick] [names...]``: run all or some benchmarks, print tables."""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time
from pathlib import Path

# The repository root: makes ``tiercache`` and ``tests.redis_server`` importable when run
# from anywhere, and this checkout's tiercache win over an installed one.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import BENCHMARKS  # noqa: E402
from benchmarks._timing import environment  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Run tiercache benchmarks and print tables."
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions (~10 s per benchmark)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder of the benchmarks that write files (peers)",
    )
    parser.add_argument(
        "names", nargs="*", metavar="name", help=f"benchmarks to run: {', '.join(BENCHMARKS)}"
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {BENCHMARKS}")
    print(environment())
    for name in args.names or BENCHMARKS:
        module = importlib.import_module(f"benchmarks.{name}")
        started = time.monotonic()
        print(f"\n=== {name}{' (quick)' if args.quick else ''}: {module.TITLE} ===")
        options = {}
        if args.out is not None and "out" in inspect.signature(module.run).parameters:
            options["out"] = args.out
        module.run(quick=args.quick, **options)
        print(f"\n[{name}: {time.monotonic() - started:.1f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
