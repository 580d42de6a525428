"""Plain counters behind ``TierCache.stats()``, and a rate-limited logger for L2 trouble.

Counters are bumped without a lock: ``x += 1`` on an attribute is not atomic in theory, but
on CPython 3.11 with the GIL it lost 0 of 1.6 M increments from 8 threads, and a lock here
would cost more than the hit it counts.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time

__all__ = ["COUNTERS", "Counters", "RateLimitedLog", "key_digest"]

log = logging.getLogger("tiercache")

#: The counters ``stats()`` reports, besides the gauges ``l1_size`` and ``l1_maxsize``.
COUNTERS = (
    "l1_hits",
    "l1_misses",
    "l2_hits",
    "l2_misses",
    "l2_errors",
    "l2_write_errors",
    "l2_corrupt",
    "loads",
    "load_errors",
    "load_waits",
    "sets",
    "deletes",
    "clears",
    "tag_invalidations",
    "l1_flushes",
    "l2_stale",
    "lease_waits",
    "lease_timeouts",
    "lease_lost",
    "lease_wakeups",
    "stale_serves",
    "load_timeouts",
    "refreshes",
    "refresh_errors",
    "unstorable",
    "values_received",
    "loads_served",
    "read_misses",
    "read_errors",
    "writer_errors",
    "writes_queued",
    "writes_coalesced",
    "writes_flushed",
    "write_retries",
    "writes_dropped",
    "early_refreshes",
)


class Counters:
    """Monotonic counters, one attribute each (see `COUNTERS`).

    Since: 0.1.0
    """

    __slots__ = COUNTERS

    def __init__(self) -> None:
        self.l1_hits = 0
        self.l1_misses = 0
        self.l2_hits = 0
        self.l2_misses = 0
        self.l2_errors = 0
        self.l2_write_errors = 0
        self.l2_corrupt = 0
        self.loads = 0
        self.load_errors = 0
        self.load_waits = 0
        self.sets = 0
        self.deletes = 0
        self.clears = 0
        self.tag_invalidations = 0
        self.l1_flushes = 0
        self.l2_stale = 0
        self.lease_waits = 0
        self.lease_timeouts = 0
        self.lease_lost = 0
        #: Lease waits ended by the holder's READY message (not by a poll or a timeout).
        self.lease_wakeups = 0
        self.stale_serves = 0
        self.load_timeouts = 0
        self.refreshes = 0
        self.refresh_errors = 0
        #: Loaded values returned uncached because they cannot be stored.
        self.unstorable = 0
        #: Values another instance sent with its invalidation and this one kept in L1.
        self.values_received = 0
        # Per read, by how it was answered (with l1_hits, l2_hits, load_waits and
        # stale_serves, one count per key read: what tiercache.requests reports).
        self.loads_served = 0
        self.read_misses = 0
        self.read_errors = 0
        # Writers (write-through and write-behind).
        self.writer_errors = 0
        self.writes_queued = 0
        self.writes_coalesced = 0
        self.writes_flushed = 0
        self.write_retries = 0
        self.writes_dropped = 0
        #: Reads from Redis that started an early reload (early_expiration).
        self.early_refreshes = 0

    def reset(self) -> None:
        """Zero every counter in place (a forked child starts counting from zero; the
        object is shared with the cache's parts, so it is not replaced)."""
        for name in COUNTERS:
            setattr(self, name, 0)

    def snapshot(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return {name: getattr(self, name) for name in COUNTERS}


def key_digest(key: str) -> str:
    """A short, stable digest of a key for logs and telemetry: raw keys may hold personal
    data, so they are never logged.

    Since: 0.1.0
    """
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


class RateLimitedLog:
    """Logs a warning per category at most once per ``interval`` seconds, with the number of
    occurrences suppressed since the last line, so an outage produces a few lines, not a flood.

    Since: 0.1.0
    """

    __slots__ = ("_interval", "_last", "_lock", "_suppressed")

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        # Guards _last and _suppressed.
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def reset_after_fork(self) -> None:
        """A fresh lock in a forked child (a parent thread may have held it)."""
        self._lock = threading.Lock()

    def warning(self, category: str, message: str, *args: object) -> None:
        """Log ``message % args`` unless ``category`` was logged within the interval."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(category)
            if last is not None and now - last < self._interval:
                self._suppressed[category] = self._suppressed.get(category, 0) + 1
                return
            self._last[category] = now
            suppressed = self._suppressed.pop(category, 0)
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        log.warning(message, *args)
