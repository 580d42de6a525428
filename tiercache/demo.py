"""``python -m tiercache demo``: a short, printed walk-through of the cache at work.

It runs on an embedded in-process Redis (``fakeredis.FakeServer``, from the ``demo`` extra)
unless a URL is given with ``--url`` or ``TIERCACHE_URL``; then it uses that Redis, in a
namespace of its own (``tiercache-demo``) that it clears before and after. Every latency
printed is measured in this run; nothing is made up.

Since: 0.1.0
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from functools import partial
from typing import Any, TextIO, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import redis

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


def _fmt_ns(ns: float) -> str:
    if ns < 1_000_000:
        return f"{ns / 1000:.2f} {_US}" if ns < 10_000 else f"{ns / 1000:.1f} {_US}"
    return f"{ns / 1_000_000:.1f} ms"


def _micro_sign() -> str:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "\u00b5".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "us"
    return "\u00b5s"


_US = _micro_sign()


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class _Demo:
    """State shared by the steps: output, the two caches and the latencies per tier."""

    def __init__(self, out: TextIO, a: TierCache, b: TierCache) -> None:
        self.out = out
        self.a = a
        self.b = b
        self.samples: dict[str, list[int]] = {tier: [] for tier in TIERS}

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def step(self, title: str) -> None:
        self.say()
        self.say(title)
        self.say("-" * len(title))

    def measure(self, cache: TierCache, fn: Callable[[], T]) -> tuple[T, str, int]:
        """Call ``fn`` once; return its value, which tier answered (from the stats() delta)
        and the nanoseconds it took. The latency is filed under that tier."""
        before = cache.stats()
        start = time.perf_counter_ns()
        value = fn()
        elapsed = time.perf_counter_ns() - start
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


def _cold_load(d: _Demo) -> None:
    d.step("1. Cold load: L1 miss, L2 miss, the loader runs")
    d.say(f"A = TierCache(redis, namespace=..., ttl={A_TTL}, l1_maxsize={L1_MAXSIZE})")
    value, tier, ns = d.measure(d.a, lambda: d.a.get_or_set("product:1", _loader("product:1")))
    d.say(f'A.get_or_set("product:1", load_product)  -> answered by {tier} in {_fmt_ns(ns)}')
    d.say(f"  loader calls so far: {CALLS['product']} (the pretend query sleeps 30 ms)")
    d.say(f"  value: a dict with price={value['price']!r}, updated={value['updated']!r}")
    d.say("  It went to Redis (msgpack: Decimal and aware datetimes round-trip), then to")
    d.say("  A's in-process L1.")


def _l1_hits(d: _Demo) -> None:
    d.step("2. L1 hits: no Redis, no lock")
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
    d.say(f'{HOT_CALLS:,} x A.get_or_set("product:1", load_product): {hits:,} L1 hits')
    d.say(f"  median {_fmt_ns(statistics.median(samples))}, p99 {_fmt_ns(p99)} per call")
    d.say(f"  (each sample includes ~{_fmt_ns(overhead)} of timer overhead)")
    d.say(f"  loader calls so far: {CALLS['product']}")


def _timer_overhead(clock: Callable[[], int]) -> Iterator[int]:
    for _ in range(1000):
        start = clock()
        yield clock() - start


def _batches(d: _Demo) -> None:
    d.step("3. Batches: set_many and get_many")
    products = {f"sku:{i:03d}": {"sku": f"sku:{i:03d}", "stock": i} for i in range(BATCH)}
    start = time.perf_counter_ns()
    d.a.set_many(products)
    ns = time.perf_counter_ns() - start
    d.say(f'A.set_many({{"sku:000": ..., "sku:{BATCH - 1}": ...}})  {BATCH} entries in one')
    d.say(f"  pipelined Redis round trip: {_fmt_ns(ns)}, then into A's L1")
    keys = ["sku:198", "sku:199", "sku:404"]
    before = d.a.stats()
    found = d.a.get_many(keys)
    after = d.a.stats()
    d.say(f"A.get_many({keys}) -> {sorted(found)}")
    d.say(
        f"  {after['l1_hits'] - before['l1_hits']} from L1; sku:404 is absent "
        "(get_many returns only the keys it found)"
    )


def _eviction(d: _Demo) -> None:
    d.step("4. L1 eviction, then an L2 hit")
    d.say(f"A keeps at most {L1_MAXSIZE} entries in L1 (l1_maxsize={L1_MAXSIZE}). Writing")
    d.say(f"{BATCH} products evicted the least recently used ones, product:1 among them;")
    d.say(f"Redis still holds them all (ttl={A_TTL} s).")
    _, tier, ns = d.measure(d.a, lambda: d.a.get_or_set("product:1", _loader("product:1")))
    d.say(f'A.get_or_set("product:1", load_product)  -> answered by {tier} in {_fmt_ns(ns)}')
    d.say(f"  loader calls so far: {CALLS['product']} (no new query: Redis had it)")
    keys = ["sku:000", "sku:001", "sku:198", "sku:199"]
    before = d.a.stats()
    start = time.perf_counter_ns()
    found = d.a.get_many(keys)
    ns = time.perf_counter_ns() - start
    after = d.a.stats()
    l1 = after["l1_hits"] - before["l1_hits"]
    l2 = after["l2_hits"] - before["l2_hits"]
    d.say(f"A.get_many({keys})")
    d.say(f"  -> {len(found)} values: {l1} from L1, {l2} from L2 in one MGET, {_fmt_ns(ns)}")


def _second_instance(d: _Demo) -> None:
    d.step("5. A second instance on the same namespace and Redis")
    d.say(f"B = TierCache(redis, namespace=<same>, l1_ttl={B_L1_TTL}): its own L1, as another")
    d.say("worker process would have. What A wrote reaches B through Redis (L2).")
    tiers: Counter[str] = Counter()
    for i in range(BATCH):
        _, tier, _ = d.measure(d.b, partial(d.b.get, f"sku:{i:03d}"))
        tiers[tier] += 1
    median = statistics.median(d.samples["L2"]) if d.samples["L2"] else 0
    d.say(f"B.get(...) on the {BATCH} products A wrote: {tiers['L2']} L2 hits,")
    d.say(f"  median {_fmt_ns(median)}; nothing was loaded twice")
    old, tier, _ = d.measure(d.b, lambda: d.b.get("product:1"))
    d.say(f'B.get("product:1")  -> price {old["price"]} (from {tier})')
    heard_before = _invalidations_heard(d.b)
    d.a.set("product:1", {**old, "price": Decimal("17.50")})
    published = time.perf_counter()
    d.say('A.set("product:1", {..., "price": 17.50})  -> broadcast on Redis pub/sub')
    d.say(f'A.get("product:1")  -> price {d.a.get("product:1")["price"]} (read-your-writes)')
    deadline = published + 1.0
    while _invalidations_heard(d.b) == heard_before and time.perf_counter() < deadline:
        time.sleep(0.0002)
    delay_ms = (time.perf_counter() - published) * 1000
    seen, tier, _ = d.measure(d.b, lambda: d.b.get("product:1"))
    d.say(f'B.get("product:1")  -> price {seen["price"]} (from {tier})')
    if _invalidations_heard(d.b) > heard_before and seen["price"] != old["price"]:
        d.say(f"  B's listener heard A's invalidation within {delay_ms:.1f} ms and dropped its")
        d.say("  L1 copy, so B re-read Redis: no waiting for l1_ttl. Every process on the")
        d.say("  namespace does the same (tiercache:inv:<namespace> channel).")
        return
    d.say("  B's listener has not heard the invalidation (is pub/sub reachable?): B may")
    d.say(f"  serve its copy for up to its l1_ttl ({B_L1_TTL} s here, 30 s by default).")
    time.sleep(B_L1_TTL + 0.05)
    seen, tier, _ = d.measure(d.b, lambda: d.b.get("product:1"))
    d.say(f"{B_L1_TTL + 0.05:.2f} s later, B's L1 copy has expired:")
    d.say(f'B.get("product:1")  -> price {seen["price"]} (from {tier})')


def _invalidations_heard(cache: TierCache) -> int:
    stats = cache.stats()
    return stats.get("bus_received", 0) - stats.get("bus_ignored", 0)


def _memoize(d: _Demo) -> None:
    d.step("6. memoize")
    price = cast("Memoized[..., Decimal]", d.a.memoize(ttl=60)(price_of))
    d.say("price = A.memoize(ttl=60)(price_of)   # or @A.memoize(ttl=60) on the def")
    value, tier, ns = d.measure(d.a, lambda: price("sku:007"))
    d.say(f'price("sku:007") -> {value}  first call: {tier}, {_fmt_ns(ns)}')
    samples: list[int] = []
    for _ in range(MEMO_CALLS):
        start = time.perf_counter_ns()
        price("sku:007")
        samples.append(time.perf_counter_ns() - start)
    d.say(
        f'{MEMO_CALLS:,} x price("sku:007") -> L1 hits, median '
        f"{_fmt_ns(statistics.median(samples))} per call"
    )
    d.say("  (more than a plain L1 hit: the key is derived from the arguments on every")
    d.say("  call; these samples are left out of the L1 row of the summary)")
    key = price.cache_key("sku:007")
    d.say(f'price.cache_key("sku:007") = "{key}"')
    d.say(f'  stored in Redis as "{d.a.namespace}:{key}"')
    d.say("  (function's module + qualified name, then a BLAKE2b hash of the bound")
    d.say("  arguments: the same key in every process and after restarts)")
    same = price.cache_key("sku:007", currency="EUR") == key
    other = price.cache_key("sku:007", "USD") != key
    d.say(f'price.cache_key("sku:007", currency="EUR") is the same key: {same} (defaults bound)')
    d.say(f'price.cache_key("sku:007", "USD") is another key: {other}')
    price.invalidate("sku:007")
    calls = CALLS["price"]
    value, tier, ns = d.measure(d.a, lambda: price("sku:007"))
    d.say(f'price.invalidate("sku:007"); price("sku:007") -> {value}: {tier}, {_fmt_ns(ns)}')
    d.say(f"  pricing calls: {calls} before, {CALLS['price']} after")


def _summary(d: _Demo) -> None:
    d.step("7. Per tier: stats() counters of A and B, latencies measured by this demo")
    sa, sb = d.a.stats(), d.b.stats()
    rows = [
        ("L1", ["l1_hits", "l1_misses"]),
        ("L2", ["l2_hits", "l2_misses", "l2_errors", "l2_corrupt"]),
        ("loader", ["loads", "load_errors", "load_waits"]),
    ]
    d.say(f"{'tier':<7} {'stats() key':<16} {'A':>7} {'B':>7}  {'median latency':>14}  samples")
    for tier, names in rows:
        for i, name in enumerate(names):
            line = f"{tier if i == 0 else '':<7} {name:<16} {sa[name]:>7,} {sb[name]:>7,}"
            if i == 0:
                samples = d.samples[tier]
                median = _fmt_ns(statistics.median(samples)) if samples else "-"
                line += f"  {median:>14}  {len(samples):,}"
            d.say(line)
    others = ("sets", "deletes", "clears", "l2_write_errors", "l1_size", "l1_maxsize")
    for i, name in enumerate(others):
        d.say(f"{'other' if i == 0 else '':<7} {name:<16} {sa[name]:>7,} {sb[name]:>7,}")


# -- --trace: the same calls seen through OpenTelemetry -----------------------------------------

TRACE_HINT = (
    "--trace needs the OpenTelemetry SDK (pip install opentelemetry-sdk); "
    "running the demo without traces."
)
#: Attributes printed next to each span of the tree.
TRACE_ATTRIBUTES = ("tiercache.tier", "tiercache.result", "db.operation.name")
PROBE_WAIT = 3.0  # seconds to wait for both instances' bus self-probes before recording


def _sdk_available() -> bool:
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


def _record_spans() -> Any:
    """Install an SDK TracerProvider exporting to memory (or add that exporter to an SDK
    provider already installed); the exporter, or None if a foreign provider is in place."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)  # refused (logged) if another one was set
        if trace.get_tracer_provider() is not provider:
            return None
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def _span_line(span: Any, depth: int) -> str:
    micros = (span.end_time - span.start_time) / 1000
    attributes = span.attributes or {}
    shown = [
        f"{name.removeprefix('tiercache.')}={attributes[name]}"
        for name in TRACE_ATTRIBUTES
        if name in attributes
    ]
    if span.status.status_code.name == "ERROR":
        shown.append("status=ERROR")
    name = "  " * depth + span.name
    return f"  {name:<34} {micros:>10,.0f} {_US}  {' '.join(shown)}".rstrip()


def _print_tree(d: _Demo, spans: list[Any]) -> None:
    """Each root span of ``spans`` with its descendants, indented, in start order."""
    ids = {span.context.span_id for span in spans}
    kids: dict[int | None, list[Any]] = {}
    for span in sorted(spans, key=lambda s: s.start_time):
        parent = span.parent.span_id if span.parent is not None else None
        kids.setdefault(parent if parent in ids else None, []).append(span)

    def show(span: Any, depth: int) -> None:
        d.say(_span_line(span, depth))
        for kid in kids.get(span.context.span_id, []):
            show(kid, depth + 1)

    for root in kids.get(None, []):
        show(root, 0)


def _traces(url: str | None, namespace: str, out: TextIO) -> None:
    """Record a load, an L1 hit, an L2 hit and a memoized call; print their span trees."""
    from opentelemetry import trace

    title = "8. The same calls, traced (OpenTelemetry SDK, in-memory exporter)"
    exporter = _record_spans()  # before the caches are built
    if exporter is None:
        print(
            f"\n{title}\nAnother (non-SDK) tracer provider is installed: no span to show.", file=out
        )
        return
    tracer = trace.get_tracer("tiercache.demo")

    def load() -> dict[str, Any]:
        with tracer.start_as_current_span("demo.db.query"):  # the application's own span
            return load_product("product:1")

    with _caches(url, namespace, out, announce=False, trace_l1_hits=True) as (a, b):
        d = _Demo(out, a, b)
        d.step(title)
        d.say("An SDK TracerProvider was installed before these new caches A and B were built")
        d.say("(a cache decides at construction, then about once a second, whether spans are")
        d.say("recorded), with trace_l1_hits=True so that L1 hits have spans too (off by")
        d.say("default). The loader opens a span of its own, demo.db.query.")
        a.clear()
        b.get("warm-up")  # both listeners subscribed and their self-probes back: no stray span
        deadline = time.monotonic() + PROBE_WAIT
        while time.monotonic() < deadline and any(
            c.stats().get("bus_probe_ok") != 1 for c in (a, b)
        ):
            time.sleep(0.005)
        price = cast("Memoized[..., Decimal]", a.memoize(ttl=60)(price_of))
        calls: list[tuple[str, Callable[[], Any]]] = [
            ('A.get_or_set("product:1", load): a load', partial(a.get_or_set, "product:1", load)),
            (
                'A.get_or_set("product:1", load): an L1 hit',
                partial(a.get_or_set, "product:1", load),
            ),
            (
                'B.get_or_set("product:1", load): an L2 hit',
                partial(b.get_or_set, "product:1", load),
            ),
            ('price("sku:007"): a memoized call, loaded', partial(price, "sku:007")),
        ]
        try:
            for label, call in calls:
                exporter.clear()
                call()
                d.say()
                d.say(label)
                _print_tree(d, list(exporter.get_finished_spans()))
        finally:
            a.clear()
    print(f"\nDurations in {_US}. Without an SDK the cache opens no span at all.", file=out)


def _loader(sku: str) -> Callable[[], dict[str, Any]]:
    return lambda: load_product(sku)


@contextmanager
def _caches(
    url: str | None,
    namespace: str,
    out: TextIO,
    announce: bool = True,
    trace_l1_hits: bool = False,
) -> Iterator[tuple[TierCache, TierCache]]:
    """Caches A and B on one Redis (an embedded fakeredis server, or ``url``), closed after."""
    a_options: dict[str, Any] = {"namespace": namespace, "ttl": A_TTL, "l1_maxsize": L1_MAXSIZE}
    b_options: dict[str, Any] = {"namespace": namespace, "l1_ttl": B_L1_TTL}
    for options in (a_options, b_options):
        options["trace_l1_hits"] = trace_l1_hits
    with ExitStack() as stack:
        if url is None:
            import fakeredis

            if announce:
                print(
                    "Redis: embedded in-process fakeredis server (no --url, no TIERCACHE_URL).",
                    file=out,
                )
                print("  L2 calls cross no network here; pass --url redis://HOST:PORT/0", file=out)
                print("  for real Redis numbers.", file=out)
            server = fakeredis.FakeServer()
            client_a = stack.enter_context(fakeredis.FakeRedis(server=server))
            client_b = stack.enter_context(fakeredis.FakeRedis(server=server))
            a = stack.enter_context(TierCache(client_a, **a_options))
            b = stack.enter_context(TierCache(client_b, **b_options))
        else:
            if announce:
                print(f"Redis: {_redact(url)}", file=out)
            # from_url: short timeouts and no hidden retries; each cache closes its client.
            a = stack.enter_context(TierCache.from_url(url, **a_options))
            b = stack.enter_context(TierCache.from_url(url, **b_options))
        yield a, b


def _unreachable(url: str) -> str | None:
    """Why Redis at ``url`` cannot be used, or None if it answers PING."""
    try:
        probe = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    except ValueError as exc:
        return f"bad URL: {exc}"
    try:
        probe.ping()
    except (redis.RedisError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        probe.close()
    return None


def _keys_left(url: str, namespace: str) -> int | None:
    """How many keys of ``namespace`` are still in Redis (None if it cannot tell)."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2) as client:
            return sum(1 for _ in client.scan_iter(match=f"{namespace}:*", count=500))
    except (redis.RedisError, OSError):
        return None


def run(url: str | None = None, out: TextIO | None = None, *, trace: bool = False) -> int:
    """Run the walk-through against ``url`` (None: embedded fakeredis); return an exit code.
    With ``trace``, finish by recording a few calls through the OpenTelemetry SDK (if it is
    installed) and printing their span tree.

    Since: 0.1.0
    """
    out = out or sys.stdout
    if url is None:
        try:
            import fakeredis  # noqa: F401
        except ImportError:
            print(
                "The demo needs fakeredis to embed a Redis when no URL is given:\n"
                "    pip install 'tiercache[demo]'\n"
                "or point it at a Redis: python -m tiercache demo --url redis://localhost:6379/0",
                file=sys.stderr,
            )
            return EXIT_NO_FAKEREDIS
    else:
        problem = _unreachable(url)
        if problem is not None:
            print(f"Cannot use Redis at {_redact(url)}: {problem}", file=sys.stderr)
            return EXIT_NO_REDIS
    started = time.perf_counter()
    namespace = NAMESPACE
    print(f"tiercache {__version__} demo", file=out)
    traced = trace and _sdk_available()
    if trace and not traced:
        print(TRACE_HINT, file=out)
    CALLS.clear()
    with _caches(url, namespace, out) as (a, b):
        print(f'Namespace: {namespace} (Redis keys are "{namespace}:{{key}}")', file=out)
        try:
            a.clear()  # leftovers of an interrupted earlier run
        except MISCONFIGURED as exc:
            where = "the embedded fakeredis" if url is None else f"Redis at {_redact(url)}"
            print(f"Cannot use {where}: {exc}", file=sys.stderr)
            return EXIT_MISCONFIGURED
        demo = _Demo(out, a, b)
        try:
            for step in (_cold_load, _l1_hits, _batches, _eviction, _second_instance, _memoize):
                step(demo)
            _summary(demo)
        finally:
            a.clear()
    if traced:
        _traces(url, namespace, out)
    print(f"\nA.clear() cleared namespace {namespace}; caches closed.", file=out)
    if url is not None:
        left = _keys_left(url, namespace)
        counted = "could not count its keys" if left is None else f"{left} of its keys remain"
        print(f"  {counted} in Redis (any left expire within {A_TTL} s).", file=out)
    print(f"Done in {time.perf_counter() - started:.2f} s.", file=out)
    return EXIT_OK
