"""Open or closed, and which process: the state every part of a cache checks before I/O.

A cache is built in one process and may be used in a forked child (gunicorn, uWSGI,
multiprocessing). ``os.register_at_fork`` hooks are the fast path, but uWSGI with default
options does not run them, so the pid that built the state is also compared with
``os.getpid()`` on the slow paths and at the read path's periodic tick; on a mismatch every
part resets itself (fresh locks, an empty L1, a new bus identity).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

__all__ = ["Lifecycle"]


class _Listener(Protocol):
    """What readiness needs of the invalidation bus."""

    def ensure_started(self, pid: int | None = None) -> None: ...

    def raise_if_refused(self) -> None: ...


class Lifecycle:
    """Closed flag, owning pid and the bus's readiness of one cache.

    Since: 0.2.0
    """

    __slots__ = ("_bus", "_label", "_resets", "closed", "pid")

    def __init__(self, label: str, bus: _Listener | None) -> None:
        self._label = label
        self._bus = bus
        # Called in order in a forked child: each resets one part's process-local state.
        self._resets: list[Callable[[], None]] = []
        self.closed = False
        self.pid = os.getpid()

    def on_fork(self, reset: Callable[[], None]) -> None:
        """Run ``reset`` in a forked child, before the child uses the cache."""
        self._resets.append(reset)

    def check_open(self) -> None:
        """Raise ``RuntimeError`` if the cache was closed."""
        if self.closed:
            raise RuntimeError(f"{self._label} is closed")

    def forked(self, pid: int | None = None) -> bool:
        """Reset every part if this is a forked child (``pid``: a fresh ``os.getpid()``)."""
        pid = os.getpid() if pid is None else pid
        if pid == self.pid:
            return False
        self.pid = pid
        for reset in self._resets:
            reset()
        return True

    def ready(self) -> None:
        """Before an operation that reaches Redis: forked? then the listener is running and
        Redis has not refused its subscription (misconfiguration raises here)."""
        pid = os.getpid()
        self.forked(pid)
        bus = self._bus
        if bus is not None and not self.closed:
            bus.ensure_started(pid)
            bus.raise_if_refused()
