"""Process-local waits for other processes' leases, woken by their holders' READY messages.

A caller that finds another process loading its key (a lease placeholder) registers in the
placeholder (``lease.py``) and waits here. When the holder writes its value, or gives the
lease back, it publishes one READY message naming the key (only when someone registered, so
loads do not broadcast), and every instance that receives it wakes its waiters for that key
at once, instead of their sleeping through polls of one to tens of milliseconds while the
load takes a fraction of one. Each wait is still bounded (a lost message, a bus that is
down): the waiter then reads the key again, as a poll would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

__all__ = ["LeaseWaits"]

# Keys whose last READY time is remembered (a wait starts milliseconds after registering).
_REMEMBERED = 4096


class LeaseWaits:
    """Events keyed by cache key, set by READY messages.

    Since: 0.2.0
    """

    __slots__ = ("_events", "_lock", "_readied")

    def __init__(self) -> None:
        # Guards _events: key -> [event, number of waiters], and _readied.
        self._lock = threading.Lock()
        self._events: dict[str, list[object]] = {}
        # When the last READY for a key arrived (monotonic), for the latest keys: a caller
        # registers in Redis before it starts waiting here, and the READY may come between.
        self._readied: dict[str, float] = {}

    def wait(self, key: str, timeout: float, since: float | None = None) -> bool:
        """Block until a READY for ``key`` arrives or ``timeout`` passes; whether woken.
        ``since``: when the caller registered as a waiter in Redis (`time.monotonic`); a
        READY that arrived since then, before this call, wakes it at once."""
        with self._lock:
            if since is not None and self._readied.get(key, -1.0) >= since:
                return True
            slot = self._events.get(key)
            if slot is None:
                slot = self._events[key] = [threading.Event(), 0]
            slot[1] = int(slot[1]) + 1  # type: ignore[call-overload]
            event = slot[0]
        assert isinstance(event, threading.Event)
        try:
            return event.wait(timeout)
        finally:
            with self._lock:
                slot[1] = int(slot[1]) - 1  # type: ignore[call-overload]
                if slot[1] == 0 and self._events.get(key) is slot:
                    del self._events[key]

    def waiting(self, key: str) -> bool:
        """Whether a caller waits for ``key`` right now. Lock-free (a dict lookup)."""
        return key in self._events

    def wake(self, keys: Iterable[str]) -> None:
        """A READY message named these keys: wake their waiters (the next ones wait anew)."""
        now = time.monotonic()
        with self._lock:
            readied = self._readied
            if len(readied) >= _REMEMBERED:
                readied.clear()  # only the last moments matter; a cleared one polls instead
            for key in keys:
                readied[key] = now
                slot = self._events.pop(key, None)
                if slot is not None:
                    event = slot[0]
                    assert isinstance(event, threading.Event)
                    event.set()

    def reset_after_fork(self) -> None:
        """No waiter exists in a forked child (a parent thread may hold the lock)."""
        self._lock = threading.Lock()
        self._events = {}
        self._readied = {}
