"""Value propagation across instances (``propagate_values``), on fakeredis and on a real
redis-server: a set hands the other instances its value; guarantees 1-3 still hold."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator

import pytest
import redis

from tests.support import WAIT, CacheFactory, FakeClock, Loader, subscribed, wait_until
from tiercache import TierCache

LIMIT = 4096


@pytest.fixture
def make_cache(
    redis_client: redis.Redis, namespace: str, clock: FakeClock
) -> Iterator[Callable[..., TierCache]]:
    """Caches with value propagation on (invalidating only on a cluster, which refuses
    it: the READY tests below hold there too), each subscribed before use."""
    limit = 0 if isinstance(redis_client, redis.RedisCluster) else LIMIT
    with CacheFactory(
        redis_client, settle=True, namespace=namespace, timer=clock, propagate_values=limit
    ) as make:
        yield make


# Values are refused on a cluster (test_values_are_refused_on_a_cluster): the tests of what
# they do run on fakeredis and the real server only.
ONE_SERVER = pytest.mark.parametrize(
    "redis_client", ["fake", pytest.param("real", marks=pytest.mark.redis)], indirect=True
)


@ONE_SERVER
def test_a_set_puts_the_new_value_in_the_other_instances_l1(make_cache) -> None:
    """After A.set, B serves the new value from its own L1: no Redis read, no load."""
    a, b = make_cache(), make_cache()
    subscribed(a, probe=True)
    subscribed(b, probe=True)
    assert b.get_or_set("k", Loader("v1")) == "v1"
    a.set("k", {"v": 2})
    assert wait_until(lambda: b.stats()["values_received"] == 1)
    hits = b.stats()["l2_hits"]
    assert b.get_or_set("k", Loader("never")) == {"v": 2}
    assert b.stats()["l2_hits"] == hits
    assert b.stats()["loads"] == 1


@ONE_SERVER
def test_a_value_over_the_limit_is_a_plain_invalidation(make_cache) -> None:
    """A value larger than propagate_values drops B's copy; B reads the new one from Redis."""
    a, b = make_cache(), make_cache()
    subscribed(a, probe=True)
    subscribed(b, probe=True)
    b.get_or_set("k", Loader("small"))
    big = os.urandom(2 * LIMIT)  # incompressible: the limit is on the bytes as stored
    a.set("k", big)
    assert wait_until(lambda: b.stats()["l1_size"] == 0)
    assert b.get("k") == big
    assert b.stats()["values_received"] == 0


@ONE_SERVER
def test_a_receivers_load_in_flight_does_not_overwrite_a_propagated_value(make_cache) -> None:
    """B starts loading k (slow); A sets k; B's older load ends after the value arrived: B
    keeps A's value (guarantee 3), in L1 and in Redis."""
    a, b = make_cache(), make_cache()
    subscribed(a, probe=True)
    subscribed(b, probe=True)
    entered, release = threading.Event(), threading.Event()

    def slow() -> str:
        entered.set()
        release.wait(WAIT)
        return "from B's old load"

    worker = threading.Thread(target=lambda: b.get_or_set("k", slow), daemon=True)
    worker.start()
    assert entered.wait(WAIT)
    a.set("k", "from A")
    assert wait_until(lambda: b.stats()["values_received"] == 1)
    release.set()
    worker.join(WAIT)
    assert b.get("k") == "from A"
    assert a.get("k") == "from A"


# -- lease waiters woken by the holder ---------------------------------------------------------


def test_a_lease_waiter_is_woken_by_the_holders_ready_message(make_cache) -> None:
    """B finds A loading k (A holds the lease) and waits; A's write tells B at once (READY,
    sent because B registered, in the same atomic step as the write), and B serves A's
    value without loading; with values on, the READY carries it: no Redis read either."""
    a, b = make_cache(), make_cache()
    subscribed(a, probe=True)
    subscribed(b, probe=True)
    entered, release = threading.Event(), threading.Event()

    def slow() -> str:
        entered.set()
        release.wait(WAIT)
        return "from A"

    loader_b = Loader("from B")
    results: list[object] = []
    worker_a = threading.Thread(target=lambda: a.get_or_set("k", slow), daemon=True)
    worker_a.start()
    assert entered.wait(WAIT)
    worker_b = threading.Thread(target=lambda: results.append(b.get_or_set("k", loader_b)))
    worker_b.start()
    assert wait_until(lambda: b.stats()["lease_waits"] == 1)
    before = b.stats()
    release.set()
    worker_a.join(WAIT)
    worker_b.join(WAIT)
    assert results == ["from A"]
    assert loader_b.calls == 0
    after = b.stats()
    assert after["lease_wakeups"] == 1
    if b.settings.propagate_values:
        assert after["values_received"] == before["values_received"] + 1
        assert after["l2_hits"] == before["l2_hits"]  # the value came with the READY


def test_a_failed_load_wakes_its_waiters_who_then_load(make_cache) -> None:
    """A's loader raises: A gives the lease back and tells B, who loads at once."""
    a, b = make_cache(), make_cache()
    subscribed(a, probe=True)
    subscribed(b, probe=True)
    entered, release = threading.Event(), threading.Event()

    def failing() -> str:
        entered.set()
        release.wait(WAIT)
        raise RuntimeError("db down")

    results: list[object] = []
    worker_a = threading.Thread(target=lambda: _swallow(lambda: a.get_or_set("k", failing)))
    worker_a.start()
    assert entered.wait(WAIT)
    worker_b = threading.Thread(target=lambda: results.append(b.get_or_set("k", Loader("B"))))
    worker_b.start()
    assert wait_until(lambda: b.stats()["lease_waits"] == 1)
    release.set()
    worker_a.join(WAIT)
    worker_b.join(WAIT)
    assert results == ["B"]
    assert b.stats()["lease_wakeups"] == 1


def _swallow(call: Callable[[], object]) -> None:
    with contextlib.suppress(RuntimeError):
        call()


@pytest.mark.cluster
def test_values_are_refused_on_a_cluster(cluster_redis: redis.RedisCluster, namespace: str) -> None:
    """On Redis Cluster a write and its message cannot be one atomic step (the key and the
    bus live on different nodes), so a receiver could keep a value another write already
    replaced: values are off by default there, and asking for them is a ValueError."""
    with TierCache(cluster_redis, namespace=namespace) as cache:
        assert cache.settings.propagate_values == 0
    with pytest.raises(ValueError, match="propagate_values needs a single Redis server"):
        TierCache(cluster_redis, namespace=namespace, propagate_values=LIMIT)
