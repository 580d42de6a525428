"""Probabilistic early expiration (XFetch: Vattani, Chierichetti and Lowenstein, "Optimal
Probabilistic Cache Stampede Prevention", VLDB 2015).

A read from Redis of a value that expires at ``expiry`` and whose last load took ``delta``
seconds reloads it early, in the background, when::

    now - delta * beta * log(random()) >= expiry

``-log(random())`` is exponentially distributed, so the chance grows smoothly as the expiry
nears, and a value that was slow to compute starts being refreshed sooner: with ``beta=1``,
a read ``delta`` seconds before expiry reloads with probability ``1/e`` (37%), one ``3 *
delta`` before with 5%. Larger ``beta`` refreshes earlier. The decision costs a random number
and a logarithm on the L2-read path only; an L1 hit never pays it. ``delta`` travels in the
entry header (0 for values written with ``set``, which are never refreshed early: there is
no loader to run). The reload itself is refresh-ahead's (``refresh.py``): one process per
key, the new value replacing the entry only if it still holds the bytes that were read.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from .options import Settings
from .reading import Hit
from .refresh import Refresher
from .stats import Counters

__all__ = ["EarlyExpiration", "early_expiration"]

#: The smallest draw used (``log(0)`` is undefined; this caps one draw's reach at ~745 deltas).
_TINY = 5e-324


class EarlyExpiration:
    """The XFetch decision for one cache (see the module docstring).

    Since: 0.3.0
    """

    __slots__ = ("_beta", "_counters", "_random", "_refresher", "_wall")

    def __init__(
        self,
        beta: float,
        refresher: Refresher,
        counters: Counters,
        wall: Callable[[], float],
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._beta = beta
        self._refresher = refresher
        self._counters = counters
        self._wall = wall
        self._random = draw

    def due(self, expires_at: float, delta: float) -> bool:
        """Whether a value expiring at ``expires_at`` (wall clock) whose load took ``delta``
        seconds should be recomputed now."""
        if delta <= 0:
            return False
        return self._wall() - delta * self._beta * math.log(self._random() or _TINY) >= expires_at

    def maybe(
        self, key: str, loader: Callable[[], Any], ttl: float, tags: list[str], hit: Hit
    ) -> None:
        """Start a background reload of ``key`` if the draw says so."""
        entry = hit.entry
        if self.due(entry.expires_at, entry.delta):
            self._counters.early_refreshes += 1
            self._refresher.start(key, loader, ttl, tags, hit)


def early_expiration(
    settings: Settings,
    refresher: Refresher | None,
    counters: Counters,
    wall: Callable[[], float],
) -> EarlyExpiration | None:
    """The cache's early expiration, or None (option off, or no Redis: nothing to refresh)."""
    if settings.early_expiration is None or refresher is None:
        return None
    return EarlyExpiration(settings.early_expiration, refresher, counters, wall)
