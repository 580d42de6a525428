"""Write-behind: the queue of writes waiting for the writer, and the thread that flushes it.

``set``/``delete`` update the cache and put the write here (``writer.py`` orders the two per
key). The queue holds one write per key, the last (a newer write replaces a queued one:
coalescing); a daemon flusher takes up to ``write_behind_batch_size`` of them once the oldest
has waited ``write_behind_delay`` (at once when that many are queued, or on `flush`), and
calls the writer once per kind (``write_many`` for values, ``delete_many`` for deletes; the
single-key methods for one). A failed call is retried after a backoff that starts at the
delay and doubles, at most ``_MAX_BACKOFF`` seconds, up to ``write_behind_retries`` times;
a key written again meanwhile is left out of the retry (its newer write is queued). Writes
still failing after the last retry are dropped: counted (``writes_dropped``), logged.

What can be lost: writes still queued or in flight when the process dies (SIGKILL, OOM, a
crash, an exit without `close`), and writes dropped after the retries. `close` and `flush`
wait for the queue to drain, up to their timeout.

Fork: the queue is the process's. A forked child starts with an empty queue and no flusher
(one starts with its first write); the parent's queued writes stay the parent's to flush.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from .stats import Counters, log
from .writer import Writer

__all__ = ["WriteBehind", "retry_pauses"]

#: Longest pause between two attempts of a failed batch, seconds.
_MAX_BACKOFF = 5.0
#: Shortest first pause (a zero delay must not retry in a tight loop).
_MIN_BACKOFF = 0.01


def retry_pauses(delay: float, retries: int) -> Iterator[float | None]:
    """The pause after each failed attempt: from ``delay``, doubling, at most
    ``_MAX_BACKOFF``; None after the last allowed attempt (give up)."""
    pause = max(delay, _MIN_BACKOFF)
    for _ in range(retries):
        yield pause
        pause = min(pause * 2, _MAX_BACKOFF)
    yield None


# One queued write: (writer, is_delete, value)
_Op = tuple[Writer, bool, Any]


class WriteBehind:
    """One cache's write-behind queue and flusher (see the module docstring).

    Since: 0.3.0
    """

    def __init__(
        self,
        *,
        delay: float,
        batch_size: int,
        retries: int,
        counters: Counters,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._delay = delay
        self._batch_size = batch_size
        self._retries = retries
        self._counters = counters
        self._clock = clock
        self._fresh()

    #: The queue is the process's memory (see the module docstring).
    durable = False

    def check_writer(self, writer: Writer) -> None:
        """Any writer may be queued (each batch is grouped by writer)."""

    def _fresh(self) -> None:
        # Guards _queue, _inflight, _first_at, _urgent, _closing and _thread.
        self._cond = threading.Condition(threading.Lock())
        #: key -> the last write queued for it, oldest first.
        self._queue: dict[str, _Op] = {}
        #: The batch being written now.
        self._inflight: dict[str, _Op] = {}
        self._first_at = 0.0
        self._urgent = 0
        self._closing = False
        #: Set when close() stops waiting: a batch still retrying gives up at once.
        self._abandon = threading.Event()
        self._thread: threading.Thread | None = None

    def reset_after_fork(self) -> None:
        """In a forked child: an empty queue and no flusher (the parent's stay its own)."""
        self._fresh()

    @property
    def pending(self) -> int:
        """Writes queued or being written now."""
        return len(self._queue) + len(self._inflight)

    def put_sets(self, writer: Writer, mapping: Mapping[str, Any]) -> None:
        """Queue the writer's writes of ``mapping``."""
        self._put([(key, (writer, False, value)) for key, value in mapping.items()])

    def put_deletes(self, writer: Writer, keys: Sequence[str]) -> None:
        """Queue the writer's deletes of ``keys``."""
        self._put([(key, (writer, True, None)) for key in keys])

    def _put(self, ops: list[tuple[str, _Op]]) -> None:
        counters = self._counters
        with self._cond:
            queue = self._queue
            if not queue:
                self._first_at = self._clock()
            for key, op in ops:
                if queue.pop(key, None) is not None:
                    counters.writes_coalesced += 1
                queue[key] = op
            counters.writes_queued += len(ops)
            if self._thread is None or not self._thread.is_alive():
                self._closing = False
                self._thread = threading.Thread(
                    target=self._run, name="tiercache-write-behind", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything queued now, without waiting for the delay; whether the queue
        drained within ``timeout`` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._urgent += 1
            self._cond.notify_all()
            try:
                while self._queue or self._inflight:
                    if self._thread is None or not self._thread.is_alive():
                        return False
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return True
            finally:
                self._urgent -= 1

    def close(self, timeout: float | None) -> bool:
        """Drain (up to ``timeout``), then stop the flusher; writes left are dropped,
        counted and logged. Whether nothing was left."""
        drained = self.flush(timeout)
        with self._cond:
            self._closing = True
            # Queued writes are dropped here; a batch in flight is counted by the flusher
            # when its attempt gives up (at once: abandoned).
            left = len(self._queue)
            in_flight = len(self._inflight)
            self._queue.clear()
            self._cond.notify_all()
            thread = self._thread
        if not drained:
            self._abandon.set()
            self._counters.writes_dropped += left
            log.error(
                "tiercache: closing with %d write-behind write(s) not written within %s s; "
                "%d queued are dropped, %d in flight are dropped unless this attempt succeeds",
                left + in_flight,
                timeout,
                left,
                in_flight,
            )
        if thread is not None and thread is not threading.current_thread():
            thread.join(0.5)
        return drained

    # -- the flusher thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._deliver(batch)
            finally:
                with self._cond:
                    self._inflight = {}
                    self._cond.notify_all()

    def _next_batch(self) -> dict[str, _Op] | None:
        cond = self._cond
        with cond:
            while not self._queue:
                if self._closing:
                    return None
                cond.wait()
            while len(self._queue) < self._batch_size and not self._urgent and not self._closing:
                remaining = self._first_at + self._delay - self._clock()
                if remaining <= 0 or not self._queue:
                    break
                cond.wait(remaining)
            if not self._queue:
                return {}
            keys = list(self._queue)[: self._batch_size]
            batch = {key: self._queue.pop(key) for key in keys}
            if self._queue:
                # What is left has waited as long as the batch taken: flush it next.
                self._first_at = min(self._first_at, self._clock())
            self._inflight = batch
            return batch

    def _deliver(self, batch: dict[str, _Op]) -> None:
        by_writer: dict[int, tuple[Writer, dict[str, Any], list[str]]] = {}
        for key, (writer, is_delete, value) in batch.items():
            group = by_writer.setdefault(id(writer), (writer, {}, []))
            if is_delete:
                group[2].append(key)
            else:
                group[1][key] = value
        for writer, values, deletes in by_writer.values():
            if values:
                self._attempt(writer, values, deleting=False)
            if deletes:
                self._attempt(writer, dict.fromkeys(deletes), deleting=True)

    def _attempt(self, writer: Writer, items: dict[str, Any], *, deleting: bool) -> None:
        counters = self._counters
        pause = max(self._delay, _MIN_BACKOFF)
        attempt = 0
        while True:
            try:
                _call(writer, items, deleting)
            except Exception as exc:
                if attempt >= self._retries or self._abandon.is_set():
                    counters.writes_dropped += len(items)
                    log.error(
                        "tiercache: write-behind dropped %d %s after %d attempt(s): %r",
                        len(items),
                        "delete(s)" if deleting else "write(s)",
                        attempt + 1,
                        exc,
                    )
                    return
                attempt += 1
                counters.write_retries += 1
                if self._abandon.wait(pause):
                    continue  # closing: the next failure drops the batch
                pause = min(pause * 2, _MAX_BACKOFF)
                with self._cond:
                    # A key written again meanwhile: its newer write is queued; skip this one.
                    items = {key: v for key, v in items.items() if key not in self._queue}
                if not items:
                    return
                continue
            counters.writes_flushed += len(items)
            return


def _call(writer: Writer, items: dict[str, Any], deleting: bool) -> None:
    if deleting:
        if len(items) == 1:
            writer.delete(next(iter(items)))
        else:
            writer.delete_many(list(items))
    elif len(items) == 1:
        key, value = next(iter(items.items()))
        writer.write(key, value)
    else:
        writer.write_many(items)
