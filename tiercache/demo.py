"""``python -m tiercache demo``: a short, printed walk-through of the cache at work.

It runs on an embedded in-process Redis (``fakeredis.FakeServer``, from the ``demo`` extra)
unless a URL is given with ``--url`` or ``TIERCACHE_URL``; then it uses that Redis, in a
namespace of its own (``tiercache-demo``) that it clears before and after. Every latency
printed is measured in this run; nothing is made up.

This module makes the calls and measures them; ``_demo_output.py`` words what they showed,
``_demo_trace.py`` records the ``--trace`` spans and ``_demo_redis.py`` finds the Redis.

Since: 0.1.0
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from decimal import Decimal
from functools import partial
from typing import Any, TextIO, TypeVar, cast

from . import _demo_redis, _demo_trace
from ._demo_output import Report
from ._version import __version__
from .cache import TierCache
from .l2 import CONFIG_ERRORS as MISCONFIGURED
from .memoizing import Memoized

__all__ = [
    "EXIT_MISCONFIGURED",
    "EXIT_NO_FAKEREDIS",
    "EXIT_NO_REDIS",
    "EXIT_OK",
    "NAMESPACE",
    "run",
]

EXIT_OK = 0
#: Redis at ``--url`` could not be reached.
EXIT_NO_REDIS = 1
#: No URL and no fakeredis to embed.
EXIT_NO_FAKEREDIS = 2
#: Redis answers but cannot serve the cache (no Lua scripting, credentials, ACLs, ...).
EXIT_MISCONFIGURED = 3

T = TypeVar("T")

DB_LATENCY = 0.030  # seconds a pretend database query takes
PRICE_LATENCY = 0.020
HOT_CALLS = 20_000
MEMO_CALLS = 1_000
BATCH = 200
L1_MAXSIZE = 128
#: The only namespace the demo writes to (cleared before and after the run).
NAMESPACE = "tiercache-demo"
A_TTL = 60
B_L1_TTL = 0.3
TIERS = ("L1", "L2", "loader")

# How often each pretend database function ran (the loaders the cache calls on a miss).
CALLS: Counter[str] = Counter()


def load_product(sku: str, price: str = "19.90") -> dict[str, Any]:
    """A pretend database query: slow, and counted in ``CALLS``."""
    CALLS["product"] += 1
    time.sleep(DB_LATENCY)
    return {
        "sku": sku,
        "name": f"Espresso cup {sku}",
        "price": Decimal(price),
        "updated": datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc),
    }


def price_of(sku: str, currency: str = "EUR") -> Decimal:
    """A pretend pricing service call, memoized by the demo."""
    CALLS["price"] += 1
    time.sleep(PRICE_LATENCY)
    base = Decimal(sum(map(ord, sku)) % 50) + Decimal("0.99")
    return base if currency == "EUR" else base * Decimal("1.08")


def _loader(sku: str) -> Callable[[], dict[str, Any]]:
    return lambda: load_product(sku)


def _timed(fn: Callable[[], T]) -> tuple[T, int]:
    start = time.perf_counter_ns()
    value = fn()
    return value, time.perf_counter_ns() - start


class _Demo:
    """State shared by the steps: the report, the two caches and the latencies per tier."""

    def __init__(self, report: Report, a: TierCache, b: TierCache) -> None:
        self.report = report
        self.a = a
        self.b = b
        self.samples: dict[str, list[int]] = {tier: [] for tier in TIERS}

    def measure(self, cache: TierCache, fn: Callable[[], T]) -> tuple[T, str, int]:
        """Call ``fn`` once; return its value, which tier answered (from the stats() delta)
        and the nanoseconds it took. The latency is filed under that tier."""
        before = cache.stats()
        value, elapsed = _timed(fn)
        after = cache.stats()
        if after["loads"] > before["loads"]:
            tier = "loader"
        elif after["l2_hits"] > before["l2_hits"]:
            tier = "L2"
        elif after["l1_hits"] > before["l1_hits"]:
            tier = "L1"
        else:
            tier = "miss"
        if tier in self.samples:
            self.samples[tier].append(elapsed)
        return value, tier, elapsed

    def delta(self, cache: TierCache, fn: Callable[[], T], *names: str) -> tuple[T, list[int]]:
        """Call ``fn``; return its value and how much each stats() counter in ``names`` grew."""
        before = cache.stats()
        value = fn()
        after = cache.stats()
        return value, [after[name] - before[name] for name in names]


def _cold_load(d: _Demo) -> None:
    value, tier, ns = d.measure(d.a, lambda: d.a.get_or_set("product:1", _loader("product:1")))
    d.report.cold_load(A_TTL, L1_MAXSIZE, tier, ns, CALLS["product"], value)


def _l1_hits(d: _Demo) -> None:
    loader = _loader("product:1")
    get_or_set = d.a.get_or_set
    clock = time.perf_counter_ns
    samples: list[int] = []
    before = d.a.stats()["l1_hits"]
    for _ in range(HOT_CALLS):
        start = clock()
        get_or_set("product:1", loader)
        samples.append(clock() - start)
    hits = d.a.stats()["l1_hits"] - before
    overhead = statistics.median(_timer_overhead(clock))
    if hits == HOT_CALLS:
        d.samples["L1"].extend(samples)
    samples.sort()
    p99 = samples[int(len(samples) * 0.99)]
    median = statistics.median(samples)
    d.report.l1_hits(HOT_CALLS, hits, median, p99, overhead, CALLS["product"])


def _timer_overhead(clock: Callable[[], int]) -> Iterator[int]:
    for _ in range(1000):
        start = clock()
        yield clock() - start


def _batches(d: _Demo) -> None:
    products = {f"sku:{i:03d}": {"sku": f"sku:{i:03d}", "stock": i} for i in range(BATCH)}
    _, ns = _timed(lambda: d.a.set_many(products))
    keys = ["sku:198", "sku:199", "sku:404"]
    found, (l1,) = d.delta(d.a, lambda: d.a.get_many(keys), "l1_hits")
    d.report.batches(BATCH, ns, keys, list(found), l1)


def _eviction(d: _Demo) -> None:
    _, tier, ns = d.measure(d.a, lambda: d.a.get_or_set("product:1", _loader("product:1")))
    d.report.eviction(L1_MAXSIZE, BATCH, A_TTL, tier, ns, CALLS["product"])
    keys = ["sku:000", "sku:001", "sku:198", "sku:199"]
    (found, ns), (l1, l2) = d.delta(
        d.a, lambda: _timed(lambda: d.a.get_many(keys)), "l1_hits", "l2_hits"
    )
    d.report.mixed_get_many(keys, len(found), l1, l2, ns)


def _second_instance(d: _Demo) -> None:
    tiers: Counter[str] = Counter()
    for i in range(BATCH):
        _, tier, _ = d.measure(d.b, partial(d.b.get, f"sku:{i:03d}"))
        tiers[tier] += 1
    median = statistics.median(d.samples["L2"]) if d.samples["L2"] else 0
    d.report.second_instance(B_L1_TTL, BATCH, tiers["L2"], median)
    old, tier, _ = d.measure(d.b, lambda: d.b.get("product:1"))
    d.report.b_reads(old["price"], tier)
    heard_before = _invalidations_heard(d.b)
    d.a.set("product:1", {**old, "price": Decimal("17.50")})
    published = time.perf_counter()
    d.report.a_writes(d.a.get("product:1")["price"])
    deadline = published + 1.0
    while _invalidations_heard(d.b) == heard_before and time.perf_counter() < deadline:
        time.sleep(0.0002)
    delay_ms = (time.perf_counter() - published) * 1000
    seen, tier, _ = d.measure(d.b, lambda: d.b.get("product:1"))
    d.report.b_reads(seen["price"], tier)
    if _invalidations_heard(d.b) > heard_before and seen["price"] != old["price"]:
        d.report.invalidation_heard(delay_ms)
        return
    d.report.invalidation_not_heard(B_L1_TTL)
    time.sleep(B_L1_TTL + 0.05)
    seen, tier, _ = d.measure(d.b, lambda: d.b.get("product:1"))
    d.report.after_l1_ttl(B_L1_TTL + 0.05, seen["price"], tier)


def _invalidations_heard(cache: TierCache) -> int:
    stats = cache.stats()
    return stats.get("bus_received", 0) - stats.get("bus_ignored", 0)


def _memoize(d: _Demo) -> None:
    price = cast("Memoized[..., Decimal]", d.a.memoize(ttl=60)(price_of))
    value, tier, ns = d.measure(d.a, lambda: price("sku:007"))
    d.report.memoize_first(value, tier, ns)
    samples: list[int] = []
    for _ in range(MEMO_CALLS):
        start = time.perf_counter_ns()
        price("sku:007")
        samples.append(time.perf_counter_ns() - start)
    d.report.memoize_hits(MEMO_CALLS, statistics.median(samples))
    key = price.cache_key("sku:007")
    same = price.cache_key("sku:007", currency="EUR") == key
    other = price.cache_key("sku:007", "USD") != key
    d.report.memoize_keys(key, d.a.namespace, same, other)
    price.invalidate("sku:007")
    calls = CALLS["price"]
    value, tier, ns = d.measure(d.a, lambda: price("sku:007"))
    d.report.memoize_invalidated(value, tier, ns, calls, CALLS["price"])


def _summary(d: _Demo) -> None:
    medians = {tier: statistics.median(s) for tier, s in d.samples.items() if s}
    d.report.summary(d.a.stats(), d.b.stats(), d.samples, medians)


def _caches(
    url: str | None, namespace: str, trace_l1_hits: bool = False
) -> AbstractContextManager[tuple[TierCache, TierCache]]:
    """Caches A and B on one Redis (an embedded fakeredis server, or ``url``), closed after."""
    a_options: dict[str, Any] = {"namespace": namespace, "ttl": A_TTL, "l1_maxsize": L1_MAXSIZE}
    b_options: dict[str, Any] = {"namespace": namespace, "l1_ttl": B_L1_TTL}
    for options in (a_options, b_options):
        options["trace_l1_hits"] = trace_l1_hits
    return _demo_redis.caches(url, a_options, b_options)


def run(url: str | None = None, out: TextIO | None = None, *, trace: bool = False) -> int:
    """Run the walk-through against ``url`` (None: embedded fakeredis); return an exit code.
    With ``trace``, finish by recording a few calls through the OpenTelemetry SDK (if it is
    installed) and printing their span tree.

    Since: 0.1.0
    """
    report = Report(out or sys.stdout)
    if url is None and not _demo_redis.fakeredis_available():
        report.no_fakeredis()
        return EXIT_NO_FAKEREDIS
    problem = None if url is None else _demo_redis.unreachable(url)
    if url is not None and problem is not None:
        report.unreachable(url, problem)
        return EXIT_NO_REDIS
    started = time.perf_counter()
    namespace = NAMESPACE
    report.title(__version__)
    traced = trace and _demo_trace.sdk_available()
    if trace and not traced:
        report.trace_unavailable()
    CALLS.clear()
    report.redis(url)
    with _caches(url, namespace) as (a, b):
        report.namespace(namespace)
        try:
            a.clear()  # leftovers of an interrupted earlier run
        except MISCONFIGURED as exc:
            report.misconfigured(url, exc)
            return EXIT_MISCONFIGURED
        demo = _Demo(report, a, b)
        try:
            for step in (_cold_load, _l1_hits, _batches, _eviction, _second_instance, _memoize):
                step(demo)
            _summary(demo)
        finally:
            a.clear()
    if traced:
        _demo_trace.record_calls(
            report, partial(_caches, url, namespace, trace_l1_hits=True), load_product, price_of
        )
    left = None if url is None else _demo_redis.keys_left(url, namespace)
    report.finished(namespace, left, None if url is None else A_TTL)
    report.done(time.perf_counter() - started)
    return EXIT_OK
