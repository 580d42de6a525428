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
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from cachetools import LRUCache

from .background import Background
from .coherence import Coherence, Stamp
from .early import early_expiration
from .entry import EntryCodec, Prepared
from .errors import L2Error, LoaderTimeoutError, SerializationError
from .flight import SingleFlight
from .l1 import LocalTier, Ticket
from .lifecycle import Lifecycle
from .lifetimes import Lifetimes
from .options import Settings
from .reading import Failed, Fallback, Hit, L2Reader, Leased, Read, Stale, Unusable
from .refresh import Refresher
from .stats import Counters, RateLimitedLog, key_digest, log
from .telemetry import ATTR_COALESCED, ATTR_VALUE_SIZE, Telemetry
from .writing import Invalidations

__all__ = ["Loads"]

_LEASE_POLL_FIRST = 0.001
_LEASE_POLL_MAX = 0.025
#: What a load's first L2 read can be besides a `Read`: not read yet.
_NOT_READ: Any = None

Outcome = tuple[Any, Prepared | None]


class _LeaseWriter:
    """The right to write one key: our lease placeholder, and what to restore if we fail."""

    __slots__ = ("placeholder", "restore", "restore_ms", "rkey", "stamp")

    def __init__(
        self, rkey: str, placeholder: bytes, stamp: Stamp, restore: bytes, restore_ms: int
    ) -> None:
        self.rkey = rkey
        self.placeholder = placeholder
        self.stamp = stamp
        self.restore = restore
        self.restore_ms = restore_ms


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
        reader = self.reader
        if reader is not None and not self.l1.held_value(key)[0]:
            assert self.invalidations is not None
            if not self.invalidations.usable():
                first = Failed(L2Error("L2 unusable: a failed write is waiting to be replayed"))
            else:
                # Most misses are L2 hits: read L2 before single-flight, which only has to
                # guard loads (concurrent misses of one key each cost a GET, not a load).
                with self.l1.ticket(key) as ticket:
                    first = reader.read(key)
                    if isinstance(first, Hit):
                        return self.serve_hit(key, loader, ttl, tags, first, ticket)
        try:
            value, leader = self.flight.run(key, _Load(self, key, loader, ttl, tags, first).run)
        except Exception:
            self.counters.read_errors += 1  # the load failed and nothing could answer
            raise
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
        # One lock round for all tickets, one for all fills, one for all releases.
        with self.l1.tickets(missing) as tickets:
            reads = reader.read_many(missing)
            if isinstance(reads, Failed):
                self.counters.read_misses += len(missing)
                return found
            fills = []
            wall = self.lifetimes.wall()
            hit_lifetime = self.lifetimes.hit
            for key, read, ticket in zip(missing, reads, tickets, strict=True):
                if isinstance(read, Hit):
                    hit = read.entry
                    found[key] = hit.value
                    life = hit_lifetime(hit.expires_at, read.learned_at, wall)
                    if life.l1_ttl > 0:
                        tags = [tag for tag, _ in hit.tags] if hit.tags else ()
                        size = len(read.blob)
                        fills.append(
                            (key, hit.value, life.l1_ttl, ticket, tags, life.stale_for, size)
                        )
            if fills:
                self.l1.fill_many(fills)
        self.counters.read_misses += len(missing) + l1_found - len(found)
        return found

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
        writer: _LeaseWriter | None,
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

    def _write_with_lease(self, writer: _LeaseWriter, blob: bytes, ttl_ms: int) -> None:
        assert self.coherence is not None
        try:
            if not self.coherence.leases.write(writer.rkey, writer.placeholder, blob, ttl_ms):
                # set()/delete() revoked the lease, or the load outlived it.
                self.counters.lease_lost += 1
        except L2Error as exc:
            self.counters.l2_write_errors += 1
            self.l2_log.warning("write", "tiercache: L2 write failed: %s", exc)

    def abort(self, writer: _LeaseWriter) -> None:
        """Give the lease back (the load failed or its value cannot be stored)."""
        assert self.coherence is not None
        self.coherence.leases.release(
            writer.rkey, writer.placeholder, writer.restore, writer.restore_ms
        )

    def finish_late(
        self,
        done: Future[Outcome],
        key: str,
        ttl: float,
        tags: list[str],
        ticket: Ticket,
        writer: _LeaseWriter | None,
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


class _Load:
    """One load of one key by the single-flight leader (see the module docstring)."""

    __slots__ = ("_loads", "first", "key", "loader", "tags", "ttl")

    def __init__(
        self,
        loads: Loads,
        key: str,
        loader: Callable[[], Any],
        ttl: float,
        tags: list[str],
        first: Read | None,
    ) -> None:
        self._loads = loads
        self.key = key
        self.loader = loader
        self.ttl = ttl
        self.tags = tags
        #: What the caller read from L2 just before single-flight (None: not read).
        self.first = first

    def run(self) -> Any:
        """Run under single-flight: L1 again, a held stale value, else a load."""
        loads = self._loads
        with loads.l1.ticket(self.key) as ticket:
            entry = loads.l1.get(self.key)  # a previous leader may have filled it meanwhile
            if entry is not None:
                loads.counters.l1_hits += 1
                loads.telemetry.answered("l1", "hit")
                return entry[0]
            held, value = loads.l1.held_value(self.key)
            if held:  # served stale a moment ago: do not call the failing loader again yet
                loads.counters.stale_serves += 1
                loads.telemetry.answered("stale", "stale")
                return value
            fallback = None
            if loads.settings.stale_ttl > 0:
                old = loads.l1.stale(self.key)
                if old is not None:
                    fallback = Fallback(old[0], [], old[2] - loads.l1.timer())
            if loads.coherence is None:
                return self._load(ticket, fallback, None)
            return self._with_lease(ticket, fallback)

    def _with_lease(self, ticket: Ticket, fallback: Fallback | None) -> Any:
        loads = self._loads
        settings = loads.settings
        reader, coherence, invalidations = loads.reader, loads.coherence, loads.invalidations
        assert reader is not None
        assert coherence is not None
        assert invalidations is not None
        rkey = reader.rkey(self.key)
        started = time.monotonic()
        pause = _LEASE_POLL_FIRST
        waited = False
        stamp: Stamp | None = None
        first, self.first = self.first, _NOT_READ
        while first is not _NOT_READ or invalidations.usable():
            found = reader.read(self.key) if first is _NOT_READ else first
            first = _NOT_READ
            if isinstance(found, Hit):
                return loads.serve_hit(self.key, self.loader, self.ttl, self.tags, found, ticket)
            if isinstance(found, Failed):
                break
            if isinstance(found, Leased):
                fallback = reader.fallback(found) or fallback
                if not waited:
                    waited = True
                    loads.counters.lease_waits += 1
                elapsed = time.monotonic() - started
                if fallback is not None and elapsed >= (settings.soft_timeout or 0.0):
                    # Someone is loading; a stale value now beats waiting for them.
                    return loads.serve_stale(self.key, fallback, ticket)
                if elapsed >= settings.lease_wait:
                    loads.counters.lease_timeouts += 1
                    break
                time.sleep(pause)  # another process is loading this key: wait for its value
                pause = min(pause * 2, _LEASE_POLL_MAX)
                continue
            keep, keep_ms = b"", 0
            seen: bytes | None = None
            if isinstance(found, Stale):
                fallback = reader.fallback(found) or fallback
                seen = found.blob
                if fallback is not None:
                    keep, keep_ms = found.blob, int(fallback.for_seconds * 1000)
            elif isinstance(found, Unusable):
                seen = found.blob  # replace exactly these bytes
            try:
                if stamp is None:
                    # Versions are taken before the load: an invalidation from now on
                    # makes what this load writes stale.
                    stamp = coherence.stamp(self.tags)
            except L2Error as exc:
                reader.failed(exc)
                break
            try:
                lease_ms = int(settings.lease_ttl * 1000)
                placeholder = coherence.leases.acquire(rkey, seen, lease_ms, keep)
            except L2Error as exc:  # a write Redis refused (e.g. OOM): load without a lease
                loads.counters.l2_write_errors += 1
                loads.l2_log.warning("write", "tiercache: L2 write (lease) failed: %s", exc)
                break
            if placeholder is not None:
                writer = _LeaseWriter(rkey, placeholder, stamp, keep, keep_ms)
                return self._load(ticket, fallback, writer)
            # The key changed under us: read what it holds now.
        # No lease: load, keep the value in L1, but never write it to L2.
        return self._load(ticket, fallback, None)

    def _load(self, ticket: Ticket, fallback: Fallback | None, writer: _LeaseWriter | None) -> Any:
        loads = self._loads
        settings = loads.settings
        timeout = settings.hard_timeout
        if fallback is not None and settings.soft_timeout is not None:
            timeout = settings.soft_timeout
        try:
            if timeout is None:
                outcome: Outcome | None = loads.call_loader(self.key, self.loader)
            else:
                outcome = self._call_with_timeout(writer, timeout)
        except Exception as exc:
            if writer is not None:
                loads.abort(writer)
            if fallback is not None:
                return self._fail_safe(fallback, ticket, exc)
            raise
        except BaseException:
            if writer is not None:
                loads.abort(writer)
            raise
        if outcome is None:
            # Timed out; the load goes on in the background and fills the cache when done.
            error = LoaderTimeoutError(f"the loader did not finish within {timeout:g} s")
            if fallback is not None:
                return self._fail_safe(fallback, ticket, error)
            raise error
        value, prepared = outcome
        loads.counters.loads_served += 1
        if prepared is None:
            if writer is not None:
                loads.abort(writer)
            loads.telemetry.answered("loader", "miss")
            return value
        loads.store(self.key, value, prepared, self.ttl, self.tags, ticket, writer)
        loads.telemetry.answered("loader", "miss", **{ATTR_VALUE_SIZE: len(prepared.payload)})
        return value

    def _call_with_timeout(self, writer: _LeaseWriter | None, timeout: float) -> Outcome | None:
        """The loader's outcome within ``timeout``, or None (it goes on in the background)."""
        loads = self._loads
        key, loader = self.key, self.loader
        late_ticket = loads.l1.ticket(key)  # taken before the load, for a late fill
        future = loads.background.submit(lambda: loads.call_loader(key, loader))
        if future is None:  # every worker busy: run it here, without a timeout
            late_ticket.release()
            return loads.call_loader(key, loader)
        try:
            outcome: Outcome = future.result(timeout)
        except FutureTimeout:
            loads.counters.load_timeouts += 1
            ttl, tags = self.ttl, self.tags

            def finish(done: Future[Outcome]) -> None:
                loads.finish_late(done, key, ttl, tags, late_ticket, writer)

            future.add_done_callback(finish)
            return None
        except BaseException:
            late_ticket.release()
            raise
        late_ticket.release()
        return outcome

    def _fail_safe(self, fallback: Fallback, ticket: Ticket, error: Exception) -> Any:
        """The loader failed with ``error`` and a stale value exists: serve it, unless a
        write overtook the load, which made it older still; then serve what that write
        stored (in L1, or in Redis for another instance's write), or raise ``error`` as if
        there were nothing stale."""
        loads = self._loads
        if loads.l1.still_valid(ticket):
            return loads.serve_stale(self.key, fallback, ticket)
        entry = loads.l1.get(self.key)
        if entry is not None:
            loads.counters.l1_hits += 1
            loads.telemetry.answered("l1", "hit")
            return entry[0]
        reader, invalidations = loads.reader, loads.invalidations
        if reader is not None and invalidations is not None and invalidations.usable():
            found = reader.read(self.key)  # another instance's write: its value is in Redis
            if isinstance(found, Hit):
                loads.answered_hit(found)
                return found.entry.value
        raise error
