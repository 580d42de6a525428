"""The miss path: L2 read and checks, the cross-process lease, the loader, the write-back.

A mixin of `TierCache`, kept apart so that ``cache.py`` holds the public
API and this module the one flow that decides where a missing value comes from:

1. a ticket from L1 (an invalidation from now on refuses our fill),
2. the versions to stamp on what we may write (an invalidation from now on makes it stale),
3. L2: a fresh, current entry is served; a lease placeholder means another process is
   loading, so we wait for its value (bounded by ``lease_wait``); anything else (nothing,
   expired, stale, corrupt) is replaced by our own lease, compare-and-set on the bytes seen,
4. the loader, then a write that succeeds only while our lease stands (``lease.py``).

Without a lease (Redis away, waited too long) the loader still runs and L1 keeps its value,
but L2 is not written: we could not know whether an invalidation overtook the load there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from cachetools import LRUCache

from .coherence import Coherence, Stamp
from .entry import Entry, EntryCodec, Lease, Prepared
from .errors import CorruptEntryError, L2Error
from .flight import SingleFlight
from .keys import check_key, check_tags
from .l1 import LocalTier, Ticket
from .l2 import RedisTier
from .options import Duration, Settings, check_optional_ttl
from .stats import Counters, RateLimitedLog, key_digest, log

__all__ = ["L2Hit", "ReadPath"]

T = TypeVar("T")
_LEASE_POLL_FIRST = 0.001
_LEASE_POLL_MAX = 0.025


class L2Hit:
    """A servable L2 entry and when the versions it was checked against were learned."""

    __slots__ = ("entry", "learned_at")

    def __init__(self, entry: Entry, learned_at: float) -> None:
        self.entry = entry
        self.learned_at = learned_at


class ReadPath:
    """The miss path of `TierCache` (a mixin; see the module docstring)."""

    _settings: Settings
    _codec: EntryCodec
    _l1: LocalTier
    _l2: RedisTier | None
    _coherence: Coherence | None
    _flight: SingleFlight
    _counters: Counters
    _l2_log: RateLimitedLog
    _corrupt_logged: LRUCache[str, bool]
    _prefix: str
    _wall: Callable[[], float]
    _clock: Callable[[], float]

    if TYPE_CHECKING:

        def _check_open(self) -> None: ...
        def _start_listener(self) -> None: ...
        def _jittered(self, ttl_s: float) -> float: ...
        def _read_failed(self, exc: L2Error) -> None: ...
        def _l2_usable(self) -> bool: ...

    # -- the miss path -------------------------------------------------------------------

    def _get_or_set_miss(
        self, key: Any, loader: Callable[[], T], ttl: Duration | None, tags: Iterable[str]
    ) -> T:
        key = check_key(key, self._settings.max_key_length)
        if not callable(loader):
            raise TypeError(f"loader must be a callable taking no arguments, not {loader!r}")
        ttl_s = check_optional_ttl("ttl", ttl, self._settings.ttl)
        tag_list = check_tags(tags)
        self._check_open()
        self._start_listener()
        self._counters.l1_misses += 1
        value, leader = self._flight.run(
            key, lambda: self._load_through(key, loader, ttl_s, tag_list)
        )
        if not leader:
            self._counters.load_waits += 1
        return value  # type: ignore[no-any-return]

    def _load_through(
        self, key: str, loader: Callable[[], Any], ttl_s: float, tags: list[str]
    ) -> Any:
        ticket = self._l1.ticket(key)
        try:
            entry = self._l1.get(key)  # a previous leader may have filled it meanwhile
            if entry is not None:
                return entry[0]
            if self._coherence is None:
                value, _ = self._call_loader(loader)
                self._l1.fill(key, value, ttl_s, ticket, tags)
                return value
            return self._load_with_lease(key, loader, ttl_s, tags, ticket)
        finally:
            self._l1.release(ticket)

    def _load_with_lease(
        self, key: str, loader: Callable[[], Any], ttl_s: float, tags: list[str], ticket: Ticket
    ) -> Any:
        assert self._coherence is not None
        leases = self._coherence.leases
        rkey = self._prefix + key
        give_up = time.monotonic() + self._settings.lease_wait
        pause = _LEASE_POLL_FIRST
        waited = False
        stamp: Stamp | None = None
        while self._l2_usable():
            found = self._read_l2(key)
            if isinstance(found, L2Hit):
                self._fill_from_l2(key, found, ticket)
                return found.entry.value
            if isinstance(found, L2Error):
                break
            if not isinstance(found, Lease):
                try:
                    if stamp is None:
                        # Versions are taken before the load: an invalidation from now on
                        # makes what this load writes stale.
                        stamp = self._coherence.stamp(tags)
                    token = leases.acquire(rkey, found, int(self._settings.lease_ttl * 1000))
                except L2Error as exc:
                    self._read_failed(exc)
                    break
                if token is not None:
                    return self._load_and_write(key, loader, ttl_s, tags, ticket, stamp, token)
                continue  # the key changed under us: read what it holds now
            if not waited:
                waited = True
                self._counters.lease_waits += 1
            if time.monotonic() >= give_up:
                self._counters.lease_timeouts += 1
                break
            time.sleep(pause)  # another process is loading this key: wait for its value
            pause = min(pause * 2, _LEASE_POLL_MAX)
        # No lease: load, keep the value in L1, but never write it to L2 (we could not
        # know whether an invalidation overtook this load there).
        value, _ = self._call_loader(loader)
        self._l1.fill(key, value, min(self._settings.l1_ttl, ttl_s), ticket, tags)
        return value

    def _load_and_write(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl_s: float,
        tags: list[str],
        ticket: Ticket,
        stamp: Stamp,
        token: bytes,
    ) -> Any:
        assert self._coherence is not None
        assert self._l2 is not None
        leases = self._coherence.leases
        rkey = self._prefix + key
        try:
            value, prepared = self._call_loader(loader)
            life = self._jittered(ttl_s)
            blob = self._codec.frame(prepared, self._wall() + life, stamp.ns_version, stamp.tags)
        except BaseException:
            leases.release(rkey, token)
            raise
        try:
            written = leases.write(rkey, token, blob, int(life * 1000))
        except L2Error as exc:
            written = False
            self._counters.l2_write_errors += 1
            self._l2_log.warning("write", "tiercache: L2 write failed: %s", exc)
        else:
            if not written:
                # set()/delete() revoked the lease, or the load outlived it.
                self._counters.lease_lost += 1
        l1_ttl = min(self._settings.l1_ttl, life)
        l1_ttl = min(l1_ttl, stamp.learned_at + self._settings.l1_ttl - self._clock())
        self._l1.fill(key, value, l1_ttl, ticket, tags)
        return value

    def _call_loader(self, loader: Callable[[], Any]) -> tuple[Any, Prepared]:
        self._counters.loads += 1
        try:
            value = loader()
        except BaseException:
            self._counters.load_errors += 1
            raise
        # Every load path encodes, so an unstorable value fails the same way with or
        # without Redis (a SerializationError naming its type).
        return value, self._codec.prepare(value)

    # -- reading L2 ----------------------------------------------------------------------

    def _read_l2(self, key: str) -> L2Hit | Lease | bytes | L2Error | None:
        """A `L2Hit` for a servable entry; a Lease; the bytes of an
        unusable entry (expired, stale, corrupt); None for nothing; the L2Error on failure."""
        assert self._l2 is not None
        try:
            blob = self._l2.get(self._prefix + key)
        except L2Error as exc:
            self._read_failed(exc)
            return exc
        return self._check_blob(key, blob)

    def _check_blob(self, key: str, blob: bytes | None) -> L2Hit | Lease | bytes | L2Error | None:
        assert self._coherence is not None
        if blob is None:
            self._counters.l2_misses += 1
            return None
        try:
            entry = self._codec.decode(blob)
        except CorruptEntryError as exc:
            self._corrupt(key, exc)
            return blob
        if isinstance(entry, Lease):
            self._counters.l2_misses += 1
            return entry
        if entry.expires_at <= self._wall():
            self._counters.l2_misses += 1
            return blob
        try:
            learned_at = self._coherence.validate(entry)
        except L2Error as exc:
            self._read_failed(exc)
            return exc
        if learned_at is None:
            self._counters.l2_stale += 1
            self._counters.l2_misses += 1
            return blob
        self._counters.l2_hits += 1
        return L2Hit(entry, learned_at)

    def _l1_ttl_for(self, hit: L2Hit) -> float:
        # L1 may keep the value neither past its logical expiry nor more than l1_ttl past
        # the moment the versions it was checked against were learned.
        return min(
            self._settings.l1_ttl,
            hit.entry.expires_at - self._wall(),
            hit.learned_at + self._settings.l1_ttl - self._clock(),
        )

    def _fill_from_l2(self, key: str, hit: L2Hit, ticket: Ticket) -> None:
        l1_ttl = self._l1_ttl_for(hit)
        if l1_ttl > 0:
            self._l1.fill(key, hit.entry.value, l1_ttl, ticket, [tag for tag, _ in hit.entry.tags])

    def _corrupt(self, key: str, exc: CorruptEntryError) -> None:
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
