"""Reading L2: fetch an entry, decide what it is good for, and fill L1 from it.

A mixin of `TierCache`. `ReadL2._check_blob` sorts what a key holds into:

* `L2Hit`: fresh, and its namespace/tag versions are current: serve it;
* `L2Stale`: past its logical expiry but still inside the fail-safe window (``stale_ttl``),
  versions current: not served, but kept as the fallback if the loader fails;
* `Lease`: another process is loading the key (its placeholder may carry a stale entry);
* ``bytes``: unusable (corrupt, expired beyond use, or made stale by an invalidation);
* ``None``: nothing there; an `L2Error` when Redis failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cachetools import LRUCache

from .coherence import Coherence
from .entry import Entry, EntryCodec, Lease
from .errors import CorruptEntryError, L2Error
from .l1 import LocalTier, Ticket
from .l2 import RedisTier
from .options import Settings
from .stats import Counters, key_digest, log

__all__ = ["Fallback", "L2Hit", "L2Stale", "ReadL2"]


class L2Hit:
    """A servable L2 entry and when the versions it was checked against were learned."""

    __slots__ = ("blob", "entry", "learned_at")

    def __init__(self, entry: Entry, learned_at: float, blob: bytes) -> None:
        self.entry = entry
        self.learned_at = learned_at
        self.blob = blob


class L2Stale:
    """An expired L2 entry still inside its fail-safe window, and its bytes."""

    __slots__ = ("blob", "entry")

    def __init__(self, entry: Entry, blob: bytes) -> None:
        self.entry = entry
        self.blob = blob


class Fallback:
    """A value that may be served, marked stale, when the loader fails or is too slow."""

    __slots__ = ("for_seconds", "tags", "value")

    def __init__(self, value: object, tags: list[str], for_seconds: float) -> None:
        self.value = value
        self.tags = tags
        #: How much longer it stays inside its fail-safe window.
        self.for_seconds = for_seconds


class ReadL2:
    """L2 reads of `TierCache` (a mixin; see the module docstring)."""

    _settings: Settings
    _codec: EntryCodec
    _l1: LocalTier
    _l2: RedisTier | None
    _coherence: Coherence | None
    _counters: Counters
    _corrupt_logged: LRUCache[str, bool]
    _prefix: str
    _wall: Callable[[], float]
    _clock: Callable[[], float]

    if TYPE_CHECKING:

        def _read_failed(self, exc: L2Error) -> None: ...

    def _read_l2(self, key: str) -> L2Hit | L2Stale | Lease | bytes | L2Error | None:
        """Read and classify what ``key`` holds in L2 (see the module docstring)."""
        assert self._l2 is not None
        try:
            blob = self._l2.get(self._prefix + key)
        except L2Error as exc:
            self._read_failed(exc)
            return exc
        return self._check_blob(key, blob)

    def _check_blob(
        self, key: str, blob: bytes | None
    ) -> L2Hit | L2Stale | Lease | bytes | L2Error | None:
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
        try:
            learned_at = self._current(entry)
        except L2Error as exc:
            self._read_failed(exc)
            return exc
        if learned_at is None:
            self._counters.l2_stale += 1
            self._counters.l2_misses += 1
            return blob
        if entry.expires_at <= self._wall():
            self._counters.l2_misses += 1
            if self._settings.stale_ttl > 0:
                return L2Stale(entry, blob)
            return blob
        self._counters.l2_hits += 1
        return L2Hit(entry, learned_at, blob)

    def _current(self, entry: Entry) -> float | None:
        assert self._coherence is not None
        return self._coherence.validate(entry)

    def _fallback_from(self, found: L2Stale | Lease) -> Fallback | None:
        """The stale value an expired entry, or a lease placeholder, offers; None if none."""
        if isinstance(found, Lease):
            if not found.stale:
                return None
            try:
                entry = self._codec.decode(found.stale)
                if not isinstance(entry, Entry) or self._current(entry) is None:
                    return None
            except (CorruptEntryError, L2Error):
                return None
        else:
            entry = found.entry
        remaining = entry.expires_at + self._settings.stale_ttl - self._wall()
        if remaining <= 0:
            return None
        return Fallback(entry.value, [tag for tag, _ in entry.tags], remaining)

    def _l1_ttl_for(self, hit: L2Hit, wall: float) -> float:
        # L1 may keep the value neither past its logical expiry nor more than l1_ttl past
        # the moment the versions it was checked against were learned.
        return min(
            self._settings.l1_ttl,
            hit.entry.expires_at - wall,
            hit.learned_at + self._settings.l1_ttl - self._clock(),
        )

    def _fill_from_l2(self, key: str, hit: L2Hit, ticket: Ticket) -> None:
        wall = self._wall()
        l1_ttl = self._l1_ttl_for(hit, wall)
        if l1_ttl > 0:
            entry = hit.entry
            stale_for = entry.expires_at + self._settings.stale_ttl - wall
            tags = [tag for tag, _ in entry.tags] if entry.tags else ()
            self._l1.fill(key, entry.value, l1_ttl, ticket, tags, stale_for)

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
