"""The Django backend against the whole ``BaseCache`` surface, with Django's semantics
(those of its built-in RedisCache where they overlap), on fakeredis and a real redis-server.

Each backend gets a namespace of its own and a fake clock (``OPTIONS["timer"]``) so expiry is
tested without sleeping.
"""

from __future__ import annotations

import asyncio
import datetime
import pickle
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis
from django.core.cache import CacheKeyWarning
from django.core.cache.backends.base import DEFAULT_TIMEOUT

from tests.support import WAIT, FakeClock, run_threads, subscribed, unique_namespace, wait_for
from tiercache import TierCache
from tiercache.contrib.django import TierCacheBackend
from tiercache.contrib.signing import SignedPickleSerializer, derive_key
from tiercache.options import MAX_DURATION

from .conftest import SECRET_KEY

Make = Callable[..., TierCacheBackend]


class Unpicklable:
    def __reduce__(self) -> Any:
        raise pickle.PicklingError("no")


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    __hash__ = None  # type: ignore[assignment]


@pytest.fixture
def make(redis_client: redis.Redis, clock: FakeClock) -> Iterator[Make]:
    """Backends on the test's Redis, all on one namespace and one fake clock."""
    namespace = unique_namespace("dj")
    tiers: list[TierCache] = []

    def build(**params: Any) -> TierCacheBackend:
        backend = TierCacheBackend(None, params)
        tier = TierCache(
            redis_client,
            namespace=namespace,
            timer=clock,
            max_key_length=64 * 1024,
            serializer=SignedPickleSerializer(derive_key(SECRET_KEY, "django-cache")),
        )
        tiers.append(tier)
        backend._tier = tier
        return backend

    yield build
    for tier in tiers:
        tier.close()


@pytest.fixture
def cache(make: Make) -> TierCacheBackend:
    return make()


# -- get / set / add / delete ----------------------------------------------------------------


def test_simple_get_set_and_default(cache: TierCacheBackend) -> None:
    """set then get; a missing key answers the default (None unless given)."""
    cache.set("key", "value")
    assert cache.get("key") == "value"
    assert cache.get("missing") is None
    assert cache.get("missing", "default") == "default"


def test_none_is_a_value(cache: TierCacheBackend) -> None:
    """A cached None is returned as None, not the default, and has_key sees it."""
    cache.set("none", None)
    assert cache.get("none", "default") is None
    assert cache.has_key("none")
    assert "none" in cache


def test_any_picklable_value_round_trips(make: Make) -> None:
    """Django's contract is any picklable object; another backend object reads it from Redis."""
    values = {
        "str": "hello",
        "unicode": "Iñtërnâtiônàlizætiøn ✓ 日本",
        "int": 42,
        "big": 2**100,
        "float": 1.5,
        "decimal": Decimal("1.10"),
        "date": datetime.date(2024, 1, 2),
        "aware": datetime.datetime(2024, 1, 2, 3, 4, tzinfo=datetime.timezone.utc),
        "list": [1, [2, (3,)]],
        "set": {1, 2},
        "object": Point(1, 2),
        "bytes": b"\x00\xff",
        "bool": False,
    }
    writer, reader = make(), make()
    for key, value in values.items():
        writer.set(key, value)
    for key, value in values.items():
        got = reader.get(key)
        assert got == value, key
        assert type(got) is type(value), key


def test_unpicklable_value_raises_type_error(cache: TierCacheBackend) -> None:
    """A value pickle refuses is a TypeError at set (SerializationError), nothing stored."""
    with pytest.raises(TypeError):
        cache.set("bad", Unpicklable())
    assert cache.get("bad", "missing") == "missing"


def test_add_only_when_absent(cache: TierCacheBackend) -> None:
    """add() stores only an absent key and says whether it did."""
    assert cache.add("addkey", "value") is True
    assert cache.add("addkey", "newvalue") is False
    assert cache.get("addkey") == "value"


def test_add_with_zero_timeout_stores_nothing(cache: TierCacheBackend) -> None:
    """As RedisCache: add(timeout=0) answers True for an absent key and stores nothing."""
    assert cache.add("zero", "v", timeout=0) is True
    assert cache.get("zero") is None
    cache.set("present", 1)
    assert cache.add("present", "v", timeout=0) is False


def test_delete_returns_whether_the_key_was_there(cache: TierCacheBackend) -> None:
    """delete() is True for a present key, False for a missing one."""
    cache.set("k", 1)
    assert cache.delete("k") is True
    assert cache.get("k") is None
    assert cache.delete("k") is False


def test_get_or_set(cache: TierCacheBackend) -> None:
    """get_or_set stores the default (or its callable's result) once, then returns the value."""
    assert cache.get_or_set("projector", 42) == 42
    assert cache.get_or_set("projector", 43) == 42
    assert cache.get_or_set("callable", lambda: "computed") == "computed"
    assert cache.get_or_set("none_default", None) is None
    assert cache.get_or_set("version", "v2", version=2) == "v2"
    assert cache.get("version", version=2) == "v2"
    assert cache.get("version") is None


def test_get_many_set_many_delete_many(cache: TierCacheBackend) -> None:
    """The *_many calls map original keys; set_many reports no failed key."""
    assert cache.set_many({"a": 1, "b": 2, "c": 3}) == []
    assert cache.get_many(["a", "c", "missing"]) == {"a": 1, "c": 3}
    assert cache.get_many([]) == {}
    cache.delete_many(["a", "b"])
    assert cache.get_many(["a", "b", "c"]) == {"c": 3}
    assert cache.set_many({}) == []


def test_clear_empties_the_cache(make: Make) -> None:
    """clear() empties the cache for every backend object on the namespace."""
    first, second = make(), make()
    subscribed(first.tier)
    subscribed(second.tier)
    first.set_many({"a": 1, "b": 2})
    assert second.get("a") == 1
    first.clear()
    assert first.get("a") is None
    wait_for(lambda: second.get_many(["a", "b"]) == {}, WAIT, "the clear to propagate")


# -- timeouts --------------------------------------------------------------------------------


def test_timeout_expires_entries(cache: TierCacheBackend, clock: FakeClock) -> None:
    """A value set with timeout=10 is gone after 10 seconds."""
    cache.set("expire", "v", timeout=10)
    clock.advance(9)
    assert cache.get("expire") == "v"
    clock.advance(2)
    assert cache.get("expire") is None
    assert not cache.has_key("expire")


def test_default_timeout_is_the_backends(make: Make, clock: FakeClock) -> None:
    """TIMEOUT in the settings is the default; DEFAULT_TIMEOUT selects it explicitly."""
    cache = make(TIMEOUT=20)
    cache.set("a", 1)
    cache.set("b", 1, timeout=DEFAULT_TIMEOUT)
    clock.advance(21)
    assert cache.get_many(["a", "b"]) == {}


def test_timeout_none_is_forever(cache: TierCacheBackend, clock: FakeClock) -> None:
    """timeout=None keeps the value (ten years, the longest a TierCache entry lives)."""
    cache.set("forever", "v", timeout=None)
    cache.add("forever2", "v", timeout=None)
    clock.advance(365 * 24 * 3600)
    assert cache.get_many(["forever", "forever2"]) == {"forever": "v", "forever2": "v"}
    assert MAX_DURATION >= 10 * 365 * 24 * 3600


@pytest.mark.parametrize("timeout", [0, -1, 0.5])
def test_zero_or_negative_timeout_deletes(cache: TierCacheBackend, timeout: float) -> None:
    """A timeout that truncates to 0 or below deletes instead of storing (as RedisCache)."""
    cache.set("k", "old")
    cache.set("k", "new", timeout=timeout)
    assert cache.get("k") is None
    cache.set_many({"m": 1}, timeout=timeout)
    assert cache.get("m") is None


def test_touch(cache: TierCacheBackend, clock: FakeClock) -> None:
    """touch() moves the expiry (None: forever, 0: delete) and says whether the key exists."""
    cache.set("k", "v", timeout=10)
    assert cache.touch("k", 100) is True
    clock.advance(50)
    assert cache.get("k") == "v"
    assert cache.touch("k", None) is True
    clock.advance(1000)
    assert cache.get("k") == "v"
    assert cache.touch("k", 0) is True
    assert cache.get("k") is None
    assert cache.touch("missing") is False


# -- incr / decr -----------------------------------------------------------------------------


def test_incr_decr(cache: TierCacheBackend) -> None:
    """incr/decr return the new value, which get() reads."""
    cache.set("answer", 41)
    assert cache.incr("answer") == 42
    assert cache.get("answer") == 42
    assert cache.incr("answer", 10) == 52
    assert cache.decr("answer") == 51
    assert cache.decr("answer", 10) == 41
    assert cache.incr("answer", -1) == 40


def test_incr_of_a_missing_key_raises_value_error(cache: TierCacheBackend) -> None:
    """As Django: ValueError for a key that does not exist (incr and decr)."""
    with pytest.raises(ValueError):
        cache.incr("does_not_exist")
    with pytest.raises(ValueError):
        cache.decr("does_not_exist")
    with pytest.raises(ValueError):
        cache.incr("does_not_exist", -1)


def test_incr_of_a_non_integer_raises_type_error(cache: TierCacheBackend) -> None:
    """incr of a str value raises TypeError (RedisCache raises redis' ResponseError)."""
    cache.set("text", "abc")
    with pytest.raises(TypeError):
        cache.incr("text")


def test_concurrent_incr_from_threads_loses_nothing(make: Make) -> None:
    """incr is atomic in Redis: 4 threads x 20 increments on separate objects give 80."""
    backends = [make() for _ in range(4)]
    backends[0].set("count", 0)
    run_threads([lambda b=b: [b.incr("count") for _ in range(20)] for b in backends])
    assert backends[0].get("count") == 80


def test_add_race_has_one_winner(make: Make) -> None:
    """Concurrent add() of one key from many backend objects: exactly one True."""
    backends = [make() for _ in range(6)]
    barrier = threading.Barrier(len(backends), timeout=WAIT)
    results: list[bool] = []

    def contend(backend: TierCacheBackend, value: int) -> None:
        barrier.wait()
        results.append(backend.add("lock", value))

    run_threads([lambda b=b, i=i: contend(b, i) for i, b in enumerate(backends)])
    assert sorted(results) == [False] * 5 + [True]


# -- keys: prefix, version, key function, validation -----------------------------------------


def test_versions_are_separate_and_incr_version_moves_a_value(cache: TierCacheBackend) -> None:
    """version= keeps separate values; incr_version/decr_version move one."""
    cache.set("answer", 42, version=1)
    cache.set("answer", 37, version=2)
    assert cache.get("answer", version=1) == 42
    assert cache.get("answer", version=2) == 37
    assert cache.incr_version("answer", version=2) == 3
    assert cache.get("answer", version=2) is None
    assert cache.get("answer", version=3) == 37
    assert cache.decr_version("answer", version=3) == 2
    assert cache.get("answer", version=2) == 37
    with pytest.raises(ValueError):
        cache.incr_version("does_not_exist")


def test_version_setting_is_the_default_version(make: Make) -> None:
    """VERSION in the settings is the default version of every call."""
    v1, v2 = make(VERSION=1), make(VERSION=2)
    v2.set("k", "two")
    assert v1.get("k") is None
    assert v1.get("k", version=2) == "two"


def test_key_prefix_separates_caches(make: Make) -> None:
    """Two KEY_PREFIXes on one namespace never see each other's keys."""
    one, two = make(KEY_PREFIX="one"), make(KEY_PREFIX="two")
    one.set("k", 1)
    assert two.get("k") is None
    assert one.make_key("k") == "one:1:k"


def test_key_function(make: Make) -> None:
    """KEY_FUNCTION builds the stored key."""
    custom = make(KEY_FUNCTION=lambda key, prefix, version: f"custom-{key}")
    plain = make()
    custom.set("k", 1)
    assert custom.make_key("k") == "custom-k"
    assert plain.get("custom-k") is None  # plain's key is ":1:custom-k"


def test_non_ascii_keys(cache: TierCacheBackend) -> None:
    """Non-ASCII keys work."""
    cache.set("ключ-日本", "value")
    assert cache.get("ключ-日本") == "value"
    assert cache.get_many(["ключ-日本"]) == {"ключ-日本": "value"}


def test_memcached_unsafe_keys_warn_but_work(cache: TierCacheBackend) -> None:
    """A key with a space or over 250 characters raises CacheKeyWarning and still works."""
    long_key = "k" * 300
    with pytest.warns(CacheKeyWarning):
        cache.set(long_key, "long")
    with pytest.warns(CacheKeyWarning):
        assert cache.get(long_key) == "long"
    with pytest.warns(CacheKeyWarning):
        cache.set("has space", 1)
    very_long = "x" * 5000
    with pytest.warns(CacheKeyWarning):
        cache.set(very_long, "ok")
    with pytest.warns(CacheKeyWarning):
        assert cache.get(very_long) == "ok"


# -- async -----------------------------------------------------------------------------------


def test_async_methods(cache: TierCacheBackend) -> None:
    """Django derives a* methods from the sync ones; they behave the same."""

    async def scenario() -> None:
        await cache.aset("a", 1)
        assert await cache.aget("a") == 1
        assert await cache.aadd("a", 2) is False
        assert await cache.aincr("a") == 2
        assert await cache.adecr("a") == 1
        assert await cache.ahas_key("a") is True
        await cache.aset_many({"b": 2, "c": 3})
        assert await cache.aget_many(["b", "c"]) == {"b": 2, "c": 3}
        assert await cache.atouch("a", 100) is True
        assert await cache.aget_or_set("d", lambda: 4) == 4
        assert await cache.adelete("a") is True
        await cache.adelete_many(["b"])
        assert await cache.aget("b") is None
        await cache.aclear()
        assert await cache.aget("c") is None

    asyncio.run(scenario())


# -- signed pickle ---------------------------------------------------------------------------


class Detonator:
    """Records whether it was ever unpickled."""

    unpickled = False

    def __reduce__(self) -> Any:
        return (_detonate, ())


def _detonate() -> None:
    Detonator.unpickled = True


def test_tampered_or_unsigned_bytes_are_a_miss_never_unpickled(
    cache: TierCacheBackend, redis_client: redis.Redis
) -> None:
    """Bytes whose signature is wrong or missing are a miss, and are never unpickled."""
    cache.set("victim", "safe")
    rkey = f"{cache.tier.namespace}:{cache.make_key('victim')}"
    blob = redis_client.get(rkey)
    assert blob is not None
    evil = pickle.dumps(Detonator())
    header, signed = blob[:18], blob[18:]
    # The same header (a valid entry) with: an unsigned pickle; a forged tag; a flipped bit.
    for payload in (evil, b"\x00" * 32 + evil, signed[:-1] + bytes([signed[-1] ^ 1])):
        redis_client.set(rkey, header + payload)
        fresh = TierCacheBackend(None, {})
        fresh._tier = TierCache(
            redis_client,
            namespace=cache.tier.namespace,
            max_key_length=64 * 1024,
            serializer=SignedPickleSerializer(derive_key(SECRET_KEY, "django-cache")),
        )
        try:
            assert fresh.get("victim", "miss") == "miss"
            assert fresh.tier.stats()["l2_corrupt"] == 1
        finally:
            fresh.tier.close()
    assert Detonator.unpickled is False


def test_another_secret_key_cannot_read_the_values(
    cache: TierCacheBackend, redis_client: redis.Redis
) -> None:
    """A process with another SECRET_KEY reads the entries as misses."""
    cache.set("k", "v")
    other = TierCache(
        redis_client,
        namespace=cache.tier.namespace,
        max_key_length=64 * 1024,
        serializer=SignedPickleSerializer(derive_key("another secret", "django-cache")),
    )
    try:
        assert other.get(cache.make_key("k"), "miss") == "miss"
    finally:
        other.close()


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.redis
def test_backend_from_settings_shares_one_cache_per_process(redis_server: Any) -> None:
    """Backends built from one LOCATION/OPTIONS (Django makes one per thread) share a cache;
    close() after a request leaves it working."""
    from tiercache.contrib import django as contrib

    url = redis_server.url
    params = {"OPTIONS": {"namespace": unique_namespace("djs")}}
    first, second = TierCacheBackend(url, params), TierCacheBackend([url], params)
    try:
        assert first.tier is second.tier
        first.set("k", "v")
        first.close()
        assert second.get("k") == "v"
    finally:
        ident = [k for k, v in contrib._shared.items() if v is first.tier]
        first.tier.close()
        for k in ident:
            del contrib._shared[k]


def test_l1_only_without_location(make: Make) -> None:
    """No LOCATION: an L1-only cache with the same API."""
    from tiercache.contrib import django as contrib

    params = {"OPTIONS": {"namespace": unique_namespace("djl")}}
    backend = TierCacheBackend(None, params)
    try:
        assert backend.add("k", 1) is True
        assert backend.incr("k") == 2
        assert backend.get("k") == 2
    finally:
        ident = [k for k, v in contrib._shared.items() if v is backend.tier]
        backend.tier.close()
        for k in ident:
            del contrib._shared[k]


def test_many_locations_are_refused() -> None:
    """LOCATION with several servers is a clear error."""
    with pytest.raises(ValueError, match="one Redis URL"):
        TierCacheBackend(["redis://a", "redis://b"], {})
