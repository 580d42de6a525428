"""Writes that Redis refused, replayed before Redis is trusted again (guarantee 1).

When a ``delete``, ``clear``, ``invalidate_tags`` or ``set`` cannot reach Redis, L1 already
reflects it, but L2 may still hold the old value and hand it back once Redis returns (after
an L1 eviction or expiry). So the cache remembers what it failed to do and, before its next
read from or write to L2, does it first; until that succeeds, it does not read L2 at all.
A failed ``set`` is replayed as a delete: the new value was not stored, but the old one must
not come back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from .stats import log

__all__ = ["MAX_PENDING_KEYS", "PendingWrites"]

#: Keys remembered at most; beyond it the oldest are dropped (and a warning logged).
MAX_PENDING_KEYS = 10_000


class PendingWrites:
    """Failed L2 invalidations of one cache, and their replay.

    Since: 0.1.0
    """

    __slots__ = ("_clear", "_keys", "_lock", "_tags", "any")

    def __init__(self) -> None:
        # Guards _keys, _tags, _clear.
        self._lock = threading.Lock()
        self._keys: dict[str, None] = {}
        self._tags: dict[str, None] = {}
        self._clear = False
        #: True while something waits for replay; read without the lock on every L2 access.
        self.any = False

    def reset_after_fork(self) -> None:
        """A fresh lock in a forked child; what failed in the parent stays to be replayed."""
        self._lock = threading.Lock()

    def add_keys(self, keys: Iterable[str]) -> None:
        """Remember keys whose delete (or set) did not reach Redis."""
        with self._lock:
            for key in keys:
                self._keys[key] = None
            overflow = len(self._keys) - MAX_PENDING_KEYS
            for key in list(self._keys)[: max(0, overflow)]:
                del self._keys[key]
            self.any = True
        if overflow > 0:
            log.warning(
                "tiercache: more than %d writes failed while Redis was away; the oldest %d "
                "are forgotten and their old values may be read again",
                MAX_PENDING_KEYS,
                overflow,
            )

    def add_tags(self, tags: Iterable[str]) -> None:
        """Remember tags whose invalidation did not reach Redis."""
        with self._lock:
            self._tags.update(dict.fromkeys(tags))
            self.any = True

    def add_clear(self) -> None:
        """Remember a clear that did not reach Redis (it supersedes the keys and tags)."""
        with self._lock:
            self._clear = True
            self._keys.clear()
            self._tags.clear()
            self.any = True

    def replay(
        self,
        clear: Callable[[], None],
        invalidate_tags: Callable[[list[str]], None],
        delete: Callable[[list[str]], None],
    ) -> None:
        """Redo what failed, oldest kind first; raises (and keeps what is left) on failure."""
        with self._lock:
            pending_clear, tags, keys = self._clear, list(self._tags), list(self._keys)
        if pending_clear:
            clear()
            with self._lock:
                self._clear = False
        if tags:
            invalidate_tags(tags)
            with self._lock:
                for tag in tags:
                    self._tags.pop(tag, None)
        if keys:
            delete(keys)
            with self._lock:
                for key in keys:
                    self._keys.pop(key, None)
        with self._lock:
            self.any = bool(self._clear or self._tags or self._keys)
