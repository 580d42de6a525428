"""Single-flight: one load per key at a time in a process, others share its outcome."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.support import WAIT, run_threads, wait_for
from tiercache import flight
from tiercache.errors import ReentrantLoadError
from tiercache.flight import LoadFailedError, SingleFlight


class ObservedEvent(threading.Event):
    """An Event that counts the threads that started waiting on it."""

    def __init__(self, entered: threading.Condition, counter: list[int]) -> None:
        super().__init__()
        self._entered = entered
        self._counter = counter

    def wait(self, timeout: float | None = None) -> bool:
        with self._entered:
            self._counter[0] += 1
            self._entered.notify_all()
        return super().wait(timeout)


@pytest.fixture
def waiting(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Returns ``until(n)``: block (bounded) until ``n`` callers are waiting on a leader."""
    entered = threading.Condition()
    counter = [0]

    class ObservedCall(flight._Call):
        def __init__(self) -> None:
            super().__init__()
            self.done = ObservedEvent(entered, counter)

    monkeypatch.setattr(flight, "_Call", ObservedCall)

    def until(n: int) -> None:
        with entered:
            assert entered.wait_for(lambda: counter[0] >= n, timeout=WAIT), counter

    return until


def test_single_call_runs_fn_and_reports_it_led() -> None:
    """An uncontended call runs fn once and returns (value, True)."""
    sf = SingleFlight()
    calls: list[int] = []
    assert sf.run("k", lambda: calls.append(1) or "v") == ("v", True)
    assert calls == [1]
    assert sf.in_flight() == 0


def test_sequential_calls_each_run_fn() -> None:
    """Single-flight is not a cache: once a call finished, the next one runs fn again."""
    sf = SingleFlight()
    calls: list[int] = []
    for _ in range(3):
        sf.run("k", lambda: calls.append(1))
    assert len(calls) == 3


def test_concurrent_callers_share_one_run(waiting: Callable[[int], None]) -> None:
    """N callers of one key: fn runs once, all get its value, exactly one is the leader."""
    sf = SingleFlight()
    callers = 8
    barrier = threading.Barrier(callers, timeout=WAIT)
    release = threading.Event()
    calls: list[int] = []
    results: list[tuple[Any, bool]] = []

    def load() -> object:
        calls.append(1)
        waiting(callers - 1)  # every other caller is now parked on this call
        release.set()
        return {"answer": 42}

    def caller() -> None:
        barrier.wait()
        results.append(sf.run("k", load))

    run_threads([caller] * callers)
    assert release.is_set()
    assert len(calls) == 1
    assert len(results) == callers
    assert sum(led for _, led in results) == 1
    values = [value for value, _ in results]
    assert all(v is values[0] for v in values)
    assert sf.in_flight() == 0


def test_exception_propagates_to_every_waiter(waiting: Callable[[int], None]) -> None:
    """If fn raises, the leader and every waiting caller get that exception; fn ran once."""
    sf = SingleFlight()
    callers = 5
    barrier = threading.Barrier(callers, timeout=WAIT)
    calls: list[int] = []
    raised: list[BaseException] = []

    class LoadFailedError(Exception):
        pass

    def load() -> None:
        calls.append(1)
        waiting(callers - 1)
        raise LoadFailedError("db down")

    def caller() -> None:
        barrier.wait()
        try:
            sf.run("k", load)
        except LoadFailedError as exc:
            raised.append(exc)

    run_threads([caller] * callers)
    assert len(calls) == 1
    assert len(raised) == callers
    assert all(str(exc) == "db down" for exc in raised)
    assert sf.in_flight() == 0


def test_after_a_failure_the_next_call_runs_again() -> None:
    """A failed load is not remembered: the next call for the key runs fn."""
    sf = SingleFlight()

    def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        sf.run("k", boom)
    assert sf.run("k", lambda: 7) == (7, True)


def test_distinct_keys_load_in_parallel() -> None:
    """Loads of different keys overlap: each waits for the other to start (no global lock)."""
    sf = SingleFlight()
    a_started, b_started = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def load_a() -> str:
        a_started.set()
        assert b_started.wait(WAIT), "load of b never started while a was loading"
        return "A"

    def load_b() -> str:
        b_started.set()
        assert a_started.wait(WAIT), "load of a never started while b was loading"
        return "B"

    def call(key: str, fn: Callable[[], str]) -> None:
        try:
            results[key] = sf.run(key, fn)
        except AssertionError as exc:
            results[key] = exc

    run_threads([lambda: call("a", load_a), lambda: call("b", load_b)])
    assert results == {"a": ("A", True), "b": ("B", True)}
    assert sf.in_flight() == 0


def test_in_flight_counts_keys_being_loaded() -> None:
    """in_flight() sees a load while it runs and forgets it afterwards."""
    sf = SingleFlight()
    seen: list[int] = []
    sf.run("k", lambda: seen.append(sf.in_flight()))
    assert seen == [1]
    assert sf.in_flight() == 0


def test_reset_after_fork_forgets_calls_in_flight() -> None:
    """After a reset (a forked child), a key whose load was in flight can be loaded anew
    at once instead of waiting for a leader that does not exist in the child."""
    sf = SingleFlight()
    started, release = threading.Event(), threading.Event()
    outcome: list[object] = []

    def parent_load() -> str:
        started.set()
        assert release.wait(WAIT)
        return "parent"

    def parent() -> None:
        try:
            outcome.append(sf.run("k", parent_load))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=parent)
    thread.start()
    try:
        assert started.wait(WAIT)
        sf.reset_after_fork()
        assert sf.in_flight() == 0
        assert sf.run("k", lambda: "child") == ("child", True)
    finally:
        release.set()
        thread.join(WAIT)
    assert not thread.is_alive()
    assert outcome == [("parent", True)]


def test_leader_outliving_a_fork_reset_returns_its_value() -> None:
    """A load that was running when the map was reset still returns its own value
    (regression: `del self._calls[key]` raised KeyError)."""
    sf = SingleFlight()

    def load() -> str:
        sf.reset_after_fork()  # e.g. the loader itself forked and continues in the child
        return "value"

    assert sf.run("k", load) == ("value", True)


def test_finished_leader_does_not_remove_a_newer_call_for_its_key() -> None:
    """Bookkeeping is per call: after a reset, the old leader finishing leaves the new
    leader's call registered, so a third caller still waits instead of loading twice
    (regression: the old leader deleted whatever call held its key)."""
    sf = SingleFlight()
    new_started, new_release = threading.Event(), threading.Event()
    calls: list[str] = []

    def old_load() -> str:
        sf.reset_after_fork()
        thread.start()
        assert new_started.wait(WAIT)
        return "old"

    def new_load() -> str:
        calls.append("new")
        new_started.set()
        assert new_release.wait(WAIT)
        return "new"

    new_outcome: list[object] = []

    def new_leader() -> None:
        try:
            new_outcome.append(sf.run("k", new_load))
        except BaseException as exc:
            new_outcome.append(exc)

    thread = threading.Thread(target=new_leader)
    try:
        assert sf.run("k", old_load) == ("old", True)
        assert sf.in_flight() == 1, "the new leader's call was dropped"
    finally:
        new_release.set()
        thread.join(WAIT)
    assert not thread.is_alive()
    assert calls == ["new"]
    assert new_outcome == [("new", True)]


# -- re-entrance and per-waiter exceptions ----------------------------------------------------


def test_a_load_that_asks_for_its_own_key_raises_at_once() -> None:
    """fn calling run() on its own key raises ReentrantLoadError instead of deadlocking."""
    sf = SingleFlight()
    seen: list[BaseException] = []

    def load() -> str:
        try:
            sf.run("user:secret", lambda: "inner")
        except ReentrantLoadError as exc:
            seen.append(exc)
            raise
        return "outer"

    with pytest.raises(ReentrantLoadError, match=r"key digest [0-9a-f]{16}"):
        sf.run("user:secret", load)
    assert len(seen) == 1
    assert "secret" not in str(seen[0])  # the raw key is not in the message
    assert sf.in_flight() == 0
    assert sf.run("user:secret", lambda: 1) == (1, True)  # nothing left behind


def test_a_cycle_through_other_keys_in_one_thread_raises() -> None:
    """A -> B -> A in one thread raises; the inner B's caller sees the error."""
    sf = SingleFlight()

    def load_b() -> str:
        return str(sf.run("a", lambda: "never")[0])

    def load_a() -> str:
        return str(sf.run("b", load_b)[0])

    with pytest.raises(ReentrantLoadError):
        sf.run("a", load_a)
    assert sf.in_flight() == 0


def test_a_cycle_across_two_threads_raises_in_one_of_them() -> None:
    """Thread 1 loads A and waits for B while thread 2 loads B and waits for A: one of
    them raises ReentrantLoadError at once, so neither waits forever."""
    sf = SingleFlight()
    both_leading = threading.Barrier(2, timeout=WAIT)
    outcomes: dict[str, object] = {}

    def load(mine: str, other: str) -> str:
        both_leading.wait()
        try:
            return f"{mine}+{sf.run(other, lambda: other)[0]}"
        except ReentrantLoadError as exc:
            outcomes[f"{mine} refused"] = exc
            raise

    def caller(mine: str, other: str) -> None:
        try:
            outcomes[mine] = sf.run(mine, lambda: load(mine, other))[0]
        except ReentrantLoadError as exc:
            outcomes[mine] = exc

    run_threads([lambda: caller("a", "b"), lambda: caller("b", "a")])
    refused = [key for key in ("a", "b") if isinstance(outcomes[key], ReentrantLoadError)]
    assert refused, outcomes
    assert sf.in_flight() == 0


def test_a_load_moved_to_another_thread_keeps_its_reentrance_check() -> None:
    """The loading stack travels with the context, as a loader run by a timeout on a
    background thread (in a copy of the caller's context) does."""
    sf = SingleFlight()
    result: list[BaseException] = []

    def load() -> str:
        context = contextvars.copy_context()
        worker = threading.Thread(
            target=lambda: context.run(lambda: _catch(result, lambda: sf.run("k", str))),
            daemon=True,
        )
        worker.start()
        worker.join(WAIT)
        assert not worker.is_alive(), "the re-entrant call deadlocked"
        return "outer"

    assert sf.run("k", load) == ("outer", True)
    assert len(result) == 1
    assert isinstance(result[0], ReentrantLoadError)


def _catch(into: list[BaseException], fn: Callable[[], object]) -> None:
    try:
        fn()
    except BaseException as exc:
        into.append(exc)


def test_each_waiter_raises_its_own_copy_with_a_short_traceback(
    waiting: Callable[[int], None],
) -> None:
    """Waiters get distinct exception objects of the loader's type, chained to the
    original, whose traceback does not grow with the number of waiters."""
    sf = SingleFlight()
    callers = 30
    barrier = threading.Barrier(callers, timeout=WAIT)
    raised: list[BaseException] = []
    lock = threading.Lock()

    class DatabaseDownError(Exception):
        pass

    original = DatabaseDownError("db down")

    def load() -> None:
        waiting(callers - 1)
        raise original

    def caller() -> None:
        barrier.wait()
        try:
            sf.run("k", load)
        except DatabaseDownError as exc:
            with lock:
                raised.append(exc)

    run_threads([caller] * callers)
    assert len(raised) == callers
    assert len({id(exc) for exc in raised}) == callers
    copies = [exc for exc in raised if exc is not original]
    assert len(copies) == callers - 1
    assert all(exc.__cause__ is original and str(exc) == "db down" for exc in copies)
    depth = 0
    tb = original.__traceback__
    while tb is not None:
        depth += 1
        tb = tb.tb_next
    assert depth < 10, f"the loader's traceback grew to {depth} frames"


def test_an_exception_that_cannot_be_copied_reaches_waiters_chained() -> None:
    """An exception type whose constructor does not accept its args is raised to waiters
    as LoadFailedError chained to the original."""
    sf = SingleFlight()
    started, release = threading.Event(), threading.Event()
    raised: list[BaseException] = []

    class PickyError(Exception):
        def __init__(self, code: int, detail: str) -> None:
            super().__init__(f"{code}: {detail}")

    def load() -> None:
        started.set()
        release.wait(WAIT)
        raise PickyError(500, "boom")

    def leader() -> None:
        _catch(raised, lambda: sf.run("k", load))

    def follower() -> None:
        started.wait(WAIT)
        _catch(raised, lambda: sf.run("k", load))

    lead = threading.Thread(target=leader, daemon=True)
    follow = threading.Thread(target=follower, daemon=True)
    lead.start()
    follow.start()
    started.wait(WAIT)
    wait_for(lambda: sf._calls["k"].done is not None, WAIT, "the follower to wait")
    release.set()
    lead.join(WAIT)
    follow.join(WAIT)
    kinds = sorted(type(exc).__name__ for exc in raised)
    assert kinds == ["LoadFailedError", "PickyError"]
    failed = next(exc for exc in raised if isinstance(exc, LoadFailedError))
    assert isinstance(failed.__cause__, PickyError)


def test_waiters_do_not_raise_the_leaders_keyboard_interrupt() -> None:
    """A BaseException that is not an Exception stays in the leader's thread: a waiter
    runs the load again and gets its value."""
    sf = SingleFlight()
    started, release = threading.Event(), threading.Event()
    outcomes: list[object] = []

    def interrupted() -> None:
        started.set()
        release.wait(WAIT)
        raise KeyboardInterrupt

    def leader() -> None:
        try:
            sf.run("k", interrupted)
        except KeyboardInterrupt:
            outcomes.append("leader interrupted")

    def follower() -> None:
        started.wait(WAIT)
        outcomes.append(sf.run("k", lambda: "reloaded"))

    lead = threading.Thread(target=leader, daemon=True)
    follow = threading.Thread(target=follower, daemon=True)
    lead.start()
    follow.start()
    started.wait(WAIT)
    wait_for(lambda: sf._calls["k"].done is not None, WAIT, "the follower to wait")
    release.set()
    lead.join(WAIT)
    follow.join(WAIT)
    assert sorted(map(str, outcomes)) == ["('reloaded', True)", "leader interrupted"]
