"""The write path: L2 first, then the bus, then L1; and the replay of writes Redis refused.

A write that Redis refuses is remembered (``pending.py``) and redone before Redis is read or
written again, so the writer never reads back the value it replaced or deleted (guarantee 1):
`Invalidations.usable` is what every L2 read asks first. A failed ``set`` is replayed as a
delete: the new value was not stored, but the old one must not come back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .coherence import Coherence
from .entry import EntryCodec
from .errors import CircuitOpenError, L2Error
from .l1 import LocalTier
from .lifecycle import Lifecycle
from .lifetimes import Lifetimes
from .pending import PendingWrites
from .stats import Counters, RateLimitedLog
from .versions import NAMESPACE

__all__ = ["Invalidations", "Writes"]


class Invalidations:
    """The L2 half of ``delete``, ``invalidate_tags`` and ``clear`` (write + publish), the
    failed ones waiting for replay, and whether L2 may be read meanwhile.

    Since: 0.2.0
    """

    __slots__ = ("_coherence", "_l2_log", "_rkey", "pending")

    def __init__(
        self,
        coherence: Coherence,
        pending: PendingWrites,
        l2_log: RateLimitedLog,
        rkey: Any,
    ) -> None:
        self._coherence = coherence
        self.pending = pending
        self._l2_log = l2_log
        self._rkey = rkey

    def delete(self, keys: list[str]) -> None:
        """UNLINK the keys and tell the other instances, in one round trip (raises
        L2Error)."""
        self._coherence.delete_and_publish(keys, [self._rkey(key) for key in keys])

    def invalidate_tags(self, tags: list[str]) -> None:
        """Move the tags' versions on and tell the other instances (raises L2Error)."""
        self._coherence.publish_tags(self._coherence.versions.bump(tags))

    def clear(self) -> None:
        """Move the namespace version on and tell the other instances (raises L2Error)."""
        versions = self._coherence.versions.bump([NAMESPACE])
        self._coherence.publish_clear(versions[NAMESPACE])

    def replay(self) -> None:
        """Redo invalidations that failed earlier; raises L2Error if Redis still fails."""
        if self.pending.any:
            self.pending.replay(self.clear, self.invalidate_tags, self.delete)

    def usable(self) -> bool:
        """Whether L2 may be read: no failed invalidation is left to replay."""
        if not self.pending.any:
            return True
        try:
            self.replay()
        except L2Error as exc:
            # Not counted again: the write was counted when it first failed.
            if not isinstance(exc, CircuitOpenError):
                self._l2_log.warning(
                    "replay",
                    "tiercache: Redis still refuses a write that failed earlier; reading from "
                    "L1 and the loader until it is replayed: %s",
                    exc,
                )
            return False
        return True


class Writes:
    """``set``, ``delete``, ``invalidate_tags`` and ``clear`` of one cache, arguments
    already checked.

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
        "_raise",
        "_rkey",
    )

    def __init__(
        self,
        *,
        codec: EntryCodec,
        l1: LocalTier,
        coherence: Coherence | None,
        invalidations: Invalidations | None,
        counters: Counters,
        l2_log: RateLimitedLog,
        lifetimes: Lifetimes,
        lifecycle: Lifecycle,
        rkey: Any,
        raise_on_write_error: bool,
    ) -> None:
        self._codec = codec
        self._l1 = l1
        self._coherence = coherence
        self._invalidations = invalidations
        self._counters = counters
        self._l2_log = l2_log
        self._lifetimes = lifetimes
        self._lifecycle = lifecycle
        self._rkey = rkey
        self._raise = raise_on_write_error

    def set_many(
        self, keys: list[str], mapping: Mapping[str, Any], ttl: float, tags: list[str]
    ) -> None:
        """Store every item in L2 (one pipeline), tell the others (one message), fill L1."""
        # Encoding validates every value before any I/O, in L1-only mode too, so a value
        # accepted in development is not refused in production.
        prepared = [self._codec.prepare(mapping[key]) for key in keys]
        self._counters.sets += len(keys)
        lifetimes = self._lifetimes
        stale_for = lifetimes.write(ttl).stale_for
        coherence, invalidations = self._coherence, self._invalidations
        if coherence is None or invalidations is None:
            for key, ready in zip(keys, prepared, strict=True):
                size = len(ready.payload)
                self._l1.fill(key, mapping[key], ttl, tags=tags, stale_for=stale_for, size=size)
            return
        self._lifecycle.ready()
        learned_at: float | None = None
        # Taken before the write: if another instance's write of a key is heard while ours
        # is on the wire, which of the two Redis keeps is unknown here, so ours must not
        # replace what that message left in L1 (its value, or nothing: a read of Redis).
        with self._l1.tickets(keys) as tickets:
            try:
                invalidations.replay()
                stamp = coherence.stamp(tags)
                rows = []
                for key, ready in zip(keys, prepared, strict=True):
                    life = lifetimes.write(ttl)
                    blob = self._codec.frame(ready, life.expires_at, stamp.ns_version, stamp.tags)
                    # Redis keeps the entry through its fail-safe window too.
                    rows.append((self._rkey(key), blob, life.px_ms))
                coherence.set_and_publish(keys, rows)
                learned_at = stamp.learned_at
            except L2Error as exc:
                # Redis may hold the old value, or the new one unannounced: delete it there
                # before trusting Redis again.
                invalidations.pending.add_keys(keys)
                if self._raise:
                    self._l1.invalidate(keys)
                self._failed(exc)
            l1_ttl = lifetimes.after_write(ttl, learned_at)
            for key, ready, ticket in zip(keys, prepared, tickets, strict=True):
                size = len(ready.payload)
                self._l1.fill(
                    key,
                    mapping[key],
                    l1_ttl,
                    ticket,
                    tags=tags,
                    stale_for=stale_for,
                    size=size,
                    write=True,
                )

    def delete_many(self, keys: list[str]) -> None:
        """Remove the keys from L2, every other instance's L1 and ours."""
        self._counters.deletes += len(keys)
        try:
            if self._invalidations is not None:
                self._lifecycle.ready()
                self._invalidations.replay()
                self._invalidations.delete(keys)
        except L2Error as exc:
            if self._invalidations is not None:
                self._invalidations.pending.add_keys(keys)
            self._failed(exc)
        finally:
            self._l1.invalidate(keys)

    def invalidate_tags(self, tags: list[str]) -> None:
        """Invalidate every entry set with any of ``tags``, in every instance."""
        if not tags:
            return  # nothing to invalidate: no message, no epoch that detaches loads
        self._counters.tag_invalidations += len(tags)
        try:
            if self._invalidations is not None:
                self._lifecycle.ready()
                self._invalidations.replay()
                self._invalidations.invalidate_tags(tags)
        except L2Error as exc:
            if self._invalidations is not None:
                self._invalidations.pending.add_tags(tags)
            self._failed(exc)
        finally:
            self._l1.invalidate_tags(tags)

    def clear(self) -> None:
        """Empty the namespace in every instance."""
        self._counters.clears += 1
        try:
            if self._invalidations is not None:
                self._lifecycle.ready()
                self._invalidations.replay()
                self._invalidations.clear()
        except L2Error as exc:
            if self._invalidations is not None:
                self._invalidations.pending.add_clear()
            self._failed(exc)
        finally:
            self._l1.flush()

    def _failed(self, exc: L2Error) -> None:
        self._counters.l2_write_errors += 1
        if self._raise:
            raise exc
        if isinstance(exc, CircuitOpenError):
            return
        self._l2_log.warning("write", "tiercache: L2 write failed: %s", exc)
