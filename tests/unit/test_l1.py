"""L1: lock-free reads over a dict, TLRU bookkeeping, generations and tickets."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import FakeClock
from tiercache.l1 import RECENT_HITS, SWEEP_INTERVAL, LocalTier, _Bookkeeper

CLOCK_START = 1000.0  # where this module's fake clocks start


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(CLOCK_START)


@pytest.fixture
def tier(clock: FakeClock) -> LocalTier:
    return LocalTier(maxsize=3, timer=clock)


def value_of(tier: LocalTier, key: str) -> Any:
    entry = tier.get(key)
    return None if entry is None else entry[0]


# -- basics ------------------------------------------------------------------------------------


def test_fill_then_get_returns_value_and_deadline(tier: LocalTier, clock: FakeClock) -> None:
    """A filled entry is served with its absolute deadline (and fail-safe end, the same when
    no stale window is asked for); unknown keys are None."""
    assert tier.fill("a", {"v": 1}, ttl=10)
    assert tier.get("a") == ({"v": 1}, clock.now + 10, clock.now + 10)
    assert tier.get("missing") is None
    assert len(tier) == 1


def test_cached_none_is_a_value(tier: LocalTier) -> None:
    """None can be stored and is distinguishable from a miss."""
    tier.fill("n", None, ttl=10)
    assert tier.get("n") == (None, pytest.approx(1010.0), pytest.approx(1010.0))


def test_each_entry_expires_on_its_own_ttl(tier: LocalTier, clock: FakeClock) -> None:
    """Per-entry TTL: the short one expires first; expiry is at the deadline, not after."""
    tier.fill("short", 1, ttl=5)
    tier.fill("long", 2, ttl=10)
    clock.advance(4.999)
    assert value_of(tier, "short") == 1
    clock.advance(0.001)
    assert tier.get("short") is None
    assert value_of(tier, "long") == 2
    clock.advance(5)
    assert tier.get("long") is None


def test_refill_replaces_value_and_deadline(tier: LocalTier, clock: FakeClock) -> None:
    """Filling a key again stores the new value with the new deadline."""
    tier.fill("a", 1, ttl=5)
    tier.fill("a", 2, ttl=50)
    clock.advance(10)
    assert value_of(tier, "a") == 2


def test_least_recently_filled_is_evicted_without_hits(tier: LocalTier) -> None:
    """With no reads, the oldest fill is evicted when the map is full."""
    for key in "abcd":
        tier.fill(key, key, ttl=100)
    assert set(tier.data) == {"b", "c", "d"}


def test_recorded_hit_protects_an_entry_from_eviction(tier: LocalTier) -> None:
    """A hit recorded by get() is replayed by the next fill: the LRU victim is another key."""
    for key in "abc":
        tier.fill(key, key, ttl=100)
    assert value_of(tier, "a") == "a"  # a is now the most recently used
    tier.fill("d", "d", ttl=100)
    assert set(tier.data) == {"a", "c", "d"}
    assert tier.get("b") is None


def test_hits_are_recorded_and_replayed(tier: LocalTier) -> None:
    """get() appends to ``recent``; a fill consumes them; misses are not recorded."""
    tier.fill("a", 1, ttl=100)
    tier.get("a")
    tier.get("a")
    tier.get("zzz")
    assert list(tier.recent) == ["a", "a"]
    tier.fill("b", 2, ttl=100)
    assert list(tier.recent) == []


def test_recorded_hits_are_bounded(tier: LocalTier) -> None:
    """Between fills at most RECENT_HITS hits are remembered."""
    tier.fill("a", 1, ttl=100)
    for _ in range(RECENT_HITS + 10):
        tier.get("a")
    assert len(tier.recent) == RECENT_HITS


def test_size_never_exceeds_maxsize(clock: FakeClock) -> None:
    """However many keys are filled, both the map and the bookkeeping stay within maxsize."""
    tier = LocalTier(maxsize=5, timer=clock)
    for i in range(100):
        tier.fill(f"k{i}", i, ttl=100)
        assert len(tier.data) <= 5
    assert tier.maxsize == 5
    assert set(tier.data) == {f"k{i}" for i in range(95, 100)}


def test_lru_eviction_goes_through_overridden_popitem(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins that cachetools evicts through our popitem(), which also drops the read map entry."""
    calls: list[str] = []
    original = _Bookkeeper.popitem

    def spy(self: _Bookkeeper) -> tuple[str, None]:
        item = original(self)
        calls.append(item[0])
        return item

    monkeypatch.setattr(_Bookkeeper, "popitem", spy)
    tier = LocalTier(maxsize=1, timer=clock)
    tier.fill("a", 1, ttl=100)
    tier.fill("b", 2, ttl=100)
    assert calls == ["a"]
    assert "a" not in tier.data


def test_expired_entries_are_swept_by_a_fill_after_the_sweep_interval(
    tier: LocalTier, clock: FakeClock
) -> None:
    """An expired entry is never served, and a fill after SWEEP_INTERVAL reclaims it."""
    tier.fill("old", 1, ttl=1)
    clock.advance(2)
    assert tier.get("old") is None  # refused at once...
    assert "old" in tier.data  # ...and reclaimed later, not on the read path
    clock.advance(SWEEP_INTERVAL)
    tier.fill("new", 2, ttl=100)
    assert set(tier.data) == {"new"}


def test_swept_entries_do_not_count_against_maxsize(tier: LocalTier, clock: FakeClock) -> None:
    """Once swept, expired entries leave room: no live entry is evicted for them."""
    tier.fill("live1", 1, ttl=100)
    tier.fill("dead", 2, ttl=1)
    tier.fill("live2", 3, ttl=100)
    clock.advance(SWEEP_INTERVAL + 1)
    tier.fill("live3", 4, ttl=100)
    assert set(tier.data) == {"live1", "live2", "live3"}


def test_fill_with_no_time_to_live_drops_the_old_value(tier: LocalTier) -> None:
    """A fill whose ttl has already run out stores nothing and must not leave the older
    value readable."""
    tier.fill("k", "old", ttl=100)
    assert not tier.fill("k", "new", ttl=0)
    assert tier.get("k") is None
    assert "k" not in tier.data


# -- invalidation ------------------------------------------------------------------------------


def test_invalidate_drops_only_the_given_keys(tier: LocalTier) -> None:
    """invalidate() removes the listed keys (missing ones are fine) and keeps the rest."""
    for key in "abc":
        tier.fill(key, key, ttl=100)
    tier.invalidate(["a", "c", "never-filled"])
    assert set(tier.data) == {"b"}
    assert tier.get("a") is None


def test_invalidated_key_can_be_filled_again(tier: LocalTier) -> None:
    """After invalidate, a fresh fill (and its bookkeeping) works normally."""
    tier.fill("a", 1, ttl=100)
    tier.invalidate(["a"])
    assert tier.fill("a", 2, ttl=100)
    assert value_of(tier, "a") == 2


def test_flush_drops_everything(tier: LocalTier) -> None:
    """flush() empties the map and the recorded hits."""
    for key in "ab":
        tier.fill(key, key, ttl=100)
    tier.get("a")
    tier.flush()
    assert tier.data == {}
    assert len(tier.recent) == 0
    assert len(tier) == 0
    assert tier.fill("c", 3, ttl=100)
    assert set(tier.data) == {"c"}


def test_invalidate_tags_drops_tagged_entries_only(tier: LocalTier) -> None:
    """Entries filled with a tag go away on invalidate_tags; untagged ones stay."""
    tier.fill("u1", 1, ttl=100, tags=("users",))
    tier.fill("u2", 2, ttl=100, tags=("users", "eu"))
    tier.fill("p", 3, ttl=100)
    tier.invalidate_tags(["users"])
    assert set(tier.data) == {"p"}


# -- tickets and generations -------------------------------------------------------------------


def test_fill_with_ticket_succeeds_when_nothing_intervened(tier: LocalTier) -> None:
    """A ticket with no invalidation since it was taken allows the fill."""
    ticket = tier.ticket("a")
    assert tier.fill("a", 1, ttl=100, ticket=ticket)
    tier.release(ticket)
    assert value_of(tier, "a") == 1


def test_ticket_taken_before_invalidate_is_refused(tier: LocalTier) -> None:
    """A load that started before invalidate() cannot write its (older) value back."""
    ticket = tier.ticket("a")
    tier.invalidate(["a"])
    assert not tier.fill("a", "stale", ttl=100, ticket=ticket)
    tier.release(ticket)
    assert tier.get("a") is None


def test_invalidate_of_another_key_does_not_refuse_a_ticket(tier: LocalTier) -> None:
    """Generations are per key."""
    ticket = tier.ticket("a")
    tier.invalidate(["b"])
    assert tier.fill("a", 1, ttl=100, ticket=ticket)
    tier.release(ticket)


def test_ticket_taken_before_flush_is_refused(tier: LocalTier) -> None:
    """flush() overtakes every load in flight, whatever its key."""
    ticket = tier.ticket("a")
    tier.flush()
    assert not tier.fill("a", "stale", ttl=100, ticket=ticket)
    tier.release(ticket)
    assert tier.get("a") is None


def test_ticket_taken_before_invalidate_tags_is_refused(tier: LocalTier) -> None:
    """invalidate_tags() overtakes every load in flight (their future tags are unknown)."""
    ticket = tier.ticket("a")
    tier.invalidate_tags(["anything"])
    assert not tier.fill("a", "stale", ttl=100, ticket=ticket)
    tier.release(ticket)


def test_ticket_taken_after_invalidate_is_accepted(tier: LocalTier) -> None:
    """Only loads that started before the invalidation are refused."""
    tier.invalidate(["a"])
    tier.flush()
    ticket = tier.ticket("a")
    assert tier.fill("a", "fresh", ttl=100, ticket=ticket)
    tier.release(ticket)
    assert value_of(tier, "a") == "fresh"


def test_fill_without_ticket_overtakes_loads_in_flight(tier: LocalTier) -> None:
    """A set() (no ticket) is the newest value: an older load cannot overwrite it."""
    ticket = tier.ticket("a")
    assert tier.fill("a", "from set", ttl=100)
    assert not tier.fill("a", "from slow load", ttl=100, ticket=ticket)
    tier.release(ticket)
    assert value_of(tier, "a") == "from set"


def test_every_concurrent_ticket_of_a_key_is_refused_after_invalidate(tier: LocalTier) -> None:
    """Two loads of one key in flight: both are overtaken by one invalidation."""
    first, second = tier.ticket("a"), tier.ticket("a")
    tier.invalidate(["a"])
    third = tier.ticket("a")
    assert not tier.fill("a", 1, ttl=100, ticket=first)
    assert not tier.fill("a", 2, ttl=100, ticket=second)
    assert tier.fill("a", 3, ttl=100, ticket=third)
    for ticket in (first, second, third):
        tier.release(ticket)


def test_released_tickets_leave_no_bookkeeping(tier: LocalTier) -> None:
    """_inflight only holds keys with a load in progress; releasing all empties it."""
    tickets = [tier.ticket("a"), tier.ticket("a"), tier.ticket("b")]
    tier.invalidate(["a"])
    tier.release(tickets[0])
    assert set(tier._inflight) == {"a", "b"}
    tier.release(tickets[1])
    tier.release(tickets[2])
    assert tier._inflight == {}


def test_reset_after_fork_refuses_parent_tickets_and_empties(tier: LocalTier) -> None:
    """In a forked child, the map is empty and loads started in the parent cannot fill."""
    tier.fill("a", 1, ttl=100)
    ticket = tier.ticket("b")
    tier.reset_after_fork()
    assert tier.data == {}
    assert tier._inflight == {}
    assert not tier.fill("b", 2, ttl=100, ticket=ticket)
    tier.release(ticket)  # releasing a pre-fork ticket is harmless
    assert tier._inflight == {}


# -- threads -----------------------------------------------------------------------------------


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads every 50 microseconds so races get a chance to show up."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(5e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def test_readers_never_see_a_value_after_its_invalidation_returned(fast_switching: None) -> None:
    """Lock-free readers racing a writer: no exception, and once invalidate() has returned
    for version v, no get() that starts afterwards returns v (or older)."""
    clock = FakeClock(CLOCK_START)
    tier = LocalTier(maxsize=16, timer=clock)
    readers_n, rounds = 2, 2000
    # A budget, not a sleep: on a loaded machine stop early rather than slow the suite.
    budget_ends = time.monotonic() + 1.5
    completed = [0]
    barrier = threading.Barrier(readers_n + 1, timeout=10)
    done = threading.Event()
    invalidated = [-1]  # highest version whose invalidate() has returned
    errors: list[BaseException] = []
    violations: list[tuple[int, int]] = []
    hits = [0] * readers_n
    # Every 100 rounds the writer waits (bounded) until a reader has seen the live value,
    # so the test exercises hits racing invalidations however the threads are scheduled.
    wanted, seen = [-1], threading.Event()
    # And after every 4th invalidation the writer waits (bounded) until some reader has
    # finished a get() that started after it, so that window is always checked.
    checked, checked_cond = [-1], threading.Condition()

    def reader(n: int) -> None:
        try:
            barrier.wait()
            while not done.is_set():
                floor = invalidated[0]
                entry = tier.get("hot")
                if entry is not None:
                    hits[n] += 1
                    if entry[0] <= floor and len(violations) < 10:
                        violations.append((entry[0], floor))
                    if entry[0] == wanted[0]:
                        seen.set()
                if floor > checked[0]:
                    with checked_cond:
                        checked[0] = max(checked[0], floor)
                        checked_cond.notify_all()
                tier.get(f"cold{n}")
        except BaseException as exc:
            errors.append(exc)

    def writer() -> None:
        try:
            barrier.wait()
            for version in range(rounds):
                if time.monotonic() > budget_ends:
                    break
                if version % 100 == 0:
                    seen.clear()
                    wanted[0] = version
                tier.fill("hot", version, ttl=100)
                tier.fill(f"cold{version % 40}", version, ttl=100)  # forces evictions
                if version % 100 == 0 and not seen.wait(timeout=10):
                    raise AssertionError(f"no reader saw version {version}")
                if version % 500 == 499:
                    tier.flush()
                else:
                    tier.invalidate(["hot"])
                invalidated[0] = version
                if version % 4 == 0:
                    with checked_cond:
                        if not checked_cond.wait_for(lambda v=version: checked[0] >= v, timeout=10):
                            raise AssertionError(f"no reader checked version {version}")
                completed[0] += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(readers_n)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert violations == []
    assert completed[0] >= 100, completed  # the race was actually exercised...
    assert sum(hits) > 0  # ...with readers seeing live entries
    assert len(tier.data) <= 16


def test_invalidations_detach_loads_in_flight_but_a_flush_at_subscription_does_not() -> None:
    """Invalidating keys, tags or everything tells single-flight to stop handing out loads
    that started before; the flush at (re)subscription refuses their fills only, so callers
    keep joining a running load (one load per key, guarantee 4)."""
    detached: list[object] = []
    tier = LocalTier(maxsize=8, timer=FakeClock(), on_invalidate=detached.append)
    ticket = tier.ticket("k")
    tier.flush(detach=False)
    assert detached == []
    assert not tier.fill("k", "old", ttl=10, ticket=ticket)  # the fill is still refused
    tier.invalidate(["k"])
    tier.invalidate_tags(["t"])
    tier.flush()
    assert detached == [["k"], None, None]
    tier.release(ticket)


# -- values held for the fail-safe -----------------------------------------------------------


def test_held_values_count_against_maxsize(tier: LocalTier) -> None:
    """Holding stale values for many keys never keeps more than maxsize keys in all: the
    least recently used key (held or filled) is evicted from both maps."""
    for i in range(10):
        tier.hold(f"k{i}", i, 60.0, tier.ticket(f"k{i}"), ())
    assert len(tier.held) == 3
    assert sorted(tier.held) == ["k7", "k8", "k9"]
    tier.fill("fresh", "v", 10)
    assert len(tier.held) + len(tier.data) == 3


def test_a_fresh_fill_drops_the_held_value(tier: LocalTier) -> None:
    """Once a load stores a fresh value, the stale one held for the key is gone."""
    tier.hold("k", "stale", 60.0, tier.ticket("k"), ())
    assert tier.held_value("k") == (True, "stale")
    ticket = tier.ticket("k")
    assert tier.fill("k", "fresh", 10, ticket)
    assert tier.held_value("k") == (False, None)
    assert "k" not in tier.held


def test_the_sweep_drops_held_values_past_their_hold(tier: LocalTier, clock: FakeClock) -> None:
    """Held values whose hold ended are reclaimed by the periodic sweep, not kept forever."""
    tier.hold("a", 1, 1.0, tier.ticket("a"), ())
    tier.hold("b", 2, 1.0, tier.ticket("b"), ())
    clock.advance(SWEEP_INTERVAL + 1)
    tier.fill("c", 3, 10)  # a fill runs the sweep
    assert tier.held == {}
    tier.fill("d", 4, 10)
    tier.fill("e", 5, 10)
    assert sorted(tier.data) == ["c", "d", "e"]  # their LRU slots were free again


def test_a_batch_fill_keeps_nothing_if_anything_changed_while_l2_was_read(
    tier: LocalTier,
) -> None:
    """fill_read: a batch read's entries are kept only if no invalidation, write or flush
    happened since its snapshot of `changes` (one of them may be older than that change)."""
    seen = tier.changes
    tier.invalidate(["unrelated"])
    assert not tier.fill_read([("a", 1, 10.0, 10.0, (), 10)], seen)
    assert tier.get("a") is None
    seen = tier.changes
    assert tier.fill_read([("a", 1, 10.0, 10.0, ("t",), 10)], seen)
    assert value_of(tier, "a") == 1
    tier.invalidate_tags(["t"])
    assert tier.get("a") is None
