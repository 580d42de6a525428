"""Metrics: the shared OpenTelemetry instruments and the registry of caches they report.

Counters are observable instruments whose callbacks read each live cache's plain counters
through a narrow view (`Readings`: the dozen numbers the instruments need, not the whole
``stats()``), so the two always agree and the hot path pays nothing: an ``ObservableCounter``
callback runs only when the SDK collects, where a ``counter.add`` per hit would cost 12-20%
of a hit without an SDK and many times a hit with one. Durations of L2 round trips and loads
go to one histogram (`duration_histogram`), recorded by ``telemetry.Telemetry``.

A closed cache's last counts stay in the monotonic counters (a sum that went down would read
as a counter reset, a spike in ``rate()``); a forked child forgets them (they are the
parent's) and its caches count from zero.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Histogram, Observation

from ._version import __version__
from .telemetry import (
    ATTR_NAMESPACE,
    ATTR_OPERATION,
    ATTR_RESULT,
    ATTR_TIER,
    DURATION_BUCKETS,
    METER_NAME,
    METRIC_BREAKER,
    METRIC_DURATION,
    METRIC_INV_RECEIVED,
    METRIC_INV_SENT,
    METRIC_L1_BYTES,
    METRIC_L1_ENTRIES,
    METRIC_L2_ERRORS,
    METRIC_LOAD_ERRORS,
    METRIC_LOADS,
    METRIC_REQUESTS,
    METRIC_STALE,
    METRIC_WRITE_BEHIND_PENDING,
    METRIC_WRITES_DROPPED,
)

__all__ = ["Readings", "duration_histogram", "forget", "observe"]


class Readings(Protocol):
    """What the instruments read of one cache: its namespace and a narrow counters view."""

    @property
    def namespace(self) -> str: ...

    def _metric_counts(self) -> Mapping[str, int]:
        """The counters the instruments report (a subset of ``stats()``)."""
        ...


_Observed = Readings

#: Gauges read from each live instance's stats(): name, stats key, unit, description.
_GAUGES = (
    (
        METRIC_BREAKER,
        "breaker_open",
        "{instance}",
        "Cache instances whose circuit breaker is not closed (open or probing)",
    ),
    (METRIC_L1_ENTRIES, "l1_size", "{entry}", "Entries held in L1"),
    (
        METRIC_L1_BYTES,
        "l1_bytes",
        "By",
        "Encoded size of the values held in L1 (fail-safe held values included)",
    ),
    (
        METRIC_WRITE_BEHIND_PENDING,
        "write_behind_pending",
        "{write}",
        "Write-behind writes queued or being written",
    ),
)


class _Instruments:
    def __init__(self) -> None:
        meter = metrics.get_meter(METER_NAME, __version__)
        self.duration = meter.create_histogram(
            METRIC_DURATION,
            unit="s",
            description="Duration of L2 round trips and loads",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        counters: list[tuple[str, str, str, Callable[[_Observed], Iterable[Observation]]]] = [
            (
                METRIC_REQUESTS,
                "{request}",
                "Reads (one per key read), by the tier that answered and the result",
                _requests,
            ),
            (METRIC_LOADS, "{load}", "Loader calls", _stat("loads")),
            (METRIC_LOAD_ERRORS, "{load}", "Loader calls that raised", _stat("load_errors")),
            (METRIC_STALE, "{request}", "Stale values served (fail-safe)", _stat("stale_serves")),
            (METRIC_INV_SENT, "{message}", "Invalidation messages sent", _sent),
            (
                METRIC_INV_RECEIVED,
                "{message}",
                "Invalidation messages received from other instances",
                _received,
            ),
            (METRIC_L2_ERRORS, "{error}", "Failed Redis reads and writes", _l2_errors),
            (
                METRIC_WRITES_DROPPED,
                "{write}",
                "Write-behind writes dropped after their retries (or left at close)",
                _stat("writes_dropped"),
            ),
        ]
        #: Monotonic counters: a closed cache's last totals are kept (see `forget`).
        self.monotonic: list[_Totals] = []
        for name, unit, description, read in counters:
            totals = _Totals(read)
            self.monotonic.append(totals)
            meter.create_observable_counter(
                name, callbacks=[totals.callback], unit=unit, description=description
            )
        for name, stat, unit, description in _GAUGES:
            meter.create_observable_up_down_counter(
                name, callbacks=[_callback(_stat(stat))], unit=unit, description=description
            )


_observed: weakref.WeakSet[_Observed] = weakref.WeakSet()
# Guards _made (instruments are created once per process).
_made_lock = threading.Lock()
_made: _Instruments | None = None


def _instruments() -> _Instruments:
    global _made
    made = _made
    if made is None:
        with _made_lock:
            if _made is None:
                _made = _Instruments()
            made = _made
    return made


def duration_histogram() -> Histogram:
    """The shared duration histogram (creates the instruments on first use).

    Since: 0.2.0
    """
    return _instruments().duration


def observe(cache: _Observed) -> None:
    """Report ``cache``'s counters through the shared observable instruments while it lives.

    Since: 0.1.0
    """
    _instruments()
    _observed.add(cache)


def forget(cache: _Observed) -> None:
    """Stop reporting ``cache`` (it was closed). Its counts so far stay in the monotonic
    counters: a sum that went down would read as a counter reset (a spike in ``rate()``).

    Since: 0.1.0
    """
    if cache in _observed:
        _observed.discard(cache)
        for totals in _instruments().monotonic:
            totals.retire(cache)


_Group = frozenset[tuple[str, Any]]


class _Totals:
    """One monotonic counter over every instance, live or closed, summed per attribute set."""

    def __init__(self, read: Callable[[_Observed], Iterable[Observation]]) -> None:
        self._read = read
        self.after_fork()

    def after_fork(self) -> None:
        """Forget the closed instances' counts: in a forked child they are the parent's,
        and the child's counters start from zero (its caches reset theirs at the fork). A
        fresh lock too, since a parent thread may have held it."""
        self._pid = os.getpid()
        # Guards _retired: the final counts of closed instances.
        self._lock = threading.Lock()
        self._retired: dict[_Group, tuple[float, Mapping[str, Any]]] = {}

    def _check_pid(self) -> None:
        # Where fork hooks do not run (uWSGI without lazy-apps), the pid tells.
        if self._pid != os.getpid():
            self.after_fork()

    def retire(self, cache: _Observed) -> None:
        self._check_pid()
        try:
            points = list(self._read(cache))
        except Exception:  # telemetry must never break close()
            return
        with self._lock:
            _add(self._retired, points)

    def callback(self, options: CallbackOptions) -> Iterable[Observation]:
        self._check_pid()
        with self._lock:
            totals = dict(self._retired)
        return _observe(self._read, totals)


def _forget_retired_totals() -> None:
    """Forget every closed instance's counts (in a forked child: they are the parent's)."""
    made = _made
    if made is not None:
        for totals in made.monotonic:
            totals.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_retired_totals)


def _add(
    totals: dict[_Group, tuple[float, Mapping[str, Any]]], points: Iterable[Observation]
) -> None:
    for point in points:
        attrs = point.attributes or {}
        group = frozenset(attrs.items())
        total = totals.get(group, (0, attrs))[0]
        totals[group] = (total + point.value, attrs)


def _observe(
    read: Callable[[_Observed], Iterable[Observation]],
    totals: dict[_Group, tuple[float, Mapping[str, Any]]],
) -> list[Observation]:
    # Several instances may share a namespace: one point per attribute set, summed.
    for cache in list(_observed):
        try:
            points = list(read(cache))
        except Exception:  # a metric callback must never raise into the SDK
            continue
        _add(totals, points)
    return [Observation(value, attrs) for value, attrs in totals.values()]


def _callback(
    read: Callable[[_Observed], Iterable[Observation]],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        return _observe(read, {})

    return callback


def _stat(name: str) -> Callable[[_Observed], Iterable[Observation]]:
    def read(cache: _Observed) -> Iterable[Observation]:
        stats = cache._metric_counts()
        if name in stats:
            yield Observation(stats[name], {ATTR_NAMESPACE: cache.namespace})

    return read


def _requests(cache: _Observed) -> Iterable[Observation]:
    """One count per key read, by who answered it, so that the series add up to the reads:
    each ``get``/``get_or_set``/memoized call (and each key of a ``get_many``) is counted
    once, never once per tier it looked in, and a stale serve is not also a miss."""
    stats = cache._metric_counts()
    ns = cache.namespace
    # A read that found nothing was last refused by L2, or by L1 when there is no L2.
    missed_in = "l2" if "breaker_state" in stats else "l1"
    for tier, result, count in (
        ("l1", "hit", stats["l1_hits"]),
        ("l2", "hit", stats["l2_hits"]),
        ("loader", "miss", stats["loads_served"] + stats["load_waits"]),
        ("stale", "stale", stats["stale_serves"]),
        (missed_in, "miss", stats["read_misses"]),
        ("loader", "error", stats["read_errors"]),
    ):
        yield Observation(count, {ATTR_NAMESPACE: ns, ATTR_TIER: tier, ATTR_RESULT: result})


def _sent(cache: _Observed) -> Iterable[Observation]:
    stats = cache._metric_counts()
    if "bus_sent" in stats:  # start-up probes are not invalidations
        count = stats["bus_sent"] - stats["bus_probes_sent"]
        yield Observation(count, {ATTR_NAMESPACE: cache.namespace})


def _received(cache: _Observed) -> Iterable[Observation]:
    stats = cache._metric_counts()
    if "bus_received" in stats:
        # Neither our own echoes nor other instances' start-up probes are invalidations.
        count = stats["bus_received"] - stats["bus_ignored"] - stats["bus_probes_heard"]
        yield Observation(count, {ATTR_NAMESPACE: cache.namespace})


def _l2_errors(cache: _Observed) -> Iterable[Observation]:
    stats = cache._metric_counts()
    ns = cache.namespace
    yield Observation(stats["l2_errors"], {ATTR_NAMESPACE: ns, ATTR_OPERATION: "read"})
    yield Observation(stats["l2_write_errors"], {ATTR_NAMESPACE: ns, ATTR_OPERATION: "write"})
