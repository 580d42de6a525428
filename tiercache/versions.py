"""The namespace version and tag versions: how ``clear()`` and ``invalidate_tags()`` reach
every process without scanning Redis keys.

Both live in Redis as counters (``{namespace}#ver`` and ``{namespace}#tag:{tag}``; ``#`` cannot
appear in a namespace, so these never collide with ``{namespace}:{key}``). Every entry carries
the versions it was computed under (see ``entry.py``); an entry older than the current
version is a miss, in every process, whatever the bus delivered. ``clear()`` and
``invalidate_tags()`` ``INCR`` the counters, then publish the new values.

Each process keeps a local view, learned from the bus and refetched when older than half of
``l1_ttl``, so a process that missed a message stops trusting the old view within ``l1_ttl``.

Versions are integers from 0 to ``MAX_VERSION`` (2**53 - 1), the integers a Lua number (a
double) holds exactly. A counter holding anything else (a stray ``INCRBY``, a hand-written
``SET``) is logged and treated as missing, like a counter that was evicted: reads and writes
go on under the versions this process knows, and the next bump rewrites it with a valid
value past them. A counter at ``MAX_VERSION`` cannot be bumped: the bump fails (an `L2Error`
naming the counter) rather than go backwards, which would revive cleared entries.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from .entry import MAX_VERSION
from .errors import L2Error
from .l2 import RedisTier
from .layout import version_key
from .stats import RateLimitedLog

__all__ = ["NAMESPACE", "Versions"]

#: The name under which the namespace version is kept in a `Versions` view.
NAMESPACE = ""

# max(Redis value, the caller's known version ARGV[1]) + 1, stored and returned. A value that
# is not a plain integer up to ARGV[2] (MAX_VERSION) counts as missing and is overwritten;
# at MAX_VERSION nothing is newer, so the bump fails rather than go backwards. Lua numbers
# are doubles and Redis formats them with 14 significant digits, so the script only
# compares numbers: the new value is ARGV[1] written as given, or Redis's own INCR.
_BUMP = """
local raw = redis.call('GET', KEYS[1])
local max = tonumber(ARGV[2])
local current = -1
if raw and string.find(raw, '^%d+$') then
  local n = tonumber(raw)
  if n and n <= max then current = n end
end
local known = tonumber(ARGV[1])
if known >= max or current >= max then
  return redis.error_reply('tiercache: version counter ' .. KEYS[1] .. ' is exhausted at ' ..
    ARGV[2] .. '; delete it and restart the instances of this namespace')
end
if known > current then
  redis.call('SET', KEYS[1], ARGV[1])
end
return redis.call('INCR', KEYS[1])
"""


class Versions:
    """A process-local view of the version counters of one namespace.

    Since: 0.1.0
    """

    __slots__ = (
        "_bump",
        "_clock",
        "_known",
        "_l2",
        "_lock",
        "_log",
        "_namespace",
        "_refresh_after",
    )

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
        self._log = RateLimitedLog()

    def redis_key(self, name: str) -> str:
        """The Redis key of a counter (``NAMESPACE`` or a tag)."""
        return version_key(self._namespace, name)

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
            fetched = {
                name: self._parse(name, value) for name, value in zip(stale, raw, strict=True)
            }
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
            key = self.redis_key(name)
            raw = self._l2.run(self._bump, "version bump", key, known, MAX_VERSION)
            version = int(raw)
            if not 0 < version <= MAX_VERSION:
                # Only a script other than ours could return this: do not learn it.
                raise L2Error(f"version bump of {key!r} returned {version}")
            versions[name] = version
            self.observe(name, version)
        return versions

    def reset_after_fork(self) -> None:
        """An empty view and a fresh lock (a parent thread may have held it at fork time)."""
        self._lock = threading.Lock()
        self._known = {}
        self._log.reset_after_fork()

    def forget(self) -> None:
        """Drop the local view (after a lost subscription)."""
        with self._lock:
            self._known.clear()

    def _parse(self, name: str, raw: bytes | None) -> int:
        """A counter's value; 0 (missing) for anything but an integer in range, logged."""
        if raw is None:
            return 0
        try:
            version = int(raw)
        except ValueError:
            version = -1
        if 0 <= version <= MAX_VERSION:
            return version
        self._log.warning(
            f"version:{name}",
            "tiercache: the version counter %r holds %r, not an integer from 0 to %d; it is "
            "treated as missing until the next clear() or invalidate_tags() rewrites it",
            self.redis_key(name),
            raw[:40],
            MAX_VERSION,
        )
        return 0
