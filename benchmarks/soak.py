"""Soak: mixed load on two caches while Redis is SIGKILLed and restarted.

Eight threads (four per `TierCache`, as two app processes' worth of instances would be) run
80% ``get_or_set`` over a Zipf-ish key set (key ``i`` drawn with weight ``1 / (i + 1) ** 1.1``
among 2,000), 10% ``set`` and 10% ``delete``; the loader sleeps ~1 ms to stand for a
database. Every value written or loaded for a key is the same, so any other value returned
is a wrong answer. The caches use the defaults a service would (``from_url``: 0.25 s socket
timeout, no retries; ``Breaker(failures=5, reset_after=5)``) with ``ttl=30``, ``l1_ttl=2``
(so reads keep reaching Redis) and ``stale_ttl=60``.

Schedule: Redis is SIGKILLed at 1/3 of the run and restarted on the same port at 1/2
(60 s run; ``--quick``: 10 s). Nothing calls the caches to reconnect: the breaker's probe
and the bus listener bring Redis back. Reports throughput, p50/p99/max latency per operation
type and per phase (before the kill / Redis down / after the restart), the exceptions that
reached callers (target: 0), wrong values (target: 0), and the cache's own counters per
phase: stale serves, breaker opens, L2 errors and skipped calls, L2 hits, loads.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import threading
import time
from array import array
from collections.abc import Sequence
from typing import Any

from benchmarks._timing import fmt_ns, print_table
from tests.redis_server import RedisServer
from tiercache import TierCache

TITLE = "8 threads of mixed load while Redis is SIGKILLed at 1/3 and restarted at 1/2"
THREADS = 8
CACHES = 2
KEYS = 2000
ZIPF_S = 1.1
LOADER_SLEEP = 0.001  # seconds: the "database" behind the loader
OPS = ("get_or_set", "set", "delete")
PHASES = ("before kill", "Redis down", "after restart")
COUNTERS = (
    "stale_serves",
    "breaker_opens",
    "l2_errors",
    "l2_write_errors",
    "l2_skipped",
    "l2_hits",
    "loads",
)
SAMPLE_EVERY = 0.05  # seconds between two looks at the counters while recovering
JOIN_TIMEOUT = 30.0

_perf_ns = time.perf_counter_ns


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of already sorted values (0.0 if empty)."""
    if not sorted_values:
        return 0.0
    return float(sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)])


def value_for(key: str) -> dict[str, Any]:
    """The only correct value of ``key``."""
    return {"key": key, "price": len(key) * 7, "payload": "x" * 100}


def _loader(key: str) -> dict[str, Any]:
    time.sleep(LOADER_SLEEP)
    return value_for(key)


class Worker:
    """One load thread: its own random stream and latency arrays per (phase, op)."""

    def __init__(self, index: int, cache: TierCache, phase: list[int], stop: threading.Event):
        self.index = index
        self.cache = cache
        self.phase = phase
        self.stop = stop
        self.latencies = {(p, op): array("d") for p in range(len(PHASES)) for op in OPS}
        self.errors = [0] * len(PHASES)
        self.error_samples: list[str] = []
        self.wrong = 0
        self.ops = 0

    def run(self, start: threading.Barrier) -> None:
        rng = random.Random(1000 + self.index)
        cum = list(itertools.accumulate(1 / (i + 1) ** ZIPF_S for i in range(KEYS)))
        total = cum[-1]
        cache = self.cache
        phase = self.phase
        start.wait()
        while not self.stop.is_set():
            key = f"item:{bisect.bisect_left(cum, rng.random() * total)}"
            roll = rng.random()
            op = "get_or_set" if roll < 0.8 else "set" if roll < 0.9 else "delete"
            p = phase[0]
            began = _perf_ns()
            try:
                if op == "get_or_set":
                    got = cache.get_or_set(key, lambda key=key: _loader(key))
                    if got != value_for(key):
                        self.wrong += 1
                elif op == "set":
                    cache.set(key, value_for(key))
                else:
                    cache.delete(key)
            except Exception as exc:
                self.errors[p] += 1
                if len(self.error_samples) < 5:
                    self.error_samples.append(f"{op}: {type(exc).__name__}: {exc}")
                continue
            self.latencies[(p, op)].append(_perf_ns() - began)
            self.ops += 1


def _stats(caches: Sequence[TierCache]) -> dict[str, int]:
    total: dict[str, int] = {}
    for cache in caches:
        for name, value in cache.stats().items():
            total[name] = total.get(name, 0) + value
    return total


def _latency_cells(values: Sequence[float]) -> list[str]:
    ordered = sorted(values)
    return [
        fmt_ns(percentile(ordered, 0.50)),
        fmt_ns(percentile(ordered, 0.99)),
        fmt_ns(ordered[-1]) if ordered else "-",
    ]


def run(quick: bool = False) -> None:
    duration = 10.0 if quick else 60.0
    kill_at, restart_at = duration / 3, duration / 2
    print(
        f"{THREADS} threads on {CACHES} caches for {duration:g} s: 80% get_or_set over "
        f"{KEYS} Zipf(s={ZIPF_S}) keys, 10% set, 10% delete; loader sleeps "
        f"{LOADER_SLEEP * 1000:g} ms. Redis SIGKILLed at {kill_at:g} s, restarted at "
        f"{restart_at:g} s."
    )
    with RedisServer() as server:
        caches = [
            TierCache.from_url(server.url, namespace="soak", ttl=30, l1_ttl=2, stale_ttl=60)
            for _ in range(CACHES)
        ]
        phase = [0]
        stop = threading.Event()
        workers = [Worker(i, caches[i % CACHES], phase, stop) for i in range(THREADS)]
        start = threading.Barrier(THREADS + 1)
        threads = [
            threading.Thread(target=w.run, args=(start,), name=f"soak-{w.index}", daemon=True)
            for w in workers
        ]
        for thread in threads:
            thread.start()
        start.wait()
        t0 = time.monotonic()
        snapshots = [_stats(caches)]
        boundaries = [t0]

        time.sleep(kill_at)  # the fault schedule
        # Close the phase first, so what the kill causes is counted in the next one.
        snapshots.append(_stats(caches))
        boundaries.append(time.monotonic())
        phase[0] = 1
        server.kill()

        time.sleep(max(0.0, t0 + restart_at - time.monotonic()))
        snapshots.append(_stats(caches))
        boundaries.append(time.monotonic())
        phase[0] = 2
        server.restart()
        restarted = time.monotonic()

        # Recovery, watched from outside: no call is made to the caches for it.
        hits_at_restart = snapshots[-1]["l2_hits"]
        l2_back = bus_back = None
        end = t0 + duration
        while time.monotonic() < end:
            now = _stats(caches)
            if l2_back is None and now["l2_hits"] > hits_at_restart:
                l2_back = time.monotonic() - restarted
            if bus_back is None and now["bus_subscribed"] == CACHES:
                bus_back = time.monotonic() - restarted
            if l2_back is not None and bus_back is not None:
                break
            time.sleep(SAMPLE_EVERY)
        time.sleep(max(0.0, end - time.monotonic()))
        stop.set()
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
        boundaries.append(time.monotonic())
        snapshots.append(_stats(caches))
        stuck = sum(t.is_alive() for t in threads)
        for cache in caches:
            cache.close()

    _report(workers, boundaries, snapshots, l2_back, bus_back, stuck)


def _report(
    workers: list[Worker],
    boundaries: list[float],
    snapshots: list[dict[str, int]],
    l2_back: float | None,
    bus_back: float | None,
    stuck: int,
) -> None:
    elapsed = boundaries[-1] - boundaries[0]
    total_ops = sum(w.ops for w in workers)
    errors = sum(sum(w.errors) for w in workers)
    wrong = sum(w.wrong for w in workers)

    rows = []
    for op in OPS:
        values = [v for w in workers for p in range(len(PHASES)) for v in w.latencies[(p, op)]]
        rows.append([op, len(values), f"{len(values) / elapsed:,.0f}", *_latency_cells(values)])
    everything = [v for w in workers for arr in w.latencies.values() for v in arr]
    rows.append(["all", total_ops, f"{total_ops / elapsed:,.0f}", *_latency_cells(everything)])
    print_table(
        f"Whole run ({elapsed:.1f} s): latency per call as the caller saw it",
        ["op", "calls", "ops/s", "p50", "p99", "max"],
        rows,
    )

    rows, counter_rows = [], []
    for p, name in enumerate(PHASES):
        seconds = boundaries[p + 1] - boundaries[p]
        values = [v for w in workers for op in OPS for v in w.latencies[(p, op)]]
        rows.append(
            [
                name,
                f"{seconds:.1f} s",
                len(values),
                f"{len(values) / seconds:,.0f}",
                *_latency_cells(values),
                sum(w.errors[p] for w in workers),
            ]
        )
        counter_rows.append([name, *(snapshots[p + 1][c] - snapshots[p][c] for c in COUNTERS)])
    print_table(
        "Per phase: every call",
        ["phase", "length", "calls", "ops/s", "p50", "p99", "max", "errors raised"],
        rows,
    )
    print_table(
        "Per phase: cache counters (increase during the phase, both caches)",
        ["phase", *COUNTERS],
        counter_rows,
    )

    rows = []
    for p, name in enumerate(PHASES):
        for op in OPS:
            values = [v for w in workers for v in w.latencies[(p, op)]]
            rows.append([name, op, len(values), *_latency_cells(values)])
    print_table("Per phase and op", ["phase", "op", "calls", "p50", "p99", "max"], rows)

    def secs(value: float | None) -> str:
        return "never" if value is None else f"{value:.2f} s"

    print(
        f"\nAfter the restart: first L2 hit {secs(l2_back)}, both listeners subscribed again "
        f"{secs(bus_back)} (breaker reset_after = 5 s)."
    )
    samples = [s for w in workers for s in w.error_samples][:5]
    if samples:
        print("First errors raised to callers: " + "; ".join(samples))
    if stuck:
        print(f"{stuck} load thread(s) did not stop within {JOIN_TIMEOUT:g} s")
    ok = errors == 0 and wrong == 0 and stuck == 0
    print(
        f"Target: 0 exceptions and 0 wrong values reach callers: {errors} exceptions, "
        f"{wrong} wrong values -> {'PASS' if ok else 'FAIL'}"
    )


if __name__ == "__main__":
    from benchmarks.__main__ import main

    main(["soak"])
