"""What ``python -m tiercache demo`` prints: every line of its text, and how numbers look.

The walk-through (``demo.py``) makes the calls and measures them; it hands the facts to a
`Report`, which words them. Nothing here touches a cache or Redis.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

__all__ = ["US", "Report", "fmt_ns", "redact"]

#: Attributes printed next to each span of a traced call.
TRACE_ATTRIBUTES = ("tiercache.tier", "tiercache.result", "db.operation.name")
#: The summary's rows: tier, then the stats() keys shown for it (latency on the first).
SUMMARY_ROWS = (
    ("L1", ("l1_hits", "l1_misses")),
    ("L2", ("l2_hits", "l2_misses", "l2_errors", "l2_corrupt")),
    ("loader", ("loads", "load_errors", "load_waits")),
)
SUMMARY_OTHERS = ("sets", "deletes", "clears", "l2_write_errors", "l1_size", "l1_maxsize")


def _micro_sign() -> str:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "\u00b5".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "us"
    return "\u00b5s"


#: "µs", or "us" where the terminal cannot print a micro sign.
US = _micro_sign()


def fmt_ns(ns: float) -> str:
    """A duration in nanoseconds, in µs below a millisecond, else in ms."""
    if ns < 1_000_000:
        return f"{ns / 1000:.2f} {US}" if ns < 10_000 else f"{ns / 1000:.1f} {US}"
    return f"{ns / 1_000_000:.1f} ms"


def redact(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class Report:
    """The demo's output: one method per thing it has to say, printed to ``out``."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def step(self, title: str) -> None:
        self.say()
        self.say(title)
        self.say("-" * len(title))

    def problem(self, text: str) -> None:
        """Why the demo cannot run, on stderr."""
        print(text, file=sys.stderr)

    # -- the frame ---------------------------------------------------------------------------

    def title(self, version: str) -> None:
        self.say(f"tiercache {version} demo")

    def no_fakeredis(self) -> None:
        self.problem(
            "The demo needs fakeredis to embed a Redis when no URL is given:\n"
            "    pip install 'tiercache[demo]'\n"
            "or point it at a Redis: python -m tiercache demo --url redis://localhost:6379/0"
        )

    def unreachable(self, url: str, problem: str) -> None:
        self.problem(f"Cannot use Redis at {redact(url)}: {problem}")

    def misconfigured(self, url: str | None, exc: BaseException) -> None:
        where = "the embedded fakeredis" if url is None else f"Redis at {redact(url)}"
        self.problem(f"Cannot use {where}: {exc}")

    def redis(self, url: str | None) -> None:
        if url is not None:
            self.say(f"Redis: {redact(url)}")
            return
        self.say("Redis: embedded in-process fakeredis server (no --url, no TIERCACHE_URL).")
        self.say("  L2 calls cross no network here; pass --url redis://HOST:PORT/0")
        self.say("  for real Redis numbers.")

    def namespace(self, namespace: str) -> None:
        self.say(f'Namespace: {namespace} (Redis keys are "{namespace}:{{key}}")')

    def finished(self, namespace: str, keys_left: int | None, ttl: int | None) -> None:
        """The closing lines; ``ttl`` is None without a URL (nothing to count in Redis)."""
        self.say(f"\nA.clear() cleared namespace {namespace}; caches closed.")
        if ttl is not None:
            counted = (
                "could not count its keys"
                if keys_left is None
                else f"{keys_left} of its keys remain"
            )
            self.say(f"  {counted} in Redis (any left expire within {ttl} s).")

    def done(self, seconds: float) -> None:
        self.say(f"Done in {seconds:.2f} s.")

    # -- the steps ---------------------------------------------------------------------------

    def cold_load(self, ttl: int, maxsize: int, tier: str, ns: int, calls: int, value: Any) -> None:
        self.step("1. Cold load: L1 miss, L2 miss, the loader runs")
        self.say(f"A = TierCache(redis, namespace=..., ttl={ttl}, l1_maxsize={maxsize})")
        self.say(f'A.get_or_set("product:1", load_product)  -> answered by {tier} in {fmt_ns(ns)}')
        self.say(f"  loader calls so far: {calls} (the pretend query sleeps 30 ms)")
        self.say(f"  value: a dict with price={value['price']!r}, updated={value['updated']!r}")
        self.say("  It went to Redis (msgpack: Decimal and aware datetimes round-trip), then to")
        self.say("  A's in-process L1.")

    def l1_hits(
        self, calls: int, hits: int, median: float, p99: int, overhead: float, loads: int
    ) -> None:
        self.step("2. L1 hits: no Redis, no lock")
        self.say(f'{calls:,} x A.get_or_set("product:1", load_product): {hits:,} L1 hits')
        self.say(f"  median {fmt_ns(median)}, p99 {fmt_ns(p99)} per call")
        self.say(f"  (each sample includes ~{fmt_ns(overhead)} of timer overhead)")
        self.say(f"  loader calls so far: {loads}")

    def batches(
        self, batch: int, ns: int, keys: Sequence[str], found: Sequence[str], l1: int
    ) -> None:
        self.step("3. Batches: set_many and get_many")
        self.say(f'A.set_many({{"sku:000": ..., "sku:{batch - 1}": ...}})  {batch} entries in one')
        self.say(f"  pipelined Redis round trip: {fmt_ns(ns)}, then into A's L1")
        self.say(f"A.get_many({list(keys)}) -> {sorted(found)}")
        self.say(f"  {l1} from L1; sku:404 is absent (get_many returns only the keys it found)")

    def eviction(self, maxsize: int, batch: int, ttl: int, tier: str, ns: int, loads: int) -> None:
        self.step("4. L1 eviction, then an L2 hit")
        self.say(f"A keeps at most {maxsize} entries in L1 (l1_maxsize={maxsize}). Writing")
        self.say(f"{batch} products evicted the least recently used ones, product:1 among them;")
        self.say(f"Redis still holds them all (ttl={ttl} s).")
        self.say(f'A.get_or_set("product:1", load_product)  -> answered by {tier} in {fmt_ns(ns)}')
        self.say(f"  loader calls so far: {loads} (no new query: Redis had it)")

    def mixed_get_many(self, keys: Sequence[str], found: int, l1: int, l2: int, ns: int) -> None:
        self.say(f"A.get_many({list(keys)})")
        self.say(f"  -> {found} values: {l1} from L1, {l2} from L2 in one MGET, {fmt_ns(ns)}")

    def second_instance(self, l1_ttl: float, batch: int, l2_hits: int, median: float) -> None:
        self.step("5. A second instance on the same namespace and Redis")
        self.say(f"B = TierCache(redis, namespace=<same>, l1_ttl={l1_ttl}): its own L1, as another")
        self.say("worker process would have. What A wrote reaches B through Redis (L2).")
        self.say(f"B.get(...) on the {batch} products A wrote: {l2_hits} L2 hits,")
        self.say(f"  median {fmt_ns(median)}; nothing was loaded twice")

    def b_reads(self, price: Decimal, tier: str) -> None:
        self.say(f'B.get("product:1")  -> price {price} (from {tier})')

    def a_writes(self, price: Decimal) -> None:
        self.say('A.set("product:1", {..., "price": 17.50})  -> broadcast on Redis pub/sub')
        self.say(f'A.get("product:1")  -> price {price} (read-your-writes)')

    def invalidation_heard(self, delay_ms: float) -> None:
        self.say(f"  B's listener heard A's invalidation within {delay_ms:.1f} ms and dropped its")
        self.say("  L1 copy, so B re-read Redis: no waiting for l1_ttl. Every process on the")
        self.say("  namespace does the same (tiercache:inv:<namespace> channel).")

    def invalidation_not_heard(self, l1_ttl: float) -> None:
        self.say("  B's listener has not heard the invalidation (is pub/sub reachable?): B may")
        self.say(f"  serve its copy for up to its l1_ttl ({l1_ttl} s here, 30 s by default).")

    def after_l1_ttl(self, waited: float, price: Decimal, tier: str) -> None:
        self.say(f"{waited:.2f} s later, B's L1 copy has expired:")
        self.b_reads(price, tier)

    def memoize_first(self, value: Decimal, tier: str, ns: int) -> None:
        self.step("6. memoize")
        self.say("price = A.memoize(ttl=60)(price_of)   # or @A.memoize(ttl=60) on the def")
        self.say(f'price("sku:007") -> {value}  first call: {tier}, {fmt_ns(ns)}')

    def memoize_hits(self, calls: int, median: float) -> None:
        self.say(f'{calls:,} x price("sku:007") -> L1 hits, median {fmt_ns(median)} per call')
        self.say("  (more than a plain L1 hit: the key is derived from the arguments on every")
        self.say("  call; these samples are left out of the L1 row of the summary)")

    def memoize_keys(self, key: str, namespace: str, same: bool, other: bool) -> None:
        self.say(f'price.cache_key("sku:007") = "{key}"')
        self.say(f'  stored in Redis as "{namespace}:{key}"')
        self.say("  (function's module + qualified name, then a BLAKE2b hash of the bound")
        self.say("  arguments: the same key in every process and after restarts)")
        self.say(
            f'price.cache_key("sku:007", currency="EUR") is the same key: {same} (defaults bound)'
        )
        self.say(f'price.cache_key("sku:007", "USD") is another key: {other}')

    def memoize_invalidated(
        self, value: Decimal, tier: str, ns: int, before: int, after: int
    ) -> None:
        self.say(f'price.invalidate("sku:007"); price("sku:007") -> {value}: {tier}, {fmt_ns(ns)}')
        self.say(f"  pricing calls: {before} before, {after} after")

    def summary(
        self,
        a: Mapping[str, int],
        b: Mapping[str, int],
        samples: Mapping[str, Sequence[int]],
        median: Mapping[str, float],
    ) -> None:
        """The stats() table of A and B, with the latency this demo measured per tier."""
        self.step("7. Per tier: stats() counters of A and B, latencies measured by this demo")
        self.say(
            f"{'tier':<7} {'stats() key':<16} {'A':>7} {'B':>7}  {'median latency':>14}  samples"
        )
        for tier, names in SUMMARY_ROWS:
            for i, name in enumerate(names):
                line = f"{tier if i == 0 else '':<7} {name:<16} {a[name]:>7,} {b[name]:>7,}"
                if i == 0:
                    shown = fmt_ns(median[tier]) if tier in median else "-"
                    line += f"  {shown:>14}  {len(samples[tier]):,}"
                self.say(line)
        for i, name in enumerate(SUMMARY_OTHERS):
            self.say(f"{'other' if i == 0 else '':<7} {name:<16} {a[name]:>7,} {b[name]:>7,}")

    # -- --trace -----------------------------------------------------------------------------

    def trace_unavailable(self) -> None:
        self.say(
            "--trace needs the OpenTelemetry SDK (pip install opentelemetry-sdk); "
            "running the demo without traces."
        )

    def trace_foreign_provider(self, title: str) -> None:
        self.say(f"\n{title}\nAnother (non-SDK) tracer provider is installed: no span to show.")

    def trace_intro(self, title: str) -> None:
        self.step(title)
        self.say("An SDK TracerProvider was installed before these new caches A and B were built")
        self.say("(a cache decides at construction, then about once a second, whether spans are")
        self.say("recorded), with trace_l1_hits=True so that L1 hits have spans too (off by")
        self.say("default). The loader opens a span of its own, demo.db.query.")

    def span_tree(self, label: str, spans: Sequence[Any]) -> None:
        """Each root span of ``spans`` with its descendants, indented, in start order."""
        self.say()
        self.say(label)
        ids = {span.context.span_id for span in spans}
        kids: dict[int | None, list[Any]] = {}
        for span in sorted(spans, key=lambda s: s.start_time):
            parent = span.parent.span_id if span.parent is not None else None
            kids.setdefault(parent if parent in ids else None, []).append(span)

        def show(span: Any, depth: int) -> None:
            self.say(_span_line(span, depth))
            for kid in kids.get(span.context.span_id, []):
                show(kid, depth + 1)

        for root in kids.get(None, []):
            show(root, 0)

    def trace_end(self) -> None:
        self.say(f"\nDurations in {US}. Without an SDK the cache opens no span at all.")


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
    return f"  {name:<34} {micros:>10,.0f} {US}  {' '.join(shown)}".rstrip()
