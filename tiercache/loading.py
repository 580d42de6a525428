"""The miss path: from an L1 miss to a value, through L2, the cross-process lease, the loader
and the fail-safe. `Loads` is the service; each load is a `_Load` object.

1. L2 first (most misses are L2 hits), outside single-flight, under a ticket from L1 (an
   invalidation from now on refuses the fill);
2. then one load per key per process (``flight.py``); the leader looks at L2 again: a fresh
   entry is served; a lease placeholder means another process is loading, so it waits for
   its value (bounded by ``lease_wait``); anything else (nothing, expired, stale, corrupt) is
   replaced by its own lease, compare-and-set on the bytes seen;
3. the versions to stamp on what it writes are taken before the loader runs (an invalidation
   from then on makes the value stale), then the loader, then a write that succeeds only
   while the lease stands (``lease.py``).

Without a lease (Redis away, waited too long) the loader still runs and L1 keeps its value,
but L2 is not written: we could not know whether an invalidation overtook the load there.

Fail-safe (``stale_ttl`` > 0): an expired entry still inside its window (in L1, in L2, or
carried by a lease placeholder) is served, marked stale, when the loader raises or overruns
``soft_timeout``/``hard_timeout``; then the key is not retried for ``fail_safe_throttle``.
A load that overran its timeout finishes on a background worker and still fills the cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from cachetools import LRUCache

from .background import Background
from .coherence import Coherence
from .early import early_expiration
from .entry import EntryCodec, Prepared
from .errors import L2Error, SerializationError
from .flight import SingleFlight
from .l1 import LocalTier, Ticket
from .lifecycle import Lifecycle
from .lifetimes import Lifetimes
from .load import LeaseWriter, Load
from .options import Settings
from .reading import (
    MISSING_ENTRY,
    Failed,
    Fallback,
    Hit,
    L2Reader,
    Leased,
    Read,
)
from .refresh import Refresher
from .stats import Counters, RateLimitedLog, key_digest, log
from .telemetry import ATTR_COALESCED, ATTR_VALUE_SIZE, Telemetry
from .writing import Invalidations

__all__ = ["Loads", "Outcome"]

# What a lease write or release returns when processes registered to wait for it.
_WAITED_FOR = 2
#: What a load's first L2 read can be besides a `Read`: not read yet.
_NOT_READ: Any = None

Outcome = tuple[Any, Prepared | None]


class Loads:
    """The read path past an L1 miss, for one cache (see the module docstring).

    Since: 0.2.0
    """

    def __init__(
        self,
        *,
        settings: Settings,
        l1: LocalTier,
        reader: L2Reader | None,
        coherence: Coherence | None,
        invalidations: Invalidations | None,
        flight: SingleFlight,
        background: Background,
        codec: EntryCodec,
        counters: Counters,
        telemetry: Telemetry,
        lifetimes: Lifetimes,
        lifecycle: Lifecycle,
        l2_log: RateLimitedLog,
    ) -> None:
        self.settings = settings
        self.l1 = l1
        self.reader = reader
        self.coherence = coherence
        self.invalidations = invalidations
        self.flight = flight
        self.background = background
        self.codec = codec
        self.counters = counters
        self.telemetry = telemetry
        self.lifetimes = lifetimes
        self.lifecycle = lifecycle
        self.l2_log = l2_log
        self._unstorable_logged: LRUCache[str, bool] = LRUCache(maxsize=1024)
        self.refresher = (
            Refresher(
                coherence=coherence,
                l1=l1,
                background=background,
                codec=codec,
                counters=counters,
                lifetimes=lifetimes,
                l2_log=l2_log,
                call_loader=self.call_loader,
                rkey=reader.rkey,
                settings=settings,
                wall=lifetimes.wall,
            )
            if coherence is not None
            and reader is not None
            and (settings.refresh_ahead or settings.early_expiration)
            else None
        )
        self.early = early_expiration(settings, self.refresher, counters, lifetimes.wall)

    # -- entry points (arguments checked, span opened by the cache) ------------------------

    def get_or_set(self, key: str, loader: Callable[[], Any], ttl: float, tags: list[str]) -> Any:
        """The value for ``key`` after an L1 miss: from L2, another load, or ``loader``."""
        self.lifecycle.ready()
        self.counters.l1_misses += 1
        first: Read | None = _NOT_READ
        writer: LeaseWriter | None = None
        registered_at: float | None = None
        reader = self.reader
        if reader is not None and not self.l1.held_value(key)[0]:
            assert self.invalidations is not None
            if not self.invalidations.usable():
                first = Failed(L2Error("L2 unusable: a failed write is waiting to be replayed"))
            else:
                # Most misses are L2 hits: read L2 before single-flight, which only has to
                # guard loads (concurrent misses of one key each cost a GET, not a load).
                with self.l1.ticket(key) as ticket:
                    if self.l1.take_invalidated(key):
                        # Invalidated lately: Redis likely holds nothing either. Ask for "the
                        # value, or the lease" in one round trip (a plain GET costs less, so
                        # only here): a load then costs two round trips, not three, and a
                        # lease found there registers us as its waiter in the same trip.
                        asked = time.monotonic()
                        first, writer = self._get_or_lease(key, tags)
                        if isinstance(first, Leased):
                            registered_at = asked
                    else:
                        first = reader.read(key)
                    if isinstance(first, Hit):
                        return self.serve_hit(key, loader, ttl, tags, first, ticket)
        load = Load(self, key, loader, ttl, tags, first, writer, registered_at=registered_at)
        try:
            value, leader = self.flight.run(key, load.run, load.give_back)
        except Exception:
            self.counters.read_errors += 1  # the load failed and nothing could answer
            raise
        finally:
            load.give_back()  # a lease taken above that no load used
        if not leader:
            self.counters.load_waits += 1
            self.telemetry.answered("loader", "miss", **{ATTR_COALESCED: True})
        return value

    def get(self, key: str, default: Any) -> Any:
        """The value for ``key`` from L2 after an L1 miss, or ``default``."""
        self.counters.l1_misses += 1
        reader = self.reader
        if reader is None:
            self.counters.read_misses += 1
            self.telemetry.answered("l1", "miss")
            return default
        self.lifecycle.ready()
        assert self.invalidations is not None
        if not self.invalidations.usable():
            self.counters.read_misses += 1
            return default
        with self.l1.ticket(key) as ticket:
            found = reader.read(key)
            if isinstance(found, Hit):
                self.fill_from_l2(key, found, ticket)
                self.answered_hit(found)
                return found.entry.value
            self.counters.read_misses += 1
            self.telemetry.answered("l2", "miss")
            return default

    def get_many(self, wanted: list[str]) -> dict[str, Any]:
        """The values of those keys that are present; L2 in one ``MGET``."""
        self.lifecycle.ready()
        found: dict[str, Any] = {}
        missing: list[str] = []
        data, timer, recent = self.l1.data, self.l1.timer, self.l1.recent
        now = timer()
        for key in dict.fromkeys(wanted):
            entry = data.get(key)
            if entry is not None and now < entry[1]:
                recent.append(key)
                found[key] = entry[0]
            else:
                missing.append(key)
        l1_found = len(found)
        self.counters.l1_hits += l1_found
        self.counters.l1_misses += len(missing)
        reader, invalidations = self.reader, self.invalidations
        if not missing or reader is None or invalidations is None or not invalidations.usable():
            self.counters.read_misses += len(missing)
            return found
        # One snapshot of L1's change counter instead of a ticket per key: if anything is
        # invalidated while L2 is read, nothing read is kept (it is still returned).
        seen = self.l1.changes
        hits = reader.hits(missing)
        if isinstance(hits, Failed):
            self.counters.read_misses += len(missing)
            return found
        if hits:
            wall = self.lifetimes.wall()
            stale_ttl = self.settings.stale_ttl
            bounds: dict[float, float] = {}
            fills: list[tuple[str, Any, float, float, Sequence[str], int]] = []
            for key, hit, learned_at, size in hits:
                found[key] = hit.value
                bound = bounds.get(learned_at)
                if bound is None:
                    bound = bounds[learned_at] = self.lifetimes.hit_bound(learned_at)
                ttl = min(bound, hit.expires_at - wall)
                if ttl > 0:
                    tags = [tag for tag, _ in hit.tags] if hit.tags else ()
                    stale_for = hit.expires_at + stale_ttl - wall
                    fills.append((key, hit.value, ttl, stale_for, tags, size))
            if fills:
                self.l1.fill_read(fills, seen)
        self.counters.read_misses += len(missing) + l1_found - len(found)
        return found

    def _get_or_lease(self, key: str, tags: list[str]) -> tuple[Read, LeaseWriter | None]:
        """Read ``key``, taking its lease if Redis holds nothing: the read, and the lease."""
        reader, coherence = self.reader, self.coherence
        assert reader is not None
        assert coherence is not None
        rkey = reader.rkey(key)
        try:
            # Versions are taken before the load: an invalidation from now on makes what
            # this load writes stale.
            stamp = coherence.stamp(tags)
            found, taken = coherence.leases.get_or_lease(rkey, int(self.settings.lease_ttl * 1000))
        except L2Error as exc:
            return reader.failed(exc), None
        if taken:
            self.counters.l2_misses += 1
            return MISSING_ENTRY, LeaseWriter(key, rkey, found, stamp, b"", 0)
        return reader.classify(key, found, self.lifetimes.wall()), None

    # -- shared by the loads ---------------------------------------------------------------

    def serve_hit(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: float,
        tags: list[str],
        hit: Hit,
        ticket: Ticket,
    ) -> Any:
        """Serve an L2 hit: fill L1, and refresh it ahead of expiry if it is due."""
        self.fill_from_l2(key, hit, ticket)
        self.answered_hit(hit)
        if self.refresher is not None:
            self.refresher.maybe(key, loader, ttl, tags, hit)
        if self.early is not None:
            self.early.maybe(key, loader, ttl, tags, hit)
        return hit.entry.value

    def fill_from_l2(self, key: str, hit: Hit, ticket: Ticket) -> None:
        """Keep an L2 hit in L1 (unless an invalidation overtook ``ticket``)."""
        entry = hit.entry
        life = self.lifetimes.hit(entry.expires_at, hit.learned_at)
        if life.l1_ttl > 0:
            tags = [tag for tag, _ in entry.tags] if entry.tags else ()
            self.l1.fill(key, entry.value, life.l1_ttl, ticket, tags, life.stale_for, len(hit.blob))

    def answered_hit(self, hit: Hit) -> None:
        """Say on the span that L2 answered."""
        self.telemetry.answered("l2", "hit", **{ATTR_VALUE_SIZE: len(hit.blob)})

    def call_loader(self, key: str, loader: Callable[[], Any]) -> Outcome:
        """The loader's value and its encoding (None: it cannot be stored)."""
        self.counters.loads += 1
        clock = self.lifetimes.clock
        started = clock()
        try:
            if self.telemetry.enabled:
                with self.telemetry.load_span():
                    value = loader()
            else:
                value = loader()
        except BaseException:
            self.counters.load_errors += 1
            raise
        # Every load path encodes, so a value is stored the same way with or without Redis.
        took = clock() - started  # stored in the entry for early expiration
        try:
            return value, self.codec.prepare(value)._replace(delta=took)
        except (SerializationError, ValueError) as exc:
            self._unstorable(key, value, exc)
            return value, None

    def _unstorable(self, key: str, value: Any, exc: Exception) -> None:
        """The loader did its job: its value is returned to the caller, uncached (each call
        loads again), counted, and logged once per key."""
        self.counters.unstorable += 1
        digest = key_digest(key)
        if digest not in self._unstorable_logged:
            self._unstorable_logged[digest] = True
            log.warning(
                "tiercache: the value loaded for key digest %s in namespace %r (%s) cannot be "
                "cached and is returned uncached, so every call loads it again: %s",
                digest,
                self.settings.namespace,
                type(value).__qualname__,
                exc,
            )

    def store(
        self,
        key: str,
        value: Any,
        prepared: Prepared,
        ttl: float,
        tags: list[str],
        ticket: Ticket,
        writer: LeaseWriter | None,
    ) -> None:
        """Write a loaded value to L2 (only while our lease stands) and L1."""
        ttl = self.lifetimes.loaded_ttl(value, ttl)
        life = self.lifetimes.load(ttl, None if writer is None else writer.stamp.learned_at)
        if writer is not None:
            stamp = writer.stamp
            blob = self.codec.frame(prepared, life.expires_at, stamp.ns_version, stamp.tags)
            self._write_with_lease(writer, blob, life.px_ms)
        size = len(prepared.payload)
        self.l1.fill(key, value, life.l1_ttl, ticket, tags, life.stale_for, size)

    def _write_with_lease(self, writer: LeaseWriter, blob: bytes, ttl_ms: int) -> None:
        coherence = self.coherence
        assert coherence is not None
        # Waiters, if any, are told by the write itself; a small value goes with the
        # message, so they need no read of their own (`Coherence.apply_ready`).
        propagation = coherence.propagation
        small = propagation is not None and len(blob) <= propagation.max_value_bytes
        ready = coherence.bus.ready_message(writer.key, blob if small else None)
        try:
            done = coherence.leases.write(writer.rkey, writer.placeholder, blob, ttl_ms, ready)
        except L2Error as exc:
            self.counters.l2_write_errors += 1
            self.l2_log.warning("write", "tiercache: L2 write failed: %s", exc)
            return
        if not done:
            # set()/delete() revoked the lease, or the load outlived it.
            self.counters.lease_lost += 1
        elif done == _WAITED_FOR and ready is None:
            self._ready(writer)

    def abort(self, writer: LeaseWriter) -> None:
        """Give the lease back (the load failed or its value cannot be stored)."""
        assert self.coherence is not None
        done = self.coherence.leases.release(
            writer.rkey, writer.placeholder, writer.restore, writer.restore_ms
        )
        if done == _WAITED_FOR:
            self._ready(writer)  # they stop waiting, and one of them loads

    def _ready(self, writer: LeaseWriter) -> None:
        """Other processes registered to wait for this lease: tell them it is over."""
        assert self.coherence is not None
        try:
            self.coherence.bus.publish_ready([writer.key])
        except L2Error as exc:  # they wake at their next bounded wait instead
            self.l2_log.warning("write", "tiercache: could not tell lease waiters: %s", exc)

    def finish_late(
        self,
        done: Future[Outcome],
        key: str,
        ttl: float,
        tags: list[str],
        ticket: Ticket,
        writer: LeaseWriter | None,
    ) -> None:
        """A load that overran its timeout ended: store its value (if it may)."""
        try:
            prepared = None
            if not done.cancelled() and done.exception() is None:
                value, prepared = done.result()
            if prepared is None:
                if writer is not None:
                    self.abort(writer)
                return
            self.store(key, value, prepared, ttl, tags, ticket, writer)
        finally:
            self.l1.release(ticket)

    def serve_stale(self, key: str, fallback: Fallback, ticket: Ticket) -> Any:
        """Serve ``fallback`` and hold it in L1 for ``fail_safe_throttle``: the loader is
        not called again for this key meanwhile."""
        self.counters.stale_serves += 1
        self.telemetry.answered("stale", "stale")
        hold = min(self.settings.fail_safe_throttle, fallback.for_seconds)
        # Held apart from L1's fresh entries: get() must never return a value past its ttl.
        self.l1.hold(key, fallback.value, hold, ticket, fallback.tags, fallback.size)
        return fallback.value
