"""Shared helpers: interleaved median-of-repeats timing and a plain-text table printer.

The machines are shared and noisy, so every comparison runs its variants interleaved in one
process (A, B, C, then B, C, A, ...), many times, and reports medians: a burst of noise hits
every variant instead of one.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
import timeit
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Sample",
    "Variant",
    "compare",
    "environment",
    "fmt_bytes",
    "fmt_ns",
    "median",
    "paired_ratio",
    "print_table",
    "ratio_table",
]


def median(values: Iterable[float]) -> float:
    """The median of ``values``."""
    return float(statistics.median(list(values)))


@dataclass(frozen=True)
class Variant:
    """One thing to time: ``stmt`` (Python source, run ``ops`` times per loop iteration) with
    ``names`` bound as fast locals. Example: ``Variant("get", "f(k)", {"f": d.get, "k": 1})``.
    """

    name: str
    stmt: str
    names: Mapping[str, Any]
    ops: int = 1  # operations per execution of stmt (e.g. 2 for "f(a); f(b)")
    setup: Callable[[], None] | None = None  # run before each timed repeat, untimed
    number: int | None = None  # executions per repeat; None: compare()'s number/target_ms


@dataclass
class Sample:
    """Per-repeat ns/op of one variant, net of the timing loop's own cost."""

    name: str
    ns_per_op: list[float]
    #: CPU time of the timing thread per operation (``time.thread_time``), same repeats:
    #: excludes waiting for Redis, so it is what the Python side spends around a round trip.
    cpu_ns_per_op: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return median(self.ns_per_op)

    @property
    def cpu_median(self) -> float:
        return median(self.cpu_ns_per_op)

    @property
    def spread(self) -> tuple[float, float]:
        """Interquartile range (p25, p75) of the repeats."""
        values = sorted(self.ns_per_op)
        if len(values) < 4:
            return values[0], values[-1]
        q = statistics.quantiles(values, n=4)
        return q[0], q[2]


def _timer(stmt: str, names: Mapping[str, Any]) -> timeit.Timer:
    # Names become locals of timeit's inner function: no global/attribute lookups in the loop.
    setup = "; ".join(f"{name} = _ns[{name!r}]" for name in names) or "pass"
    return timeit.Timer(stmt, setup=setup, globals={"_ns": dict(names)})


def compare(
    variants: Sequence[Variant],
    *,
    repeat: int,
    number: int | None = None,
    target_ms: float = 10.0,
) -> dict[str, Sample]:
    """Time every variant ``repeat`` times, interleaved and in rotating order (A, B, C, then
    B, C, A, ...). Each repeat runs a variant's statement ``variant.number`` times, else
    ``number`` times, else as many times as take about ``target_ms`` (calibrated once).
    Returns ns per operation net of an empty timing loop of the same length measured right
    before it, so a row is the cost of the statement itself.
    """
    empty = timeit.Timer("pass")
    timers: list[tuple[Variant, timeit.Timer, int]] = []
    for v in variants:  # warm up (caches, connections, lazy imports) and calibrate
        t = _timer(v.stmt, v.names)
        if v.setup:
            v.setup()
        n = v.number or number
        if n is None:
            once = max(t.timeit(1), 1e-7)
            n = max(1, round(target_ms / 1000 / once))
            warm = t.timeit(max(1, n // 5))
            n = max(1, round(target_ms / 1000 / max(warm / max(1, n // 5), 1e-9)))
        else:
            t.timeit(max(1, n // 10))
        timers.append((v, t, n))
    samples = {v.name: Sample(v.name, []) for v in variants}
    for r in range(repeat):
        shift = r % len(timers)
        for v, t, n in timers[shift:] + timers[:shift]:
            if v.setup:
                v.setup()
            cpu0 = time.thread_time_ns()
            loop_ns = empty.timeit(n) * 1e9
            cpu1 = time.thread_time_ns()
            total_ns = t.timeit(n) * 1e9
            cpu2 = time.thread_time_ns()
            sample = samples[v.name]
            sample.ns_per_op.append(max(0.0, total_ns - loop_ns) / (n * v.ops))
            cpu_ns = (cpu2 - cpu1) - (cpu1 - cpu0)
            sample.cpu_ns_per_op.append(max(0.0, cpu_ns) / (n * v.ops))
    return samples


def fmt_ns(ns: float) -> str:
    """``412 ns``, ``53.1 µs``, ``1.20 ms``."""
    if ns < 1_000:
        return f"{ns:.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.1f} µs"
    return f"{ns / 1_000_000:.2f} ms"


def fmt_bytes(n: float) -> str:
    """``512 B``, ``8.0 KiB``."""
    if n < 1024:
        return f"{n:.0f} B"
    return f"{n / 1024:.1f} KiB"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a left-aligned first column and right-aligned others, in a plain text box."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    print()
    print(title)
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))
    sys.stdout.flush()


def ratio_table(
    title: str,
    samples: Mapping[str, Sample],
    peer: str,
    *,
    labels: Mapping[str, str] | None = None,
    cpu: bool = False,
) -> None:
    """Print median ns/op, the p25-p75 spread of the repeats, "ratio vs peer" (median / the
    peer's median; < 1 means faster than the peer) and the paired ratio (see paired_ratio).
    With ``cpu``, also the median CPU time of the calling thread per op and its ratio."""
    labels = labels or {}
    base = samples[peer]
    rows = []
    for name, s in samples.items():
        lo, hi = s.spread
        if name == peer:
            ratio = paired = cpu_ratio = "peer"
        else:
            ratio = f"{s.median / base.median:.2f}x"
            paired = f"{paired_ratio(s, base):.2f}x"
            cpu_ratio = f"{s.cpu_median / base.cpu_median:.2f}x" if base.cpu_median else "-"
        spread = f"{fmt_ns(lo)}-{fmt_ns(hi)}"
        row = [labels.get(name, name), fmt_ns(s.median), spread, ratio, paired]
        if cpu:
            row += [fmt_ns(s.cpu_median), cpu_ratio]
        rows.append(row)
    header = ["variant", "median/op", "p25-p75", "ratio vs peer", "paired"]
    if cpu:
        header += ["CPU/op", "CPU ratio"]
    print_table(title, header, rows)


def paired_ratio(sample: Sample, peer: Sample) -> float:
    """Median over repeats of (this repeat's time / the peer's time in the same repeat): the
    peer ran right before or after, so slow drifts of machine load cancel out."""
    return median(a / b for a, b in zip(sample.ns_per_op, peer.ns_per_op, strict=True) if b > 0)


def environment() -> str:
    """One line describing the machine and the libraries, printed before the tables."""
    import msgpack
    import redis

    try:
        import hiredis  # noqa: F401

        parser = "hiredis"
    except ImportError:
        parser = "pure-python parser"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load}; redis-py {redis.__version__} "
        f"({parser}), msgpack {'.'.join(map(str, msgpack.version))}"
    )
