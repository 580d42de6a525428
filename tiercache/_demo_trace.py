"""``python -m tiercache demo --trace``: the same calls, recorded through the OpenTelemetry
SDK into memory, then handed to the `Report` to print as span trees."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from decimal import Decimal
from functools import partial
from typing import Any, cast

from ._demo_output import Report
from .cache import TierCache
from .memoizing import Memoized

__all__ = ["TITLE", "record_calls", "sdk_available"]

TITLE = "8. The same calls, traced (OpenTelemetry SDK, in-memory exporter)"
PROBE_WAIT = 3.0  # seconds to wait for both instances' bus self-probes before recording

#: Opens caches A and B (fresh ones) and closes them after.
Caches = Callable[[], AbstractContextManager[tuple[TierCache, TierCache]]]


def sdk_available() -> bool:
    """Whether the OpenTelemetry SDK can be imported."""
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


def record_calls(
    report: Report,
    caches: Caches,
    load_product: Callable[[str], dict[str, Any]],
    price_of: Callable[..., Decimal],
) -> None:
    """Record a load, an L1 hit, an L2 hit and a memoized call; report their span trees."""
    from opentelemetry import trace

    exporter = _record_spans()  # before the caches are built
    if exporter is None:
        report.trace_foreign_provider(TITLE)
        return
    tracer = trace.get_tracer("tiercache.demo")

    def load() -> dict[str, Any]:
        with tracer.start_as_current_span("demo.db.query"):  # the application's own span
            return load_product("product:1")

    with caches() as (a, b):
        report.trace_intro(TITLE)
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
                report.span_tree(label, list(exporter.get_finished_spans()))
        finally:
            a.clear()
    report.trace_end()
