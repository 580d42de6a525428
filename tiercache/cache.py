"""TierCache: the public API. It checks arguments, keeps the L1-hit path inline, opens spans
and delegates: reads past an L1 miss to ``loading.py`` (which reads L2 through ``reading.py``),
writes to ``writing.py``. The parts are built in ``assembly.py``; this module makes no Redis
call of its own, and no part calls back into it.
"""

from __future__ import annotations

import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from . import forking
from .assembly import assemble
from .background import Background
from .codec import Compressor, Serializer
from .coherence import Coherence
from .keys import check_key, check_keys, check_tags
from .l2 import RedisTier, is_cluster
from .metrics import forget as stop_metrics
from .metrics import observe as report_metrics
from .options import DEFAULTS, Breaker, Duration, Settings, check_optional_ttl, check_writer
from .resilience import CLOSED
from .telemetry import (
    ATTR_KEY_COUNT,
    ATTR_RESULT,
    ATTR_TIER,
    SPAN_ADD,
    SPAN_CLEAR,
    SPAN_DELETE,
    SPAN_DELETE_MANY,
    SPAN_GET,
    SPAN_GET_MANY,
    SPAN_GET_OR_SET,
    SPAN_INCR,
    SPAN_INVALIDATE_TAGS,
    SPAN_SET,
    SPAN_SET_MANY,
    SPAN_TOUCH,
    RecordKeys,
    Telemetry,
)
from .write_behind import WriteBehind
from .write_stream import StreamQueue
from .writer import Writer

if TYPE_CHECKING:  # typing TierCache.memoize only; memoizing.py imports this module
    from .memoizing import Memoized, P, R

__all__ = ["CLOSE_TIMEOUT", "TierCache"]

T = TypeVar("T")
#: How long `TierCache.close` waits for queued write-behind writes by default, seconds.
CLOSE_TIMEOUT = 10.0
# Seconds between two housekeeping ticks on the read path: drain the bus, check the pid.
_TICK = 0.001
_L1_HIT = {ATTR_TIER: "l1", ATTR_RESULT: "hit"}
_ABSENT: Any = object()  # has_key's default: no cached value is this object


class TierCache:
    """An in-process L1 in front of a Redis L2, kept coherent across instances by pub/sub.

    Args:
        client: a redis-py client (``redis.Redis``, a Sentinel master, ``RedisCluster``)
            created with ``decode_responses=False``, or ``None`` for an L1-only cache.

    Every other argument is keyword-only and defined once in ``tiercache.options.OPTIONS``
    with its default and check: ``namespace``, ``ttl``, ``l1_ttl``, ``l1_maxsize``, and the
    rest, every one described in the API reference's "Constructor options" table. A bad
    value raises ``TypeError``/``ValueError`` naming the option, before any I/O.

    Since: 0.1.0
    """

    def __init__(
        self,
        client: Any,
        *,
        namespace: str = DEFAULTS["namespace"],
        ttl: Duration = DEFAULTS["ttl"],
        l1_ttl: Duration | None = DEFAULTS["l1_ttl"],
        l1_maxsize: int = DEFAULTS["l1_maxsize"],
        l1_max_bytes: int | None = DEFAULTS["l1_max_bytes"],
        l1_entry_share: float = DEFAULTS["l1_entry_share"],
        max_key_length: int = DEFAULTS["max_key_length"],
        compress_threshold: int = DEFAULTS["compress_threshold"],
        max_value_bytes: int = DEFAULTS["max_value_bytes"],
        serializer: Serializer | None = DEFAULTS["serializer"],
        compressor: Compressor | None = DEFAULTS["compressor"],
        propagate_values: int | None = DEFAULTS["propagate_values"],
        raise_on_write_error: bool = DEFAULTS["raise_on_write_error"],
        writer: Writer | None = DEFAULTS["writer"],
        write_behind: bool = DEFAULTS["write_behind"],
        write_behind_delay: Duration = DEFAULTS["write_behind_delay"],
        write_behind_batch_size: int = DEFAULTS["write_behind_batch_size"],
        write_behind_stream: bool = DEFAULTS["write_behind_stream"],
        write_behind_retries: int = DEFAULTS["write_behind_retries"],
        lease_ttl: Duration = DEFAULTS["lease_ttl"],
        lease_wait: Duration = DEFAULTS["lease_wait"],
        breaker: Breaker | None = DEFAULTS["breaker"],
        pubsub: Literal["classic", "sharded"] = DEFAULTS["pubsub"],
        stale_ttl: Duration = DEFAULTS["stale_ttl"],
        fail_safe_throttle: Duration = DEFAULTS["fail_safe_throttle"],
        soft_timeout: Duration | None = DEFAULTS["soft_timeout"],
        hard_timeout: Duration | None = DEFAULTS["hard_timeout"],
        refresh_ahead: float | None = DEFAULTS["refresh_ahead"],
        early_expiration: float | None = DEFAULTS["early_expiration"],
        none_ttl: Duration | None = DEFAULTS["none_ttl"],
        background_workers: int = DEFAULTS["background_workers"],
        telemetry: bool = DEFAULTS["telemetry"],
        record_keys: RecordKeys = DEFAULTS["record_keys"],
        trace_l1_hits: bool = DEFAULTS["trace_l1_hits"],
        timer: Callable[[], float] | None = DEFAULTS["timer"],
    ) -> None:
        options = dict(locals())
        del options["self"], options["client"]
        self._settings = settings = Settings.build(cluster=is_cluster(client), **options)
        tier = "L1-only" if client is None else "L1+L2"
        parts = assemble(client, settings, f"<TierCache {settings.namespace!r} {tier}>")
        self._l1, self._l2, self._coherence = parts.l1, parts.l2, parts.coherence
        self._flight, self._telemetry = parts.flight, parts.telemetry
        self._counters = parts.counters
        self._breaker, self._lifecycle = parts.breaker, parts.lifecycle
        self._loads, self._writes = parts.loads, parts.writes
        self._atomic = parts.atomic
        self._persist = parts.persist
        self._write_behind: WriteBehind | StreamQueue | None = parts.write_behind
        self._owns_client = False
        # Hot-path aliases: an L1 hit is a clock read, one comparison against the next
        # housekeeping tick, a dict lookup and a deque append; no lock, no call of ours.
        self._l1_hits = 0
        self._l1_lookup = parts.l1.data.get
        self._l1_touch = parts.l1.recent.append
        self._clock = parts.clock
        self._next_tick = 0.0
        self._shadowed = False
        self._lifecycle.on_fork(self._reset_hot_path)
        forking.track(self)
        # A cache dropped without close() must not keep its listener thread and connections
        # forever (test suites and request-scoped code create many): stop them when it is
        # collected, and say so, as an unclosed file does. Not at interpreter exit: a
        # module-level cache that lives as long as the process is not a leak.
        self._owned: list[RedisTier] = []
        self._finalizer = weakref.finalize(
            self, _abandoned, repr(self), self._coherence, parts.background, self._owned
        )
        self._finalizer.atexit = False
        self._background = parts.background
        if settings.telemetry:
            report_metrics(self)
            self._follow_tracing(time.monotonic())

    @classmethod
    def from_url(
        cls, url: str, *, redis_options: Mapping[str, Any] | None = None, **options: Any
    ) -> TierCache:
        """Build a cache on a new redis-py client for ``url`` (``redis://``, ``rediss://``
        for TLS, ``unix://``; user, password and database in the URL as redis-py reads them;
        ``redis+cluster://host:port,host:port/`` for Redis Cluster,
        ``redis+sentinel://host:port,host:port/service/db`` for a Sentinel-managed primary).

        The client gets short timeouts and no hidden retries, on every topology (redis-py 8
        retries a timed-out command up to 10 times by default, and ``RedisCluster`` retries
        on its own too, turning a stalled Redis into a stalled request);
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

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The cached values of those ``keys`` that are present; L2 in one ``MGET``.

        Since: 0.1.0
        """
        with self._telemetry.span(SPAN_GET_MANY):
            wanted = check_keys(keys, self._settings.max_key_length)
            self._lifecycle.check_open()
            now = self._clock()
            if now >= self._next_tick:
                self._tick(now)
            return self._loads.get_many(wanted)

    def _get_or_set_miss(
        self, key: Any, loader: Callable[[], T], ttl: Duration | None, tags: Iterable[str]
    ) -> T:
        checked = check_key(key, self._settings.max_key_length)
        if not callable(loader):
            raise TypeError(f"loader must be a callable taking no arguments, not {loader!r}")
        ttl_s = check_optional_ttl("ttl", ttl, self._settings.ttl)
        tag_list = check_tags(tags)
        self._lifecycle.check_open()
        if checked is not key:
            # A str subclass (e.g. a ``(str, Enum)`` member) hashes unlike its text: the
            # hot path missed, but L1 may hold the plain key.
            entry = self._l1.get(checked)
            if entry is not None:
                self._counters.l1_hits += 1
                return entry[0]  # type: ignore[no-any-return]
        if not self._telemetry.tracing:  # kept current by the read path's tick
            value: T = self._loads.get_or_set(checked, loader, ttl_s, tag_list)
            return value
        with self._telemetry.span(SPAN_GET_OR_SET, checked):
            return self._loads.get_or_set(checked, loader, ttl_s, tag_list)  # type: ignore[no-any-return]

    def _get_miss(self, key: Any, default: Any) -> Any:
        checked = check_key(key, self._settings.max_key_length)
        self._lifecycle.check_open()
        if checked is not key:  # see _get_or_set_miss
            entry = self._l1.get(checked)
            if entry is not None:
                self._counters.l1_hits += 1
                return entry[0]
        if not self._telemetry.tracing:  # kept current by the read path's tick
            return self._loads.get(checked, default)
        with self._telemetry.span(SPAN_GET, checked):
            return self._loads.get(checked, default)

    def _l1_hit(self, key: Any) -> tuple[bool, Any]:
        now = self._clock()
        if now >= self._next_tick:
            self._tick(now)
        try:
            entry = self._l1_lookup(key)
        except TypeError:
            return False, None
        if entry is not None and now < entry[1]:
            self._l1_touch(key)
            self._l1_hits += 1
            return True, entry[0]
        return False, None

    def _traced_get_or_set(
        self,
        key: str,
        loader: Callable[[], T],
        ttl: Duration | None = None,
        *,
        tags: Iterable[str] = (),
    ) -> T:
        hit, value = self._l1_hit(key)
        if hit:
            with self._telemetry.span(SPAN_GET_OR_SET, key, _L1_HIT):
                return value  # type: ignore[no-any-return]
        return self._get_or_set_miss(key, loader, ttl, tags)

    def _traced_get(self, key: str, default: Any = None) -> Any:
        hit, value = self._l1_hit(key)
        if hit:
            with self._telemetry.span(SPAN_GET, key, _L1_HIT):
                return value
        return self._get_miss(key, default)

    # -- writes ------------------------------------------------------------------------

    def set(
        self,
        key: str,
        value: Any,
        ttl: Duration | None = None,
        *,
        tags: Iterable[str] = (),
        writer: Writer | None = None,
    ) -> None:
        """Store ``value`` under ``key`` in L2, then L1, and tell every other instance.

        Raises `SerializationError` (a `TypeError`) for a value the serializer cannot
        encode and `ValueError` for one over ``max_value_bytes``, both before any I/O.
        ``tags`` let `invalidate_tags` drop the entry later. With a `Writer` (``writer=``
        here or at construction) the value is written through it first, or queued for it
        with ``write_behind`` (see Caching patterns).

        Since: 0.1.0 (``writer``: 0.3.0)
        """
        key = check_key(key, self._settings.max_key_length)
        with self._telemetry.span(SPAN_SET, key):
            self._set_many([key], {key: value}, ttl, tags, writer)

    def set_many(
        self,
        mapping: Mapping[str, Any],
        ttl: Duration | None = None,
        *,
        tags: Iterable[str] = (),
        writer: Writer | None = None,
    ) -> None:
        """Store every item, in one pipelined round trip to Redis and one bus message; all
        values are encoded (and so validated) before anything is written. ``writer``: as
        in `set` (one ``write_many`` call).

        Since: 0.1.0 (``writer``: 0.3.0)
        """
        if not isinstance(mapping, Mapping):
            raise TypeError(f"mapping must be a Mapping of str keys, not {type(mapping).__name__}")
        keys = check_keys(mapping.keys(), self._settings.max_key_length, "mapping keys")
        with self._telemetry.span(SPAN_SET_MANY, None, {ATTR_KEY_COUNT: len(keys)}):
            # Values under their checked keys: a str-subclass key is stored as its text.
            values = dict(zip(keys, mapping.values(), strict=True))
            self._set_many(keys, values, ttl, tags, writer)

    def _set_many(
        self,
        keys: list[str],
        mapping: Mapping[str, Any],
        ttl: Duration | None,
        tags: Any,
        writer: Writer | None,
    ) -> None:
        ttl_s = check_optional_ttl("ttl", ttl, self._settings.ttl)
        tag_list = check_tags(tags)
        self._lifecycle.check_open()
        self._persist.set_many(keys, mapping, ttl_s, tag_list, check_writer(writer))

    def delete(self, key: str, *, writer: Writer | None = None) -> None:
        """Remove ``key`` from L2 and from the L1 of every instance. ``writer``: as in
        `set`.

        Since: 0.1.0 (``writer``: 0.3.0)
        """
        key = check_key(key, self._settings.max_key_length)
        with self._telemetry.span(SPAN_DELETE, key):
            self._lifecycle.check_open()
            self._persist.delete_many([key], check_writer(writer))

    def delete_many(self, keys: Iterable[str], *, writer: Writer | None = None) -> None:
        """Remove every key, in one ``UNLINK`` and one bus message. ``writer``: as in
        `set` (one ``delete_many`` call).

        Since: 0.1.0 (``writer``: 0.3.0)
        """
        wanted = check_keys(keys, self._settings.max_key_length)
        with self._telemetry.span(SPAN_DELETE_MANY, None, {ATTR_KEY_COUNT: len(wanted)}):
            self._lifecycle.check_open()
            self._persist.delete_many(wanted, check_writer(writer))

    def flush(self, timeout: float | None = None) -> bool:
        """Hand every queued write-behind write to the writer now and wait until it is
        written (or dropped after its retries); whether the queue drained within
        ``timeout`` seconds (None: no limit). True at once without ``write_behind``.

        Since: 0.3.0
        """
        if self._write_behind is None:
            return True
        return self._write_behind.flush(timeout)

    def invalidate_tags(self, *tags: str) -> None:
        """Invalidate every entry set with any of ``tags``, in every instance, without
        scanning Redis: the tags' versions move on, so older entries read as misses.

        Since: 0.1.0
        """
        with self._telemetry.span(SPAN_INVALIDATE_TAGS):
            tag_list = check_tags(tags, "tags")
            self._lifecycle.check_open()
            self._writes.invalidate_tags(tag_list)

    def clear(self) -> None:
        """Empty the whole namespace in every instance: the namespace version moves on, so
        every older entry reads as a miss (no ``KEYS``/``SCAN``/``FLUSHDB``; old entries
        expire from Redis on their TTL).

        Since: 0.1.0
        """
        with self._telemetry.span(SPAN_CLEAR):
            self._lifecycle.check_open()
            self._writes.clear()

    # -- read-modify-write (atomic in Redis) ---------------------------------------------

    def add(
        self, key: str, value: Any, ttl: Duration | None = None, *, tags: Iterable[str] = ()
    ) -> bool:
        """Store ``value`` only if ``key`` is absent (a miss for `get`); whether it did.

        Atomic in Redis: of concurrent ``add`` calls on one key, in any processes, exactly
        one wins. An expired entry, one made stale by `clear`/`invalidate_tags` and a key
        being loaded count as absent. On success it behaves as `set` (read-your-writes,
        every other instance drops its copy); Redis trouble answers False.

        Since: 0.2.0
        """
        key = check_key(key, self._settings.max_key_length)
        ttl_s = check_optional_ttl("ttl", ttl, self._settings.ttl)
        tag_list = check_tags(tags)
        self._lifecycle.check_open()
        with self._telemetry.span(SPAN_ADD, key):
            return self._atomic.add(key, value, ttl_s, tag_list)

    def incr(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` to the ``int`` stored at ``key``, atomically in Redis, and return
        the new value; the entry keeps its expiry and stays readable by `get` everywhere.

        Raises ``KeyError`` if ``key`` is absent, ``TypeError`` if its value is not an
        ``int`` (or ``delta`` is not one), and `L2Error` if Redis cannot be reached: there
        is no value it could answer with.

        Since: 0.2.0
        """
        key = check_key(key, self._settings.max_key_length)
        if type(delta) is not int:
            raise TypeError(f"delta must be an int, not {delta!r}")
        self._lifecycle.check_open()
        with self._telemetry.span(SPAN_INCR, key):
            return self._atomic.incr(key, delta)

    def decr(self, key: str, delta: int = 1) -> int:
        """`incr` by ``-delta``.

        Since: 0.2.0
        """
        if type(delta) is not int:
            raise TypeError(f"delta must be an int, not {delta!r}")
        return self.incr(key, -delta)

    def touch(self, key: str, ttl: Duration | None = None) -> bool:
        """Give the live entry at ``key`` a new ``ttl`` from now; whether there was one.
        Every other instance drops its copy (it re-reads the new expiry from Redis).

        Since: 0.2.0
        """
        key = check_key(key, self._settings.max_key_length)
        ttl_s = check_optional_ttl("ttl", ttl, self._settings.ttl)
        self._lifecycle.check_open()
        with self._telemetry.span(SPAN_TOUCH, key):
            return self._atomic.touch(key, ttl_s)

    def has_key(self, key: str) -> bool:
        """Whether `get` would find a value for ``key`` (a cached None counts).

        Since: 0.2.0
        """
        return self.get(key, _ABSENT) is not _ABSENT

    # -- introspection and lifecycle -----------------------------------------------------

    @property
    def namespace(self) -> str:
        """The namespace given at construction."""
        return self._settings.namespace

    @property
    def settings(self) -> Settings:
        """The validated options of this cache."""
        return self._settings

    @property
    def telemetry(self) -> Telemetry:
        """This cache's OpenTelemetry helper: whether spans are recorded now (``tracing``,
        ``trace_l1_hits``) and ``span(...)`` for code that opens spans around it (memoize).

        Since: 0.2.0
        """
        return self._telemetry

    def stats(self) -> dict[str, int]:
        """A snapshot of plain counters: hits and misses per tier, loads, errors, L1 size,
        and the health of the invalidation bus (``bus_*``).

        Since: 0.1.0
        """
        self._lifecycle.forked()  # no fork hook ran (uWSGI): the parent's counts are not ours
        snapshot = self._counters.snapshot()
        snapshot["l1_hits"] += self._l1_hits
        snapshot["l1_size"] = len(self._l1)
        snapshot["l1_held"] = len(self._l1.held)
        snapshot["l1_maxsize"] = self._l1.maxsize
        snapshot["l1_bytes"] = self._l1.bytes
        snapshot["l1_max_bytes"] = self._l1.max_bytes
        if self._write_behind is not None:
            snapshot["write_behind_pending"] = self._write_behind.pending
        if self._breaker is not None:
            snapshot["breaker_state"] = self._breaker.state
            snapshot["breaker_open"] = int(self._breaker.state != CLOSED)
            snapshot["breaker_opens"] = self._breaker.opens
            snapshot["l2_skipped"] = self._breaker.skipped
        if self._coherence is not None:
            snapshot.update(self._coherence.bus.health())
        return snapshot

    def _metric_counts(self) -> dict[str, int]:
        """The counters the metric instruments read (``metrics.py``): only those, so a
        collection does not build the whole of `stats` once per instrument."""
        self._lifecycle.forked()  # no fork hook ran (uWSGI): the parent's counts are not ours
        c = self._counters
        counts = {
            "l1_hits": c.l1_hits + self._l1_hits,
            "l2_hits": c.l2_hits,
            "loads": c.loads,
            "load_errors": c.load_errors,
            "loads_served": c.loads_served,
            "load_waits": c.load_waits,
            "stale_serves": c.stale_serves,
            "read_misses": c.read_misses,
            "read_errors": c.read_errors,
            "l2_errors": c.l2_errors,
            "l2_write_errors": c.l2_write_errors,
            "l1_size": len(self._l1),
            "l1_bytes": self._l1.bytes,
            "writes_dropped": c.writes_dropped,
            "writer_errors": c.writer_errors,
            "write_behind_pending": 0 if self._write_behind is None else self._write_behind.pending,
        }
        if self._breaker is not None:
            counts["breaker_state"] = self._breaker.state
            counts["breaker_open"] = int(self._breaker.state != CLOSED)
        if self._coherence is not None:
            counts.update(self._coherence.bus.health())
        return counts

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

    def close(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        """Write the queued write-behind writes (waiting up to ``timeout`` seconds; what is
        left then is dropped, counted and logged), stop the listener, drop L1 and close the
        Redis client if `from_url` created it. Idempotent.

        Since: 0.1.0 (``timeout``: 0.3.0)
        """
        if self._lifecycle.closed:
            return
        if self._write_behind is not None:
            self._write_behind.close(timeout)
        self._lifecycle.closed = True
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
        state = ", closed" if self._lifecycle.closed else ""
        return f"<TierCache namespace={self._settings.namespace!r} {tier}{state}>"

    # -- housekeeping ------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        self._next_tick = now + _TICK
        lifecycle = self._lifecycle
        pid = lifecycle.pid
        lifecycle.forked()
        mono = time.monotonic()
        if mono >= self._telemetry.next_refresh:
            self._follow_tracing(mono)
        if self._coherence is not None and not lifecycle.closed:
            bus = self._coherence.bus
            bus.ensure_started(pid if pid == lifecycle.pid else None)
            # A busy process applies invalidations late if only the listener thread does
            # it: with the request thread doing pure-Python work, a listener alone took
            # p50 3-5 ms from PUBLISH to "the reader no longer sees the old value"; readers
            # that also take what is already waiting, once per tick, cut it to ~0.5 ms
            # (benchmarks/invalidation.py).
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

    def _after_fork(self) -> None:
        """In a forked child: every part resets its process-local state."""
        self._lifecycle.forked()

    def _reset_hot_path(self) -> None:
        # The child counts its own hits, and ticks (drains, looks for an SDK) at once.
        self._l1_hits = 0
        self._next_tick = 0.0


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
