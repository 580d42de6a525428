"""Per-process single-flight: one load per key at a time; the other callers wait for it.

Keys are independent: there is no global lock around a load, only a short one around the map
of calls in progress (cachetools ``_cached.py`` style: lock the map, never the user's function).
The event a follower waits on is made only when a follower appears: most loads have none, and
a ``threading.Event`` costs more than the rest of the bookkeeping together.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["SingleFlight"]


class _Call:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done: threading.Event | None = None
        self.value: Any = None
        self.error: BaseException | None = None


class SingleFlight:
    """Runs ``fn`` once per key among concurrent callers and shares its outcome.

    Since: 0.1.0
    """

    __slots__ = ("_calls", "_lock")

    def __init__(self) -> None:
        # Guards _calls and each call's ``done``; never held while fn runs.
        self._lock = threading.Lock()
        self._calls: dict[str, _Call] = {}

    def run(self, key: str, fn: Callable[[], Any]) -> tuple[Any, bool]:
        """Return ``(fn's result, whether this caller ran it)``; if ``fn`` raised, every
        caller that waited for it gets the same exception."""
        with self._lock:
            call = self._calls.get(key)
            if call is None:
                call = self._calls[key] = _Call()
                done = None
            else:
                done = call.done
                if done is None:
                    done = call.done = threading.Event()
        if done is not None:
            done.wait()
            if call.error is not None:
                raise call.error
            return call.value, False
        try:
            call.value = fn()
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                # Only our own call: after a fork reset a newer leader may own the key.
                if self._calls.get(key) is call:
                    del self._calls[key]
                done = call.done
            if done is not None:
                done.set()
        return call.value, True

    def detach(self, keys: Iterable[str] | None = None) -> None:
        """Let callers from now on start a new load for ``keys`` (None: every key) instead
        of joining one that an invalidation has made old. Callers already waiting keep it:
        their calls overlapped the invalidation."""
        with self._lock:
            if keys is None:
                self._calls.clear()
            else:
                for key in keys:
                    self._calls.pop(key, None)

    def in_flight(self) -> int:
        """How many keys are being loaded right now."""
        return len(self._calls)

    def reset_after_fork(self) -> None:
        """Forget calls in flight in the parent: their threads do not exist in the child."""
        self._lock = threading.Lock()
        self._calls = {}
