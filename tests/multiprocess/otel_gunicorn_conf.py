"""gunicorn configuration of the end-to-end telemetry test: the OpenTelemetry SDK wired as
docs/telemetry.md says (providers installed in each worker, in ``post_fork``), exporting
over OTLP/HTTP to ``TIERCACHE_TEST_OTLP`` (the test's receiver on loopback).

Metrics are exported when the worker exits (the periodic interval is longer than the test),
so each worker sends its final cumulative counts once; spans are flushed then too.
"""

from __future__ import annotations

import os
from typing import Any

_providers: list[Any] = []


def post_fork(server: Any, worker: Any) -> None:
    """Install the SDK in the new worker, before it serves anything."""
    from opentelemetry import metrics, trace
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    endpoint = os.environ["TIERCACHE_TEST_OTLP"]
    resource = Resource.create(
        {"service.name": "tiercache-e2e", "service.instance.id": str(os.getpid())}
    )
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=5))
    )
    trace.set_tracer_provider(tracer_provider)
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics", timeout=5),
        export_interval_millis=600_000,
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    metrics.set_meter_provider(meter_provider)
    _providers[:] = [tracer_provider, meter_provider]


def worker_exit(server: Any, worker: Any) -> None:
    """Flush spans and send the final metric points before the worker goes."""
    for provider in _providers:
        provider.shutdown()
