"""L1 bounded by bytes: entries weigh their encoded size, held values count, big values stay in
L2 only, and stats() shows the weight."""

from __future__ import annotations

import random
from collections.abc import Iterator

import fakeredis
import pytest

from tests.support import CacheFactory, FakeClock, unique_namespace
from tiercache import TierCache
from tiercache.l1 import LocalTier

MIB = 1024 * 1024


@pytest.fixture
def tier() -> LocalTier:
    return LocalTier(maxsize=100, timer=FakeClock(), max_bytes=1000, max_entry_bytes=400)


@pytest.fixture
def make_cache(fake_redis: fakeredis.FakeRedis) -> Iterator[CacheFactory]:
    with CacheFactory(fake_redis, namespace=unique_namespace("bytes")) as make:
        yield make


def test_fills_evict_least_recently_used_entries_past_the_byte_bound(tier: LocalTier) -> None:
    """The weights add up to at most max_bytes; the oldest entries go first."""
    for key in "abcd":
        tier.fill(key, key, ttl=100, size=300)
    assert set(tier.data) == {"b", "c", "d"}
    assert tier.bytes == 900
    tier.fill("e", "e", ttl=100, size=250)
    assert set(tier.data) == {"c", "d", "e"}
    assert tier.bytes == 850


def test_the_entry_count_bound_still_applies() -> None:
    """l1_maxsize bounds the number of entries whatever their weight."""
    tier = LocalTier(maxsize=2, timer=FakeClock(), max_bytes=10_000)
    for key in "abc":
        tier.fill(key, key, ttl=100, size=1)
    assert set(tier.data) == {"b", "c"}
    assert tier.bytes == 2


def test_refilling_a_key_replaces_its_weight(tier: LocalTier) -> None:
    """A new value of a key weighs its own size, not the sum of both."""
    tier.fill("a", 1, ttl=100, size=300)
    tier.fill("a", 2, ttl=100, size=100)
    assert tier.bytes == 100
    tier.invalidate(["a"])
    assert tier.bytes == 0


def test_a_value_over_the_entry_share_is_not_kept_and_drops_the_older_one(
    tier: LocalTier,
) -> None:
    """Too big for L1: not stored, and the key's older value is no longer served."""
    tier.fill("a", "small", ttl=100, size=10)
    assert not tier.fill("a", "big", ttl=100, size=401)
    assert tier.get("a") is None
    assert tier.bytes == 0


def test_an_overtaken_too_big_fill_leaves_the_newer_value(tier: LocalTier) -> None:
    """A load whose ticket an invalidation overtook does not drop the value written since."""
    with tier.ticket("a") as ticket:
        tier.fill("a", "newer", ttl=100, size=10)  # a set() meanwhile
        assert not tier.fill("a", "big", ttl=100, ticket=ticket, size=401)
    entry = tier.get("a")
    assert entry is not None
    assert entry[0] == "newer"


def test_held_values_count_against_the_byte_bound(tier: LocalTier) -> None:
    """A value held by the fail-safe weighs like an entry and is evicted like one."""
    with tier.ticket("held") as ticket:
        tier.hold("held", "stale", 60, ticket, (), size=350)
    assert tier.bytes == 350
    tier.fill("a", 1, ttl=100, size=400)
    tier.fill("b", 2, ttl=100, size=400)
    assert "held" not in tier.held
    assert tier.bytes == 800


def test_flush_and_sweep_give_the_bytes_back(tier: LocalTier) -> None:
    """After a flush nothing is weighed."""
    tier.fill("a", 1, ttl=100, size=300)
    tier.flush()
    assert tier.bytes == 0


def test_a_mix_of_small_and_1mb_values_never_holds_more_than_l1_max_bytes(
    make_cache: CacheFactory,
) -> None:
    """Writes, L2 hits and loads of small and 1 MB values: L1's weight never passes the bound,
    and the weight is the encoded size of what L1 holds."""
    max_bytes = 8 * MIB
    writer = make_cache(l1_max_bytes=max_bytes, compress_threshold=2**30)
    reader = make_cache(l1_max_bytes=max_bytes, compress_threshold=2**30)
    rng = random.Random(13)
    for i in range(120):
        size = 1_000_000 if rng.random() < 0.3 else rng.randrange(1, 2000)
        key = f"k{rng.randrange(40)}"
        value = bytes(size)
        if i % 3 == 0:
            writer.set(key, value)
            reader.get(key)  # an L2 hit fills the reader's L1
        else:
            reader.get_or_set(f"loaded{i}", lambda value=value: value)
        for cache in (writer, reader):
            stats = cache.stats()
            assert stats["l1_bytes"] <= stats["l1_max_bytes"] == max_bytes
    assert reader.stats()["l1_bytes"] > 4 * MIB  # the bound was reached, not avoided


def test_a_value_over_the_share_of_l1_stays_in_l2_only(make_cache: CacheFactory) -> None:
    """Bigger than l1_entry_share of l1_max_bytes: read back from Redis, never kept in L1."""
    cache = make_cache(l1_max_bytes=MIB, l1_entry_share=0.125, compress_threshold=2**30)
    cache.set("big", bytes(200_000))
    cache.set("small", bytes(1000))
    assert cache.get("big") == bytes(200_000)
    assert cache.get_or_set("big", lambda: b"not called") == bytes(200_000)
    assert "big" not in cache._l1.data
    assert "small" in cache._l1.data
    stats = cache.stats()
    assert stats["l2_hits"] == 2
    assert 1000 <= stats["l1_bytes"] < 1100


def test_l1_is_bounded_by_64_mib_by_default() -> None:
    """The default bound: 64 MiB, and values over 8 MiB stay out of L1."""
    with TierCache(None) as cache:
        assert cache.stats()["l1_max_bytes"] == 64 * MIB
        assert cache._l1.max_entry_bytes == 8 * MIB


def test_l1_max_bytes_none_bounds_entries_only() -> None:
    """l1_max_bytes=None: no byte bound (a huge one), the count bound alone."""
    with TierCache(None, l1_max_bytes=None, l1_maxsize=3) as cache:
        for key in "abcd":
            cache.set(key, bytes(10 * MIB))
        assert len(cache._l1) == 3


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"l1_max_bytes": 0}, ValueError),
        ({"l1_max_bytes": 1.5}, TypeError),
        ({"l1_entry_share": 0}, ValueError),
        ({"l1_entry_share": 1.5}, ValueError),
        ({"l1_entry_share": "1/8"}, TypeError),
    ],
)
def test_bad_byte_bounds_are_refused(options: dict[str, object], error: type[Exception]) -> None:
    """The bounds are checked at construction, naming the option."""
    with pytest.raises(error, match=next(iter(options))):
        TierCache(None, **options)  # type: ignore[arg-type]
