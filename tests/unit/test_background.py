"""The bounded pool of daemon threads behind loader timeouts and refresh-ahead.

Jobs block on Events, so every state (running, queued, full) is reached deterministically;
every wait is bounded.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from tests.support import WAIT, wait_until
from tiercache import background
from tiercache.background import Background

_names = itertools.count()


def pool_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"{name}-")]


class Blocker:
    """Jobs that report they are running and wait for one shared release."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started = 0

    def job(self, result: Any = None) -> Callable[[], Any]:
        def run() -> Any:
            with self.lock:
                self.started += 1
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                assert self.release.wait(WAIT)
                return result
            finally:
                with self.lock:
                    self.running -= 1

        return run


@pytest.fixture
def blocker() -> Iterator[Blocker]:
    b = Blocker()
    yield b
    b.release.set()


@pytest.fixture
def name() -> str:
    """A thread-name prefix of this test's own (threads of other tests may linger)."""
    return f"test-bg{next(_names)}"


@pytest.fixture
def pool(name: str) -> Iterator[Background]:
    bg = Background(2, name)
    yield bg
    bg.close(timeout=WAIT)


def test_submit_runs_the_job_and_its_future_holds_the_result(pool: Background, name: str) -> None:
    """A submitted callable runs on a pool thread; its Future carries the return value."""
    seen: list[str] = []
    future = pool.submit(lambda: seen.append(threading.current_thread().name) or 42)
    assert future is not None
    assert future.result(WAIT) == 42
    assert seen[0].startswith(f"{name}-")
    assert wait_until(lambda: pool.busy == 0)


def test_threads_are_daemons_started_on_first_use(pool: Background, name: str) -> None:
    """No thread exists before the first submit; the ones started are daemon threads."""
    assert pool_threads(name) == []
    future = pool.submit(lambda: None)
    assert future is not None
    future.result(WAIT)
    threads = pool_threads(name)
    assert threads
    assert all(t.daemon for t in threads)


def test_job_exception_is_delivered_to_its_future_and_the_worker_survives(
    pool: Background,
) -> None:
    """A job's exception ends up in its Future (same object); the pool keeps working."""
    error = ValueError("loader failed")

    def fail() -> Any:
        raise error

    failed = pool.submit(fail)
    assert failed is not None
    assert failed.exception(WAIT) is error
    after = pool.submit(lambda: "still working")
    assert after is not None
    assert after.result(WAIT) == "still working"


def test_pool_never_runs_more_jobs_than_workers(
    pool: Background, blocker: Blocker, name: str
) -> None:
    """With 2 workers, at most 2 jobs run at once and at most 2 threads are started; the
    rest wait in the queue and run once the first ones finish."""
    futures = [pool.submit(blocker.job(i)) for i in range(6)]
    assert all(f is not None for f in futures)
    assert wait_until(lambda: blocker.running == 2)
    assert blocker.started == 2
    assert len(pool_threads(name)) == 2
    assert pool.busy == 6

    blocker.release.set()

    assert [f.result(WAIT) for f in futures if f is not None] == list(range(6))
    assert blocker.most == 2
    assert len(pool_threads(name)) == 2
    assert wait_until(lambda: pool.busy == 0)


def test_submit_returns_none_when_the_pool_is_full(pool: Background, blocker: Blocker) -> None:
    """With every worker busy, a bounded number of jobs is queued; beyond it submit returns
    None (the caller then runs the work itself) and nothing is left running for it."""
    accepted: list[Future[Any]] = []
    for _ in range(2):
        future = pool.submit(blocker.job())
        assert future is not None
        accepted.append(future)
    assert wait_until(lambda: blocker.running == 2)

    refused = None
    for _ in range(100):
        refused = pool.submit(blocker.job())
        if refused is None:
            break
        accepted.append(refused)

    assert refused is None
    assert 2 < len(accepted) <= 5 * 2  # a few queued jobs per worker, not unbounded
    assert pool.busy == len(accepted)
    assert blocker.started == 2
    blocker.release.set()
    assert all(f.exception(WAIT) is None for f in accepted)
    assert blocker.started == len(accepted)
    # Room again once drained.
    assert wait_until(lambda: pool.busy == 0)
    again = pool.submit(lambda: "room")
    assert again is not None
    assert again.result(WAIT) == "room"


def test_close_cancels_queued_jobs_and_stops_the_threads(blocker: Blocker, name: str) -> None:
    """close() cancels jobs still queued, lets running jobs finish, and every pool thread
    exits once they have; submit then returns None."""
    pool = Background(2, name)
    running = [pool.submit(blocker.job("ran")) for _ in range(2)]
    assert wait_until(lambda: blocker.running == 2)
    queued = [pool.submit(blocker.job("queued")) for _ in range(3)]
    threads = pool_threads(name)
    assert len(threads) == 2

    pool.close(timeout=0.01)  # the running jobs are blocked: close does not wait for them

    assert all(f is not None and f.cancelled() for f in queued)
    assert pool.submit(lambda: None) is None
    blocker.release.set()
    assert [f.result(WAIT) for f in running if f is not None] == ["ran", "ran"]
    for thread in threads:
        thread.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    assert blocker.started == 2  # the cancelled jobs never ran
    assert pool.busy == 0


def test_close_is_idempotent_and_safe_on_an_unused_pool(name: str) -> None:
    """close() on a pool that never started a thread, twice, returns at once."""
    pool = Background(3, name)
    pool.close()
    pool.close()
    assert pool.submit(lambda: None) is None


def test_reset_after_fork_gives_an_empty_working_pool(blocker: Blocker, name: str) -> None:
    """After reset_after_fork (as in a forked child, where the parent's threads do not exist),
    the pool forgets the old jobs and threads and starts new threads on demand."""
    pool = Background(1, name)
    try:
        assert pool.submit(blocker.job()) is not None
        assert wait_until(lambda: blocker.running == 1)
        while pool.submit(blocker.job()) is not None:  # fill the queue
            pass
        old_threads = pool_threads(name)

        pool.reset_after_fork()

        assert pool.busy == 0
        future = pool.submit(lambda: threading.current_thread())
        assert future is not None
        assert future.result(WAIT) not in old_threads
    finally:
        blocker.release.set()
        # In a real child the parent's thread does not exist; here it does, and once
        # released it takes jobs from the new queue: one more stop sentinel (taken by it or
        # by the new thread) leaves one thread for close() to stop.
        pool._queue.put(background._STOP)
        assert wait_until(lambda: len(pool_threads(name)) <= 1)
        pool.close(timeout=WAIT)
        for thread in pool_threads(name):
            thread.join(WAIT)
        assert not any(t.is_alive() for t in pool_threads(name))


def test_reset_after_fork_keeps_a_closed_pool_closed(name: str) -> None:
    """A pool closed before the fork stays closed in the child."""
    pool = Background(2, name)
    pool.close()
    pool.reset_after_fork()
    assert pool.submit(lambda: None) is None
