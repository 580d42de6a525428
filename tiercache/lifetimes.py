"""How long each copy of a value lives: one place for every rule, used by every fill and write.

Inputs: the call's ``ttl`` (or the cache's), the L2 jitter, ``l1_ttl``, ``none_ttl``,
``refresh_ahead``, ``stale_ttl``, and when the versions an entry was checked against (or
stamped with) were learned. Outputs, as one `Lifetime`:

* ``expires_at``: the logical expiry written in the entry (wall clock, every process reads it);
* ``px_ms``: the Redis TTL, which also covers the fail-safe window (``stale_ttl``);
* ``l1_ttl``: how long this process's L1 may serve its copy: never past the logical expiry,
  never more than ``l1_ttl`` past the moment the versions behind it were learned (so a
  missed ``clear``/``invalidate_tags`` message bounds staleness), and, with
  ``refresh_ahead``, only until the value is due for a refresh (so a hot key comes back to
  Redis and is reloaded in the background instead of expiring under its callers);
* ``stale_for``: how long a copy may be kept as a fail-safe fallback.

Without L2 the only copy is L1's: it lives the whole ``ttl`` and gets no jitter.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, NamedTuple

from .options import TTL_JITTER, Settings

__all__ = ["Lifetime", "Lifetimes"]


class Lifetime(NamedTuple):
    """The lifetimes of one value as it is written or filled (see the module docstring)."""

    l1_ttl: float
    stale_for: float
    expires_at: float = 0.0
    px_ms: int = 0


class Lifetimes:
    """The rules of `Lifetime`, for one cache's settings and clocks.

    Since: 0.2.0
    """

    __slots__ = ("_l1_ttl", "_none_ttl", "_refresh", "_stale_ttl", "_two_tier", "clock", "wall")

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float],
        wall: Callable[[], float],
        *,
        two_tier: bool,
    ) -> None:
        self._l1_ttl = settings.l1_ttl
        self._none_ttl = settings.none_ttl
        self._refresh = settings.refresh_ahead
        self._stale_ttl = settings.stale_ttl
        #: Monotonic clock of L1 deadlines and of when versions were learned.
        self.clock = clock
        #: Wall clock of logical expiry (every process reads it).
        self.wall = wall
        self._two_tier = two_tier

    def life(self, ttl: float) -> float:
        """The L2 lifetime of one write: ``ttl`` shortened by a random jitter of up to 10%
        (never lengthened), so keys written together do not expire together."""
        if not self._two_tier:
            return ttl
        return ttl * (1.0 - random.random() * TTL_JITTER)

    def loaded_ttl(self, value: Any, ttl: float) -> float:
        """The ``ttl`` a loaded value is cached for: ``none_ttl`` for a loaded None."""
        if value is None and self._none_ttl is not None:
            return self._none_ttl  # "not found" is cached, but not for as long
        return ttl

    def load(self, ttl: float, learned_at: float | None) -> Lifetime:
        """A value a load writes: to L2 (when ``learned_at``, the stamp's, is given: the
        load holds a lease) and L1, or to L1 only."""
        life = self.life(ttl)
        l1_ttl = min(self._l1_ttl, life) if self._two_tier else life
        if learned_at is not None:
            l1_ttl = min(l1_ttl, learned_at + self._l1_ttl - self.clock())
        if self._refresh is not None:
            l1_ttl = min(l1_ttl, life * self._refresh)
        stale_for = life + self._stale_ttl
        return Lifetime(l1_ttl, stale_for, self.wall() + life, int(stale_for * 1000))

    def write(self, ttl: float) -> Lifetime:
        """An entry ``set`` writes to L2 (one per key: each gets its own jitter); its
        ``l1_ttl`` is the bound before the write (see `after_write`)."""
        life = self.life(ttl)
        stale_for = life + self._stale_ttl
        l1_ttl = min(self._l1_ttl, ttl) if self._two_tier else ttl
        if self._refresh is not None and self._two_tier:
            l1_ttl = min(l1_ttl, ttl * self._refresh)
        return Lifetime(l1_ttl, ttl + self._stale_ttl, self.wall() + life, int(stale_for * 1000))

    def after_write(self, ttl: float, learned_at: float | None) -> float:
        """The L1 lifetime of what ``set`` wrote: bounded by when the versions it was
        stamped with were learned; None (the write failed) keeps it the whole ``ttl``, so
        the writer keeps reading its own write while Redis is away."""
        if learned_at is None:
            return ttl
        bound = self.write(ttl).l1_ttl
        return min(bound, learned_at + self._l1_ttl - self.clock())

    def hit(self, expires_at: float, learned_at: float, wall: float | None = None) -> Lifetime:
        """An entry read from L2 (fresh, versions current) as L1 keeps it."""
        now = self.wall() if wall is None else wall
        l1_ttl = min(self._l1_ttl, expires_at - now, learned_at + self._l1_ttl - self.clock())
        return Lifetime(l1_ttl, expires_at + self._stale_ttl - now, expires_at)

    def hit_bound(self, learned_at: float) -> float:
        """The longest L1 lifetime an entry checked against versions learned at
        ``learned_at`` may get, now (`hit` without the entry: for a batch, once)."""
        return min(self._l1_ttl, learned_at + self._l1_ttl - self.clock())

    def stale_until(self, expires_at: float) -> float:
        """Seconds from now an expired entry stays inside its fail-safe window."""
        return expires_at + self._stale_ttl - self.wall()
