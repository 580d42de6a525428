"""add / incr / decr / touch / has_key: the read-modify-write operations, on fakeredis and on a
real redis-server. Each is atomic in Redis and keeps the guarantees of ``set``: the writer
reads its own write, and every other instance drops its copy through the bus.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import fakeredis
import pytest
import redis

from tests.support import MISSING, WAIT, CacheFactory, FakeClock, run_threads, subscribed, wait_for
from tiercache import TierCache
from tiercache.errors import L2Error


@pytest.fixture
def make_cache(
    redis_client: redis.Redis, namespace: str, clock: FakeClock
) -> Iterator[Callable[..., TierCache]]:
    with CacheFactory(redis_client, namespace=namespace, timer=clock) as make:
        yield make


@pytest.fixture
def l1_only(clock: FakeClock) -> Iterator[TierCache]:
    with TierCache(None, timer=clock) as cache:
        yield cache


# -- add -------------------------------------------------------------------------------------


def test_add_stores_only_when_absent(make_cache) -> None:
    """add() stores a new key and returns True; on a present key it returns False and keeps
    the old value."""
    cache = make_cache()
    assert cache.add("k", 1) is True
    assert cache.add("k", 2) is False
    assert cache.get("k") == 1
    assert make_cache().get("k") == 1  # from L2


def test_add_over_an_expired_entry_succeeds(make_cache, clock: FakeClock) -> None:
    """An entry past its ttl (even one kept for fail-safe) is absent for add()."""
    cache = make_cache(stale_ttl=600)
    cache.set("k", "old", ttl=10)
    clock.advance(11)
    assert cache.add("k", "new", ttl=10) is True
    assert cache.get("k") == "new"


def test_add_after_clear_succeeds(make_cache) -> None:
    """An entry made stale by clear() is absent for add()."""
    cache = make_cache()
    cache.set("k", "old")
    cache.clear()
    assert cache.add("k", "new") is True
    assert make_cache().get("k") == "new"


def test_add_drops_other_instances_copies(make_cache) -> None:
    """A successful add() is announced: an instance holding an older (stale) copy drops it."""
    writer, reader = make_cache(), make_cache()
    subscribed(reader)
    subscribed(writer)
    writer.set("k", "old")
    assert reader.get("k") == "old"
    writer.delete("k")
    wait_for(lambda: reader.get("k", MISSING) is MISSING, WAIT, "the delete to propagate")
    assert writer.add("k", "new") is True
    assert reader.get("k") == "new"


def test_concurrent_adds_have_exactly_one_winner(make_cache) -> None:
    """Of many add() calls racing on one key from separate instances, exactly one wins."""
    caches = [make_cache() for _ in range(8)]
    barrier = threading.Barrier(len(caches), timeout=WAIT)
    results: list[bool] = []
    lock = threading.Lock()

    def contend(cache: TierCache, value: int) -> None:
        barrier.wait()
        won = cache.add("race", value)
        with lock:
            results.append(won)

    run_threads([lambda c=c, i=i: contend(c, i) for i, c in enumerate(caches)])
    assert sorted(results) == [False] * 7 + [True]
    values = {cache.get("race") for cache in caches}
    assert len(values) == 1


def test_add_refuses_an_unencodable_value_before_io(make_cache) -> None:
    """add() validates the value like set() does."""
    cache = make_cache()
    with pytest.raises(TypeError):
        cache.add("k", object())
    assert cache.get("k", MISSING) is MISSING


def test_add_while_redis_is_down_answers_false(down_cache: TierCache) -> None:
    """Redis trouble does not raise from add(): nothing is known to be stored."""
    assert down_cache.add("k", 1) is False
    assert down_cache.stats()["l2_write_errors"] == 1


# -- incr / decr -----------------------------------------------------------------------------


def test_incr_and_decr_return_the_new_value_and_get_reads_it(make_cache) -> None:
    """incr/decr return the new value; get() reads it in this and every other instance."""
    cache, other = make_cache(), make_cache()
    cache.set("n", 10)
    assert cache.incr("n") == 11
    assert cache.incr("n", 5) == 16
    assert cache.decr("n", 3) == 13
    assert cache.get("n") == 13
    assert other.get("n") == 13


def test_incr_drops_other_instances_copies(make_cache) -> None:
    """After incr(), an instance that held the old value in L1 reads the new one."""
    writer, reader = make_cache(), make_cache()
    subscribed(reader)
    subscribed(writer)
    writer.set("n", 1)
    assert reader.get("n") == 1  # now in reader's L1
    writer.incr("n")
    wait_for(lambda: reader.get("n") == 2, WAIT, "the incr to propagate")


def test_incr_of_a_missing_key_raises_key_error(make_cache) -> None:
    """incr() of an absent key raises KeyError and stores nothing."""
    cache = make_cache()
    with pytest.raises(KeyError, match="no such key"):
        cache.incr("missing")
    assert cache.get("missing", MISSING) is MISSING


def test_incr_of_a_non_integer_raises_type_error(make_cache) -> None:
    """incr() of a str, a float or a bool value raises TypeError and leaves it alone."""
    cache = make_cache()
    for value in ("1", 1.5, True):
        cache.set("v", value)
        with pytest.raises(TypeError, match="not an int"):
            cache.incr("v")
        assert cache.get("v") == value
    cache.set("n", 1)
    with pytest.raises(TypeError, match="delta"):
        cache.incr("n", "2")  # type: ignore[arg-type]


def test_incr_keeps_the_expiry(make_cache, clock: FakeClock) -> None:
    """The incremented entry expires when the original would have."""
    cache = make_cache()
    cache.set("n", 1, ttl=10)
    clock.advance(5)
    assert cache.incr("n") == 2
    clock.advance(5.5)
    assert make_cache().get("n", MISSING) is MISSING


def test_concurrent_incrs_lose_no_update(make_cache) -> None:
    """Many threads on separate instances incrementing one counter: no increment is lost."""
    caches = [make_cache() for _ in range(4)]
    caches[0].set("count", 0)
    per_thread = 25

    def bump(cache: TierCache) -> None:
        for _ in range(per_thread):
            cache.incr("count")

    run_threads([lambda c=c: bump(c) for c in caches])
    assert make_cache().get("count") == len(caches) * per_thread


def test_incr_while_redis_is_down_raises_l2_error(down_cache: TierCache) -> None:
    """With Redis away there is no value to answer with: incr() raises L2Error."""
    with pytest.raises(L2Error):
        down_cache.incr("n")


# -- touch / has_key -------------------------------------------------------------------------


def test_touch_extends_a_live_entry(make_cache, clock: FakeClock) -> None:
    """touch() gives a live entry a new ttl from now; a missing key answers False."""
    cache = make_cache()
    cache.set("k", "v", ttl=10)
    clock.advance(8)
    assert cache.touch("k", 100) is True
    clock.advance(50)
    assert cache.get("k") == "v"
    assert make_cache().get("k") == "v"
    assert cache.touch("missing", 10) is False


def test_touch_can_shorten_and_other_instances_see_it(make_cache, clock: FakeClock) -> None:
    """A shorter ttl from touch() reaches an instance that held the entry in L1."""
    writer, reader = make_cache(), make_cache()
    subscribed(reader)
    subscribed(writer)
    writer.set("k", "v", ttl=1000)
    assert reader.get("k") == "v"
    assert writer.touch("k", 1) is True
    clock.advance(2)
    wait_for(lambda: reader.get("k", MISSING) is MISSING, WAIT, "the touch to propagate")


def test_has_key_counts_a_cached_none(make_cache) -> None:
    """has_key() is True for a cached None, False for a missing key."""
    cache = make_cache()
    cache.set("none", None)
    assert cache.has_key("none") is True
    assert cache.has_key("missing") is False


# -- L1 only ---------------------------------------------------------------------------------


def test_l1_only_cache_has_the_same_operations(l1_only: TierCache, clock: FakeClock) -> None:
    """Without Redis, add/incr/touch work on L1 alone."""
    assert l1_only.add("k", 1, ttl=10) is True
    assert l1_only.add("k", 2) is False
    assert l1_only.incr("k", 4) == 5
    clock.advance(9)
    assert l1_only.touch("k", 10) is True
    clock.advance(5)
    assert l1_only.get("k") == 5
    with pytest.raises(KeyError):
        l1_only.incr("missing")


@pytest.fixture
def down_cache(namespace: str, clock: FakeClock) -> Iterator[TierCache]:
    server = fakeredis.FakeServer()
    server.connected = False
    client = fakeredis.FakeRedis(server=server)
    with TierCache(client, namespace=namespace, timer=clock) as cache:
        yield cache
    client.close()
