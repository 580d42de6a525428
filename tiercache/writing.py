"""The write path: L2 first, then the bus, then L1; and the replay of writes Redis refused.

A mixin of `TierCache` (``cache.py`` keeps the public methods, which validate their
arguments and open the span, then land here). A write that Redis refuses is remembered in
``pending.py`` and redone before Redis is read or written again, so the writer never reads
back the value it replaced or deleted (guarantee 1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .coherence import Coherence
from .entry import EntryCodec
from .errors import CircuitOpenError, L2Error
from .keys import check_tags
from .l1 import LocalTier
from .l2 import RedisTier
from .options import Duration, Settings, check_optional_ttl
from .pending import PendingWrites
from .stats import Counters, RateLimitedLog
from .versions import NAMESPACE

__all__ = ["WritePath"]


class WritePath:
    """The write path of `TierCache` (a mixin; see the module docstring)."""

    _settings: Settings
    _codec: EntryCodec
    _l1: LocalTier
    _l2: RedisTier | None
    _coherence: Coherence | None
    _counters: Counters
    _pending: PendingWrites
    _l2_log: RateLimitedLog
    _prefix: str
    _wall: Callable[[], float]
    _clock: Callable[[], float]

    if TYPE_CHECKING:

        def _check_open(self) -> None: ...
        def _start_listener(self) -> None: ...
        def _jittered(self, ttl_s: float) -> float: ...

    def _set_many(
        self, keys: list[str], mapping: Mapping[str, Any], ttl: Duration | None, tags: Any
    ) -> None:
        ttl_s = check_optional_ttl("ttl", ttl, self._settings.ttl)
        tag_list = check_tags(tags)
        self._check_open()
        # Encoding validates every value before any I/O, in L1-only mode too, so a value
        # accepted in development is not refused in production.
        prepared = [self._codec.prepare(mapping[key]) for key in keys]
        self._counters.sets += len(keys)
        stale_ttl = self._settings.stale_ttl
        if self._l2 is None or self._coherence is None:
            for key in keys:
                self._l1.fill(key, mapping[key], ttl_s, tags=tag_list, stale_for=ttl_s + stale_ttl)
            return
        self._start_listener()
        l1_ttl = min(self._settings.l1_ttl, ttl_s)
        if self._settings.refresh_ahead is not None:
            l1_ttl = min(l1_ttl, ttl_s * self._settings.refresh_ahead)
        try:
            self._replay_pending()
            stamp = self._coherence.stamp(tag_list)
            now = self._wall()
            rows = []
            for key, ready in zip(keys, prepared, strict=True):
                life = self._jittered(ttl_s)
                blob = self._codec.frame(ready, now + life, stamp.ns_version, stamp.tags)
                # Redis keeps the entry through its fail-safe window too.
                rows.append((self._prefix + key, blob, int((life + stale_ttl) * 1000)))
            self._l2.set_many(rows)
            self._coherence.publish_keys(keys)
            l1_ttl = min(l1_ttl, stamp.learned_at + self._settings.l1_ttl - self._clock())
        except L2Error as exc:
            # Redis may hold the old value, or the new one unannounced: delete it there
            # before trusting Redis again (pending.py).
            self._pending.add_keys(keys)
            if self._settings.raise_on_write_error:
                self._l1.invalidate(keys)
            self._write_failed(exc)
            # Keep our value for the full ttl: this instance keeps reading its own write.
            l1_ttl = ttl_s
        for key in keys:
            self._l1.fill(key, mapping[key], l1_ttl, tags=tag_list, stale_for=ttl_s + stale_ttl)

    def _delete_many(self, keys: list[str]) -> None:
        self._check_open()
        self._counters.deletes += len(keys)
        try:
            if self._coherence is not None:
                self._start_listener()
                self._replay_pending()
                self._l2_delete(keys)
        except L2Error as exc:
            self._pending.add_keys(keys)
            self._write_failed(exc)
        finally:
            self._l1.invalidate(keys)

    # -- L2 invalidation, shared by the writes and the replay of failed ones ---------------

    def _l2_delete(self, keys: list[str]) -> None:
        assert self._l2 is not None
        assert self._coherence is not None
        self._l2.delete([self._prefix + key for key in keys])
        self._coherence.publish_keys(keys)

    def _l2_invalidate_tags(self, tags: list[str]) -> None:
        assert self._coherence is not None
        self._coherence.publish_tags(self._coherence.versions.bump(tags))

    def _l2_clear(self) -> None:
        assert self._coherence is not None
        versions = self._coherence.versions.bump([NAMESPACE])
        self._coherence.publish_clear(versions[NAMESPACE])

    def _replay_pending(self) -> None:
        """Redo invalidations that failed earlier; raises L2Error if Redis still fails."""
        if self._pending.any:
            self._pending.replay(self._l2_clear, self._l2_invalidate_tags, self._l2_delete)

    def _l2_usable(self) -> bool:
        """Whether L2 may be read: no failed invalidation is left to replay."""
        if not self._pending.any:
            return True
        try:
            self._replay_pending()
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

    def _write_failed(self, exc: L2Error) -> None:
        self._counters.l2_write_errors += 1
        if self._settings.raise_on_write_error:
            raise exc
        if isinstance(exc, CircuitOpenError):
            return
        self._l2_log.warning("write", "tiercache: L2 write failed: %s", exc)
