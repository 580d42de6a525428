"""Read-modify-write operations: ``add`` (only if absent), ``incr`` and ``touch``.

Each is a compare-and-set on the entry's own Redis key: read the bytes, decide in Python
(so entries written by any serializer and any compressor work, the Django backend's signed
pickle included), then store the new entry only if the key still holds exactly the bytes
read (the one-key compare-and-set script of the leases, ``lease.py``: Redis-Cluster safe).
A lost race re-reads and decides again, a bounded number of times.

"Absent" means what a reader would call a miss: nothing, an expired entry (even one kept
for fail-safe), an entry made stale by ``clear``/``invalidate_tags``, undecodable bytes, or
a lease placeholder (the load it stands for loses its right to write, as after ``set``).

What is stored is an ordinary entry, so every instance reads it with ``get``: an ``incr``
counter is an ``int`` value in the cache's own format, keeping its expiry, namespace and tag
versions. After a successful write the other instances are told (one bus message, like
``set``), and this instance's L1 is filled (``add``) or dropped (``incr``, ``touch``: the
next read takes the new entry from Redis). A write Redis refused is remembered and
replayed as a delete before Redis is trusted again, as for ``set`` (``writing.py``).

Without L2 the same operations run on L1 under one lock.
"""

from __future__ import annotations

import threading
from typing import Any

from .coherence import Coherence
from .entry import Entry, EntryCodec
from .errors import CircuitOpenError, L2Error
from .l1 import LocalTier
from .lifecycle import Lifecycle
from .lifetimes import Lifetimes
from .reading import Failed, Hit, L2Reader
from .stats import Counters, RateLimitedLog
from .writing import Invalidations

__all__ = ["Atomic"]

# Compare-and-set attempts before giving up: each lost attempt means another writer changed
# the key in between, so a handful is plenty unless a key is hammered by many writers.
_ATTEMPTS = 64


class Atomic:
    """``add``, ``incr`` and ``touch`` of one cache, arguments already checked.

    Since: 0.2.0
    """

    __slots__ = (
        "_codec",
        "_coherence",
        "_counters",
        "_invalidations",
        "_l1",
        "_l2_log",
        "_lifecycle",
        "_lifetimes",
        "_local",
        "_raise",
        "_reader",
        "_stale_ttl",
    )

    def __init__(
        self,
        *,
        codec: EntryCodec,
        l1: LocalTier,
        reader: L2Reader | None,
        coherence: Coherence | None,
        invalidations: Invalidations | None,
        counters: Counters,
        l2_log: RateLimitedLog,
        lifetimes: Lifetimes,
        lifecycle: Lifecycle,
        stale_ttl: float,
        raise_on_write_error: bool,
    ) -> None:
        self._codec = codec
        self._l1 = l1
        self._reader = reader
        self._coherence = coherence
        self._invalidations = invalidations
        self._counters = counters
        self._l2_log = l2_log
        self._lifetimes = lifetimes
        self._lifecycle = lifecycle
        self._stale_ttl = stale_ttl
        self._raise = raise_on_write_error
        # Guards the read-modify-write of L1-only operations (with L2, Redis arbitrates).
        self._local = threading.Lock()

    # -- add -----------------------------------------------------------------------------

    def add(self, key: str, value: Any, ttl: float, tags: list[str]) -> bool:
        """Store ``value`` only if ``key`` is absent; whether it was stored. Redis trouble
        is counted and logged, and the answer is False (nothing is known to be stored)."""
        prepared = self._codec.prepare(value)  # validates before any I/O
        coherence, reader = self._coherence, self._reader
        if coherence is None or reader is None:
            with self._local:
                if self._l1.get(key) is not None:
                    return False
                self._l1.fill(key, value, ttl, tags=tags, size=len(prepared.payload))
            self._counters.sets += 1
            return True
        self._lifecycle.ready()
        try:
            self._replay()
            for _ in range(_ATTEMPTS):
                # Taken before the write, as `set` does: another instance's write heard
                # meanwhile may be the newer one, and then our value must not replace it.
                with self._l1.ticket(key) as ticket:
                    blob, found = self._read(reader, coherence, key)
                    if isinstance(found, Hit):
                        return False
                    stamp = coherence.stamp(tags)
                    life = self._lifetimes.write(ttl)
                    new = self._codec.frame(prepared, life.expires_at, stamp.ns_version, stamp.tags)
                    if coherence.leases.replace(reader.rkey(key), blob, new, life.px_ms):
                        coherence.publish_keys([key])
                        self._counters.sets += 1
                        l1_ttl = self._lifetimes.after_write(ttl, stamp.learned_at)
                        self._l1.fill(
                            key,
                            value,
                            l1_ttl,
                            ticket,
                            tags=tags,
                            stale_for=life.stale_for,
                            size=len(new),
                            write=True,
                        )
                        return True
        except L2Error as exc:
            self._failed(key, exc)
            return False
        return False  # every attempt lost to another writer: the key is not absent

    # -- incr ----------------------------------------------------------------------------

    def incr(self, key: str, delta: int) -> int:
        """Add ``delta`` to the integer at ``key`` and return the result, atomically in
        Redis; the entry keeps its expiry. ``KeyError`` if the key is absent, ``TypeError``
        if its value is not an ``int``; `L2Error` if Redis cannot be reached (there is no
        value to answer with)."""
        coherence, reader = self._coherence, self._reader
        if coherence is None or reader is None:
            with self._local:
                found = self._l1.get(key)
                if found is None:
                    raise _absent(key)
                result = _added(key, found[0], delta)
                self._codec.prepare(result)
                self._l1.fill(key, result, found[1] - self._lifetimes.clock())
            return result
        self._lifecycle.ready()
        try:
            self._replay()
            for _ in range(_ATTEMPTS):
                blob, hit = self._read(reader, coherence, key)
                if not isinstance(hit, Hit):
                    raise _absent(key)
                entry = hit.entry
                result = _added(key, entry.value, delta)
                if self._replace(reader, coherence, key, blob, entry, result, entry.expires_at):
                    return result
        except L2Error as exc:
            self._failed(key, exc)
            raise
        raise L2Error(f"incr lost {_ATTEMPTS} compare-and-set races in a row; not applied")

    # -- touch ---------------------------------------------------------------------------

    def touch(self, key: str, ttl: float) -> bool:
        """Give the live entry at ``key`` a new ``ttl``; whether there was one. Redis
        trouble is counted and logged, and the answer is False."""
        coherence, reader = self._coherence, self._reader
        if coherence is None or reader is None:
            with self._local:
                found = self._l1.get(key)
                if found is None:
                    return False
                self._l1.fill(key, found[0], ttl)
            return True
        self._lifecycle.ready()
        try:
            self._replay()
            for _ in range(_ATTEMPTS):
                blob, hit = self._read(reader, coherence, key)
                if not isinstance(hit, Hit):
                    return False
                entry = hit.entry
                expires_at = self._lifetimes.wall() + self._lifetimes.life(ttl)
                if self._replace(reader, coherence, key, blob, entry, entry.value, expires_at):
                    return True
        except L2Error as exc:
            self._failed(key, exc, replay=False)  # the value itself did not change
        return False

    # -- helpers -------------------------------------------------------------------------

    def _replay(self) -> None:
        if self._invalidations is not None:
            self._invalidations.replay()

    def _read(self, reader: L2Reader, coherence: Coherence, key: str) -> tuple[bytes | None, Any]:
        """The bytes at ``key`` and what they are good for (raises L2Error)."""
        blob = coherence.l2.get(reader.rkey(key))
        found = reader.classify(key, blob, self._lifetimes.wall())
        if isinstance(found, Failed):
            raise found.error
        return blob, found

    def _replace(
        self,
        reader: L2Reader,
        coherence: Coherence,
        key: str,
        blob: bytes | None,
        entry: Entry,
        value: Any,
        expires_at: float,
    ) -> bool:
        """Store ``value`` with ``entry``'s versions and ``expires_at`` if the key still holds
        ``blob``; on success tell the others and drop our L1 copy."""
        new = self._codec.frame(
            self._codec.prepare(value), expires_at, entry.ns_version, entry.tags
        )
        px_ms = max(1, int((expires_at + self._stale_ttl - self._lifetimes.wall()) * 1000))
        if not coherence.leases.replace(reader.rkey(key), blob, new, px_ms):
            return False
        self._l1.invalidate([key])
        coherence.publish_keys([key])
        self._counters.sets += 1
        return True

    def _failed(self, key: str, exc: L2Error, *, replay: bool = True) -> None:
        # Redis may hold the old value or the new one unannounced: delete it there before
        # trusting Redis again, and never serve our own copy meanwhile.
        self._l1.invalidate([key])
        if replay and self._invalidations is not None:
            self._invalidations.pending.add_keys([key])
        self._counters.l2_write_errors += 1
        if self._raise:
            raise exc
        if not isinstance(exc, CircuitOpenError):
            self._l2_log.warning("write", "tiercache: L2 write failed: %s", exc)


def _absent(key: str) -> KeyError:
    return KeyError(f"cannot incr {key!r}: no such key in the cache")


def _added(key: str, value: Any, delta: int) -> int:
    if type(value) is not int:
        raise TypeError(f"cannot incr {key!r}: its value is a {type(value).__name__}, not an int")
    return value + delta
