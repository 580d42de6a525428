"""Telemetry cost: an L1 hit and an L2 hit through ``get_or_set``, telemetry off, on with no
OpenTelemetry SDK, and on with an SDK recording spans.

The global tracer provider can be set only once per process, so two processes, one real
redis-server started here:

* this process never installs an SDK: ``telemetry=False`` (the baseline) and
  ``telemetry=True`` (the default) with only ``opentelemetry-api``: the cache sees the API's
  proxy provider and never opens a span (telemetry.py); the only cost left is a
  ``time.monotonic()`` read and a comparison once per housekeeping tick (1 ms).
* a child process (``subprocess``) installs an SDK ``TracerProvider`` with a
  ``BatchSpanProcessor`` exporting to a no-op exporter (the spans are built, queued and
  handed over, then dropped) and a ``MeterProvider`` with a periodic reader (1 s) exporting
  to a no-op exporter, *before* it builds its caches; it times its own ``telemetry=False``
  baseline, ``trace_l1_hits=True`` (a span for every L1 hit), and the default (no span for
  L1 hits).

Each process runs its variants interleaved (``_timing.compare``) and each row's ratio is
against the baseline of the same process and the same tier. The L1 miss of the L2 rows is
forced as in ``benchmarks/l2.py``: ``l1_maxsize=1`` and two keys read alternately.

Target: telemetry on with no SDK costs <= 1.05x the baseline on an L1 hit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks._timing import Sample, Variant, compare, fmt_ns, paired_ratio, print_table
from tests.redis_server import RedisServer
from tiercache import TierCache

TITLE = "telemetry: L1/L2 hits with telemetry off, on without an SDK, on with an SDK"
ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.05  # telemetry on, no SDK, L1 hit: at most this times the baseline
VALUE = {"id": 42, "name": "widget", "price": 9.5, "tags": ["a", "b"]}
TTL = 3600.0
CHILD_TIMEOUT = 600.0


def _must_not_load() -> Any:
    raise AssertionError("a hit benchmark must never run its loader")


def _settings(quick: bool) -> tuple[int, int]:
    """(repeats of the L1 comparison, repeats of the L2 comparison)."""
    return (15, 9) if quick else (41, 31)


def _caches(url: str, prefix: str, **l1_variants: dict[str, Any]) -> dict[str, TierCache]:
    """One cache per named option set, each in a namespace of its own, the value loaded."""
    caches = {}
    for name, options in l1_variants.items():
        cache = TierCache.from_url(
            url, namespace=f"{prefix}-{name}", ttl=TTL, l1_ttl=TTL, **options
        )
        cache.set_many({"a": VALUE, "b": VALUE})
        caches[name] = cache
    return caches


def _l1_variant(name: str, cache: TierCache) -> Variant:
    # cache.get_or_set is looked up now: the traced version if spans are recorded.
    return Variant(name, "f(k, ld)", {"f": cache.get_or_set, "k": "a", "ld": _must_not_load})


def _l2_variant(name: str, cache: TierCache) -> Variant:
    names = {"f": cache.get_or_set, "ka": "a", "kb": "b", "ld": _must_not_load}
    return Variant(name, "f(ka, ld); f(kb, ld)", names, ops=2)


def _measure(
    url: str,
    prefix: str,
    quick: bool,
    l1: Mapping[str, dict[str, Any]],
    l2: Sequence[str],
    extra: Sequence[Variant] = (),
) -> dict[str, Sample]:
    """Time the L1 variants (``l1``: name -> options, plus ``extra``) interleaved, then the
    L2 variants (names from ``l1`` whose options, plus ``l1_maxsize=1``, make every read an
    L2 hit)."""
    l1_rounds, l2_rounds = _settings(quick)
    hot = _caches(url, prefix, **l1)
    cold = _caches(url, prefix + "-l2", **{name: {**l1[name], "l1_maxsize": 1} for name in l2})
    try:
        for cache in hot.values():
            cache.get_or_set("a", _must_not_load)  # an L1 hit: set_many filled L1
        samples = compare(
            [*(_l1_variant(name, cache) for name, cache in hot.items()), *extra],
            repeat=l1_rounds,
            target_ms=20.0,
        )
        samples.update(
            {
                f"l2_{name}": sample
                for name, sample in compare(
                    [_l2_variant(name, cache) for name, cache in cold.items()],
                    repeat=l2_rounds,
                    target_ms=20.0,
                ).items()
            }
        )
        for name, cache in {**hot, **{f"l2_{n}": c for n, c in cold.items()}}.items():
            stats = cache.stats()
            assert stats["loads"] == 0, f"{name}: a hit benchmark must not load"
            if name.startswith("l2_"):
                assert stats["l2_hits"] > 0, (name, stats)
                assert stats["l1_hits"] == 0, (name, stats)
    finally:
        for cache in [*hot.values(), *cold.values()]:
            cache.close()
    return samples


# -- the child process: an SDK installed before any cache is built ------------------------


def child(url: str, quick: bool) -> None:
    """Run in the SDK process: install the SDK, time, print the samples as one JSON line."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        MetricsData,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class NoOpSpans(SpanExporter):
        """Receives the batches and drops them: the cost measured is the SDK's own."""

        def __init__(self) -> None:
            self.spans = 0

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            self.spans += len(spans)
            return SpanExportResult.SUCCESS

    class NoOpMetrics(MetricExporter):
        def __init__(self) -> None:
            super().__init__()
            self.exports = 0

        def export(
            self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
        ) -> MetricExportResult:
            self.exports += 1
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            pass

    spans = NoOpSpans()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(spans))
    trace.set_tracer_provider(tracer_provider)
    metric_exports = NoOpMetrics()
    reader = PeriodicExportingMetricReader(metric_exports, export_interval_millis=1000)
    meter_provider = MeterProvider(metric_readers=[reader])
    metrics.set_meter_provider(meter_provider)

    variants = {
        "sdk_off": {"telemetry": False},
        "sdk_spans": {"trace_l1_hits": True},
        "sdk_no_l1": {},  # the default since trace_l1_hits became opt-in
    }
    # For reference: what the SDK alone charges for one span, with no cache around it.
    tracer = trace.get_tracer("benchmark")
    bare = Variant(
        "sdk_bare_span", "with s(n): pass", {"s": tracer.start_as_current_span, "n": "bare"}
    )
    samples = _measure(url, "telsdk", quick, variants, ["sdk_off", "sdk_spans"], [bare])
    tracer_provider.force_flush()
    meter_provider.force_flush()
    result = {
        "samples": {n: [s.ns_per_op, s.cpu_ns_per_op] for n, s in samples.items()},
        "spans_exported": spans.spans,
        "metric_exports": metric_exports.exports,
    }
    tracer_provider.shutdown()
    meter_provider.shutdown()
    print(json.dumps(result))


def _run_child(url: str, quick: bool) -> tuple[dict[str, Sample], int, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    code = f"from benchmarks.telemetry import child; child({url!r}, {quick!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the SDK process failed:\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    samples = {n: Sample(n, wall, cpu) for n, (wall, cpu) in result["samples"].items()}
    return samples, int(result["spans_exported"]), int(result["metric_exports"])


# -- the table -------------------------------------------------------------------------------

ROWS = [
    # (sample, label, process, baseline sample)
    ("off", "L1 hit  telemetry=False (baseline)", "no SDK", None),
    ("on", "L1 hit  telemetry=True, no SDK installed", "no SDK", "off"),
    ("sdk_off", "L1 hit  telemetry=False (baseline)", "SDK", None),
    ("sdk_spans", "L1 hit  telemetry=True, SDK, trace_l1_hits=True", "SDK", "sdk_off"),
    ("sdk_no_l1", "L1 hit  telemetry=True, SDK (default: no L1 span)", "SDK", "sdk_off"),
    ("sdk_bare_span", "  reference: a bare SDK start_as_current_span", "SDK", "sdk_off"),
    ("l2_off", "L2 hit  telemetry=False (baseline)", "no SDK", None),
    ("l2_on", "L2 hit  telemetry=True, no SDK installed", "no SDK", "l2_off"),
    ("l2_sdk_off", "L2 hit  telemetry=False (baseline)", "SDK", None),
    ("l2_sdk_spans", "L2 hit  telemetry=True, SDK: spans + duration", "SDK", "l2_sdk_off"),
]


def _table(samples: Mapping[str, Sample], quick: bool) -> None:
    l1_rounds, l2_rounds = _settings(quick)
    rows = []
    for name, label, process, base in ROWS:
        s = samples[name]
        lo, hi = s.spread
        if base is None:
            ratio = paired = "baseline"
        else:
            ratio = f"{s.median / samples[base].median:.2f}x"
            paired = f"{paired_ratio(s, samples[base]):.2f}x"
        rows.append([label, process, fmt_ns(s.median), f"{fmt_ns(lo)}-{fmt_ns(hi)}", ratio, paired])
    print_table(
        f"get_or_set, time per call (median of {l1_rounds} interleaved repeats for L1 hits, "
        f"{l2_rounds} for L2 hits; ratio vs the baseline of the same process and tier)",
        ["variant", "process", "median/op", "p25-p75", "ratio", "paired"],
        rows,
    )


def run(quick: bool = False) -> None:
    with RedisServer() as server:
        here = _measure(
            server.url,
            "telbench",
            quick,
            {"off": {"telemetry": False}, "on": {}},
            ["off", "on"],
        )
        there, spans, metric_exports = _run_child(server.url, quick)
    _table({**here, **there}, quick)
    print(
        f"SDK process: {spans:,} spans exported (BatchSpanProcessor, no-op exporter; spans "
        f"dropped on a full queue are built but not counted), {metric_exports} metric exports"
    )
    ratio = here["on"].median / here["off"].median
    paired = paired_ratio(here["on"], here["off"])
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(
        f"Target telemetry=True with no SDK <= {TARGET:.2f}x telemetry=False on an L1 hit: "
        f"{ratio:.3f}x (paired {paired:.3f}x) -> {verdict}"
    )


if __name__ == "__main__":
    from benchmarks.__main__ import main

    main(["telemetry"])
