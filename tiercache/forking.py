"""Fork safety: a forked child gets a fresh L1, listener, identity and locks, with no call
from the user (guarantee 8).

``os.register_at_fork`` is the fast path (gunicorn, multiprocessing "fork"); uWSGI with
default options does not run the hooks in its workers (and the parent's listener thread
object still says it is alive there), so every cache also compares
``os.getpid()`` with the pid that built its state on its slow paths and at its periodic tick.
The connection pool needs nothing from us: redis-py's ``ConnectionPool`` checks the pid itself.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Protocol

__all__ = ["ForkAware", "track"]


class ForkAware(Protocol):
    """Something that rebuilds its process-local state in a forked child."""

    def _after_fork(self) -> None: ...


_tracked: weakref.WeakSet[ForkAware] = weakref.WeakSet()
# Guards _registered and additions to _tracked.
_lock = threading.Lock()
_registered = False


def track(obj: ForkAware) -> None:
    """Call ``obj._after_fork()`` in every child forked from now on (while ``obj`` lives).

    Since: 0.1.0
    """
    global _registered
    with _lock:
        _tracked.add(obj)
        if not _registered and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _registered = True


def _after_fork_in_child() -> None:
    global _lock
    # The parent's lock may have been held by another thread at fork time.
    _lock = threading.Lock()
    for obj in list(_tracked):
        obj._after_fork()
