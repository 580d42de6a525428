"""Resilience behaviours of TierCache: fail-safe stale values (guarantee 6 of
docs/consistency.md), loader soft/hard timeouts, refresh-ahead, ``none_ttl``, and the
circuit breaker in front of Redis (guarantee 5).

TTLs, logical expiry and the breaker's cooldown follow a fake clock (``timer=``). Loaders
that must be slow block on an Event with a bounded wait and are released by the test; the
timeouts under test are tiny (0.05 s) and only WHAT is returned is asserted, never how long
it took. Asynchronous effects (a late load filling the cache, a background refresh) are
awaited by bounded polling. Tests that need Redis down use fakeredis
(``FakeServer.connected = False``); the others run on fakeredis and on a real redis-server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis

import tiercache
from tests.support import (
    MISSING,
    WAIT,
    BoomError,
    CacheFactory,
    FakeClock,
    Loader,
    wait_until,
)
from tiercache import Breaker, LoaderTimeoutError, TierCache

XFAIL_WAIT = 2.0  # bound of polls in tests expected to fail (keeps the run short)
TTL = 10.0
STALE_TTL = 60.0
TINY = 0.05  # soft/hard timeouts under test


class Gated:
    """A loader that signals ``entered``, waits (bounded) for ``gate``, then returns
    ``value`` or raises ``error``; ``done`` is set when it has finished."""

    def __init__(self, value: Any = "late", error: BaseException | None = None) -> None:
        self.value = value
        self.error = error
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.done = threading.Event()
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        self.entered.set()
        try:
            self.gate.wait(WAIT)
            if self.error is not None:
                raise self.error
            return self.value
        finally:
            self.done.set()


def outcome(call: Callable[[], Any]) -> Any:
    """The value ``call`` returns, or the exception it raises."""
    try:
        return call()
    except Exception as exc:
        return exc


@pytest.fixture
def make_cache(
    redis_client: redis.Redis, namespace: str, clock: FakeClock
) -> Iterator[Callable[..., TierCache]]:
    """Caches on the test's backend, namespace and clock, each with its listener subscribed
    (so the flush at subscription cannot drop what the test caches); closed afterwards."""
    with CacheFactory(redis_client, settle=True, namespace=namespace, timer=clock, ttl=TTL) as make:
        yield make


@pytest.fixture
def fake_server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def make_fake_cache(
    fake_server: fakeredis.FakeServer, namespace: str, clock: FakeClock
) -> Iterator[Callable[..., TierCache]]:
    """Caches on a fakeredis server the test can take down (``connected = False``)."""
    with CacheFactory(
        connect=lambda: fakeredis.FakeRedis(server=fake_server),
        namespace=namespace,
        timer=clock,
        ttl=TTL,
    ) as make:
        yield make


# -- fail-safe: a loader error after expiry serves the stale value -------------------------


def test_loader_error_after_expiry_serves_the_stale_value_and_counts_it(make_cache, clock) -> None:
    """Past ttl but within stale_ttl, a failing loader yields the old value, not the error;
    the serve is counted in stale_serves and the failure in load_errors."""
    cache = make_cache(stale_ttl=STALE_TTL)
    assert cache.get_or_set("k", Loader("old")) == "old"
    clock.advance(TTL + 1)
    failing = Loader(error=BoomError("db down"))

    assert cache.get_or_set("k", failing) == "old"

    assert failing.calls == 1
    stats = cache.stats()
    assert stats["stale_serves"] == 1
    assert stats["load_errors"] == 1


def test_stale_value_from_l2_is_served_by_another_instance(make_cache, clock) -> None:
    """An instance that never held the value serves the expired L2 copy when its loader
    fails (the fail-safe window lives in Redis too)."""
    writer = make_cache(stale_ttl=STALE_TTL)
    reader = make_cache(stale_ttl=STALE_TTL)
    writer.get_or_set("k", Loader("old"))
    clock.advance(TTL + 1)

    assert reader.get_or_set("k", Loader(error=BoomError())) == "old"
    assert reader.stats()["stale_serves"] == 1


def test_beyond_stale_ttl_the_loaders_exception_propagates_unchanged(make_cache, clock) -> None:
    """Once ttl + stale_ttl has passed, the loader's own exception object reaches the caller."""
    cache = make_cache(stale_ttl=STALE_TTL)
    cache.get_or_set("k", Loader("old"))
    clock.advance(TTL + 1)
    assert cache.get_or_set("k", Loader(error=BoomError())) == "old"  # inside the window
    clock.advance(STALE_TTL)
    error = BoomError("db down")

    with pytest.raises(BoomError) as excinfo:
        cache.get_or_set("k", Loader(error=error))

    assert excinfo.value is error
    assert cache.stats()["stale_serves"] == 1


def test_without_stale_ttl_a_loader_error_after_expiry_propagates(make_cache, clock) -> None:
    """Fail-safe is off by default: an expired value is never served, the error is."""
    cache = make_cache()
    cache.get_or_set("k", Loader("old"))
    clock.advance(TTL + 1)

    with pytest.raises(BoomError):
        cache.get_or_set("k", Loader(error=BoomError()))
    assert cache.stats()["stale_serves"] == 0


def test_loader_is_not_called_again_within_fail_safe_throttle(make_cache, clock) -> None:
    """After a stale serve, the key's loader is left alone for fail_safe_throttle (the stale
    value is served meanwhile); after it, the loader is tried again."""
    cache = make_cache(stale_ttl=STALE_TTL, fail_safe_throttle=5)
    cache.get_or_set("k", Loader("old"))
    clock.advance(TTL + 1)
    failing = Loader(error=BoomError())
    assert cache.get_or_set("k", failing) == "old"

    for _ in range(4):
        clock.advance(1.2)  # 4.8 s after the stale serve
        assert cache.get_or_set("k", failing) == "old"
    assert failing.calls == 1

    clock.advance(0.3)  # 5.1 s: the throttle is over
    assert cache.get_or_set("k", failing) == "old"
    assert failing.calls == 2
    healed = Loader("new")
    clock.advance(5.1)
    assert cache.get_or_set("k", healed) == "new"
    assert healed.calls == 1


def test_loader_errors_are_never_cached(make_cache, clock) -> None:
    """With fail-safe on and nothing stale to serve, every call retries the loader, and a
    loader that recovers is cached normally."""
    cache = make_cache(stale_ttl=STALE_TTL)
    failing = Loader(error=BoomError())
    for _ in range(3):
        with pytest.raises(BoomError):
            cache.get_or_set("k", failing)
    assert failing.calls == 3
    assert cache.get_or_set("k", Loader("ok")) == "ok"
    assert cache.get_or_set("k", failing) == "ok"
    assert failing.calls == 3


@pytest.mark.parametrize(
    "invalidate",
    [
        pytest.param(lambda c: c.delete("k"), id="delete"),
        pytest.param(lambda c: c.clear(), id="clear"),
        pytest.param(lambda c: c.invalidate_tags("t"), id="invalidate_tags"),
    ],
)
def test_invalidated_key_is_never_served_stale(make_cache, clock, invalidate) -> None:
    """After delete/clear/invalidate_tags, a failing loader raises: the invalidated value is
    no fallback (neither this instance's L1 copy nor the L2 entry)."""
    cache = make_cache(stale_ttl=STALE_TTL)
    other = make_cache(stale_ttl=STALE_TTL)
    cache.get_or_set("k", Loader("old"), tags=("t",))
    invalidate(cache)
    clock.advance(TTL + 1)

    with pytest.raises(BoomError):
        cache.get_or_set("k", Loader(error=BoomError()))
    with pytest.raises(BoomError):
        other.get_or_set("k", Loader(error=BoomError()))
    assert cache.stats()["stale_serves"] == other.stats()["stale_serves"] == 0


def test_overwritten_key_never_falls_back_to_the_older_value(make_cache, clock) -> None:
    """After set(), a failing loader may serve the newer value, never the one it replaced."""
    cache = make_cache(stale_ttl=STALE_TTL)
    cache.get_or_set("k", Loader("old"))
    cache.set("k", "new")
    clock.advance(TTL + 1)

    result = outcome(lambda: cache.get_or_set("k", Loader(error=BoomError())))

    assert result == "new" or isinstance(result, BoomError)


def test_delete_during_a_failing_load_makes_it_raise_instead_of_serving_stale(
    make_cache, clock
) -> None:
    """A delete that lands while the loader is running revokes the fallback it had taken."""
    cache = make_cache(stale_ttl=STALE_TTL)
    cache.get_or_set("k", Loader("old"))
    clock.advance(TTL + 1)
    loader = Gated(error=BoomError())
    results: list[Any] = []
    caller = threading.Thread(
        target=lambda: results.append(outcome(lambda: cache.get_or_set("k", loader)))
    )
    caller.start()
    try:
        assert loader.entered.wait(WAIT)
        cache.delete("k")
    finally:
        loader.gate.set()
        caller.join(WAIT)

    assert len(results) == 1
    assert isinstance(results[0], BoomError)
    assert cache.stats()["stale_serves"] == 0


@pytest.mark.parametrize(
    ("invalidate", "expected"),
    [
        pytest.param(lambda c: c.delete("k"), BoomError, id="delete"),
        pytest.param(lambda c: c.clear(), BoomError, id="clear"),
        pytest.param(lambda c: c.invalidate_tags("t"), BoomError, id="invalidate_tags"),
        pytest.param(lambda c: c.set("k", "new"), "new", id="set"),
    ],
)
def test_invalidation_ends_the_throttle_hold_of_a_stale_value(
    make_cache, clock, invalidate, expected
) -> None:
    """A value served stale is held for fail_safe_throttle, but an invalidation of its key
    ends the hold at once: the next call raises the loader's error (or reads the new value)."""
    cache = make_cache(stale_ttl=STALE_TTL)
    cache.get_or_set("k", Loader("old"), tags=("t",))
    clock.advance(TTL + 1)
    assert cache.get_or_set("k", Loader(error=BoomError())) == "old"

    invalidate(cache)
    result = outcome(lambda: cache.get_or_set("k", Loader(error=BoomError())))

    if isinstance(expected, type):
        assert isinstance(result, expected)
    else:
        assert result == expected


def test_invalidate_tags_ends_the_hold_of_a_stale_value_served_from_l1(
    make_fake_cache, fake_server, clock
) -> None:
    """With Redis down (the fallback comes from L1), invalidate_tags still ends the hold."""
    fake_server.connected = False
    cache = make_fake_cache(stale_ttl=STALE_TTL)
    cache.get_or_set("k", Loader("old"), tags=("t",))
    clock.advance(TTL + 1)
    assert cache.get_or_set("k", Loader(error=BoomError())) == "old"

    cache.invalidate_tags("t")

    with pytest.raises(BoomError):
        cache.get_or_set("k", Loader(error=BoomError()))


def test_value_stored_with_set_is_a_fail_safe_fallback_too(
    make_cache, clock, redis_client, namespace
) -> None:
    """set() keeps its entry through the fail-safe window (Redis TTL longer than ttl), and a
    failing loader after its expiry serves it."""
    cache = make_cache(stale_ttl=STALE_TTL)
    cache.set("k", "stored")
    assert redis_client.pttl(f"{namespace}:k".encode()) > TTL * 1000
    clock.advance(TTL + 1)

    assert cache.get_or_set("k", Loader(error=BoomError())) == "stored"


def test_stale_l1_copy_is_served_when_redis_is_down_and_the_loader_fails(
    make_fake_cache, fake_server, clock
) -> None:
    """With Redis down, a value loaded meanwhile is kept in L1 for its fail-safe window and
    served when the loader then fails."""
    fake_server.connected = False
    cache = make_fake_cache(stale_ttl=STALE_TTL)
    assert cache.get_or_set("k", Loader("from db")) == "from db"
    clock.advance(TTL + 1)

    assert cache.get_or_set("k", Loader(error=BoomError())) == "from db"

    stats = cache.stats()
    assert stats["stale_serves"] == 1
    assert stats["l2_errors"] + stats["l2_skipped"] >= 2


def test_get_and_get_many_never_return_the_stale_value_served_by_get_or_set(
    make_cache, clock
) -> None:
    """Only get_or_set serves stale values; get/get_many still see a miss afterwards."""
    cache = make_cache(stale_ttl=STALE_TTL)
    cache.get_or_set("k", Loader("old"))
    clock.advance(TTL + 1)
    assert cache.get_or_set("k", Loader(error=BoomError())) == "old"

    assert cache.get("k", MISSING) is MISSING
    assert cache.get_many(["k"]) == {}


def test_get_returns_default_for_an_expired_value_inside_the_stale_window(
    make_cache, clock
) -> None:
    """An expired value kept for fail-safe is not a hit for get/get_many."""
    cache = make_cache(stale_ttl=STALE_TTL)
    other = make_cache(stale_ttl=STALE_TTL)
    cache.get_or_set("k", Loader("old"))
    clock.advance(TTL + 1)
    assert cache.get("k", MISSING) is MISSING
    assert other.get("k", MISSING) is MISSING
    assert other.get_many(["k"]) == {}


# -- loader timeouts -------------------------------------------------------------------------


def test_soft_timeout_serves_stale_then_the_late_value_fills_both_tiers(make_cache, clock) -> None:
    """With a stale value at hand, a loader slower than soft_timeout gets the stale value
    returned; once the loader finishes, its value replaces it in L1 and in Redis."""
    cache = make_cache(stale_ttl=STALE_TTL, soft_timeout=TINY)
    other = make_cache()
    cache.get_or_set("k", Loader("old"))
    clock.advance(TTL + 1)
    slow = Gated("new")
    try:
        assert cache.get_or_set("k", slow) == "old"
        assert not slow.done.is_set()
        stats = cache.stats()
        assert stats["stale_serves"] == 1
        assert stats["load_timeouts"] == 1
    finally:
        slow.gate.set()

    assert wait_until(lambda: cache.get_or_set("k", Loader("unused")) == "new")
    assert other.get("k") == "new"  # written to L2 by the late load
    assert slow.calls == 1


def test_soft_timeout_without_a_stale_value_waits_for_the_loader(make_cache) -> None:
    """soft_timeout only applies when there is something stale to serve: a cold key waits
    for its loader (no hard_timeout set)."""
    cache = make_cache(stale_ttl=STALE_TTL, soft_timeout=TINY)
    slow = Gated("value")
    timer = threading.Timer(0.2, slow.gate.set)  # releases the loader after the soft timeout
    timer.start()
    try:
        assert cache.get_or_set("k", slow) == "value"
    finally:
        slow.gate.set()
        timer.cancel()
    assert cache.stats()["load_timeouts"] == 0


def test_hard_timeout_without_stale_raises_loader_timeout_error_then_the_late_load_fills(
    make_cache,
) -> None:
    """Past hard_timeout with nothing stale, the caller gets LoaderTimeoutError (a
    TimeoutError and a TierCacheError); the load finishes in the background and fills L1
    and Redis."""
    cache = make_cache(hard_timeout=TINY)
    other = make_cache()
    slow = Gated("late")
    try:
        with pytest.raises(LoaderTimeoutError) as excinfo:
            cache.get_or_set("k", slow)
        assert isinstance(excinfo.value, TimeoutError)
        assert isinstance(excinfo.value, tiercache.TierCacheError)
        assert not slow.done.is_set()
        assert cache.stats()["load_timeouts"] == 1
    finally:
        slow.gate.set()

    assert wait_until(lambda: cache.get("k", MISSING) == "late")
    assert other.get("k", MISSING) == "late"
    assert cache.get_or_set("k", Loader("unused")) == "late"
    assert slow.calls == 1


def test_hard_timeout_with_a_stale_value_serves_it(make_cache, clock) -> None:
    """Past hard_timeout, a stale value inside its window is returned instead of raising."""
    cache = make_cache(stale_ttl=STALE_TTL, hard_timeout=TINY)
    cache.get_or_set("k", Loader("old"))
    clock.advance(TTL + 1)
    slow = Gated("new")
    try:
        assert cache.get_or_set("k", slow) == "old"
    finally:
        slow.gate.set()
    assert cache.stats()["stale_serves"] == 1
    assert wait_until(lambda: cache.get_or_set("k", Loader("unused")) == "new")


def test_late_load_cannot_write_back_after_a_delete(make_cache, redis_client, namespace) -> None:
    """A load that overran hard_timeout and finishes after a delete of its key writes
    neither L1 nor Redis (guarantee 3 holds for background loads)."""
    cache = make_cache(hard_timeout=TINY)
    slow = Gated("late")
    try:
        with pytest.raises(LoaderTimeoutError):
            cache.get_or_set("k", slow)
        cache.delete("k")
    finally:
        slow.gate.set()

    assert wait_until(lambda: cache.stats()["lease_lost"] == 1)
    assert cache.get("k", MISSING) is MISSING
    assert redis_client.get(f"{namespace}:k".encode()) is None


def test_late_failing_load_leaves_nothing_cached(make_cache) -> None:
    """A load that overran hard_timeout and then raised caches nothing; the next call
    loads again."""
    cache = make_cache(hard_timeout=TINY)
    slow = Gated(error=BoomError())
    try:
        with pytest.raises(LoaderTimeoutError):
            cache.get_or_set("k", slow)
    finally:
        slow.gate.set()
    assert slow.done.wait(WAIT)
    assert wait_until(lambda: cache.stats()["load_errors"] == 1)
    loader = Loader("fresh")
    assert wait_until(lambda: cache.get_or_set("k", loader) == "fresh")


@pytest.mark.parametrize("writer", ["same instance", "another instance"])
def test_a_write_during_a_failing_load_is_served_instead_of_the_stale_value_or_the_error(
    make_cache, clock, writer
) -> None:
    """Fail-safe after an overtaken load: a set() during the load made the stale value older
    still, so the caller gets the value that set() stored, neither the stale one nor the
    loader's error."""
    cache = make_cache(stale_ttl=STALE_TTL)
    other = make_cache(stale_ttl=STALE_TTL) if writer == "another instance" else cache
    cache.get_or_set("k", Loader("old"))
    clock.advance(TTL + 1)  # expired, inside its fail-safe window
    load = Gated(error=BoomError("database down"))
    results: list[Any] = []
    thread = threading.Thread(
        target=lambda: results.append(outcome(lambda: cache.get_or_set("k", load)))
    )
    thread.start()
    try:
        assert load.entered.wait(WAIT)
        other.set("k", "new")
        if other is not cache:  # the message must reach the loading instance first: it
            # drops the old copy, or (value propagation) replaces it with the new value
            assert wait_until(lambda: cache._l1.data.get("k", ("new",))[0] == "new")
    finally:
        load.gate.set()
        thread.join(WAIT)
    assert results == ["new"]


# -- refresh-ahead -------------------------------------------------------------------------

REFRESH = 0.8
PAST_REFRESH_POINT = 8.5  # > 0.8 * ttl, < 0.9 * ttl (the shortest jittered life)


def test_read_past_the_refresh_point_returns_the_current_value_at_once(make_cache, clock) -> None:
    """A read after refresh_ahead * ttl returns the value it has without waiting for a
    reload (the reload, if any, runs in the background)."""
    cache = make_cache(refresh_ahead=REFRESH)
    cache.get_or_set("k", Loader("v1"))
    clock.advance(PAST_REFRESH_POINT)
    reload = Gated("v2")
    try:
        assert cache.get_or_set("k", reload) == "v1"
        assert not reload.done.is_set()
    finally:
        reload.gate.set()


def test_read_before_the_refresh_point_does_not_reload(make_cache, clock) -> None:
    """Before refresh_ahead * ttl, reads are plain hits: no reload is started."""
    cache = make_cache(refresh_ahead=REFRESH)
    other = make_cache(refresh_ahead=REFRESH)
    cache.get_or_set("k", Loader("v1"))
    clock.advance(5.0)
    reload = Loader("v2")
    assert other.get_or_set("k", reload) == "v1"  # an L2 hit, well before the refresh point
    assert reload.calls == 0
    assert other.stats()["refreshes"] == 0


def test_background_reload_replaces_the_value_past_the_refresh_point(
    fake_redis, namespace, clock
) -> None:
    """After the refresh point a read triggers one background reload whose value then
    replaces the old one in L1 and Redis (stats()['refreshes'])."""
    with TierCache(
        fake_redis, namespace=namespace, ttl=TTL, refresh_ahead=REFRESH, timer=clock
    ) as cache:
        cache.get_or_set("k", Loader("v1"))
        clock.advance(PAST_REFRESH_POINT)
        reload = Loader("v2")
        assert cache.get_or_set("k", reload) == "v1"

        assert wait_until(lambda: cache.stats()["refreshes"] == 1)
        assert cache.get_or_set("k", Loader("unused")) == "v2"
        assert reload.calls == 1


def test_many_concurrent_readers_past_the_refresh_point_start_one_reload(
    fake_redis, namespace, clock
) -> None:
    """Eight readers past the refresh point all get the current value, and the loader runs
    once in the background for all of them."""
    with TierCache(
        fake_redis, namespace=namespace, ttl=TTL, refresh_ahead=REFRESH, timer=clock
    ) as cache:
        cache.get_or_set("k", Loader("v1"))
        clock.advance(PAST_REFRESH_POINT)
        reload = Gated("v2")
        barrier = threading.Barrier(8)
        results: list[Any] = []

        def read() -> None:
            barrier.wait(WAIT)
            results.append(cache.get_or_set("k", reload))

        readers = [threading.Thread(target=read) for _ in range(8)]
        try:
            for reader in readers:
                reader.start()
            for reader in readers:
                reader.join(WAIT)
        finally:
            reload.gate.set()

        assert results == ["v1"] * 8
        assert wait_until(lambda: cache.stats()["refreshes"] == 1)
        assert reload.calls == 1


def test_each_refresh_point_of_a_short_ttl_key_reloads_in_the_background(
    fake_redis, namespace, clock
) -> None:
    """Two refresh points in a row (ttl 2 s, refreshed at 1.7 s and 3.35 s) both reload in
    the background."""
    with TierCache(
        fake_redis, namespace=namespace, ttl=2, refresh_ahead=REFRESH, timer=clock
    ) as cache:
        cache.get_or_set("k", Loader("v1"))
        clock.advance(1.7)  # past 0.8 * life (<= 1.6 s), before the shortest life (1.8 s)
        assert cache.get_or_set("k", Loader("v2")) == "v1"
        assert wait_until(lambda: cache.stats()["refreshes"] == 1)
        clock.advance(1.65)  # past the second refresh point (<= 3.3 s), before expiry (>= 3.5 s)

        assert cache.get_or_set("k", Loader("v3")) == "v2"

        assert wait_until(lambda: cache.stats()["refreshes"] == 2, XFAIL_WAIT)
        assert cache.get_or_set("k", Loader("unused")) == "v3"


# -- none_ttl --------------------------------------------------------------------------------


def test_loaded_none_lives_none_ttl_and_other_values_live_ttl(make_cache, clock) -> None:
    """A loaded None ("not found") is cached for none_ttl; other values for the full ttl."""
    cache = make_cache(ttl=100, none_ttl=5)
    none_loader = Loader(None)
    value_loader = Loader("v")
    assert cache.get_or_set("absent", none_loader) is None
    assert cache.get_or_set("present", value_loader) == "v"

    clock.advance(4)
    assert cache.get_or_set("absent", none_loader) is None
    assert cache.get("absent", MISSING) is None  # a cached None, not a miss
    assert none_loader.calls == 1

    clock.advance(2)
    assert cache.get("absent", MISSING) is MISSING
    assert cache.get_or_set("absent", none_loader) is None
    assert none_loader.calls == 2
    assert cache.get_or_set("present", value_loader) == "v"
    assert value_loader.calls == 1


def test_without_none_ttl_a_loaded_none_lives_ttl(make_cache, clock) -> None:
    """none_ttl unset: a loaded None is an ordinary value with the ordinary ttl."""
    cache = make_cache(ttl=100)
    loader = Loader(None)
    cache.get_or_set("absent", loader)
    clock.advance(50)
    assert cache.get_or_set("absent", loader) is None
    assert loader.calls == 1


# -- the circuit breaker in front of a fakeredis that goes down and comes back ----------------


def test_breaker_opens_after_n_failures_and_skips_redis_while_the_loader_serves(
    make_fake_cache, fake_server
) -> None:
    """N consecutive Redis failures open the breaker; after that Redis is skipped (counted
    in l2_skipped, not l2_errors) and every caller still gets the loader's value."""
    cache = make_fake_cache(breaker=Breaker(failures=3, reset_after=5))
    assert cache.get_or_set("warm", Loader("w")) == "w"
    # The listener's start-up probe is a Redis call too: let it finish before Redis goes
    # away, or its failure would count towards the breaker.
    assert wait_until(lambda: cache.stats()["bus_probe_ok"] == 1)
    fake_server.connected = False

    for i in range(3):
        assert cache.get_or_set(f"k{i}", Loader(i)) == i
    stats = cache.stats()
    assert stats["breaker_state"] == 1
    assert stats["breaker_opens"] == 1
    assert stats["l2_errors"] == 3

    for i in range(3, 8):
        assert cache.get_or_set(f"k{i}", Loader(i)) == i
    assert cache.get("absent", MISSING) is MISSING
    stats = cache.stats()
    assert stats["l2_skipped"] >= 6
    assert stats["l2_errors"] == 3
    assert stats["breaker_opens"] == 1


def test_breaker_probe_after_reset_after_closes_it_once_redis_is_back(
    make_fake_cache, fake_server, clock, namespace
) -> None:
    """While Redis is still down the probe fails and re-opens the breaker; once Redis is
    back, the first call after reset_after probes it, closes the breaker and writes L2."""
    cache = make_fake_cache(breaker=Breaker(failures=3, reset_after=5))
    cache.get_or_set("warm", Loader("w"))
    fake_server.connected = False
    for i in range(3):
        cache.get_or_set(f"k{i}", Loader(i))
    assert cache.stats()["breaker_state"] == 1

    clock.advance(5)
    assert cache.get_or_set("down", Loader("d")) == "d"  # the probe, against a down Redis
    assert cache.stats()["breaker_opens"] == 2
    assert cache.stats()["breaker_state"] == 1

    fake_server.connected = True
    assert cache.get_or_set("still-open", Loader("s")) == "s"  # skipped: cooldown not over
    clock.advance(5)
    assert cache.get_or_set("back", Loader("b")) == "b"

    assert cache.stats()["breaker_state"] == 0
    raw = fakeredis.FakeRedis(server=fake_server)
    try:
        assert raw.exists(f"{namespace}:back".encode()) == 1
        assert raw.exists(f"{namespace}:still-open".encode()) == 0
    finally:
        raw.close()


def test_without_a_breaker_every_call_tries_redis(make_fake_cache, fake_server) -> None:
    """breaker=None: nothing is skipped, every call pays its own Redis error (and still
    gets the loader's value)."""
    cache = make_fake_cache(breaker=None)
    fake_server.connected = False
    for i in range(10):
        assert cache.get_or_set(f"k{i}", Loader(i)) == i
    stats = cache.stats()
    assert stats["l2_errors"] >= 10
    assert stats["l2_skipped"] == 0
    assert stats["breaker_opens"] == 0


def test_values_held_during_an_outage_are_bounded_and_dropped_on_recovery(
    make_cache, clock
) -> None:
    """A database outage over many keys holds stale values for at most l1_maxsize keys, shown
    in stats()["l1_held"]; once the loader works again, fresh loads drop them."""
    cache = make_cache(stale_ttl=STALE_TTL, l1_maxsize=20, fail_safe_throttle=5.0)
    keys = [f"k{i}" for i in range(100)]
    for key in keys:
        cache.get_or_set(key, Loader(f"old {key}"))
    clock.advance(TTL + 1)
    failing = Loader(error=BoomError("db down"))
    served = [outcome(lambda key=key: cache.get_or_set(key, failing)) for key in keys]
    assert sum(isinstance(value, str) and value.startswith("old") for value in served) >= 1
    stats = cache.stats()
    assert 1 <= stats["l1_held"] <= 20
    assert stats["l1_size"] + stats["l1_held"] <= 40  # entries and held keys share the bound

    clock.advance(5.0 + 1)  # the throttle is over: the next calls load again, and succeed
    for key in keys:
        assert cache.get_or_set(key, Loader(f"new {key}")) == f"new {key}"
    assert cache.stats()["l1_held"] == 0
