"""The namespace version and tag versions: how ``clear()`` and ``invalidate_tags()`` reach
every process without scanning Redis keys.

Both live in Redis as counters (``{namespace}#ver`` and ``{namespace}#tag:{tag}``; ``#`` cannot
appear in a namespace, so these never collide with ``{namespace}:{key}``). Every entry carries
the versions it was computed under (see ``entry.py``); an entry older than the current
version is a miss, in every process, whatever the bus delivered. ``clear()`` and
``invalidate_tags()`` ``INCR`` the counters, then publish the new values.

Each process keeps a local view, learned from the bus and refetched when older than half of
``l1_ttl``, so a process that missed a message stops trusting the old view within ``l1_ttl``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from .l2 import RedisTier

__all__ = ["NAMESPACE", "Versions"]

#: The name under which the namespace version is kept in a `Versions` view.
NAMESPACE = ""

# max(Redis value, the caller's known version) + 1, stored and returned.
_BUMP = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local known = tonumber(ARGV[1]) or 0
if known > current then current = known end
current = current + 1
redis.call('SET', KEYS[1], current)
return current
"""


class Versions:
    """A process-local view of the version counters of one namespace.

    Since: 0.1.0
    """

    __slots__ = ("_bump", "_clock", "_known", "_l2", "_lock", "_namespace", "_refresh_after")

    def __init__(
        self,
        l2: RedisTier,
        namespace: str,
        refresh_after: float,
        clock: Callable[[], float],
    ) -> None:
        self._l2 = l2
        self._namespace = namespace
        self._refresh_after = refresh_after
        self._clock = clock
        # Guards _known: name -> (version, when it was learned on ``clock``).
        self._lock = threading.Lock()
        self._known: dict[str, tuple[int, float]] = {}
        self._bump: object = l2.script(_BUMP)

    def redis_key(self, name: str) -> str:
        """The Redis key of a counter (``NAMESPACE`` or a tag)."""
        if name == NAMESPACE:
            return f"{self._namespace}#ver"
        return f"{self._namespace}#tag:{name}"

    def current(self, names: Iterable[str]) -> tuple[dict[str, int], float]:
        """The version of each name and the oldest time any of them was learned; fetches
        (one ``MGET``) those unknown or older than the refresh interval.
        Raises `L2Error` when Redis cannot be asked."""
        now = self._clock()
        wanted = dict.fromkeys(names)
        result: dict[str, int] = {}
        oldest = now
        stale: list[str] = []
        with self._lock:
            for name in wanted:
                known = self._known.get(name)
                if known is None or now - known[1] >= self._refresh_after:
                    stale.append(name)
                else:
                    result[name] = known[0]
                    oldest = min(oldest, known[1])
        if stale:
            raw = self._l2.get_many([self.redis_key(name) for name in stale])
            fetched = {name: _as_int(value) for name, value in zip(stale, raw, strict=True)}
            with self._lock:
                for name, version in fetched.items():
                    known = self._known.get(name)
                    # A bus message may have taught us a newer value meanwhile.
                    if known is not None and known[0] > version:
                        version = known[0]
                    self._known[name] = (version, now)
                    result[name] = version
        return result, oldest

    def fresh(self, name: str) -> tuple[int, float] | None:
        """``(version, learned at)`` if known and young enough to trust, else None.
        Lock-free: a single dict read, for the read path."""
        known = self._known.get(name)
        if known is not None and self._clock() - known[1] < self._refresh_after:
            return known
        return None

    def observe(self, name: str, version: int) -> bool:
        """Learn ``version`` (from the bus or an entry); True if it is newer than known."""
        now = self._clock()
        with self._lock:
            known = self._known.get(name)
            if known is not None and known[0] >= version:
                return False
            self._known[name] = (version, now)
            return True

    def bump(self, names: Iterable[str]) -> dict[str, int]:
        """Move each counter past both its Redis value and the version this process knows,
        and return the new versions (also learned).

        Not a bare ``INCR``: if a counter vanished from Redis (``FLUSHDB``, an
        ``allkeys-*`` eviction, a manual ``DEL``), INCR would restart at 1, below what
        running processes know, and they would ignore every later bump.
        """
        versions: dict[str, int] = {}
        for name in dict.fromkeys(names):
            with self._lock:
                known = self._known.get(name, (0, 0.0))[0]
            raw = self._l2.run(self._bump, "version bump", self.redis_key(name), known)
            versions[name] = int(raw)
            self.observe(name, versions[name])
        return versions

    def reset_after_fork(self) -> None:
        """An empty view and a fresh lock (a parent thread may have held it at fork time)."""
        self._lock = threading.Lock()
        self._known = {}

    def forget(self) -> None:
        """Drop the local view (after a lost subscription)."""
        with self._lock:
            self._known.clear()


def _as_int(raw: bytes | None) -> int:
    if raw is None:
        return 0
    try:
        return int(raw)
    except ValueError:
        return 0
