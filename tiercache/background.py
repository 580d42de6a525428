"""A small, bounded pool of daemon threads for loads that outlive their caller's patience
(soft and hard loader timeouts) and for refresh-ahead.

Not a ``ThreadPoolExecutor``: its threads are joined at interpreter exit, so one hung
loader would hang the process on shutdown. These are daemon threads; `Background.close`
stops them (bounded), and a fork gives the child an empty pool (the parent's threads do
not exist there). When every worker is busy and the queue is full, `Background.submit`
returns None and the caller runs the work itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .stats import log

__all__ = ["Background"]

_STOP: Any = object()


class Background:
    """Runs callables on at most ``workers`` daemon threads, started on first use.

    Since: 0.1.0
    """

    def __init__(self, workers: int, name: str) -> None:
        self._workers = workers
        self._name = name
        self._reset()

    def _reset(self) -> None:
        # Guards _threads and _closed.
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # Room for a few queued jobs per worker; beyond that callers run the work inline.
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self._workers * 4)
        self._closed = False
        self._busy = 0

    @property
    def busy(self) -> int:
        """Jobs queued or running."""
        return self._busy

    def submit(self, fn: Callable[[], Any]) -> Future[Any] | None:
        """Schedule ``fn`` (in a copy of the caller's context, so its spans nest under the
        caller's); its `Future`, or None when the pool is full or closed."""
        context = contextvars.copy_context()
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                return None
            if len(self._threads) < self._workers and self._busy >= len(self._threads):
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            try:
                self._queue.put_nowait((lambda: context.run(fn), future))
            except queue.Full:
                return None
            self._busy += 1
        return future

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            fn, future = job
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        result = fn()
                    except BaseException as exc:
                        future.set_exception(exc)
                    else:
                        future.set_result(result)
            except Exception:  # a done-callback failed: it must not kill the worker
                log.exception("tiercache: a background job's completion failed")
            finally:
                with self._lock:
                    self._busy -= 1

    def close(self, timeout: float = 2.0) -> None:
        """Cancel queued jobs, let running ones finish within ``timeout``, stop the threads."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                job[1].cancel()
                with self._lock:
                    self._busy -= 1
        with contextlib.suppress(queue.Full):
            for _ in threads:
                self._queue.put(_STOP, timeout=timeout)
        for thread in threads:
            thread.join(timeout)

    def reset_after_fork(self) -> None:
        """An empty pool in a forked child."""
        closed = self._closed
        self._reset()
        self._closed = closed
