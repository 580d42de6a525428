"""TierCache: the public API and the read/write flow across L1, L2 and the loader.

Reads try L1 without a lock, then L2, then the loader (once per key per process, through
:class:`~tiercache.flight.SingleFlight`); writes go to L2 first, then L1. This module makes
no Redis call of its own: ``l2.py`` does, and every failure there arrives here as an
:class:`~tiercache.errors.L2Error` that reads turn into a miss.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from cachetools import LRUCache

from .codec import Serializer
from .entry import Entry, EntryCodec
from .errors import CorruptEntryError, L2Error
from .flight import SingleFlight
from .keys import check_key, check_keys
from .l1 import LocalTier, Ticket
from .l2 import RedisTier
from .options import TTL_JITTER, Duration, Settings, check_optional_ttl
from .stats import Counters, RateLimitedLog, key_digest, log

__all__ = ["TierCache"]

T = TypeVar("T")
_MISSING: Any = object()


class TierCache:
    """An in-process L1 in front of a Redis L2.

    Args:
        client: a redis-py client (``redis.Redis``, a Sentinel master, ``RedisCluster``)
            created with ``decode_responses=False``, or ``None`` for an L1-only cache.
        namespace: prefix of every Redis key (``{namespace}:{key}``).
        ttl: L2 lifetime of an entry in seconds (or a ``timedelta``); per-call ``ttl=``
            overrides it. Redis TTLs are shortened by a random jitter of up to 10%.
        l1_ttl: how long this process may serve its L1 copy, at most ``ttl``; defaults to
            ``min(30, ttl)``. In L1-only mode entries live ``ttl``.
        l1_maxsize: most entries kept in L1 (LRU eviction beyond it).
        max_key_length: longest key accepted, in characters.
        compress_threshold: serialized values of at least this many bytes are zstd-compressed.
        max_value_bytes: largest serialized value accepted by ``set`` and read from Redis.
        serializer: a :class:`~tiercache.Serializer`; msgpack with extension types by default.
        raise_on_write_error: make ``set``/``delete``/``clear`` and their ``*_many`` forms
            raise :class:`~tiercache.errors.L2Error` when Redis fails; by default failures are
            counted and logged.
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
            timer=timer,
        )
        self._settings = settings
        self._codec = EntryCodec(
            serializer,
            compress_threshold=settings.compress_threshold,
            max_value_bytes=settings.max_value_bytes,
        )
        self._l2 = RedisTier(client) if client is not None else None
        self._l1 = LocalTier(settings.l1_maxsize, timer or time.monotonic)
        self._wall: Callable[[], float] = timer or time.time
        self._prefix = settings.namespace + ":"
        self._counters = Counters()
        self._l2_log = RateLimitedLog()
        self._corrupt_logged: LRUCache[str, bool] = LRUCache(maxsize=1024)
        self._owns_client = False
        self._closed = False
        self._flight = SingleFlight()
        # Hot-path aliases: the L1 hit in get_or_set/get is a dict lookup, a clock read and
        # a deque append, with no lock and no method call of ours in between.
        self._l1_hits = 0
        self._l1_lookup = self._l1.data.get
        self._l1_touch = self._l1.recent.append
        self._clock = self._l1.timer

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
        :meth:`close`. ``options`` are the constructor's keyword arguments.

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
        return cache

    # -- reads -------------------------------------------------------------------------

    def get_or_set(self, key: str, loader: Callable[[], T], ttl: Duration | None = None) -> T:
        """Return the cached value for ``key``, loading and caching ``loader()`` on a miss.

        Concurrent misses for one key in this process run ``loader`` once; the others wait
        for its value or exception. A loader's exception propagates unchanged and nothing is
        cached. Redis trouble never raises here: it degrades to L1 + loader.

        Since: 0.1.0
        """
        try:
            entry = self._l1_lookup(key)
        except TypeError:  # unhashable key: let the slow path name the argument
            entry = None
        if entry is not None and self._clock() < entry[1]:
            self._l1_touch(key)
            self._l1_hits += 1
            return entry[0]  # type: ignore[no-any-return]
        return self._get_or_set_miss(key, loader, ttl)

    def get(self, key: str, default: Any = None) -> Any:
        """The cached value for ``key`` from L1 or L2, or ``default``. Never past its ``ttl``.

        Since: 0.1.0
        """
        try:
            entry = self._l1_lookup(key)
        except TypeError:
            entry = None
        if entry is not None and self._clock() < entry[1]:
            self._l1_touch(key)
            self._l1_hits += 1
            return entry[0]
        key = check_key(key, self._settings.max_key_length)
        self._check_open()
        self._counters.l1_misses += 1
        if self._l2 is None:
            return default
        ticket = self._l1.ticket(key)
        try:
            found = self._read_l2(key)
            if found is None:
                return default
            self._fill_from_l2(key, found, ticket)
            return found.value
        finally:
            self._l1.release(ticket)

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The cached values of those ``keys`` that are present; L2 in one ``MGET``.

        Since: 0.1.0
        """
        wanted = check_keys(keys, self._settings.max_key_length)
        self._check_open()
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
        if not missing or self._l2 is None:
            return found
        tickets = [self._l1.ticket(key) for key in missing]
        try:
            try:
                blobs = self._l2.get_many([self._prefix + key for key in missing])
            except L2Error as exc:
                self._counters.l2_errors += 1
                self._l2_log.warning("read", "tiercache: L2 read failed, serving L1: %s", exc)
                return found
            for key, blob, ticket in zip(missing, blobs, tickets, strict=True):
                decoded = self._decode(key, blob)
                if decoded is not None:
                    self._fill_from_l2(key, decoded, ticket)
                    found[key] = decoded.value
        finally:
            for ticket in tickets:
                self._l1.release(ticket)
        return found

    # -- writes ------------------------------------------------------------------------

    def set(self, key: str, value: Any, ttl: Duration | None = None) -> None:
        """Store ``value`` under ``key`` in L2, then L1.

        Raises :class:`~tiercache.SerializationError` (a ``TypeError``) for a value the
        serializer cannot encode and :class:`ValueError` for one over ``max_value_bytes``,
        both before any I/O.

        Since: 0.1.0
        """
        self.set_many({key: value}, ttl)

    def set_many(self, mapping: Mapping[str, Any], ttl: Duration | None = None) -> None:
        """Store every item, in one pipelined round trip to Redis; all values are encoded
        (and so validated) before anything is written.

        Since: 0.1.0
        """
        if not isinstance(mapping, Mapping):
            raise TypeError(f"mapping must be a Mapping of str keys, not {type(mapping).__name__}")
        keys = check_keys(mapping.keys(), self._settings.max_key_length, "mapping keys")
        ttl_s = check_optional_ttl("ttl", ttl, self._settings.ttl)
        self._check_open()
        self._counters.sets += len(keys)
        if self._l2 is None:
            for key in keys:
                self._l1.fill(key, mapping[key], ttl_s)
            return
        now = self._wall()
        rows = []
        for key in keys:
            life = self._jittered(ttl_s)
            blob = self._codec.encode(mapping[key], now + life)
            rows.append((self._prefix + key, blob, int(life * 1000)))
        try:
            self._l2.set_many(rows)
            l1_ttl = min(self._settings.l1_ttl, ttl_s)
        except L2Error as exc:
            if self._settings.raise_on_write_error:
                # Redis may hold the old or the new value now: make L1 ask it again.
                self._l1.invalidate(keys)
            self._write_failed(exc)
            # Redis may still hold an older copy that outlives l1_ttl; keep ours in L1 for the
            # full ttl so this instance keeps reading its own write.
            l1_ttl = ttl_s
        for key in keys:
            self._l1.fill(key, mapping[key], l1_ttl)

    def delete(self, key: str) -> None:
        """Remove ``key`` from L2 and this instance's L1.

        Since: 0.1.0
        """
        self.delete_many((key,))

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove every key, in one ``UNLINK``.

        Since: 0.1.0
        """
        wanted = check_keys(keys, self._settings.max_key_length)
        self._check_open()
        self._counters.deletes += len(wanted)
        try:
            if self._l2 is not None:
                self._l2.delete([self._prefix + key for key in wanted])
        except L2Error as exc:
            self._write_failed(exc)
        finally:
            self._l1.invalidate(wanted)

    def clear(self) -> None:
        """Remove every entry of this namespace from L2 (``SCAN`` + ``UNLINK``) and L1.

        Since: 0.1.0
        """
        self._check_open()
        self._counters.clears += 1
        try:
            if self._l2 is not None:
                self._l2.clear(self._prefix)
        except L2Error as exc:
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
        """A snapshot of plain counters: hits and misses per tier, loads, errors, L1 size.

        Since: 0.1.0
        """
        snapshot = self._counters.snapshot()
        snapshot["l1_hits"] += self._l1_hits
        snapshot["l1_size"] = len(self._l1)
        snapshot["l1_maxsize"] = self._l1.maxsize
        return snapshot

    def memoize(
        self, ttl: Duration | None = None, *, ignore: Iterable[str] = ()
    ) -> Callable[[Callable[..., T]], Any]:
        """Decorate a function so its results are cached here; see :func:`tiercache.memoize`.

        Since: 0.1.0
        """
        from .memoize import memoize_with

        return memoize_with(lambda: self, ttl=ttl, ignore=ignore)

    def close(self) -> None:
        """Drop L1 and close the Redis client if :meth:`from_url` created it. Idempotent.

        Since: 0.1.0
        """
        if self._closed:
            return
        self._closed = True
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

    # -- internals -----------------------------------------------------------------------

    def _get_or_set_miss(self, key: Any, loader: Callable[[], T], ttl: Duration | None) -> T:
        key = check_key(key, self._settings.max_key_length)
        if not callable(loader):
            raise TypeError(f"loader must be a callable taking no arguments, not {loader!r}")
        ttl_s = check_optional_ttl("ttl", ttl, self._settings.ttl)
        self._check_open()
        self._counters.l1_misses += 1
        value, leader = self._flight.run(key, lambda: self._load_through(key, loader, ttl_s))
        if not leader:
            self._counters.load_waits += 1
        return value  # type: ignore[no-any-return]

    def _load_through(self, key: str, loader: Callable[[], Any], ttl_s: float) -> Any:
        ticket = self._l1.ticket(key)
        try:
            entry = self._l1.get(key)  # a previous leader may have filled it meanwhile
            if entry is not None:
                return entry[0]
            if self._l2 is not None:
                found = self._read_l2(key)
                if found is not None:
                    self._fill_from_l2(key, found, ticket)
                    return found.value
            self._counters.loads += 1
            try:
                value = loader()
            except BaseException:
                self._counters.load_errors += 1
                raise
            self._store_loaded(key, value, ttl_s, ticket)
            return value
        finally:
            self._l1.release(ticket)

    def _store_loaded(self, key: str, value: Any, ttl_s: float, ticket: Ticket) -> None:
        if self._l2 is None:
            self._l1.fill(key, value, ttl_s, ticket)
            return
        life = self._jittered(ttl_s)
        blob = self._codec.encode(value, self._wall() + life)
        try:
            self._l2.set(self._prefix + key, blob, int(life * 1000))
        except L2Error as exc:
            # A fill on a read path never raises: the caller still gets the loaded value.
            self._counters.l2_write_errors += 1
            self._l2_log.warning("write", "tiercache: L2 write failed: %s", exc)
        self._l1.fill(key, value, min(self._settings.l1_ttl, life), ticket)

    def _read_l2(self, key: str) -> Entry | None:
        assert self._l2 is not None
        try:
            blob = self._l2.get(self._prefix + key)
        except L2Error as exc:
            self._counters.l2_errors += 1
            self._l2_log.warning("read", "tiercache: L2 read failed, degrading to L1: %s", exc)
            return None
        return self._decode(key, blob)

    def _decode(self, key: str, blob: bytes | None) -> Entry | None:
        if blob is None:
            self._counters.l2_misses += 1
            return None
        try:
            entry = self._codec.decode(blob)
        except CorruptEntryError as exc:
            self._counters.l2_corrupt += 1
            self._counters.l2_misses += 1
            digest = key_digest(key)
            if digest not in self._corrupt_logged:
                self._corrupt_logged[digest] = True
                log.warning(
                    "tiercache: undecodable L2 entry in namespace %r (key digest %s), "
                    "treated as a miss: %s",
                    self._settings.namespace,
                    digest,
                    exc,
                )
            return None
        if entry.expires_at <= self._wall():
            self._counters.l2_misses += 1
            return None
        self._counters.l2_hits += 1
        return entry

    def _fill_from_l2(self, key: str, entry: Entry, ticket: Ticket) -> None:
        remaining = entry.expires_at - self._wall()
        if remaining > 0:
            self._l1.fill(key, entry.value, min(self._settings.l1_ttl, remaining), ticket)

    def _jittered(self, ttl_s: float) -> float:
        # Only ever shortens: a value never outlives the ttl the caller asked for.
        return ttl_s * (1.0 - random.random() * TTL_JITTER)

    def _write_failed(self, exc: L2Error) -> None:
        self._counters.l2_write_errors += 1
        if self._settings.raise_on_write_error:
            raise exc
        self._l2_log.warning("write", "tiercache: L2 write failed: %s", exc)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
