"""Probabilistic early expiration (XFetch): the decision, the load duration in the entry, and the
background reload it starts."""

from __future__ import annotations

import math
from collections.abc import Iterator

import fakeredis
import pytest

from tests.support import CacheFactory, FakeClock, wait_until
from tiercache import TierCache
from tiercache.early import EarlyExpiration
from tiercache.entry import Entry

TTL = 100.0
LOAD_TOOK = 2.0  # seconds on the fake clock


@pytest.fixture
def make_cache(
    fake_redis: fakeredis.FakeRedis, namespace: str, clock: FakeClock
) -> Iterator[CacheFactory]:
    with CacheFactory(fake_redis, namespace=namespace, timer=clock, ttl=TTL, l1_ttl=1.0) as make:
        yield make


class SlowLoader:
    """Returns ``value`` after advancing the fake clock by LOAD_TOOK; counts its calls."""

    def __init__(self, clock: FakeClock, value: str) -> None:
        self.clock = clock
        self.value = value
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        self.clock.advance(LOAD_TOOK)
        return self.value


def stored(cache: TierCache, fake_redis: fakeredis.FakeRedis, key: str) -> Entry:
    entry = cache._loads.codec.decode(fake_redis.get(f"{cache.namespace}:{key}"))
    assert isinstance(entry, Entry)
    return entry


def test_the_decision_follows_xfetch() -> None:
    """Due when now - delta * beta * log(draw) >= expiry: at delta before expiry with beta 1,
    a draw under 1/e reloads and one over it does not; no delta, never."""
    now = [100.0]
    draw = [0.0]
    early = EarlyExpiration(1.0, None, None, lambda: now[0], lambda: draw[0])  # type: ignore[arg-type]
    draw[0] = 1 / math.e - 1e-9
    assert early.due(expires_at=102.0, delta=2.0)
    draw[0] = 1 / math.e + 1e-9
    assert not early.due(expires_at=102.0, delta=2.0)
    assert not early.due(expires_at=102.0, delta=0.0)
    draw[0] = 0.0  # log(0): the smallest draw instead, never an error
    assert early.due(expires_at=102.0, delta=2.0)


def test_the_load_duration_is_stored_with_the_value(
    make_cache: CacheFactory, fake_redis: fakeredis.FakeRedis, clock: FakeClock
) -> None:
    """A loaded value carries how long its load took; a set value carries 0."""
    cache = make_cache()
    cache.get_or_set("loaded", SlowLoader(clock, "v"))
    cache.set("written", "v")
    assert stored(cache, fake_redis, "loaded").delta == LOAD_TOOK
    assert stored(cache, fake_redis, "written").delta == 0.0


def test_a_read_near_expiry_reloads_early_in_the_background(
    make_cache: CacheFactory, fake_redis: fakeredis.FakeRedis, clock: FakeClock
) -> None:
    """An L2 read close to expiry with a low draw starts one background reload; the caller
    gets the current value at once; a high draw does nothing."""
    cache = make_cache(early_expiration=1.0)
    assert cache._loads.early is not None
    draws = iter([0.9, 0.01])
    cache._loads.early._random = lambda: next(draws)
    cache.get_or_set("k", SlowLoader(clock, "v1"))
    expiry = stored(cache, fake_redis, "k").expires_at
    clock.advance(expiry - clock() - 3.0)  # 3 s (1.5 loads) before expiry; L1 copy expired
    reload = SlowLoader(clock, "v2")
    assert cache.get_or_set("k", reload) == "v1"  # draw 0.9: 2 * -log(0.9) = 0.2 s < 3 s
    assert cache.stats()["early_refreshes"] == 0
    clock.advance(1.5)  # past the L1 copy again
    assert cache.get_or_set("k", reload) == "v1"  # draw 0.01: 2 * -log(0.01) = 9.2 s >= 1.5 s
    assert cache.stats()["early_refreshes"] == 1
    assert wait_until(lambda: cache.stats()["refreshes"] == 1)
    assert reload.calls == 1
    assert stored(cache, fake_redis, "k").value == "v2"


def test_values_written_with_set_are_never_reloaded_early(
    make_cache: CacheFactory, fake_redis: fakeredis.FakeRedis, clock: FakeClock
) -> None:
    """No load, no duration: set values expire on their ttl as before."""
    cache = make_cache(early_expiration=10.0)
    cache._loads.early._random = lambda: 1e-300  # the most eager draw
    cache.set("k", "v")
    clock.advance(stored(cache, fake_redis, "k").expires_at - clock() - 0.5)
    assert cache.get_or_set("k", SlowLoader(clock, "unused")) == "v"
    assert cache.stats()["early_refreshes"] == 0


def test_early_expiration_is_off_by_default_and_needs_redis() -> None:
    """Without the option, or without Redis, there is no early reload."""
    with TierCache(fakeredis.FakeRedis()) as cache:
        assert cache._loads.early is None
    with TierCache(None, early_expiration=1.0) as local:
        assert local._loads.early is None


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-1, ValueError), ("1", TypeError)])
def test_a_bad_beta_is_refused(value: object, error: type[Exception]) -> None:
    """early_expiration must be a positive number."""
    with pytest.raises(error, match="early_expiration"):
        TierCache(None, early_expiration=value)  # type: ignore[arg-type]
