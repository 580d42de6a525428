"""Refresh-ahead: a value read after ``refresh_ahead`` of its ``ttl`` is returned at once and
reloaded in the background, so hot keys never expire under their callers.

One process per key refreshes, under a short Redis lock (``{namespace}#refresh:{key}``)
released when the refresh ends, whose TTL only covers a crash and stays under the refresh
window so a lost lock cannot skip the next refresh. The new value replaces the entry only if
it still holds the exact bytes that were read: a ``set``/``delete`` meanwhile wins.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .background import Background
from .coherence import Coherence
from .entry import EntryCodec, Prepared
from .l1 import LocalTier, Ticket
from .layout import refresh_lock_key
from .lifetimes import Lifetimes
from .options import Settings
from .reading import Hit
from .stats import Counters, RateLimitedLog

__all__ = ["Refresher"]


class Refresher:
    """Background reloads of keys due for refresh, for one cache.

    Since: 0.2.0
    """

    def __init__(
        self,
        *,
        coherence: Coherence,
        l1: LocalTier,
        background: Background,
        codec: EntryCodec,
        counters: Counters,
        lifetimes: Lifetimes,
        l2_log: RateLimitedLog,
        call_loader: Callable[[str, Callable[[], Any]], tuple[Any, Prepared | None]],
        rkey: Callable[[str], str],
        settings: Settings,
        wall: Callable[[], float],
    ) -> None:
        # None: only early expiration starts refreshes (`start`), never `maybe`.
        self._fraction = settings.refresh_ahead
        self._lease_ttl = settings.lease_ttl
        self._namespace = settings.namespace
        self._coherence = coherence
        self._l1 = l1
        self._background = background
        self._codec = codec
        self._counters = counters
        self._lifetimes = lifetimes
        self._l2_log = l2_log
        self._call_loader = call_loader
        self._rkey = rkey
        self._wall = wall
        self._reset()

    def _reset(self) -> None:
        # Guards _refreshing: keys with a refresh in flight in this instance.
        self._lock = threading.Lock()
        self._refreshing: set[str] = set()

    def reset_after_fork(self) -> None:
        """No refresh is in flight in a forked child (a parent thread may hold the lock)."""
        self._reset()

    def maybe(
        self, key: str, loader: Callable[[], Any], ttl: float, tags: list[str], hit: Hit
    ) -> None:
        """Start a background refresh of ``key`` if ``hit`` is due for one."""
        if self._fraction is None:
            return
        due_at = hit.entry.expires_at - ttl * (1.0 - self._fraction)
        if self._wall() < due_at:
            return
        self.start(key, loader, ttl, tags, hit)

    def start(
        self, key: str, loader: Callable[[], Any], ttl: float, tags: list[str], hit: Hit
    ) -> None:
        """Reload ``key`` in the background now, unless this instance is already at it (or
        another process is: the Redis lock)."""
        with self._lock:
            if key in self._refreshing:
                return
            self._refreshing.add(key)
        ticket = self._l1.ticket(key)  # before the reload starts

        def done() -> None:
            ticket.release()
            with self._lock:
                self._refreshing.discard(key)

        def refresh() -> None:
            try:
                self._refresh(key, loader, ttl, tags, hit.blob, ticket)
            except Exception as exc:
                self._counters.refresh_errors += 1
                self._l2_log.warning("refresh", "tiercache: background refresh failed: %s", exc)
            finally:
                done()

        if self._background.submit(refresh) is None:
            done()  # every worker busy: skip this refresh; a later read will try again

    def _refresh(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: float,
        tags: list[str],
        seen: bytes,
        ticket: Ticket,
    ) -> None:
        coherence = self._coherence
        leases = coherence.leases
        lock_key = refresh_lock_key(self._namespace, key)
        window = ttl if self._fraction is None else ttl * (1.0 - self._fraction)
        if not leases.refresh_lock(lock_key, min(self._lease_ttl, window)):
            return  # another process is refreshing it
        try:
            stamp = coherence.stamp(tags)
            value, prepared = self._call_loader(key, loader)
            if prepared is None:
                return
            life = self._lifetimes.load(self._lifetimes.loaded_ttl(value, ttl), stamp.learned_at)
            blob = self._codec.frame(prepared, life.expires_at, stamp.ns_version, stamp.tags)
            # Replace only the exact bytes we saw: a set/delete meanwhile wins (guarantee 3).
            if leases.replace(self._rkey(key), seen, blob, life.px_ms):
                self._counters.refreshes += 1
                size = len(prepared.payload)
                self._l1.fill(key, value, life.l1_ttl, ticket, tags, life.stale_for, size)
        finally:
            leases.refresh_unlock(lock_key)
