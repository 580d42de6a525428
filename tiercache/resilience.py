"""The circuit breaker in front of Redis: a down or stalled L2 costs one timeout per
``reset_after`` seconds instead of one per request.

States: *closed* (calls go through; ``failures`` consecutive connection errors or timeouts
open it), *open* (calls are skipped at once, as misses), *half-open* (after ``reset_after``
seconds one caller's call goes through as a probe: success closes the breaker, failure opens
it again; everyone else keeps skipping meanwhile). A reply from Redis, even an error reply
(``OOM``, ``WRONGTYPE``), proves the server is there and counts as success.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .stats import log

__all__ = [
    "CLOSED",
    "DEFAULT_BREAKER_FAILURES",
    "DEFAULT_BREAKER_RESET",
    "HALF_OPEN",
    "OPEN",
    "CircuitBreaker",
]

CLOSED = 0
OPEN = 1
HALF_OPEN = 2
_NAMES = {CLOSED: "closed", OPEN: "open", HALF_OPEN: "half-open"}
#: Consecutive failures that open the breaker.
DEFAULT_BREAKER_FAILURES = 5
#: Seconds the breaker stays open before one probe is let through.
DEFAULT_BREAKER_RESET = 5.0


class CircuitBreaker:
    """A thread-safe circuit breaker; ``state`` is read without the lock on every call.

    Since: 0.1.0
    """

    __slots__ = (
        "_clock",
        "_failures",
        "_lock",
        "_opened_at",
        "_probing",
        "_reset_after",
        "consecutive",
        "opens",
        "skipped",
        "state",
    )

    def __init__(
        self,
        failures: int = DEFAULT_BREAKER_FAILURES,
        reset_after: float = DEFAULT_BREAKER_RESET,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._failures = failures
        self._reset_after = reset_after
        self._clock = clock
        # Guards every transition; the closed-state fast paths only read.
        self._lock = threading.Lock()
        self._opened_at = 0.0
        self._probing = False
        self.state = CLOSED
        self.consecutive = 0
        #: Times the breaker opened, and calls skipped while it was not closed.
        self.opens = 0
        self.skipped = 0

    def allow(self) -> bool:
        """Whether a call may go to Redis now (the caller must then report its outcome)."""
        if self.state == CLOSED:
            return True
        with self._lock:
            if self.state == CLOSED:
                return True
            if (
                self.state == OPEN
                and not self._probing
                and self._clock() - self._opened_at >= self._reset_after
            ):
                self.state = HALF_OPEN
                self._probing = True
                return True
            self.skipped += 1
            return False

    def success(self) -> None:
        """Redis answered."""
        if self.state == CLOSED and not self.consecutive:
            return
        with self._lock:
            was = self.state
            self.consecutive = 0
            self.state = CLOSED
            self._probing = False
        if was != CLOSED:
            log.warning("tiercache: Redis answers again; circuit breaker closed")

    def failure(self) -> None:
        """Redis did not answer (connection error or timeout)."""
        with self._lock:
            self.consecutive += 1
            opening = self.state == HALF_OPEN or (
                self.state == CLOSED and self.consecutive >= self._failures
            )
            if opening:
                self.state = OPEN
                self._opened_at = self._clock()
                self._probing = False
                self.opens += 1
        if opening:
            log.warning(
                "tiercache: circuit breaker opened after %d consecutive Redis failures; "
                "skipping L2 for %g s",
                self.consecutive,
                self._reset_after,
            )

    def cancel_probe(self) -> None:
        """The call `allow` let through never reached Redis (a client-side error): it proves
        nothing, so let the next caller probe instead of skipping Redis for good."""
        if self.state == CLOSED:
            return
        with self._lock:
            if self.state == HALF_OPEN:
                self.state = OPEN
                self._probing = False

    def reset(self) -> None:
        """Closed, with no history and a fresh lock (after a fork: the child has its own
        connections, and a parent thread may have held the lock at fork time)."""
        self._lock = threading.Lock()
        self.state = CLOSED
        self.consecutive = 0
        self._probing = False
        self.opens = 0  # a forked child's stats() count from zero
        self.skipped = 0

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(failures={self._failures}, reset_after={self._reset_after:g}, "
            f"state={_NAMES[self.state]!r})"
        )
