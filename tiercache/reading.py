"""Reading L2: fetch what a key holds and say, with a closed set of result types, what it is
good for. The read path, the load path and ``get_many`` all read through `L2Reader`.

`L2Reader.read` returns exactly one of:

* `Hit`: fresh, and its namespace/tag versions are current: serve it;
* `Stale`: past its logical expiry but still inside the fail-safe window (``stale_ttl``),
  versions current: not served, but the fallback if the loader fails;
* `Leased`: another process is loading the key (its placeholder may carry a stale entry);
* `Unusable`: bytes that must not be served (corrupt, expired beyond use, made stale by an
  invalidation); a load replaces them, compare-and-set on these very bytes;
* `MISSING_ENTRY`: nothing there;
* `Failed`: Redis could not be read (counted and logged here; the caller degrades).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, Protocol

from cachetools import LRUCache

from .entry import Entry, EntryCodec, Lease
from .errors import CircuitOpenError, CorruptEntryError, L2Error
from .l2 import L2Store
from .stats import Counters, RateLimitedLog, key_digest, log

__all__ = [
    "MISSING_ENTRY",
    "Failed",
    "Fallback",
    "Hit",
    "L2Reader",
    "Leased",
    "Missing",
    "Read",
    "Stale",
    "Unusable",
    "Versions",
]


class Hit:
    """A servable entry, when the versions it was checked against were learned, its bytes."""

    __slots__ = ("blob", "entry", "learned_at")

    def __init__(self, entry: Entry, learned_at: float, blob: bytes) -> None:
        self.entry = entry
        self.learned_at = learned_at
        self.blob = blob


class Stale:
    """An expired entry still inside its fail-safe window, and its bytes."""

    __slots__ = ("blob", "entry")

    def __init__(self, entry: Entry, blob: bytes) -> None:
        self.entry = entry
        self.blob = blob


class Leased:
    """Another process holds the key's lease: it is loading it."""

    __slots__ = ("lease",)

    def __init__(self, lease: Lease) -> None:
        self.lease = lease


class Unusable:
    """Bytes that must not be served; a load replaces exactly these bytes."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob


class Missing:
    """Nothing at the key (one instance: `MISSING_ENTRY`)."""

    __slots__ = ()


MISSING_ENTRY: Final = Missing()


class Failed:
    """Redis could not be read."""

    __slots__ = ("error",)

    def __init__(self, error: L2Error) -> None:
        self.error = error


Read = Hit | Stale | Leased | Unusable | Missing | Failed


class Fallback:
    """A value that may be served, marked stale, when the loader fails or is too slow."""

    __slots__ = ("for_seconds", "size", "tags", "value")

    def __init__(
        self, value: object, tags: list[str], for_seconds: float, size: int | None = None
    ) -> None:
        self.value = value
        self.tags = tags
        #: How much longer it stays inside its fail-safe window.
        self.for_seconds = for_seconds
        #: Its encoded size, its weight in L1 (None: that of the L1 entry it comes from).
        self.size = size


class Versions(Protocol):
    """What the read path needs of coherence: whether an entry's versions are current."""

    def validate(self, entry: Entry) -> float | None:
        """None if ``entry`` is older than a current version; else when the versions it was
        checked against were learned (raises `L2Error` if Redis cannot be asked)."""
        ...

    def namespace_version(self) -> tuple[int, float] | None:
        """``(version, learned at)`` of the namespace if known and fresh, else None."""
        ...


class L2Reader:
    """Reads and classifies L2 entries of one cache.

    Since: 0.2.0
    """

    __slots__ = (
        "_codec",
        "_coherence",
        "_corrupt_logged",
        "_counters",
        "_l2",
        "_l2_log",
        "_namespace",
        "_stale_ttl",
        "_wall",
        "rkey",
    )

    def __init__(
        self,
        l2: L2Store,
        codec: EntryCodec,
        coherence: Versions,
        counters: Counters,
        l2_log: RateLimitedLog,
        *,
        namespace: str,
        stale_ttl: float,
        wall: Callable[[], float],
        rkey: Callable[[str], str],
    ) -> None:
        self._l2 = l2
        self._codec = codec
        self._coherence = coherence
        self._counters = counters
        self._l2_log = l2_log
        self._namespace = namespace
        self._stale_ttl = stale_ttl
        self._wall = wall
        #: The Redis key of a cache key.
        self.rkey = rkey
        self._corrupt_logged: LRUCache[str, bool] = LRUCache(maxsize=1024)

    def read(self, key: str) -> Read:
        """Read and classify what ``key`` holds."""
        try:
            blob = self._l2.get(self.rkey(key))
        except L2Error as exc:
            return self.failed(exc)
        return self.classify(key, blob, self._wall())

    def read_many(self, keys: Sequence[str]) -> list[Read] | Failed:
        """`read` for many keys in one round trip (per slot on a cluster)."""
        try:
            blobs = self._l2.get_many([self.rkey(key) for key in keys])
        except L2Error as exc:
            return self.failed(exc)
        wall = self._wall()
        return [self.classify(key, blob, wall) for key, blob in zip(keys, blobs, strict=True)]

    def hits(self, keys: Sequence[str]) -> list[tuple[str, Entry, float, int]] | Failed:
        """The servable entries among ``keys`` (``(key, entry, learned_at, size)``, size in
        bytes as stored), read in one
        round trip: `read_many` as a batch, with one clock read and one namespace-version
        lookup for all, and no object per key that is not a hit (counted as `classify`)."""
        try:
            blobs = self._l2.get_many([self.rkey(key) for key in keys])
        except L2Error as exc:
            return self.failed(exc)
        wall = self._wall()
        known = self._coherence.namespace_version()
        known_version, known_at = known if known is not None else (-1, 0.0)
        decode, validate = self._codec.decode, self._coherence.validate
        counters = self._counters
        found: list[tuple[str, Entry, float, int]] = []
        misses = 0
        for key, blob in zip(keys, blobs, strict=True):
            if blob is None:
                misses += 1
                continue
            try:
                entry = decode(blob)
            except CorruptEntryError as exc:
                self._corrupt(key, exc)
                continue
            if type(entry) is not Entry:  # a lease: another process is loading it
                misses += 1
                continue
            if not entry.tags and entry.ns_version == known_version:
                learned_at: float | None = known_at
            else:
                try:
                    learned_at = validate(entry)
                except L2Error as exc:
                    self.failed(exc)
                    misses += 1
                    continue
            if learned_at is None:
                counters.l2_stale += 1
                misses += 1
            elif entry.expires_at <= wall:
                misses += 1
            else:
                found.append((key, entry, learned_at, len(blob)))
        counters.l2_hits += len(found)
        counters.l2_misses += misses
        return found

    def classify(self, key: str, blob: bytes | None, wall: float) -> Read:
        """What ``blob``, read at ``key``, is good for (counted in the L2 counters)."""
        counters = self._counters
        if blob is None:
            counters.l2_misses += 1
            return MISSING_ENTRY
        try:
            entry = self._codec.decode(blob)
        except CorruptEntryError as exc:
            self._corrupt(key, exc)
            return Unusable(blob)
        if isinstance(entry, Lease):
            counters.l2_misses += 1
            return Leased(entry)
        try:
            learned_at = self._coherence.validate(entry)
        except L2Error as exc:
            return self.failed(exc)
        if learned_at is None:
            counters.l2_stale += 1
            counters.l2_misses += 1
            return Unusable(blob)
        if entry.expires_at <= wall:
            counters.l2_misses += 1
            return Stale(entry, blob) if self._stale_ttl > 0 else Unusable(blob)
        counters.l2_hits += 1
        return Hit(entry, learned_at, blob)

    def fallback(self, found: Stale | Leased) -> Fallback | None:
        """The stale value an expired entry, or a lease placeholder, offers; None if none."""
        if isinstance(found, Leased):
            stale = found.lease.stale
            size = len(stale)
            if not stale:
                return None
            try:
                entry = self._codec.decode(stale)
                if not isinstance(entry, Entry) or self._coherence.validate(entry) is None:
                    return None
            except (CorruptEntryError, L2Error):
                return None
        else:
            entry, size = found.entry, len(found.blob)
        remaining = entry.expires_at + self._stale_ttl - self._wall()
        if remaining <= 0:
            return None
        return Fallback(entry.value, [tag for tag, _ in entry.tags], remaining, size)

    def failed(self, exc: L2Error) -> Failed:
        """Count and log a failed read (an open breaker counts itself, as ``l2_skipped``)."""
        if not isinstance(exc, CircuitOpenError):
            self._counters.l2_errors += 1
            self._l2_log.warning("read", "tiercache: L2 read failed, degrading to L1: %s", exc)
        return Failed(exc)

    def _corrupt(self, key: str, exc: CorruptEntryError) -> None:
        self._counters.l2_corrupt += 1
        self._counters.l2_misses += 1
        digest = key_digest(key)
        if digest not in self._corrupt_logged:
            self._corrupt_logged[digest] = True
            log.warning(
                "tiercache: undecodable L2 entry in namespace %r (key digest %s), "
                "treated as a miss: %s",
                self._namespace,
                digest,
                exc,
            )
