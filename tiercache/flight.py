"""Per-process single-flight: one load per key at a time; the other callers wait for it.

Keys are independent: there is no global lock around a load, only a short one around the map
of calls in progress (cachetools ``_cached.py`` style: lock the map, never the user's function).
The event a follower waits on is made only when a follower appears: most loads have none, and
a ``threading.Event`` costs more than the rest of the bookkeeping together.

Two things a plain "wait for the leader" gets wrong are handled here:

* **Re-entrance.** A loader that asks for its own key (directly, or A -> B -> A) would wait
  for itself forever, and every later caller of that key would join the dead load. Each
  context keeps the stack of loads it is running (a `contextvars.ContextVar`, so a loader
  moved to a background thread by a timeout still carries it), and a leader that waits for
  another load says so; a call that would wait for a load on its own stack, or on a chain
  of waits that leads back to it (A waits for B while B's leader waits for A), raises
  `ReentrantLoadError` at once.
* **Sharing one exception.** Raising the leader's exception object in every waiter grows its
  traceback by every waiter's frames (and keeps their locals alive). Each waiter raises its
  own copy, chained to the original. A ``BaseException`` that is not an ``Exception``
  (``KeyboardInterrupt``, a request timeout of gevent or a WSGI server) belongs to the
  leader's thread only: waiters do not raise it, they start the load again.
"""

from __future__ import annotations

import contextvars
import copy
import threading
from collections.abc import Callable, Iterable
from typing import Any

from .errors import ReentrantLoadError, TierCacheError
from .stats import key_digest

__all__ = ["LoadFailedError", "SingleFlight"]


class LoadFailedError(TierCacheError):
    """Raised in a waiter when the leader's exception cannot be copied: chained (``from``)
    to the loader's exception, which carries the original traceback."""


class _Call:
    __slots__ = ("done", "error", "key", "value", "waiting_for")

    def __init__(self) -> None:
        self.key = ""
        self.done: threading.Event | None = None
        self.value: Any = None
        self.error: BaseException | None = None
        # The call this call's leader is waiting for right now (for cycle detection).
        self.waiting_for: _Call | None = None


# The loads the current context is running, innermost last.
_running: contextvars.ContextVar[tuple[_Call, ...]] = contextvars.ContextVar(
    "tiercache_loads", default=()
)


class SingleFlight:
    """Runs ``fn`` once per key among concurrent callers and shares its outcome.

    Since: 0.1.0
    """

    __slots__ = ("_calls", "_lock")

    def __init__(self) -> None:
        # Guards _calls, each call's ``done`` and ``waiting_for``; never held while fn runs.
        self._lock = threading.Lock()
        self._calls: dict[str, _Call] = {}

    def run(
        self, key: str, fn: Callable[[], Any], on_wait: Callable[[], object] | None = None
    ) -> tuple[Any, bool]:
        """Return ``(fn's result, whether this caller ran it)``. If ``fn`` raised an
        ``Exception``, every caller that waited for it raises a copy of it; if it raised
        another ``BaseException``, waiters run the load again. ``on_wait`` runs once before
        this caller starts waiting for another's call (to give back what only a leader
        would have used)."""
        while True:
            running = _running.get()
            with self._lock:
                call = self._calls.get(key)
                if call is None:
                    call = self._calls[key] = _Call()
                    call.key = key
                    done = None
                else:
                    _check_no_cycle(call, running)
                    done = call.done
                    if done is None:
                        done = call.done = threading.Event()
                    if running:
                        running[-1].waiting_for = call
            if done is None:
                return self._lead(call, running, fn), True
            if on_wait is not None:
                on_wait()
                on_wait = None
            try:
                done.wait()
            finally:
                if running:
                    with self._lock:
                        running[-1].waiting_for = None
            error = call.error
            if error is None:
                return call.value, False
            if isinstance(error, Exception):
                raise _own_copy(error) from error
            # KeyboardInterrupt & co. stopped the leader's thread, not ours: load again.

    def _lead(self, call: _Call, running: tuple[_Call, ...], fn: Callable[[], Any]) -> Any:
        token = _running.set((*running, call))
        try:
            call.value = fn()
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            _running.reset(token)
            with self._lock:
                # Only our own call: after a fork reset a newer leader may own the key.
                if self._calls.get(call.key) is call:
                    del self._calls[call.key]
                done = call.done
            if done is not None:
                done.set()
        return call.value

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


def _check_no_cycle(call: _Call, running: tuple[_Call, ...]) -> None:
    """Raise if waiting for ``call`` would wait, directly or through other waits, for a
    load this context is running itself. Called under the lock, so two threads closing a
    cycle at once cannot both miss it."""
    seen = 0
    waited: _Call | None = call
    while waited is not None and seen <= len(running) + 64:
        if waited in running:
            chain = ""
            if waited is not call:
                chain = f" (through a wait for key digest {key_digest(call.key)})"
            raise ReentrantLoadError(
                f"the loader of key digest {key_digest(waited.key)} asked for that key again"
                f"{chain}: it would wait for itself forever. Load the inner value without "
                "the cache, or cache it under another key"
            )
        waited = waited.waiting_for
        seen += 1


def _own_copy(error: Exception) -> Exception:
    """A copy of ``error`` with no traceback of its own, or a `LoadFailedError` if the
    exception type cannot be rebuilt from its args."""
    try:
        clone = copy.copy(error)
    except Exception:
        clone = None
    if type(clone) is not type(error):
        return LoadFailedError(
            f"the load this call waited for raised {type(error).__qualname__} (chained)"
        )
    assert clone is not None
    clone.__traceback__ = None
    return clone
