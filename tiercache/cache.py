"""TierCache: the public API and the read/write flow across L1, L2 and the loader.

Reads try L1 without a lock, then L2, then the loader (once per key per process through
`SingleFlight`, once per key across processes through a lease);
writes go to L2 first, then L1, then the bus. This module makes no Redis call of its own:
``l2.py`` does, and every failure there arrives here as an
`L2Error` that reads turn into a miss.
"""

from __future__ import annotations

import os
import random
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from cachetools import LRUCache

from . import forking
from .background import Background
from .codec import Serializer
from .coherence import Coherence
from .entry import EntryCodec
from .errors import CircuitOpenError, L2Error
from .flight import SingleFlight
from .keys import check_key, check_keys, check_tags
from .l1 import LocalTier
from .l2 import RedisTier
from .loading import ReadPath
from .options import TTL_JITTER, Breaker, Duration, Settings
from .pending import PendingWrites
from .reading import L2Hit
from .resilience import CLOSED, CircuitBreaker
from .stats import Counters, RateLimitedLog
from .telemetry import (
    ATTR_KEY_COUNT,
    SPAN_CLEAR,
    SPAN_DELETE,
    SPAN_DELETE_MANY,
    SPAN_GET_MANY,
    SPAN_INVALIDATE_TAGS,
    SPAN_SET,
    SPAN_SET_MANY,
    RecordKeys,
    Telemetry,
    spanned,
)
from .telemetry import forget as stop_metrics
from .telemetry import observe as report_metrics
from .traced import TracedReads
from .writing import WritePath

if TYPE_CHECKING:  # typing TierCache.memoize only; memoizing.py imports this module
    from .memoizing import Memoized, P, R

__all__ = ["TierCache"]

T = TypeVar("T")
# Seconds between two housekeeping ticks on the read path: drain the bus, check the pid.
_TICK = 0.001


class TierCache(TracedReads, WritePath, ReadPath):
    """An in-process L1 in front of a Redis L2, kept coherent across instances by pub/sub.

    Args:
        client: a redis-py client (``redis.Redis``, a Sentinel master, ``RedisCluster``)
            created with ``decode_responses=False``, or ``None`` for an L1-only cache.
        namespace: prefix of every Redis key (``{namespace}:{key}``) and of the channel.
        ttl: L2 lifetime of an entry in seconds (or a ``timedelta``); per-call ``ttl=``
            overrides it. Redis TTLs are shortened by a random jitter of up to 10%.
        l1_ttl: how long this instance may serve its L1 copy, at most ``ttl``; the bound on
            staleness when an invalidation never arrives. Defaults to ``min(30, ttl)``. In
            L1-only mode entries live ``ttl``.
        l1_maxsize: most entries kept in L1 (LRU eviction beyond it).
        max_key_length: longest key accepted, in characters.
        compress_threshold: serialized values of at least this many bytes are zstd-compressed.
        max_value_bytes: largest serialized value accepted by ``set`` and read from Redis.
        serializer: a `Serializer`; msgpack with extension types by default.
        raise_on_write_error: make writes raise `L2Error` when Redis
            fails; by default failures are counted and logged.
        lease_ttl: lifetime of the cross-process lease a loader holds on a missing key.
        lease_wait: how long other processes wait for the lease holder's value.
        breaker: circuit breaker settings (`Breaker`), or None to always ask Redis.
        stale_ttl: how long past its ``ttl`` an entry is kept (L1 and L2) to be served,
            marked stale, when the loader fails or is too slow (fail-safe). 0 turns it off.
        fail_safe_throttle: after a stale value was served, the loader is not called again
            for that key for this long (the stale value is served meanwhile).
        soft_timeout: when a stale value exists and the loader takes longer than this, serve
            the stale value and let the load finish in the background.
        hard_timeout: stop waiting for the loader after this long: serve a stale value if
            there is one, else raise `LoaderTimeoutError`; the load still completes and
            fills the cache in the background.
        refresh_ahead: a fraction of ``ttl`` (e.g. 0.8): a value read after that part of its
            life is returned and reloaded in the background, so hot keys never expire under
            their callers.
        none_ttl: a shorter ``ttl`` for loaded ``None`` values ("not found").
        background_workers: threads for background loads (timeouts, refresh-ahead).
        telemetry: OpenTelemetry spans and metrics (through ``opentelemetry-api``; they cost
            next to nothing while no SDK is installed). False turns both off.
        record_keys: put keys in spans: None (default: never), ``"hash"`` (a BLAKE2b
            digest) or ``"raw"`` (the key itself; it may hold personal data).
        trace_l1_hits: open spans for L1 hits too (False keeps them out of traces; they
            still count in the metrics).
        timer: a clock in seconds for tests; replaces both the monotonic clock of L1 and the
            wall clock of logical expiry.

    Since: 0.1.0
    """

    def __init__(
        self,
        client: Any,
        *,
        namespace: str = "tiercache",
        ttl: Duration = 300.0,
        l1_ttl: Duration | None = None,
        l1_maxsize: int = 10_000,
        max_key_length: int = 1024,
        compress_threshold: int = 8 * 1024,
        max_value_bytes: int = 32 * 1024 * 1024,
        serializer: Serializer | None = None,
        raise_on_write_error: bool = False,
        lease_ttl: Duration = 5.0,
        lease_wait: Duration = 5.0,
        breaker: Breaker | None = Breaker(),  # noqa: B008 - frozen value object
        stale_ttl: Duration = 0,
        fail_safe_throttle: Duration = 10.0,
        soft_timeout: Duration | None = None,
        hard_timeout: Duration | None = None,
        refresh_ahead: float | None = None,
        none_ttl: Duration | None = None,
        background_workers: int = 4,
        telemetry: bool = True,
        record_keys: RecordKeys = None,
        trace_l1_hits: bool = True,
        timer: Callable[[], float] | None = None,
    ) -> None:
        settings = Settings.build(
            namespace=namespace,
            ttl=ttl,
            l1_ttl=l1_ttl,
            l1_maxsize=l1_maxsize,
            max_key_length=max_key_length,
            compress_threshold=compress_threshold,
            max_value_bytes=max_value_bytes,
            raise_on_write_error=raise_on_write_error,
            lease_ttl=lease_ttl,
            lease_wait=lease_wait,
            breaker=breaker,
            stale_ttl=stale_ttl,
            fail_safe_throttle=fail_safe_throttle,
            soft_timeout=soft_timeout,
            hard_timeout=hard_timeout,
            refresh_ahead=refresh_ahead,
            none_ttl=none_ttl,
            background_workers=background_workers,
            telemetry=telemetry,
            record_keys=record_keys,
            trace_l1_hits=trace_l1_hits,
            timer=timer,
        )
        self._settings = settings
        self._codec = EntryCodec(
            serializer,
            compress_threshold=settings.compress_threshold,
            max_value_bytes=settings.max_value_bytes,
        )
        self._flight = SingleFlight()
        # An invalidation also detaches the key's load in flight: a get_or_set that starts
        # after it must not join a load that started before it.
        self._l1 = LocalTier(settings.l1_maxsize, timer or time.monotonic, self._flight.detach)
        self._l2 = None
        self._breaker: CircuitBreaker | None = None
        if client is not None:
            # Without a breaker (breaker=None), an unreachable Redis costs every call a timeout.
            limits = settings.breaker or Breaker(failures=2**31, reset_after=1.0)
            self._breaker = CircuitBreaker(limits.failures, limits.reset_after, self._l1.timer)
            self._l2 = RedisTier(client, self._breaker)
        self._telemetry = Telemetry(
            settings.namespace,
            enabled=settings.telemetry,
            record_keys=settings.record_keys,  # type: ignore[arg-type]
            trace_l1_hits=settings.trace_l1_hits,
            server=self._l2.server() if self._l2 is not None else None,
        )
        if self._l2 is not None:
            self._l2.telemetry = self._telemetry
        self._wall: Callable[[], float] = timer or time.time
        self._prefix = settings.namespace + ":"
        self._counters = Counters()
        self._l2_log = RateLimitedLog()
        self._corrupt_logged: LRUCache[str, bool] = LRUCache(maxsize=1024)
        self._unstorable_logged: LRUCache[str, bool] = LRUCache(maxsize=1024)
        self._pending = PendingWrites()
        self._background = Background(settings.background_workers, "tiercache-load")
        # Guards _refreshing: keys with a refresh-ahead in flight in this instance.
        self._refreshing_lock = threading.Lock()
        self._refreshing: set[str] = set()
        self._owns_client = False
        self._closed = False
        self._pid = os.getpid()
        self._coherence = (
            Coherence(
                self._l1,
                self._l2,
                settings.namespace,
                settings.l1_ttl,
                self._counters,
                self._l1.timer,
            )
            if self._l2 is not None
            else None
        )
        # Hot-path aliases: an L1 hit is a clock read, one comparison against the next
        # housekeeping tick, a dict lookup and a deque append; no lock, no call of ours.
        self._l1_hits = 0
        self._l1_lookup = self._l1.data.get
        self._l1_touch = self._l1.recent.append
        self._clock = self._l1.timer
        self._next_tick = 0.0
        self._shadowed = False
        forking.track(self)
        # A cache dropped without close() must not keep its listener thread and connections
        # forever (test suites and request-scoped code create many): stop them when it is
        # collected, and say so, as an unclosed file does. Not at interpreter exit: a
        # module-level cache that lives as long as the process is not a leak.
        self._owned: list[RedisTier] = []
        self._finalizer = weakref.finalize(
            self, _abandoned, repr(self), self._coherence, self._background, self._owned
        )
        self._finalizer.atexit = False
        if settings.telemetry:
            report_metrics(self)
            self._follow_tracing(time.monotonic())

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_url(
        cls, url: str, *, redis_options: Mapping[str, Any] | None = None, **options: Any
    ) -> TierCache:
        """Build a cache on a new redis-py client for ``url`` (``redis://``, ``rediss://``
        for TLS, ``unix://``; user, password and database in the URL as redis-py reads them).

        The client gets short timeouts and no hidden retries (redis-py 8 retries a timed-out
        command up to 10 times by default, turning a stalled Redis into a stalled request);
        ``redis_options`` override any client option. The cache closes the client on
        `close`. ``options`` are the constructor's keyword arguments.

        Since: 0.1.0
        """
        from .connect import client_from_url

        client = client_from_url(url, redis_options)
        try:
            cache = cls(client, **options)
        except BaseException:
            client.close()
            raise
        cache._owns_client = True
        if cache._l2 is not None:
            cache._owned.append(cache._l2)
        return cache

    # -- reads -------------------------------------------------------------------------

    def get_or_set(
        self,
        key: str,
        loader: Callable[[], T],
        ttl: Duration | None = None,
        *,
        tags: Iterable[str] = (),
    ) -> T:
        """Return the cached value for ``key``, loading and caching ``loader()`` on a miss.

        Concurrent misses for one key run ``loader`` once per process; across processes a
        short Redis lease makes the others wait for the first loader's value. A loader's
        exception propagates unchanged and nothing is cached. Redis trouble never raises
        here: it degrades to L1 + loader. ``tags`` are attached to a value this call loads.

        Since: 0.1.0
        """
        now = self._clock()
        if now >= self._next_tick:
            self._tick(now)
        try:
            entry = self._l1_lookup(key)
        except TypeError:  # unhashable key: let the slow path name the argument
            entry = None
        if entry is not None and now < entry[1]:
            self._l1_touch(key)
            self._l1_hits += 1
            return entry[0]  # type: ignore[no-any-return]
        return self._get_or_set_miss(key, loader, ttl, tags)

    def get(self, key: str, default: Any = None) -> Any:
        """The cached value for ``key`` from L1 or L2, or ``default``. Never past its ``ttl``.

        Since: 0.1.0
        """
        now = self._clock()
        if now >= self._next_tick:
            self._tick(now)
        try:
            entry = self._l1_lookup(key)
        except TypeError:
            entry = None
        if entry is not None and now < entry[1]:
            self._l1_touch(key)
            self._l1_hits += 1
            return entry[0]
        return self._get_miss(key, default)

    @spanned(SPAN_GET_MANY)
    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The cached values of those ``keys`` that are present; L2 in one ``MGET``.

        Since: 0.1.0
        """
        wanted = check_keys(keys, self._settings.max_key_length)
        self._check_open()
        now = self._clock()
        if now >= self._next_tick:
            self._tick(now)
        self._start_listener()
        found: dict[str, Any] = {}
        missing: list[str] = []
        for key in dict.fromkeys(wanted):
            entry = self._l1.get(key)
            if entry is not None:
                self._l1_hits += 1
                found[key] = entry[0]
            else:
                missing.append(key)
        self._counters.l1_misses += len(missing)
        if not missing or self._l2 is None or not self._l2_usable():
            return found
        # One lock round for all tickets, one for all fills, one for all releases.
        tickets = self._l1.tickets(missing)
        try:
            try:
                blobs = self._l2.get_many([self._prefix + key for key in missing])
            except L2Error as exc:
                self._read_failed(exc)
                return found
            fills = []
            wall = self._wall()
            stale_ttl = self._settings.stale_ttl
            for key, blob, ticket in zip(missing, blobs, tickets, strict=True):
                checked = self._check_blob(key, blob)
                if isinstance(checked, L2Hit):
                    hit = checked.entry
                    found[key] = hit.value
                    l1_ttl = self._l1_ttl_for(checked, wall)
                    if l1_ttl > 0:
                        tags = [tag for tag, _ in hit.tags] if hit.tags else ()
                        stale_for = hit.expires_at + stale_ttl - wall
                        fills.append((key, hit.value, l1_ttl, ticket, tags, stale_for))
            if fills:
                self._l1.fill_many(fills)
        finally:
            self._l1.release_all(tickets)
        return found

    # -- writes ------------------------------------------------------------------------

    def set(
        self, key: str, value: Any, ttl: Duration | None = None, *, tags: Iterable[str] = ()
    ) -> None:
        """Store ``value`` under ``key`` in L2, then L1, and tell every other instance.

        Raises `SerializationError` (a `TypeError`) for a value the serializer cannot
        encode and `ValueError` for one over ``max_value_bytes``, both before any I/O.
        ``tags`` let `invalidate_tags` drop the entry later.

        Since: 0.1.0
        """
        key = check_key(key, self._settings.max_key_length)
        with self._telemetry.span(SPAN_SET, key):
            self._set_many([key], {key: value}, ttl, tags)

    def set_many(
        self,
        mapping: Mapping[str, Any],
        ttl: Duration | None = None,
        *,
        tags: Iterable[str] = (),
    ) -> None:
        """Store every item, in one pipelined round trip to Redis and one bus message; all
        values are encoded (and so validated) before anything is written.

        Since: 0.1.0
        """
        if not isinstance(mapping, Mapping):
            raise TypeError(f"mapping must be a Mapping of str keys, not {type(mapping).__name__}")
        keys = check_keys(mapping.keys(), self._settings.max_key_length, "mapping keys")
        with self._telemetry.span(SPAN_SET_MANY, None, {ATTR_KEY_COUNT: len(keys)}):
            self._set_many(keys, mapping, ttl, tags)

    def delete(self, key: str) -> None:
        """Remove ``key`` from L2 and from the L1 of every instance.

        Since: 0.1.0
        """
        key = check_key(key, self._settings.max_key_length)
        with self._telemetry.span(SPAN_DELETE, key):
            self._delete_many([key])

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove every key, in one ``UNLINK`` and one bus message.

        Since: 0.1.0
        """
        wanted = check_keys(keys, self._settings.max_key_length)
        with self._telemetry.span(SPAN_DELETE_MANY, None, {ATTR_KEY_COUNT: len(wanted)}):
            self._delete_many(wanted)

    @spanned(SPAN_INVALIDATE_TAGS)
    def invalidate_tags(self, *tags: str) -> None:
        """Invalidate every entry set with any of ``tags``, in every instance, without
        scanning Redis: the tags' versions move on, so older entries read as misses.

        Since: 0.1.0
        """
        tag_list = check_tags(tags, "tags")
        self._check_open()
        if not tag_list:
            return  # nothing to invalidate: no message, no epoch that detaches loads
        self._counters.tag_invalidations += len(tag_list)
        try:
            if self._coherence is not None:
                self._start_listener()
                self._replay_pending()
                self._l2_invalidate_tags(tag_list)
        except L2Error as exc:
            self._pending.add_tags(tag_list)
            self._write_failed(exc)
        finally:
            self._l1.invalidate_tags(tag_list)

    @spanned(SPAN_CLEAR)
    def clear(self) -> None:
        """Empty the whole namespace in every instance: the namespace version moves on, so
        every older entry reads as a miss (no ``KEYS``/``SCAN``/``FLUSHDB``; old entries
        expire from Redis on their TTL).

        Since: 0.1.0
        """
        self._check_open()
        self._counters.clears += 1
        try:
            if self._coherence is not None:
                self._start_listener()
                self._replay_pending()
                self._l2_clear()
        except L2Error as exc:
            self._pending.add_clear()
            self._write_failed(exc)
        finally:
            self._l1.flush()

    # -- introspection and lifecycle -----------------------------------------------------

    @property
    def namespace(self) -> str:
        """The namespace given at construction."""
        return self._settings.namespace

    @property
    def settings(self) -> Settings:
        """The validated options of this cache."""
        return self._settings

    def stats(self) -> dict[str, int]:
        """A snapshot of plain counters: hits and misses per tier, loads, errors, L1 size,
        and the health of the invalidation bus (``bus_*``).

        Since: 0.1.0
        """
        snapshot = self._counters.snapshot()
        snapshot["l1_hits"] += self._l1_hits
        snapshot["l1_size"] = len(self._l1)
        snapshot["l1_held"] = len(self._l1.held)
        snapshot["l1_maxsize"] = self._l1.maxsize
        if self._breaker is not None:
            snapshot["breaker_state"] = self._breaker.state
            snapshot["breaker_open"] = int(self._breaker.state != CLOSED)
            snapshot["breaker_opens"] = self._breaker.opens
            snapshot["l2_skipped"] = self._breaker.skipped
        if self._coherence is not None:
            snapshot.update(self._coherence.bus.health())
        return snapshot

    @property
    def telemetry(self) -> Telemetry:
        """This cache's telemetry (read-only): whether spans are recorded, and ``span()``.

        Since: 0.2.0
        """
        return self._telemetry

    @overload
    def memoize(self, ttl: Callable[P, R], /) -> Memoized[P, R]: ...
    @overload
    def memoize(
        self,
        ttl: Duration | None = None,
        *,
        tags: Iterable[str] = (),
        ignore: Iterable[str] = (),
        name: str | None = None,
    ) -> Callable[[Callable[P, R]], Memoized[P, R]]: ...
    def memoize(
        self,
        ttl: Duration | Callable[..., Any] | None = None,
        *,
        tags: Iterable[str] = (),
        ignore: Iterable[str] = (),
        name: str | None = None,
    ) -> Any:
        """Decorate a function so its results are cached here, bare (``@cache.memoize``) or
        with options (``@cache.memoize(ttl=60, tags=("prices",))``); see `tiercache.memoize`.
        Typed: the result is a `Memoized` with the function's parameters and return type.

        Since: 0.1.0
        """
        from .memoizing import memoize_with

        if callable(ttl) and not isinstance(ttl, (int, float)):
            return memoize_with(self)(ttl)
        return memoize_with(self, ttl=ttl, tags=tags, ignore=ignore, name=name)

    def close(self) -> None:
        """Stop the listener, drop L1 and close the Redis client if `from_url`
        created it. Idempotent.

        Since: 0.1.0
        """
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        if self._coherence is not None:
            self._coherence.close()
        self._background.close()
        stop_metrics(self)
        self._l1.flush()
        if self._l2 is not None and self._owns_client:
            self._l2.close()

    def __enter__(self) -> TierCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        tier = "L1-only" if self._l2 is None else "L1+L2"
        state = ", closed" if self._closed else ""
        return f"<TierCache namespace={self._settings.namespace!r} {tier}{state}>"

    # -- housekeeping ------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        self._next_tick = now + _TICK
        pid = os.getpid()
        if self._pid != pid:
            self._after_fork()
        mono = time.monotonic()
        if mono >= self._telemetry.next_refresh:
            self._follow_tracing(mono)
        if self._coherence is not None and not self._closed:
            bus = self._coherence.bus
            bus.ensure_started(pid)
            # A busy process applies invalidations late if only the listener thread does it
            # (field-notes 18): readers take what is already waiting, once per tick.
            bus.drain()

    def _follow_tracing(self, now: float) -> None:
        """Trace L1 hits only while spans are recorded: the traced versions of get_or_set and
        get shadow the methods on this instance, so an untraced hit pays nothing."""
        tel = self._telemetry
        tel.refresh(now)
        want = tel.tracing and tel.trace_l1_hits
        # Never touch self.__dict__ here: on CPython 3.11+ that materializes the instance
        # dict and slows every attribute read of the hot path (1.41x an L1 hit, measured).
        if want and not self._shadowed:
            self.get_or_set = self._traced_get_or_set  # type: ignore[method-assign]
            self.get = self._traced_get  # type: ignore[method-assign]
            self._shadowed = True
        elif not want and self._shadowed:
            del self.get_or_set
            del self.get
            self._shadowed = False

    def _start_listener(self) -> None:
        pid = os.getpid()
        if self._pid != pid:
            self._after_fork()
        if self._coherence is not None and not self._closed:
            bus = self._coherence.bus
            bus.ensure_started(pid)
            bus.raise_if_refused()

    def _after_fork(self) -> None:
        """In a forked child: empty L1, forget loads and versions, new bus identity."""
        self._pid = os.getpid()
        # Single-flight first: resetting L1 detaches its loads, under single-flight's lock.
        self._flight.reset_after_fork()
        self._l1.reset_after_fork()
        self._background.reset_after_fork()
        self._pending.reset_after_fork()
        self._l2_log.reset_after_fork()
        self._refreshing_lock = threading.Lock()
        self._refreshing = set()
        if self._breaker is not None:
            self._breaker.reset()
        if self._coherence is not None:
            self._coherence.after_fork()

    # -- small helpers -------------------------------------------------------------------

    def _jittered(self, ttl_s: float) -> float:
        # Only ever shortens: a value never outlives the ttl the caller asked for.
        return ttl_s * (1.0 - random.random() * TTL_JITTER)

    def _read_failed(self, exc: L2Error) -> None:
        if isinstance(exc, CircuitOpenError):
            return  # counted as l2_skipped by the breaker, which logs its own transitions
        self._counters.l2_errors += 1
        self._l2_log.warning("read", "tiercache: L2 read failed, degrading to L1: %s", exc)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")


def _abandoned(
    label: str, coherence: Coherence | None, background: Background, owned: list[RedisTier]
) -> None:
    """Release what a cache collected without `TierCache.close` still holds (it must not
    reference the cache itself, or it would keep it alive)."""
    background.close(timeout=0)
    if coherence is None:
        return  # L1 only: no connection or listener was left behind
    coherence.close(timeout=0)  # the listener notices within one poll and exits
    for l2 in owned:
        l2.close()
    warnings.warn(
        f"{label} was never closed: call close() or use it as a context manager",
        ResourceWarning,
        stacklevel=2,
    )
