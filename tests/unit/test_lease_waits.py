"""LeaseWaits: process-local waits for other processes' leases, woken by READY messages."""

from __future__ import annotations

import threading
import time

from tests.support import WAIT
from tiercache.lease_waits import LeaseWaits


def test_a_ready_that_came_between_registering_and_waiting_wakes_at_once() -> None:
    """A caller registers in Redis, then starts waiting here; a READY heard in between is
    not lost (it would cost a whole bounded wait): the wait returns True at once."""
    waits = LeaseWaits()
    registered_at = time.monotonic()
    waits.wake(["k"])  # the READY arrives before the caller waits
    assert waits.wait("k", timeout=WAIT, since=registered_at)


def test_a_ready_from_before_registering_does_not_count() -> None:
    """An older READY (for an earlier lease) does not end a wait that starts later."""
    waits = LeaseWaits()
    waits.wake(["k"])
    registered_at = time.monotonic() + 1e-3  # registered after that READY
    assert not waits.wait("k", timeout=0.01, since=registered_at)


def test_a_waiter_is_woken_by_the_ready_for_its_key_only() -> None:
    """wake() releases the waiters of the keys it names; waiting() says who waits."""
    waits = LeaseWaits()
    started, results = threading.Event(), []

    def wait() -> None:
        started.set()
        results.append(waits.wait("k", timeout=WAIT))

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert started.wait(WAIT)
    deadline = time.monotonic() + WAIT
    while not waits.waiting("k") and time.monotonic() < deadline:
        time.sleep(0.001)  # bounded: until the waiter is inside wait()
    waits.wake(["other"])
    assert waits.waiting("k")
    waits.wake(["k"])
    waiter.join(WAIT)
    assert results == [True]
    assert not waits.waiting("k")
