"""OpenTelemetry spans and metrics (``telemetry.py``, ``traced.py``): exact span names,
parents and attributes through the SDK's in-memory span exporter, and every metric through
its in-memory metric reader, on fakeredis.

The global tracer and meter providers can be set only once per process: this module installs
one SDK ``TracerProvider`` and one ``MeterProvider`` before it builds any cache (a cache
decides at construction, then about once a second from its read path, whether it records
spans). A switchable sampler records only while this module runs, so caches of later tests in
the same session do not fill the exporter. What happens with no SDK at all is tested in a
subprocess: ``tests/integration/test_telemetry_api_only.py``.

Every test uses a namespace of its own, so its metric points are its caches' alone.
"""

from __future__ import annotations

import gc
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import fakeredis
import pytest
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, StatusCode, TraceState
from opentelemetry.util.types import Attributes

from tests.support import WAIT, BoomError, CacheFactory, FakeClock, subscribed, wait_until
from tiercache import Breaker, LoaderTimeoutError, TierCache
from tiercache import metrics as tiercache_metrics
from tiercache import telemetry as tel

SECRET = "user:alice@example.com"  # a key that must never show up in a span by default


# -- one SDK for the whole module ------------------------------------------------------------------


class _Switch(Sampler):
    """Samples every span while ``on``; drops them all (non-recording, cheap) otherwise."""

    def __init__(self) -> None:
        self.on = False

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if not self.on:
            return SamplingResult(Decision.DROP)
        return ALWAYS_ON.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return "tiercache-tests-switch"


class Sdk:
    """The process's one tracer provider and meter provider, and where they record."""

    def __init__(self) -> None:
        self.switch = _Switch()
        self.exporter = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        self.tracer_provider = TracerProvider(sampler=self.switch)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        # Every test uses a namespace of its own, and the monotonic counters keep closed
        # instances' totals, so one test process accumulates thousands of attribute sets:
        # past the SDK's default cardinality limit (2,000) new ones would be folded into an
        # overflow point and a test's own namespace would vanish from its metrics.
        unlimited = View(meter_name=tel.METER_NAME, aggregation_cardinality_limit=1_000_000)
        self.meter_provider = MeterProvider(metric_readers=[self.reader], views=[unlimited])


_SDK: Sdk | None = None


def _install() -> Sdk:
    """Set the global providers once per process (they cannot be replaced)."""
    global _SDK
    if _SDK is None:
        if tel.tracing_installed():
            pytest.skip("another TracerProvider is already installed in this process")
        sdk = Sdk()
        trace.set_tracer_provider(sdk.tracer_provider)
        metrics.set_meter_provider(sdk.meter_provider)
        if (
            trace.get_tracer_provider() is not sdk.tracer_provider
            or metrics.get_meter_provider() is not sdk.meter_provider
        ):
            pytest.skip("the global OpenTelemetry providers were set by someone else")
        _SDK = sdk
    return _SDK


@pytest.fixture(scope="module", autouse=True)
def sdk() -> Iterator[Sdk]:
    """The SDK, recording spans while this module's tests run."""
    installed = _install()
    # Caches that earlier test modules built and closed left their final counts in the
    # monotonic counters (6 series per namespace for tiercache.requests alone): reported to
    # this SDK, hundreds of namespaces would pass its limit of 2000 attribute sets per
    # instrument, and later points would go to an overflow series.
    tiercache_metrics._forget_retired_totals()
    installed.switch.on = True
    try:
        yield installed
    finally:
        installed.switch.on = False
        installed.exporter.clear()


@pytest.fixture
def exporter(sdk: Sdk) -> InMemorySpanExporter:
    """The span exporter, emptied for this test."""
    sdk.exporter.clear()
    return sdk.exporter


MakeCache = Callable[..., TierCache]


@pytest.fixture
def make_cache(
    fake_redis: fakeredis.FakeRedis, namespace: str, exporter: InMemorySpanExporter
) -> Iterator[MakeCache]:
    """Build caches on the test's fakeredis server and namespace; closed after the test."""
    with CacheFactory(fake_redis, namespace=namespace) as make:
        yield make


# -- span helpers ----------------------------------------------------------------------------------


def finished(exporter: InMemorySpanExporter, name: str | None = None) -> list[ReadableSpan]:
    spans = list(exporter.get_finished_spans())
    return [s for s in spans if name is None or s.name == name]


def only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    """The one finished span called ``name``."""
    spans = finished(exporter, name)
    assert len(spans) == 1, f"expected one {name!r} span, got {[s.name for s in spans]}"
    return spans[0]


def children(exporter: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [
        s
        for s in exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]


def child(exporter: InMemorySpanExporter, parent: ReadableSpan, name: str) -> ReadableSpan:
    """The one child of ``parent`` called ``name``."""
    found = [s for s in children(exporter, parent) if s.name == name]
    names = [s.name for s in children(exporter, parent)]
    assert len(found) == 1, f"expected one {name!r} under {parent.name!r}, got {names}"
    return found[0]


def is_child(span: ReadableSpan, parent: ReadableSpan) -> bool:
    assert parent.context is not None
    assert span.context is not None
    return (
        span.parent is not None
        and span.parent.span_id == parent.context.span_id
        and span.context.trace_id == parent.context.trace_id
    )


#: The first word of every Redis span's name (the conventions name them after the command).
REDIS_COMMANDS = {"GET", "MGET", "SET", "PIPELINE", "UNLINK", "PUBLISH", "EVALSHA", "INCR"}


def is_redis(name: str) -> bool:
    """Whether ``name`` is the name of a Redis round-trip span."""
    return name.split(" ", 1)[0] in REDIS_COMMANDS


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def answer(span: ReadableSpan) -> tuple[Any, Any]:
    """(tiercache.tier, tiercache.result) of an operation span."""
    a = attrs(span)
    return a.get(tel.ATTR_TIER), a.get(tel.ATTR_RESULT)


def own(exporter: InMemorySpanExporter, namespace: str) -> list[ReadableSpan]:
    """Every finished span of caches in ``namespace``."""
    return [
        s for s in exporter.get_finished_spans() if attrs(s).get(tel.ATTR_NAMESPACE) == namespace
    ]


def load_value(value: Any = "loaded") -> Callable[[], Any]:
    return lambda: value


def must_not_load() -> Any:
    raise AssertionError("the loader must not run")


def failing() -> Any:
    raise BoomError("the database is down")


# -- metric helpers --------------------------------------------------------------------------------


def collect(sdk: Sdk) -> dict[str, Metric]:
    """Every tiercache metric of one collection (runs the observable callbacks)."""
    data = sdk.reader.get_metrics_data()
    found: dict[str, Metric] = {}
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name == tel.METER_NAME:
                for metric in scope.metrics:
                    found[metric.name] = metric
    return found


Key = frozenset[tuple[str, Any]]


def points(sdk: Sdk, name: str, namespace: str) -> dict[Key, Any]:
    """The points of metric ``name`` for ``namespace``, keyed by their other attributes:
    a number for a sum, the data point itself for a histogram."""
    metric = collect(sdk).get(name)
    if metric is None:
        return {}
    out: dict[Key, Any] = {}
    for point in metric.data.data_points:
        a = dict(point.attributes or {})
        if a.pop(tel.ATTR_NAMESPACE, None) != namespace:
            continue
        key: Key = frozenset(a.items())
        out[key] = point.value if isinstance(point, NumberDataPoint) else point
    return out


def value(sdk: Sdk, name: str, namespace: str, **attributes: str) -> Any:
    """The single value of ``name`` for ``namespace`` and ``attributes`` (None if absent)."""
    return points(sdk, name, namespace).get(frozenset(attributes.items()))


def requests(sdk: Sdk, namespace: str) -> dict[tuple[str, str], int]:
    found = points(sdk, tel.METRIC_REQUESTS, namespace)
    return {(dict(k)[tel.ATTR_TIER], dict(k)[tel.ATTR_RESULT]): v for k, v in found.items()}


def nonzero(found: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    return {key: count for key, count in found.items() if count}


def summed(caches: Sequence[TierCache], name: str) -> int:
    return sum(cache.stats()[name] for cache in caches)


# -- span shapes: the read path --------------------------------------------------------------------


def test_spans_come_from_the_tiercache_tracer(
    make_cache: MakeCache, exporter: InMemorySpanExporter
) -> None:
    """Spans are made by a tracer named ``tiercache`` with the package version."""
    from tiercache import __version__

    cache = make_cache()
    cache.get_or_set("k", load_value())
    span = only(exporter, tel.SPAN_GET_OR_SET)
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "tiercache"
    assert span.instrumentation_scope.version == __version__


def test_l1_hit_is_one_root_span_with_tier_l1_and_result_hit(
    make_cache: MakeCache, exporter: InMemorySpanExporter, namespace: str
) -> None:
    """An L1 hit through get_or_set (trace_l1_hits=True): one INTERNAL root span, tier=l1,
    result=hit, no child."""
    cache = make_cache(trace_l1_hits=True)
    cache.get_or_set("k", load_value())
    exporter.clear()
    assert cache.get_or_set("k", must_not_load) == "loaded"
    span = only(exporter, tel.SPAN_GET_OR_SET)
    assert span.parent is None
    assert span.kind is SpanKind.INTERNAL
    assert attrs(span) == {
        tel.ATTR_NAMESPACE: namespace,
        tel.ATTR_TIER: "l1",
        tel.ATTR_RESULT: "hit",
    }
    assert span.status.status_code is StatusCode.UNSET
    assert children(exporter, span) == []
    # The traced read shadows the method on this instance while spans are recorded.
    assert "get_or_set" in cache.__dict__
    assert "get" in cache.__dict__


def test_get_l1_hit_span(
    make_cache: MakeCache, exporter: InMemorySpanExporter, namespace: str
) -> None:
    """An L1 hit through get (trace_l1_hits=True): a ``tiercache.get`` span, tier=l1."""
    cache = make_cache(trace_l1_hits=True)
    cache.set("k", 1)
    exporter.clear()
    assert cache.get("k") == 1
    span = only(exporter, tel.SPAN_GET)
    assert span.parent is None
    assert attrs(span) == {
        tel.ATTR_NAMESPACE: namespace,
        tel.ATTR_TIER: "l1",
        tel.ATTR_RESULT: "hit",
    }


def test_l2_hit_span_has_a_redis_client_child(
    make_cache: MakeCache,
    exporter: InMemorySpanExporter,
    namespace: str,
    fake_redis: fakeredis.FakeRedis,
) -> None:
    """A second instance answers from L2: tier=l2, result=hit, the value's size, and a
    CLIENT child ``GET`` with the database semantic conventions."""
    a, b = make_cache(), make_cache()
    a.get_or_set("k", load_value({"id": 1}))
    exporter.clear()
    assert b.get_or_set("k", must_not_load) == {"id": 1}
    span = only(exporter, tel.SPAN_GET_OR_SET)
    assert span.parent is None
    assert answer(span) == ("l2", "hit")
    assert attrs(span)[tel.ATTR_VALUE_SIZE] > 0
    assert span.status.status_code is StatusCode.UNSET
    get = child(exporter, span, "GET")
    assert get.kind is SpanKind.CLIENT
    kwargs = fake_redis.connection_pool.connection_kwargs
    assert attrs(get) == {
        "db.system.name": "redis",
        "db.system": "redis",
        "db.namespace": "0",
        "db.operation.name": "GET",
        "server.address": kwargs["host"],
        "server.port": kwargs["port"],
        tel.ATTR_NAMESPACE: namespace,
        tel.ATTR_OPERATION: "GET",
    }
    assert get.status.status_code is StatusCode.UNSET
    # Nothing but Redis round trips under an L2 hit.
    assert all(is_redis(s.name) for s in children(exporter, span))


def test_get_l2_hit_and_miss_spans(make_cache: MakeCache, exporter: InMemorySpanExporter) -> None:
    """get: an L2 hit says tier=l2/result=hit, a key in neither tier tier=l2/result=miss."""
    a, b = make_cache(), make_cache()
    a.set("k", 1)
    exporter.clear()
    assert b.get("k") == 1
    assert b.get("absent", "dflt") == "dflt"
    hit, miss = finished(exporter, tel.SPAN_GET)
    assert answer(hit) == ("l2", "hit")
    assert answer(miss) == ("l2", "miss")
    assert child(exporter, miss, "GET").status.status_code is StatusCode.UNSET


def test_load_span_nests_under_get_or_set_and_the_loaders_spans_under_it(
    make_cache: MakeCache, exporter: InMemorySpanExporter, namespace: str
) -> None:
    """A load: tier=loader, result=miss; a ``tiercache.load`` child; a span the loader
    opens itself (its database query) is a child of ``tiercache.load``."""
    tracer = trace.get_tracer("app")
    cache = make_cache()

    def loader() -> str:
        with tracer.start_as_current_span("app.db.query"):
            return "row"

    assert cache.get_or_set("k", loader) == "row"
    span = only(exporter, tel.SPAN_GET_OR_SET)
    assert span.parent is None
    assert answer(span) == ("loader", "miss")
    assert attrs(span)[tel.ATTR_VALUE_SIZE] > 0
    load = child(exporter, span, tel.SPAN_LOAD)
    assert load.kind is SpanKind.INTERNAL
    assert attrs(load) == {tel.ATTR_NAMESPACE: namespace}
    query = only(exporter, "app.db.query")
    assert is_child(query, load)
    # The L2 miss, the lease and the write are Redis children of the operation.
    names = [s.name for s in children(exporter, span)]
    assert "GET" in names
    assert "EVALSHA compare_and_set" in names  # the lease
    assert "EVALSHA lease_write" in names  # the write under the lease
    assert all(n == tel.SPAN_LOAD or is_redis(n) for n in names)


def test_a_load_on_a_background_worker_keeps_its_parent(
    make_cache: MakeCache, exporter: InMemorySpanExporter
) -> None:
    """With a loader timeout the load runs on a worker thread, in a copy of the caller's
    context: ``tiercache.load`` is still a child of the operation, the loader's span of it."""
    tracer = trace.get_tracer("app")
    cache = make_cache(hard_timeout=WAIT)
    threads: list[str] = []

    def loader() -> str:
        threads.append(threading.current_thread().name)
        with tracer.start_as_current_span("app.db.query"):
            return "row"

    assert cache.get_or_set("k", loader) == "row"
    assert threads == ["tiercache-load-0"]  # it did run on a background worker
    span = only(exporter, tel.SPAN_GET_OR_SET)
    load = child(exporter, span, tel.SPAN_LOAD)
    assert is_child(only(exporter, "app.db.query"), load)


def test_a_caller_that_waited_for_another_callers_load_is_marked_coalesced(
    make_cache: MakeCache, exporter: InMemorySpanExporter
) -> None:
    """Single-flight: the caller that waited for another thread's load says
    tier=loader, result=miss, ``tiercache.coalesced`` = true, and has no load span (only
    the L2 read it made before joining)."""
    cache = make_cache()
    started, release = threading.Event(), threading.Event()
    results: list[str] = []

    def slow() -> str:
        started.set()
        assert release.wait(WAIT)
        return "v"

    leader = threading.Thread(target=lambda: results.append(cache.get_or_set("k", slow)))
    leader.start()
    assert started.wait(WAIT)
    follower = threading.Thread(target=lambda: results.append(cache.get_or_set("k", must_not_load)))
    follower.start()

    def follower_waits() -> bool:
        call = cache._flight._calls.get("k")
        return call is not None and call.done is not None

    assert wait_until(follower_waits)
    release.set()
    leader.join(WAIT)
    follower.join(WAIT)
    assert results == ["v", "v"]
    spans = finished(exporter, tel.SPAN_GET_OR_SET)
    assert len(spans) == 2
    (waited,) = [s for s in spans if attrs(s).get(tel.ATTR_COALESCED) is True]
    (loaded,) = [s for s in spans if tel.ATTR_COALESCED not in attrs(s)]
    assert answer(waited) == answer(loaded) == ("loader", "miss")
    # The follower read L2 once (a miss) before joining the load; it never loaded itself.
    assert [s.name for s in children(exporter, waited)] == ["GET"]
    child(exporter, loaded, tel.SPAN_LOAD)


def test_stale_serve_says_tier_stale(make_cache: MakeCache, exporter: InMemorySpanExporter) -> None:
    """Fail-safe: the loader raises and an expired value inside stale_ttl is served: the
    operation is tier=stale/result=stale and not an error; the load span is the error."""
    clock = FakeClock()
    cache = make_cache(stale_ttl=600, timer=clock)
    cache.get_or_set("k", load_value("old"), ttl=10)
    clock.advance(11)
    exporter.clear()
    assert cache.get_or_set("k", failing, ttl=10) == "old"
    span = only(exporter, tel.SPAN_GET_OR_SET)
    assert answer(span) == ("stale", "stale")
    assert span.status.status_code is StatusCode.UNSET
    assert [e.name for e in span.events] == []
    load = child(exporter, span, tel.SPAN_LOAD)
    assert load.status.status_code is StatusCode.ERROR
    assert [e.name for e in load.events] == ["exception"]
    assert cache.stats()["stale_serves"] == 1


def test_l2_error_is_an_error_on_the_redis_span_only(
    make_cache: MakeCache, exporter: InMemorySpanExporter, fake_redis: fakeredis.FakeRedis
) -> None:
    """Redis down: the ``GET`` child has status ERROR and an exception event, and its
    ``error.type`` names redis-py's exception (the cause of tiercache's L2Error); the
    operation span is not an error and answers from the loader."""
    cache = make_cache()
    assert cache.get("warm") is None  # listener subscribed while Redis is up
    fake_redis.connection_pool.connection_kwargs["server"].connected = False
    exporter.clear()
    assert cache.get_or_set("k", load_value(7)) == 7
    span = only(exporter, tel.SPAN_GET_OR_SET)
    assert span.status.status_code is StatusCode.UNSET
    assert span.events == ()
    assert answer(span) == ("loader", "miss")
    get = child(exporter, span, "GET")
    assert get.status.status_code is StatusCode.ERROR
    assert get.status.description == "L2Error"
    assert attrs(get)["error.type"] == "redis.exceptions.ConnectionError"
    (event,) = get.events
    assert event.name == "exception"
    event_attrs = dict(event.attributes or {})
    assert event_attrs["exception.type"].endswith("L2Error")
    assert "redis GET failed" in event_attrs["exception.message"]  # tiercache's own message
    assert event_attrs["exception.escaped"] == "True"
    child(exporter, span, tel.SPAN_LOAD)
    assert cache.stats()["l2_errors"] == 1


def test_loader_exception_marks_the_operation_span_as_error(
    make_cache: MakeCache, exporter: InMemorySpanExporter
) -> None:
    """A loader that raises (nothing stale to serve): the operation span and its load span
    have status ERROR and an exception event; the exception reaches the caller unchanged."""
    cache = make_cache()
    with pytest.raises(BoomError):
        cache.get_or_set("k", failing)
    span = only(exporter, tel.SPAN_GET_OR_SET)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "BoomError"
    (event,) = span.events
    assert event.name == "exception"
    event_attrs = dict(event.attributes or {})
    assert event_attrs["exception.type"] == "tests.support.BoomError"
    assert event_attrs["exception.escaped"] == "True"
    assert attrs(span)["error.type"] == "tests.support.BoomError"
    # A loader's message may hold keys or values: left out by default (record_keys="raw"
    # keeps it), here and in the stack trace, whose frames stay.
    assert event_attrs["exception.message"] == tel.OMITTED_MESSAGE
    stack = event_attrs["exception.stacktrace"]
    assert "in failing" in stack
    assert stack.endswith(f"tests.support.BoomError: {tel.OMITTED_MESSAGE}\n")
    load = child(exporter, span, tel.SPAN_LOAD)
    assert load.status.status_code is StatusCode.ERROR
    assert [e.name for e in load.events] == ["exception"]


def test_memoized_call_is_a_memoize_span_over_get_or_set(
    make_cache: MakeCache, exporter: InMemorySpanExporter, namespace: str
) -> None:
    """A memoized call: ``tiercache.memoize`` (code.function.name = the qualified name) is
    the parent of ``tiercache.get_or_set``, on a miss and on an L1 hit (trace_l1_hits=True)."""
    cache = make_cache(trace_l1_hits=True)

    @cache.memoize(ttl=60)
    def price(sku: str) -> int:
        return len(sku)

    assert price("A1") == 2
    memo = only(exporter, tel.SPAN_MEMOIZE)
    assert memo.parent is None
    assert memo.kind is SpanKind.INTERNAL
    qualified = f"{__name__}.{price.__qualname__}"  # module + qualname, as the convention says
    assert attrs(memo) == {tel.ATTR_NAMESPACE: namespace, tel.ATTR_FUNCTION: qualified}
    assert answer(child(exporter, memo, tel.SPAN_GET_OR_SET)) == ("loader", "miss")

    exporter.clear()
    assert price("A1") == 2
    memo = only(exporter, tel.SPAN_MEMOIZE)
    assert answer(child(exporter, memo, tel.SPAN_GET_OR_SET)) == ("l1", "hit")


# -- span shapes: writes and batches ---------------------------------------------------------------


def _root(exporter: InMemorySpanExporter, name: str, namespace: str) -> ReadableSpan:
    span = only(exporter, name)
    assert span.parent is None
    assert span.kind is SpanKind.INTERNAL
    assert attrs(span)[tel.ATTR_NAMESPACE] == namespace
    assert span.status.status_code is StatusCode.UNSET
    return span


def _redis_children(exporter: InMemorySpanExporter, span: ReadableSpan) -> set[str]:
    kids = children(exporter, span)
    assert all(s.kind is SpanKind.CLIENT for s in kids)
    return {s.name for s in kids}


def _bumps_then_publishes(exporter: InMemorySpanExporter, span: ReadableSpan) -> None:
    """A version bump in Redis (INCR, or a script), then the PUBLISH, under ``span``."""
    names = [s.name for s in sorted(children(exporter, span), key=lambda s: s.start_time or 0)]
    assert len(names) >= 2, names
    assert names[-1] == "PUBLISH"
    assert names[-2] in ("INCR", "EVALSHA version_bump"), names
    assert _redis_children(exporter, span) <= {"INCR", "EVALSHA version_bump", "MGET", "PUBLISH"}


def test_set_span(make_cache: MakeCache, exporter: InMemorySpanExporter, namespace: str) -> None:
    """set: a ``tiercache.set`` root over one round trip. By default (values sent with the
    message) that is one script writing and publishing atomically, ``EVALSHA set_publish``."""
    cache = make_cache()
    cache.get("warm")
    exporter.clear()
    cache.set("k", 1)
    span = _root(exporter, tel.SPAN_SET, namespace)
    assert attrs(span) == {tel.ATTR_NAMESPACE: namespace}
    children = _redis_children(exporter, span)
    assert "EVALSHA set_publish" in children
    assert not {"SET", "PUBLISH", "PIPELINE"} & children  # one round trip for the write
    script = child(exporter, span, "EVALSHA set_publish")
    assert attrs(script)["db.operation.name"] == "EVALSHA"
    assert attrs(script)["db.stored_procedure.name"] == "set_publish"


def test_set_span_invalidating_only(
    make_cache: MakeCache, exporter: InMemorySpanExporter, namespace: str
) -> None:
    """set with ``propagate_values=0``: a pipeline of the SET and the PUBLISH that follows it
    (a batch of mixed commands is ``PIPELINE`` in the conventions), one round trip."""
    cache = make_cache(propagate_values=0)
    cache.get("warm")
    exporter.clear()
    cache.set("k", 1)
    span = _root(exporter, tel.SPAN_SET, namespace)
    children = _redis_children(exporter, span)
    assert "PIPELINE" in children
    assert not {"SET", "PUBLISH"} & children  # not two round trips
    set_span = child(exporter, span, "PIPELINE")
    assert attrs(set_span)["db.operation.name"] == "PIPELINE"
    assert attrs(set_span)[tel.ATTR_OPERATION] == "PIPELINE"


def test_set_many_span(
    make_cache: MakeCache, exporter: InMemorySpanExporter, namespace: str
) -> None:
    """set_many: ``tiercache.set_many`` with the number of keys, over one round trip: the
    three SETs and their PUBLISH in one script (values on, the default) or one pipeline."""
    for options, operation in (({}, "EVALSHA set_publish"), ({"propagate_values": 0}, "PIPELINE")):
        cache = make_cache(**options)
        cache.get("warm")
        exporter.clear()
        cache.set_many({"a": 1, "b": 2, "c": 3})
        span = _root(exporter, tel.SPAN_SET_MANY, namespace)
        assert attrs(span) == {tel.ATTR_NAMESPACE: namespace, tel.ATTR_KEY_COUNT: 3}
        children = _redis_children(exporter, span)
        assert operation in children
        assert not {"SET", "PUBLISH"} & children


def test_delete_span(make_cache: MakeCache, exporter: InMemorySpanExporter, namespace: str) -> None:
    """delete: ``tiercache.delete`` over one round trip: UNLINK and PUBLISH pipelined."""
    cache = make_cache()
    cache.set("k", 1)
    exporter.clear()
    cache.delete("k")
    span = _root(exporter, tel.SPAN_DELETE, namespace)
    assert _redis_children(exporter, span) == {"PIPELINE"}


def test_delete_many_span(
    make_cache: MakeCache, exporter: InMemorySpanExporter, namespace: str
) -> None:
    """delete_many: ``tiercache.delete_many`` with the number of keys, one round trip (one
    UNLINK and its PUBLISH, pipelined)."""
    cache = make_cache()
    cache.set_many({"a": 1, "b": 2})
    exporter.clear()
    cache.delete_many(["a", "b"])
    span = _root(exporter, tel.SPAN_DELETE_MANY, namespace)
    assert attrs(span)[tel.ATTR_KEY_COUNT] == 2
    assert _redis_children(exporter, span) == {"PIPELINE"}
    assert len(children(exporter, span)) == 1


def test_get_many_span(
    make_cache: MakeCache, exporter: InMemorySpanExporter, namespace: str
) -> None:
    """get_many: ``tiercache.get_many`` over one MGET for the keys L1 did not have."""
    a, b = make_cache(), make_cache()
    a.set_many({"x": 1, "y": 2})
    b.set("z", 3)
    exporter.clear()
    assert b.get_many(["x", "y", "z"]) == {"x": 1, "y": 2, "z": 3}
    span = _root(exporter, tel.SPAN_GET_MANY, namespace)
    mget = [s for s in children(exporter, span) if s.name == "MGET"]
    assert mget
    assert all(attrs(s)["db.operation.name"] == "MGET" for s in mget)


def test_invalidate_tags_span(
    make_cache: MakeCache, exporter: InMemorySpanExporter, namespace: str
) -> None:
    """invalidate_tags: ``tiercache.invalidate_tags`` over the version INCR and PUBLISH."""
    cache = make_cache()
    cache.set("k", 1, tags=("users",))
    exporter.clear()
    cache.invalidate_tags("users")
    span = _root(exporter, tel.SPAN_INVALIDATE_TAGS, namespace)
    _bumps_then_publishes(exporter, span)


def test_clear_span(make_cache: MakeCache, exporter: InMemorySpanExporter, namespace: str) -> None:
    """clear: ``tiercache.clear`` over the namespace-version INCR and PUBLISH."""
    cache = make_cache()
    cache.get("warm")
    exporter.clear()
    cache.clear()
    span = _root(exporter, tel.SPAN_CLEAR, namespace)
    _bumps_then_publishes(exporter, span)


def test_every_operation_span_name_is_a_documented_constant(
    make_cache: MakeCache, exporter: InMemorySpanExporter
) -> None:
    """Every span a workload produces is in SPAN_NAMES or a Redis command's span."""
    cache = make_cache(trace_l1_hits=True)

    @cache.memoize
    def f(x: int) -> int:
        return x

    _workload(cache, f, "k")
    names = {s.name for s in finished(exporter)}
    assert set(tel.SPAN_NAMES) <= names
    assert all(n in tel.SPAN_NAMES or is_redis(n) for n in names)


# -- keys in spans ---------------------------------------------------------------------------------


def _workload(cache: TierCache, memoized: Callable[[Any], Any], key: str) -> None:
    """Every public operation, on ``key``."""
    cache.get_or_set(key, load_value())  # load
    cache.get_or_set(key, must_not_load)  # L1 hit
    cache.get(key)
    cache.get(key + ":absent")
    cache.set(key, 2, tags=("t",))
    cache.get_many([key, key + ":other"])
    cache.set_many({key: 3, key + ":other": 4})
    cache.delete(key)
    cache.delete_many([key, key + ":other"])
    with pytest.raises(BoomError):
        cache.get_or_set(key, failing)
    memoized(key)
    memoized(key)
    cache.add(key, 5)
    cache.incr(key)
    cache.touch(key, 60)
    cache.invalidate_tags("t")
    cache.clear()


def _every_string_in(span: ReadableSpan) -> Iterator[str]:
    yield span.name
    for name, val in attrs(span).items():
        yield name
        yield str(val)
    for event in span.events:
        for name, val in dict(event.attributes or {}).items():
            yield name
            yield str(val)


def test_no_raw_key_in_any_span_by_default(
    make_cache: MakeCache, exporter: InMemorySpanExporter, namespace: str
) -> None:
    """By default no span holds a key: every attribute value of every span is scanned."""
    cache, other = make_cache(), make_cache()

    @cache.memoize(ttl=60)
    def profile(email: str) -> str:
        return email.upper()

    other.set(SECRET + ":other", 1)
    exporter.clear()
    _workload(cache, profile, SECRET)
    spans = finished(exporter)
    assert len(own(exporter, namespace)) > 20
    for span in spans:
        for text in _every_string_in(span):
            assert "alice" not in text, (span.name, text)
        assert tel.ATTR_KEY not in attrs(span)
        assert tel.ATTR_KEY_HASH not in attrs(span)


def test_record_keys_hash_records_a_digest(
    make_cache: MakeCache, exporter: InMemorySpanExporter
) -> None:
    """record_keys="hash": ``tiercache.key.hash`` is a BLAKE2b digest of the key, on misses,
    L1 hits and writes; the key itself is nowhere."""
    digest = hashlib.blake2b(SECRET.encode(), digest_size=8).hexdigest()
    cache = make_cache(record_keys="hash", trace_l1_hits=True)
    cache.get_or_set(SECRET, load_value())
    cache.get_or_set(SECRET, must_not_load)
    cache.get(SECRET)
    cache.set(SECRET, 1)
    cache.delete(SECRET)
    spans = [s for s in finished(exporter) if not is_redis(s.name)]
    names = [s.name for s in spans if s.name != tel.SPAN_LOAD]
    assert sorted(names) == sorted(
        [tel.SPAN_GET_OR_SET, tel.SPAN_GET_OR_SET, tel.SPAN_GET, tel.SPAN_SET, tel.SPAN_DELETE]
    )
    for span in spans:
        if span.name == tel.SPAN_LOAD:
            continue
        assert attrs(span)[tel.ATTR_KEY_HASH] == digest, span.name
        assert tel.ATTR_KEY not in attrs(span)
    for span in finished(exporter):
        assert all("alice" not in text for text in _every_string_in(span))


def test_record_keys_raw_records_the_key(
    make_cache: MakeCache, exporter: InMemorySpanExporter
) -> None:
    """record_keys="raw": ``tiercache.key`` is the key itself."""
    cache = make_cache(record_keys="raw")
    cache.get_or_set(SECRET, load_value())
    cache.get_or_set(SECRET, must_not_load)
    cache.set(SECRET, 1)
    for span in finished(exporter):
        if span.name in (tel.SPAN_GET_OR_SET, tel.SPAN_SET):
            assert attrs(span)[tel.ATTR_KEY] == SECRET
            assert tel.ATTR_KEY_HASH not in attrs(span)


def test_record_keys_on_memoize_spans(
    make_cache: MakeCache, exporter: InMemorySpanExporter
) -> None:
    """A memoize span records the memoize key the same way (here: hashed)."""
    cache = make_cache(record_keys="hash", trace_l1_hits=True)

    @cache.memoize
    def f(x: int) -> int:
        return x

    f(1)
    memo = only(exporter, tel.SPAN_MEMOIZE)
    expected = hashlib.blake2b(f.cache_key(1).encode(), digest_size=8).hexdigest()
    assert attrs(memo)[tel.ATTR_KEY_HASH] == expected


# -- the options -----------------------------------------------------------------------------------


def test_trace_l1_hits_false_leaves_l1_hits_out_of_traces_but_in_metrics(
    make_cache: MakeCache, exporter: InMemorySpanExporter, namespace: str, sdk: Sdk
) -> None:
    """trace_l1_hits=False: no span for an L1 hit (get_or_set or get), a span for each miss,
    and the hits still count in ``tiercache.requests``."""
    cache = make_cache(trace_l1_hits=False)
    assert "get_or_set" not in cache.__dict__
    cache.get_or_set("k", load_value())
    assert answer(only(exporter, tel.SPAN_GET_OR_SET)) == ("loader", "miss")
    exporter.clear()
    for _ in range(3):
        cache.get_or_set("k", must_not_load)
        cache.get("k")
    assert own(exporter, namespace) == []
    assert cache.get("absent") is None
    assert answer(only(exporter, tel.SPAN_GET)) == ("l2", "miss")
    assert cache.stats()["l1_hits"] == 6
    assert requests(sdk, namespace)["l1", "hit"] == 6


def test_trace_l1_hits_false_leaves_memoized_l1_hits_out_of_traces(
    make_cache: MakeCache, exporter: InMemorySpanExporter, namespace: str
) -> None:
    """trace_l1_hits=False: a memoized call answered by L1 opens no span either."""
    cache = make_cache(trace_l1_hits=False)

    @cache.memoize
    def f(x: int) -> int:
        return x

    f(1)
    exporter.clear()
    f(1)
    assert own(exporter, namespace) == []


def _dict_materialized(obj: object) -> bool:
    """Whether CPython built a ``__dict__`` object for ``obj`` (3.11+ keeps the attributes of
    most instances inline, which its specialized attribute loads need)."""
    return any(type(r) is dict and "_settings" in r for r in gc.get_referents(obj))


class _Inline:
    def __init__(self) -> None:
        self._settings = 1


def test_trace_l1_hits_false_keeps_the_instance_attributes_inline(make_cache: MakeCache) -> None:
    """With an SDK and trace_l1_hits=False the cache never materializes its ``__dict__``
    (which would slow every L1 hit of that instance)."""
    probe = _Inline()
    if _dict_materialized(probe):
        pytest.skip("this interpreter keeps no instance attributes inline")
    _ = probe.__dict__
    if not _dict_materialized(probe):
        pytest.skip("cannot tell a materialized __dict__ on this interpreter")
    plain = make_cache(telemetry=False)
    assert not _dict_materialized(plain)
    cache = make_cache(trace_l1_hits=False)
    assert not _dict_materialized(cache)


def test_telemetry_false_records_no_span_and_no_metric(
    make_cache: MakeCache, exporter: InMemorySpanExporter, namespace: str, sdk: Sdk
) -> None:
    """telemetry=False: no span at all (not even Redis ones, not even around the loader),
    nothing in any metric, and the reads are never shadowed."""
    cache = make_cache(telemetry=False)
    seen: list[bool] = []

    @cache.memoize
    def f(x: int) -> int:
        seen.append(trace.get_current_span().get_span_context().is_valid)
        return x

    _workload(cache, f, "k")
    assert seen == [False]  # the loader ran outside any span
    assert "get_or_set" not in cache.__dict__
    assert own(exporter, namespace) == []
    for name in collect(sdk):
        assert points(sdk, name, namespace) == {}, name


# -- metrics ---------------------------------------------------------------------------------------


def test_instruments_have_the_documented_names_units_and_kinds(
    make_cache: MakeCache, sdk: Sdk
) -> None:
    """Every instrument is there, with its unit and kind (cumulative monotonic sums for
    counters, non-monotonic sums for the two gauges, a histogram in seconds)."""
    cache = make_cache()
    cache.get_or_set("k", load_value())
    found = collect(sdk)
    expected_sums = {
        tel.METRIC_REQUESTS: ("{request}", True),
        tel.METRIC_LOADS: ("{load}", True),
        tel.METRIC_LOAD_ERRORS: ("{load}", True),
        tel.METRIC_STALE: ("{request}", True),
        tel.METRIC_INV_SENT: ("{message}", True),
        tel.METRIC_INV_RECEIVED: ("{message}", True),
        tel.METRIC_L2_ERRORS: ("{error}", True),
        tel.METRIC_BREAKER: ("{instance}", False),
        tel.METRIC_L1_ENTRIES: ("{entry}", False),
        tel.METRIC_L1_BYTES: ("By", False),
        tel.METRIC_WRITES_DROPPED: ("{write}", True),
        tel.METRIC_WRITE_BEHIND_PENDING: ("{write}", False),
    }
    for name, (unit, monotonic) in expected_sums.items():
        metric = found[name]
        assert metric.unit == unit, name
        assert isinstance(metric.data, Sum), name
        assert metric.data.is_monotonic is monotonic, name
        assert metric.description, name
    duration = found[tel.METRIC_DURATION]
    assert duration.unit == "s"
    assert isinstance(duration.data, Histogram)
    assert set(found) == {*expected_sums, tel.METRIC_DURATION}


def test_requests_count_each_read_once_by_the_tier_that_answered(
    make_cache: MakeCache, sdk: Sdk, namespace: str
) -> None:
    """``tiercache.requests``: one point per read (not per tier looked in), with the tier
    that answered; a stale serve counts once (not also as a miss); misses and errors are
    reads too, so the series add up to the reads and hit ratios come out right. Two caches
    on one namespace are summed."""
    clock = FakeClock()
    a = make_cache(stale_ttl=600, timer=clock)
    b = make_cache(stale_ttl=600, timer=clock)
    a.get_or_set("k", load_value())  # the loader answers
    a.get_or_set("k", must_not_load)  # L1
    a.get("k")  # L1
    b.get_or_set("k", must_not_load)  # L2
    b.get("absent")  # nothing anywhere
    with pytest.raises(BoomError):
        b.get_or_set("e", failing)  # the loader fails, nothing stale
    assert b.get_many(["k", "absent"]) == {"k": "loaded"}  # L1 (b has it), nothing
    clock.advance(400)
    assert a.get_or_set("k", failing) == "loaded"  # stale serve
    reads = 9
    found = nonzero(requests(sdk, namespace))
    assert found == {
        ("l1", "hit"): 3,
        ("l2", "hit"): 1,
        ("loader", "miss"): 1,
        ("stale", "stale"): 1,
        ("l2", "miss"): 2,
        ("loader", "error"): 1,
    }
    assert sum(found.values()) == reads
    caches = [a, b]
    assert found["l1", "hit"] == summed(caches, "l1_hits")
    assert found["l2", "hit"] == summed(caches, "l2_hits")
    assert found["stale", "stale"] == summed(caches, "stale_serves")
    assert found["l2", "miss"] == summed(caches, "read_misses")
    assert found["loader", "error"] == summed(caches, "read_errors")


def test_requests_count_a_coalesced_read_once_and_l1_only_misses_as_l1(
    make_cache: MakeCache, sdk: Sdk, namespace: str
) -> None:
    """A caller that waited for another thread's load is one loader/miss read (as its span
    says); on an L1-only cache a read that finds nothing is an l1/miss."""
    cache = make_cache()
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        assert release.wait(WAIT)
        return "v"

    leader = threading.Thread(target=lambda: cache.get_or_set("k", slow))
    leader.start()
    assert started.wait(WAIT)
    follower = threading.Thread(target=lambda: cache.get_or_set("k", must_not_load))
    follower.start()

    def follower_waits() -> bool:
        call = cache._flight._calls.get("k")
        return call is not None and call.done is not None

    assert wait_until(follower_waits)
    release.set()
    leader.join(WAIT)
    follower.join(WAIT)
    assert nonzero(requests(sdk, namespace)) == {("loader", "miss"): 2}

    local = make_cache(client=None, namespace=namespace + "-l1")
    assert local.get("absent") is None
    assert nonzero(requests(sdk, namespace + "-l1")) == {("l1", "miss"): 1}


def test_loads_load_errors_and_stale_serves(
    make_cache: MakeCache, sdk: Sdk, namespace: str
) -> None:
    """``tiercache.loads``, ``tiercache.load.errors`` and ``tiercache.stale_serves``."""
    clock = FakeClock()
    cache = make_cache(stale_ttl=600, timer=clock)
    cache.get_or_set("a", load_value())
    cache.get_or_set("b", load_value())
    with pytest.raises(BoomError):
        cache.get_or_set("c", failing)
    clock.advance(400)
    assert cache.get_or_set("a", failing) == "loaded"
    stats = cache.stats()
    assert (stats["loads"], stats["load_errors"], stats["stale_serves"]) == (4, 2, 1)
    assert value(sdk, tel.METRIC_LOADS, namespace) == 4
    assert value(sdk, tel.METRIC_LOAD_ERRORS, namespace) == 2
    assert value(sdk, tel.METRIC_STALE, namespace) == 1


def _subscribed_and_probed(*caches: TierCache) -> None:
    for cache in caches:
        subscribed(cache, probe=True)


def _received(cache: TierCache) -> int:
    stats = cache.stats()
    return stats["bus_received"] - stats["bus_ignored"] - stats["bus_probes_heard"]


def _exchange_invalidations(a: TierCache, b: TierCache) -> None:
    """Four invalidations, two from each instance; returns once each instance has applied
    the other's (each held the other's key in L1, and both L1s end up empty)."""
    _subscribed_and_probed(a, b)
    a.set("k", 1)
    b.set("j", 2)
    b.get("k")
    a.get("j")
    a.delete("k")
    b.delete("j")
    assert wait_until(lambda: a.stats()["l1_size"] == 0 and b.stats()["l1_size"] == 0)


def test_invalidations_sent_and_received_follow_the_bus_counters(
    make_cache: MakeCache, sdk: Sdk, namespace: str
) -> None:
    """``tiercache.invalidations.sent``/``received`` report the bus counters (own echoes
    are not counted as received), summed over the namespace's instances."""
    a, b = make_cache(), make_cache()
    _exchange_invalidations(a, b)

    def agree() -> bool:
        sent = value(sdk, tel.METRIC_INV_SENT, namespace)
        received = value(sdk, tel.METRIC_INV_RECEIVED, namespace)
        probes = summed([a, b], "bus_probes_sent")
        return sent == summed([a, b], "bus_sent") - probes and received == _received(a) + _received(
            b
        )

    assert wait_until(agree)
    assert value(sdk, tel.METRIC_INV_SENT, namespace) >= 4
    assert value(sdk, tel.METRIC_INV_RECEIVED, namespace) >= 4


def test_invalidations_sent_and_received_count_only_invalidations(
    make_cache: MakeCache, sdk: Sdk, namespace: str
) -> None:
    """Four invalidations published by two instances: sent == 4, received == 4."""
    a, b = make_cache(), make_cache()
    _exchange_invalidations(a, b)
    assert wait_until(lambda: value(sdk, tel.METRIC_INV_RECEIVED, namespace) >= 4)
    assert value(sdk, tel.METRIC_INV_SENT, namespace) == 4
    assert value(sdk, tel.METRIC_INV_RECEIVED, namespace) == 4


def test_l2_errors_by_operation_and_breaker_open(
    make_cache: MakeCache, sdk: Sdk, namespace: str, fake_redis: fakeredis.FakeRedis
) -> None:
    """``tiercache.l2.errors`` by operation (read/write) and ``tiercache.breaker.open``."""
    cache = make_cache(breaker=Breaker(failures=3, reset_after=60))
    cache.get("warm")
    assert value(sdk, tel.METRIC_BREAKER, namespace) == 0
    fake_redis.connection_pool.connection_kwargs["server"].connected = False
    assert cache.get_or_set("r", load_value()) == "loaded"  # failed read
    cache.set("w", 1)  # failed write
    stats = cache.stats()
    assert stats["l2_errors"] >= 1
    assert stats["l2_write_errors"] >= 1
    found = points(sdk, tel.METRIC_L2_ERRORS, namespace)
    assert found == {
        frozenset({(tel.ATTR_OPERATION, "read")}): stats["l2_errors"],
        frozenset({(tel.ATTR_OPERATION, "write")}): stats["l2_write_errors"],
    }
    for _ in range(3):  # enough consecutive failures to open the breaker
        cache.get("x")
    assert wait_until(lambda: cache.stats()["breaker_open"] == 1)
    assert value(sdk, tel.METRIC_BREAKER, namespace) == 1


def test_l1_entries_is_summed_over_instances(
    make_cache: MakeCache, sdk: Sdk, namespace: str
) -> None:
    """``tiercache.l1.entries``: the entries in every L1 of the namespace."""
    # invalidate-only: a propagated value would land in the other L1 some time later
    a, b = make_cache(propagate_values=0), make_cache(propagate_values=0)
    a.set_many({"x": 1, "y": 2, "z": 3})
    b.set("w", 4)
    assert (a.stats()["l1_size"], b.stats()["l1_size"]) == (3, 1)
    assert value(sdk, tel.METRIC_L1_ENTRIES, namespace) == 4


def test_duration_histogram_for_l2_round_trips_and_loads(
    make_cache: MakeCache, sdk: Sdk, namespace: str
) -> None:
    """``tiercache.operation.duration``: one point per L2 round trip (tier=l2, by Redis
    operation) and per load (tier=loader, operation=load), in seconds; none for L1 hits."""
    cache = make_cache()

    def slow() -> str:
        time.sleep(0.02)
        return "v"

    cache.get_or_set("k", slow)
    for _ in range(10):
        cache.get_or_set("k", must_not_load)
    found = points(sdk, tel.METRIC_DURATION, namespace)
    load = found[frozenset({(tel.ATTR_TIER, "loader"), (tel.ATTR_OPERATION, "load")})]
    assert isinstance(load, HistogramDataPoint)
    assert load.count == 1
    assert 0.02 <= load.sum < WAIT
    get = found[frozenset({(tel.ATTR_TIER, "l2"), (tel.ATTR_OPERATION, "GET")})]
    assert get.count == 1
    assert 0 < get.sum < WAIT
    assert {dict(k)[tel.ATTR_TIER] for k in found} == {"l2", "loader"}
    assert sum(p.count for k, p in found.items() if dict(k)[tel.ATTR_TIER] == "loader") == 1


GAUGES = (
    tel.METRIC_L1_ENTRIES,
    tel.METRIC_L1_BYTES,
    tel.METRIC_WRITE_BEHIND_PENDING,
    tel.METRIC_BREAKER,
)


def test_a_closed_cache_is_no_longer_reported_in_the_gauges(
    make_cache: MakeCache, sdk: Sdk, namespace: str
) -> None:
    """After close() a cache leaves the gauges (L1 entries, breaker); the other instance of
    the namespace stays; once both are closed the namespace has no gauge point at all."""
    a, b = make_cache(propagate_values=0), make_cache(propagate_values=0)  # as above
    a.set("x", 1)
    b.set_many({"y": 2, "z": 3})
    assert value(sdk, tel.METRIC_L1_ENTRIES, namespace) == 3
    assert value(sdk, tel.METRIC_BREAKER, namespace) == 0
    b.close()
    assert value(sdk, tel.METRIC_L1_ENTRIES, namespace) == 1
    a.close()
    for name in GAUGES:
        assert points(sdk, name, namespace) == {}, name


def test_a_closed_cache_keeps_its_counts_in_the_monotonic_counters(
    make_cache: MakeCache, sdk: Sdk, namespace: str
) -> None:
    """Closing an instance never makes a monotonic counter go down (a backend would read a
    counter reset): its last counts stay in the namespace's sums, and later counts of the
    other instance add to them."""
    a, b = make_cache(), make_cache()
    a.get_or_set("k", load_value())  # a: the loader answers
    b.get_or_set("k", must_not_load)  # b: L2
    b.get_or_set("k", must_not_load)  # b: L1
    counters = [n for n in collect(sdk) if n not in GAUGES and n != tel.METRIC_DURATION]
    before = {name: points(sdk, name, namespace) for name in counters}
    assert requests(sdk, namespace)["loader", "miss"] == 1
    b.close()
    assert {name: points(sdk, name, namespace) for name in counters} == before
    a.get_or_set("j", load_value())
    assert requests(sdk, namespace)["loader", "miss"] == 2
    assert requests(sdk, namespace)["l1", "hit"] == 1
    assert value(sdk, tel.METRIC_LOADS, namespace) == 2
    a.close()
    after = requests(sdk, namespace)
    assert (after["loader", "miss"], after["l1", "hit"], after["l2", "hit"]) == (2, 1, 1)


# -- what an APM backend makes of it ---------------------------------------------------------------


def test_duration_buckets_suit_a_cache(make_cache: MakeCache, sdk: Sdk, namespace: str) -> None:
    """The histogram advises second-scale boundaries (0.1 ms to 10 s) that the SDK uses: a
    Redis round trip lands in a sub-5-ms bucket, not in the SDK default's first bucket
    (0-5, meant for milliseconds), and a 20 ms load in its own."""
    cache = make_cache()

    def slow() -> str:
        time.sleep(0.02)  # the loader's own duration, the thing measured
        return "v"

    cache.get_or_set("k", slow)
    found = points(sdk, tel.METRIC_DURATION, namespace)
    get = found[frozenset({(tel.ATTR_TIER, "l2"), (tel.ATTR_OPERATION, "GET")})]
    load = found[frozenset({(tel.ATTR_TIER, "loader"), (tel.ATTR_OPERATION, "load")})]
    assert tuple(get.explicit_bounds) == tel.DURATION_BUCKETS
    assert tel.DURATION_BUCKETS[0] <= 0.0001
    assert tel.DURATION_BUCKETS[-1] >= 10
    # Index of the bucket holding the one GET: at most the one ending at 5 ms.
    (bucket,) = [i for i, count in enumerate(get.bucket_counts) if count]
    assert bucket <= tel.DURATION_BUCKETS.index(0.005)
    (bucket,) = [i for i, count in enumerate(load.bucket_counts) if count]
    assert tel.DURATION_BUCKETS[bucket - 1] >= 0.01  # above 10 ms, apart from Redis calls


def test_each_lua_script_has_a_span_name_of_its_own(
    make_cache: MakeCache, exporter: InMemorySpanExporter
) -> None:
    """The scripts are told apart by the span name (what span metrics split on) and by
    ``db.stored_procedure.name``; ``db.operation.name`` stays EVALSHA."""
    cache = make_cache()
    cache.get_or_set("k", load_value())  # lease (compare-and-set), write under the lease
    with pytest.raises(BoomError):
        cache.get_or_set("e", failing)  # lease, then released
    cache.invalidate_tags("t")  # version bump
    scripts = {s.name: attrs(s) for s in finished(exporter) if s.name.split(" ", 1)[0] == "EVALSHA"}
    assert set(scripts) == {
        "EVALSHA compare_and_set",
        "EVALSHA lease_write",
        "EVALSHA lease_release",
        "EVALSHA version_bump",
    }
    for name, found in scripts.items():
        assert found["db.operation.name"] == "EVALSHA"
        assert name == f"EVALSHA {found['db.stored_procedure.name']}"
        assert found["db.system"] == found["db.system.name"] == "redis"
        assert found["db.namespace"] == "0"


def test_l1_hits_are_untraced_by_default_and_counted(
    make_cache: MakeCache, exporter: InMemorySpanExporter, namespace: str, sdk: Sdk
) -> None:
    """trace_l1_hits defaults to False: with an SDK recording, L1 hits (memoized ones too)
    open no span, and still count in ``tiercache.requests``; misses keep their spans."""
    cache = make_cache()
    assert cache.settings.trace_l1_hits is False

    @cache.memoize
    def f(x: int) -> int:
        return x

    cache.get_or_set("k", load_value())
    f(1)
    exporter.clear()
    for _ in range(3):
        assert cache.get_or_set("k", must_not_load) == "loaded"
        assert cache.get("k") == "loaded"
        assert f(1) == 1
    assert own(exporter, namespace) == []
    assert "get_or_set" not in cache.__dict__
    assert requests(sdk, namespace)["l1", "hit"] == 9
    assert cache.get("absent") is None
    assert answer(only(exporter, tel.SPAN_GET)) == ("l2", "miss")


def test_the_bus_self_probe_is_not_traced(
    make_cache: MakeCache, exporter: InMemorySpanExporter, namespace: str
) -> None:
    """The listener's self-probe PUBLISH, caused by no request, opens no span (it used to
    be a one-span root trace in every worker); an invalidation's PUBLISH still does."""
    cache = make_cache()
    stats = subscribed(cache, probe=True)
    assert stats["bus_probes_sent"] == 1
    assert [s.name for s in own(exporter, namespace) if s.name == "PUBLISH"] == []
    cache.invalidate_tags("t")  # a version bump, then its own PUBLISH
    publish = only(exporter, "PUBLISH")
    assert publish.parent is not None


def test_user_suppression_is_honoured(
    make_cache: MakeCache, exporter: InMemorySpanExporter, namespace: str
) -> None:
    """Inside ``suppressed()`` (the context key OpenTelemetry instrumentations share)
    tiercache opens no span, Redis ones included."""
    cache = make_cache()
    with tel.suppressed():
        cache.get_or_set("k", load_value())
        cache.set("j", 1)
    assert own(exporter, namespace) == []


def test_a_loaders_exception_message_keeps_the_key_out_unless_raw(
    make_cache: MakeCache, exporter: InMemorySpanExporter
) -> None:
    """A loader raising ``KeyError(key)``: by default the event has the exception's type
    (qualified), the frames and ``exception.escaped``, but not the message, which holds the
    key; with record_keys="raw" the message is recorded as is."""
    cache = make_cache()

    def lookup() -> Any:
        raise KeyError(SECRET)

    with pytest.raises(KeyError):
        cache.get_or_set("profile", lookup)
    span = only(exporter, tel.SPAN_GET_OR_SET)
    assert attrs(span)["error.type"] == "KeyError"  # builtins are not prefixed
    for recorded in finished(exporter):
        assert all("alice" not in text for text in _every_string_in(recorded))
    event = dict(span.events[0].attributes or {})
    assert event["exception.type"] == "KeyError"
    assert event["exception.message"] == tel.OMITTED_MESSAGE
    assert "in lookup" in event["exception.stacktrace"]
    assert event["exception.escaped"] == "True"

    exporter.clear()
    raw = make_cache(record_keys="raw")
    with pytest.raises(KeyError):
        raw.get_or_set("profile", lookup)
    event = dict(only(exporter, tel.SPAN_GET_OR_SET).events[0].attributes or {})
    assert SECRET in event["exception.message"]


def test_tiercache_timeout_messages_are_kept(
    make_cache: MakeCache, exporter: InMemorySpanExporter
) -> None:
    """LoaderTimeoutError's message is tiercache's own words (a duration, no key): kept."""
    cache = make_cache(hard_timeout=0.05)
    release = threading.Event()

    def stuck() -> str:
        assert release.wait(WAIT)
        return "late"

    try:
        with pytest.raises(LoaderTimeoutError):
            cache.get_or_set("k", stuck)
    finally:
        release.set()
    event = dict(only(exporter, tel.SPAN_GET_OR_SET).events[0].attributes or {})
    assert event["exception.type"] == "tiercache.errors.LoaderTimeoutError"
    assert event["exception.message"] == "the loader did not finish within 0.05 s"
