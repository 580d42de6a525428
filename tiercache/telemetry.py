"""OpenTelemetry spans and metrics, through ``opentelemetry-api`` only, and nearly free when
nobody records them.

Spans: every public operation opens one (`SPAN_NAMES`), with a child for the loader, so the
loader's own database spans nest under it, and a ``CLIENT`` child for each Redis round trip,
named and described as the OpenTelemetry database conventions say for Redis (span name
``GET``, ``PIPELINE SET``, ``EVALSHA lease_write``; ``db.system.name``, ``db.namespace``,
``db.operation.name``, ``db.stored_procedure.name`` for scripts, ``server.address``,
``server.port``, and the legacy ``db.system`` that several backends still use to recognise a
database call). Attributes say which tier answered (`ATTR_TIER`: l1, l2, loader, stale) and
whether it was a hit (`ATTR_RESULT`). Raw keys are never recorded unless asked
(``record_keys="hash"`` records a BLAKE2b digest, ``"raw"`` the key itself); for the same
reason an exception's message (a loader's ``KeyError(key)``) is left out of span events
unless ``record_keys="raw"``, but for tiercache's Redis and timeout errors.

Cost. A no-op ``start_as_current_span`` costs about eight L1 hits (~3.5 us against ~0.44 us
for a locked cachetools hit, Python 3.11, opentelemetry-api 1.45), so the cache does not open
spans while no SDK is installed: `Telemetry.refresh` asks ``trace.get_tracer_provider()``
whether it is still the API's proxy about once a second (from the read path's housekeeping
tick, which already reads the clock), and spans for L1 hits (only with
``trace_l1_hits=True``) are switched on by swapping the cache's ``get_or_set``/``get`` for
traced versions on the instance, so an untraced hit pays nothing at all. A forked child
re-checks on its first call (`Telemetry.after_fork`).

Metric names live here with the span names (`METRIC_NAMES`); the instruments and the registry
of caches they report are in ``metrics.py``. Durations of L2 round trips and loads are
recorded in one histogram, `METRIC_DURATION` (seconds, with bucket boundaries for a cache:
`DURATION_BUCKETS`), and only while a meter provider records them (`Telemetry.metering`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, Protocol, TypeVar

from opentelemetry import context, metrics, trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.trace import (
    NoOpTracerProvider,
    ProxyTracerProvider,
    SpanKind,
    Status,
    StatusCode,
)

from ._version import __version__
from .errors import L2Error, LoaderTimeoutError

__all__ = [
    "ATTR_COALESCED",
    "ATTR_FUNCTION",
    "ATTR_KEY",
    "ATTR_KEY_COUNT",
    "ATTR_KEY_HASH",
    "ATTR_NAMESPACE",
    "ATTR_OPERATION",
    "ATTR_RESULT",
    "ATTR_TIER",
    "ATTR_VALUE_SIZE",
    "DURATION_BUCKETS",
    "METER_NAME",
    "METRIC_BREAKER",
    "METRIC_DURATION",
    "METRIC_INV_RECEIVED",
    "METRIC_INV_SENT",
    "METRIC_L1_BYTES",
    "METRIC_L1_ENTRIES",
    "METRIC_L2_ERRORS",
    "METRIC_LOADS",
    "METRIC_LOAD_ERRORS",
    "METRIC_REQUESTS",
    "METRIC_STALE",
    "METRIC_WRITES_DROPPED",
    "METRIC_WRITE_BEHIND_PENDING",
    "SPAN_ADD",
    "SPAN_CLEAR",
    "SPAN_DELETE",
    "SPAN_DELETE_MANY",
    "SPAN_GET",
    "SPAN_GET_MANY",
    "SPAN_GET_OR_SET",
    "SPAN_INCR",
    "SPAN_INVALIDATE_TAGS",
    "SPAN_LOAD",
    "SPAN_MEMOIZE",
    "SPAN_NAMES",
    "SPAN_SET",
    "SPAN_SET_MANY",
    "SPAN_TOUCH",
    "TRACER_NAME",
    "RecordKeys",
    "Telemetry",
    "metering_installed",
    "qualified_name",
    "spanned",
    "suppressed",
    "tracing_installed",
]

TRACER_NAME = METER_NAME = "tiercache"

SPAN_GET_OR_SET = "tiercache.get_or_set"
SPAN_GET = "tiercache.get"
SPAN_GET_MANY = "tiercache.get_many"
SPAN_SET = "tiercache.set"
SPAN_SET_MANY = "tiercache.set_many"
SPAN_DELETE = "tiercache.delete"
SPAN_DELETE_MANY = "tiercache.delete_many"
SPAN_INVALIDATE_TAGS = "tiercache.invalidate_tags"
SPAN_CLEAR = "tiercache.clear"
SPAN_MEMOIZE = "tiercache.memoize"
SPAN_LOAD = "tiercache.load"
SPAN_ADD = "tiercache.add"
SPAN_INCR = "tiercache.incr"
SPAN_TOUCH = "tiercache.touch"
#: Every operation span name tiercache uses. Redis spans are named after the command, as
#: the database conventions say (``GET``, ``MGET``, ``PIPELINE SET``, ``EVALSHA lease_write``).
SPAN_NAMES = (
    SPAN_GET_OR_SET,
    SPAN_GET,
    SPAN_GET_MANY,
    SPAN_SET,
    SPAN_SET_MANY,
    SPAN_DELETE,
    SPAN_DELETE_MANY,
    SPAN_INVALIDATE_TAGS,
    SPAN_CLEAR,
    SPAN_MEMOIZE,
    SPAN_LOAD,
    SPAN_ADD,
    SPAN_INCR,
    SPAN_TOUCH,
)

ATTR_NAMESPACE = "tiercache.namespace"
ATTR_TIER = "tiercache.tier"  # l1 | l2 | loader | stale
ATTR_RESULT = "tiercache.result"  # hit | miss | stale
ATTR_OPERATION = "tiercache.operation"
ATTR_KEY_HASH = "tiercache.key.hash"
ATTR_KEY = "tiercache.key"
ATTR_VALUE_SIZE = "tiercache.value.size"
ATTR_COALESCED = "tiercache.coalesced"  # waited for another caller's load (single-flight)
ATTR_KEY_COUNT = "tiercache.key.count"
ATTR_FUNCTION = "code.function.name"

METRIC_REQUESTS = "tiercache.requests"
METRIC_DURATION = "tiercache.operation.duration"
METRIC_LOADS = "tiercache.loads"
METRIC_LOAD_ERRORS = "tiercache.load.errors"
METRIC_STALE = "tiercache.stale_serves"
METRIC_INV_SENT = "tiercache.invalidations.sent"
METRIC_INV_RECEIVED = "tiercache.invalidations.received"
METRIC_L2_ERRORS = "tiercache.l2.errors"
METRIC_BREAKER = "tiercache.breaker.open"
METRIC_L1_ENTRIES = "tiercache.l1.entries"
METRIC_L1_BYTES = "tiercache.l1.bytes"
METRIC_WRITES_DROPPED = "tiercache.writes.dropped"
METRIC_WRITE_BEHIND_PENDING = "tiercache.write_behind.pending"

#: Bucket boundaries of `METRIC_DURATION`, in seconds: from 0.1 ms (a Redis round trip on
#: loopback is 0.1-3 ms) to 10 s (a slow load), given to the SDK as advice. Without it the SDK
#: uses boundaries meant for milliseconds (0, 5, 10, 25, ... 10000), which put every Redis call
#: and every load under 5 s into one bucket.
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

RecordKeys = Literal["hash", "raw"] | None
#: Seconds between two checks of whether an SDK is installed.
REFRESH_INTERVAL = 1.0
#: What replaces an exception's message in span events (see `_record_error`).
OMITTED_MESSAGE = "(message omitted: it may hold keys or values; record_keys='raw' keeps it)"

_tracer = trace.get_tracer(TRACER_NAME, __version__)
# Reusable: a nullcontext holds no state.
_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


def metering_installed() -> bool:
    """Whether an SDK (or any real meter provider) is installed: the API's own providers
    (the proxy it hands out before one is set, and the no-op one) record nothing."""
    return not type(metrics.get_meter_provider()).__module__.startswith("opentelemetry.metrics")


def tracing_installed() -> bool:
    """Whether an SDK (or any real tracer provider) is installed: public API only."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (ProxyTracerProvider, NoOpTracerProvider))


class Telemetry:
    """The spans and duration metrics of one cache.

    Since: 0.1.0
    """

    __slots__ = (
        "_base",
        "_duration_attrs",
        "_histogram",
        "_l2_base",
        "_l2_shapes",
        "_raw_messages",
        "_record_keys",
        "enabled",
        "metering",
        "next_refresh",
        "trace_l1_hits",
        "tracing",
    )

    def __init__(
        self,
        namespace: str,
        *,
        enabled: bool,
        record_keys: RecordKeys,
        trace_l1_hits: bool,
        server: tuple[str, int] | None,
        database: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.trace_l1_hits = trace_l1_hits
        self._record_keys = record_keys
        self._raw_messages = record_keys == "raw"
        self._base: dict[str, Any] = {ATTR_NAMESPACE: namespace}
        # ``db.system`` is the pre-1.26 name of ``db.system.name``: New Relic's database
        # pages, Tempo's service graph and Datadog's span types still recognise a database
        # call by it, so both are sent.
        self._l2_base: dict[str, Any] = {
            "db.system.name": "redis",
            "db.system": "redis",
            ATTR_NAMESPACE: namespace,
        }
        if database is not None:
            # The index the client was configured with: tiercache never sends SELECT.
            self._l2_base["db.namespace"] = str(database)
        self._duration_attrs: dict[tuple[str, str], dict[str, Any]] = {}
        self._l2_shapes: dict[str, tuple[str, dict[str, Any]]] = {}
        if server is not None:
            self._l2_base["server.address"], self._l2_base["server.port"] = server
        #: Whether spans are recorded now (an SDK is installed and telemetry is on).
        self.tracing = False
        #: Whether metric points are recorded now (a meter provider is installed): durations
        #: are not even timed while nobody records them.
        self.metering = False
        self.next_refresh = 0.0
        if enabled:
            from .metrics import duration_histogram

            # The shared instruments are created once, before any recording.
            self._histogram: Any = duration_histogram()

    def refresh(self, now: float) -> bool:
        """Re-check whether spans are recorded; True if that changed."""
        self.next_refresh = now + REFRESH_INTERVAL
        tracing = self.enabled and tracing_installed()
        changed = tracing != self.tracing
        self.tracing = tracing
        self.metering = self.enabled and metering_installed()
        return changed

    def after_fork(self) -> None:
        """In a forked child: re-check on the next call whether spans are recorded. The
        parent's deadline may be up to a second away, and an SDK installed in the child (a
        gunicorn ``post_fork`` hook) must trace the child's very first request."""
        self.next_refresh = 0.0

    # -- spans -------------------------------------------------------------------------

    def span(
        self, name: str, key: str | None = None, attributes: Mapping[str, Any] | None = None
    ) -> contextlib.AbstractContextManager[trace.Span | None]:
        """A span for one operation, or a no-op context when nothing records spans."""
        if not self.tracing:
            # Not on the L1-hit path: operations that reach here (misses, writes) notice an
            # SDK installed later by themselves, write-only caches included.
            now = time.monotonic()
            if not self.enabled or now < self.next_refresh or not self.refresh(now):
                return _NO_SPAN
        return self._span(name, key, attributes)

    @contextlib.contextmanager
    def _span(
        self, name: str, key: str | None, attributes: Mapping[str, Any] | None
    ) -> Iterator[trace.Span | None]:
        attrs = dict(self._base)
        if key is not None and self._record_keys is not None:
            attrs[ATTR_KEY_HASH if self._record_keys == "hash" else ATTR_KEY] = (
                _digest(key) if self._record_keys == "hash" else key
            )
        if attributes:
            attrs.update(attributes)
        with _recorded(name, SpanKind.INTERNAL, attrs, self._raw_messages) as span:
            yield span

    def _l2_shape(self, operation: str) -> tuple[str, dict[str, Any]]:
        """The span name and attributes of a Redis operation, built once per operation.

        ``operation`` is what ``l2.py`` calls it: a command (``GET``, ``SET NX``), a pipeline
        of one command (``PIPELINE SET``), or a script (``EVALSHA lease write``). The span is
        named ``{db.operation.name} {target}`` with the script as the target (the database
        index is left out of names, as the Redis conventions ask), so span metrics tell the
        scripts apart."""
        shape = self._l2_shapes.get(operation)
        if shape is None:
            command, _, detail = operation.partition(" ")
            attrs = dict(self._l2_base)
            attrs[ATTR_OPERATION] = operation
            name = command
            if command == "EVALSHA" and detail:
                script = detail.replace("-", "_").replace(" ", "_")
                attrs["db.stored_procedure.name"] = script
                name = f"{command} {script}"
            elif command == "PIPELINE" and detail:
                name = command = operation  # the conventions' name for a batch of one command
            attrs["db.operation.name"] = command
            shape = (name, attrs)
            self._l2_shapes[operation] = shape
        return shape

    @contextlib.contextmanager
    def l2_span(self, operation: str) -> Iterator[None]:
        """A client span around one Redis round trip, plus its duration metric."""
        name, attrs = self._l2_shape(operation)
        with (
            self._timed("l2", operation),
            _recorded(name, SpanKind.CLIENT, attrs, self._raw_messages),
        ):
            yield

    @contextlib.contextmanager
    def load_span(self) -> Iterator[None]:
        """A span around the loader (its own spans nest under it, when spans are recorded),
        plus its duration metric."""
        if not self.tracing and not self.metering:
            yield
            return
        with self._timed("loader", "load"):
            if not self.tracing:
                yield
                return
            with _recorded(SPAN_LOAD, SpanKind.INTERNAL, self._base, self._raw_messages):
                yield

    @contextlib.contextmanager
    def _timed(self, tier: str, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.record_duration(tier, operation, time.perf_counter() - started)

    def answered(self, tier: str, result: str, **extra: Any) -> None:
        """Say on the current operation span which tier answered and how."""
        if not self.tracing:
            return
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute(ATTR_TIER, tier)
            span.set_attribute(ATTR_RESULT, result)
            for name, value in extra.items():
                span.set_attribute(name, value)

    def record_duration(self, tier: str, operation: str, seconds: float) -> None:
        """One point of `METRIC_DURATION` (no-op when telemetry is off)."""
        if not self.enabled:
            return
        try:
            attrs = self._duration_attrs.get((tier, operation))
            if attrs is None:  # a handful of (tier, operation) pairs: built once each
                attrs = {ATTR_NAMESPACE: self._base[ATTR_NAMESPACE], ATTR_TIER: tier}
                attrs[ATTR_OPERATION] = operation
                self._duration_attrs[(tier, operation)] = attrs
            self._histogram.record(seconds, attrs)
        except Exception:  # telemetry must never break the cache
            pass


class _HasTelemetry(Protocol):
    _telemetry: Telemetry


F = TypeVar("F", bound=Callable[..., Any])


def spanned(name: str) -> Callable[[F], F]:
    """Decorate a (not hot) cache method so that it runs in a span called ``name``."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(self: _HasTelemetry, *args: Any, **kwargs: Any) -> Any:
            with self._telemetry.span(name):
                return method(self, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


@contextlib.contextmanager
def suppressed() -> Iterator[None]:
    """Run the block with instrumentation suppressed: tiercache opens no span in it, and
    neither do instrumentations that honour the same context key (redis-py's, for one).
    Used for the bus self-probe, which no user request caused."""
    token = context.attach(context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        yield
    finally:
        context.detach(token)


@contextlib.contextmanager
def _recorded(
    name: str, kind: SpanKind, attributes: Mapping[str, Any], raw_messages: bool
) -> Iterator[trace.Span]:
    """A current span that records an exception escaping it (status ERROR, error.type)."""
    if context.get_value(_SUPPRESS_INSTRUMENTATION_KEY):
        yield trace.INVALID_SPAN
        return
    with _tracer.start_as_current_span(
        name,
        kind=kind,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            _record_error(span, exc, raw_messages)
            raise


# Exceptions whose messages tiercache writes from its own words, Redis' replies and
# durations, never from a key or a value: recorded as they are.
_OWN_MESSAGES = (L2Error, LoaderTimeoutError)


def qualified_name(obj: Any) -> str:
    """``module.qualname`` of a class or function (just the name for builtins), as the
    ``error.type`` and ``code.function.name`` conventions want it."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", repr(obj))
    return f"{module}.{qualname}" if module and module != "builtins" else str(qualname)


def _record_error(span: trace.Span, exc: BaseException, raw_messages: bool) -> None:
    """Mark ``span`` as failed by ``exc``, which escapes it.

    ``error.type`` names the original exception when tiercache wrapped a Redis error in
    `L2Error` (the conventions prefer the cause). Any other message may hold a key or a value
    (a loader's ``KeyError(key)``, a serializer's complaint about a value): unless
    ``record_keys="raw"``, it is replaced in the event, and so is the last line of each
    exception in the stack trace, which repeats it; the type and the frames stay."""
    try:
        if not span.is_recording():
            return
        cause = exc.__cause__ if isinstance(exc, L2Error) else None
        span.set_attribute("error.type", qualified_name(type(cause or exc)))
        extra: dict[str, Any] = {}
        if not raw_messages and not isinstance(exc, _OWN_MESSAGES):
            extra["exception.message"] = OMITTED_MESSAGE
            extra["exception.stacktrace"] = _stack_without_messages(exc)
        span.record_exception(exc, attributes=extra or None, escaped=True)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    except Exception:
        pass


def _stack_without_messages(exc: BaseException) -> str:
    """The traceback of ``exc`` and of the exceptions it chains, messages left out."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    parts: list[str] = []
    for error in reversed(chain):
        if parts:
            parts.append("\nThen, while handling it or because of it:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(error.__traceback__))
        parts.append(f"{qualified_name(type(error))}: {OMITTED_MESSAGE}\n")
    return "".join(parts)


def _digest(key: str) -> str:
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
