"""Values and versions as other instances see them, on every backend (fakeredis and a real
redis-server): subclass values are stored as their base value, big integers round-trip, and
version counters or bus messages outside the supported range never make a namespace stuck.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator

import pytest
import redis

from tests.support import MISSING, CacheFactory, FakeClock, subscribed, wait_until
from tiercache import SerializationError, TierCache
from tiercache.codec import MAX_EXT_DEPTH
from tiercache.entry import MAX_VERSION
from tiercache.errors import L2Error
from tiercache.messages import OP_CLEAR, OP_TAGS, channel_name, encode_message


class Color(str, enum.Enum):
    """The pre-StrEnum idiom: str(Color.RED) is "Color.RED", its value "red"."""

    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


@pytest.fixture
def make_cache(
    redis_client: redis.Redis, namespace: str, clock: FakeClock
) -> Iterator[Callable[..., TierCache]]:
    """Build caches on the test's Redis, namespace and clock; close them all afterwards.
    Without telemetry: a closed cache's counts stay in the process's metrics for good, one
    attribute set per namespace, and the SDK drops new sets past 2,000 per metric, which the
    telemetry tests later in the session would see as missing counts."""
    with CacheFactory(redis_client, namespace=namespace, timer=clock, telemetry=False) as make:
        yield make


def test_another_instance_reads_a_str_enum_member_as_its_value(make_cache) -> None:
    """A (str, Enum) member set by one instance is read by another as "red", a plain str
    (regression: it was stored as str(member), "Color.RED")."""
    writer, reader = make_cache(), make_cache()
    writer.set("color", {"c": Color.RED, Color.RED: [Level.HIGH]})

    back = reader.get("color")

    assert back == {"c": "red", "red": [3]}
    assert type(back["c"]) is str
    assert type(next(iter(back))) is str
    assert type(back["red"][0]) is int


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**300])
def test_another_instance_reads_integers_outside_64_bits(make_cache, number: int) -> None:
    """Integers msgpack cannot hold natively are stored and read back exactly elsewhere
    (regression: set() raised SerializationError)."""
    writer, reader = make_cache(), make_cache()
    writer.set("n", [number])
    assert reader.get("n") == [number]


def test_a_value_nested_past_the_decoder_limit_is_refused_at_set(make_cache) -> None:
    """65 nested tuples: set() raises SerializationError and writes nothing (regression:
    accepted, then unreadable by every other instance)."""
    cache, other = make_cache(), make_cache()
    value: object = 1
    for _ in range(MAX_EXT_DEPTH + 1):
        value = (value,)
    with pytest.raises(SerializationError, match=f"deeper than {MAX_EXT_DEPTH}"):
        cache.set("deep", value)
    assert other.get("deep", default=MISSING) is MISSING


def test_a_namespace_counter_past_32_bits_still_validates_entries(
    make_cache, redis_client: redis.Redis, namespace: str
) -> None:
    """With {namespace}#ver at 5,000,000,000, set/get work in every instance and clear()
    still invalidates (regression: the entry header masked it to 32 bits, so every entry
    looked older than the counter: a miss forever)."""
    redis_client.set(f"{namespace}#ver", 5_000_000_000)
    writer, reader = make_cache(), make_cache()

    writer.set("k", "v")
    assert reader.get("k") == "v"
    assert reader.stats()["l2_hits"] == 1

    writer.clear()
    assert int(redis_client.get(f"{namespace}#ver")) == 5_000_000_001
    assert make_cache().get("k", default=MISSING) is MISSING
    assert wait_until(lambda: reader.get("k", default=MISSING) is MISSING)
    writer.set("k", "v2")
    assert make_cache().get("k") == "v2"


@pytest.mark.parametrize(
    "poison", [str(2**60), str(2**64 + 5), "-3", "1.5", "not a number", str(MAX_VERSION + 1)]
)
def test_a_counter_outside_the_version_range_is_logged_and_repaired_by_the_next_clear(
    make_cache,
    redis_client: redis.Redis,
    namespace: str,
    poison: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A counter no version can reach exactly is treated as missing (logged): set/get keep
    working, and clear() rewrites it with a valid version and still invalidates."""
    redis_client.set(f"{namespace}#ver", poison)
    writer, reader = make_cache(), make_cache()

    with caplog.at_level(logging.WARNING, logger="tiercache"):
        writer.set("k", "v")
        assert reader.get("k") == "v"
    assert f"{namespace}#ver" in caplog.text
    assert "treated as missing" in caplog.text

    writer.clear()
    repaired = int(redis_client.get(f"{namespace}#ver"))
    assert 0 < repaired <= MAX_VERSION
    assert make_cache().get("k", default=MISSING) is MISSING
    assert wait_until(lambda: reader.get("k", default=MISSING) is MISSING)
    writer.set("k", "v2")
    assert make_cache().get("k") == "v2"


def test_a_counter_at_the_last_version_makes_clear_fail_loudly_never_go_backwards(
    make_cache, redis_client: redis.Redis, namespace: str
) -> None:
    """At 2**53 - 1 no newer version exists: clear() raises an error naming the counter
    (with raise_on_write_error) instead of silently bumping to a version older than the
    entries, and the counter is left as it was."""
    redis_client.set(f"{namespace}#ver", MAX_VERSION)
    cache = make_cache(raise_on_write_error=True)
    cache.set("k", "v")
    with pytest.raises(L2Error, match=f"{namespace}#ver is exhausted"):
        cache.clear()
    assert int(redis_client.get(f"{namespace}#ver")) == MAX_VERSION


def test_a_tag_counter_outside_the_range_is_repaired_by_the_next_invalidate_tags(
    make_cache, redis_client: redis.Redis, namespace: str
) -> None:
    """The same recovery for a tag counter: tagged values stay readable, invalidate_tags
    rewrites the counter and drops them."""
    redis_client.set(f"{namespace}#tag:users", str(2**62))
    writer, reader = make_cache(), make_cache()
    writer.set("u", 1, tags=("users",))
    assert reader.get("u") == 1

    writer.invalidate_tags("users")
    assert 0 < int(redis_client.get(f"{namespace}#tag:users")) <= MAX_VERSION
    assert make_cache().get("u", default=MISSING) is MISSING
    assert wait_until(lambda: reader.get("u", default=MISSING) is MISSING)


def test_an_entry_stamped_past_the_version_range_is_a_miss(
    make_cache, redis_client: redis.Redis, namespace: str
) -> None:
    """Bytes in Redis carrying a namespace version over 2**53 - 1 are corrupt: a miss,
    and the version is not learned (later entries still validate)."""
    cache = make_cache()
    cache.set("k", "v")
    blob = redis_client.get(f"{namespace}:k")
    forged = blob[:10] + (2**60).to_bytes(8, "big") + blob[18:]
    redis_client.set(f"{namespace}:k", forged)

    other = make_cache()
    assert other.get("k", default=MISSING) is MISSING
    assert other.stats()["l2_corrupt"] == 1
    cache.set("k", "v2")
    assert other.get("k") == "v2"


@pytest.mark.parametrize(
    ("op", "data"),
    [(OP_CLEAR, 2**63), (OP_TAGS, {"users": MAX_VERSION + 1})],
    ids=["clear", "tags"],
)
def test_a_bus_message_with_an_out_of_range_version_is_undecodable_not_learned(
    make_cache, redis_client: redis.Redis, namespace: str, op: int, data: object
) -> None:
    """A forged clear or tag message past 2**53 - 1 is counted as undecodable and ignored:
    the receiver keeps serving, and its later clear() still works."""
    cache = make_cache()
    subscribed(cache)
    cache.set("k", "v", tags=("users",))
    redis_client.publish(channel_name(namespace), encode_message(bytes(16), 1, op, data))

    assert wait_until(lambda: cache.stats()["bus_undecodable"] == 1)
    assert cache.get("k") == "v"
    other = make_cache()
    assert other.get("k") == "v"
    cache.clear()
    assert cache.get("k", default=MISSING) is MISSING
    assert make_cache().get("k", default=MISSING) is MISSING
