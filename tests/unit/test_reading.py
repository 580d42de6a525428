"""The L2 read logic on its own: classification of what a key holds, with a dict for L2 and a
versions stub, no Redis and no fakeredis (the seams are ``l2.L2Store`` and
``reading.Versions``)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tests.support import FakeClock
from tiercache.entry import Entry, EntryCodec, lease_placeholder
from tiercache.errors import L2Error
from tiercache.reading import MISSING_ENTRY, Failed, Hit, L2Reader, Leased, Stale, Unusable
from tiercache.stats import Counters, RateLimitedLog

NOW = 1_700_000_000.0


class DictStore:
    """An L2 that is a dict; ``down`` makes every read raise L2Error."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.down = False

    def get(self, key: str) -> bytes | None:
        if self.down:
            raise L2Error("redis GET failed: ConnectionError")
        return self.data.get(key)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self.get(key) for key in keys]


class StubVersions:
    """Entries at namespace version >= ``current`` are current, learned at ``learned_at``."""

    def __init__(self, current: int = 1) -> None:
        self.current = current
        self.learned_at = 123.0

    def validate(self, entry: Entry) -> float | None:
        return None if entry.ns_version < self.current else self.learned_at

    def namespace_version(self) -> tuple[int, float] | None:
        return (self.current, self.learned_at)


@pytest.fixture
def parts() -> tuple[L2Reader, DictStore, StubVersions, Counters, EntryCodec]:
    store, versions, counters = DictStore(), StubVersions(), Counters()
    codec = EntryCodec(compress_threshold=1 << 20, max_value_bytes=1 << 20)
    reader = L2Reader(
        store,
        codec,
        versions,
        counters,
        RateLimitedLog(),
        namespace="ns",
        stale_ttl=60.0,
        wall=FakeClock(NOW),
        rkey="ns:".__add__,
    )
    return reader, store, versions, counters, codec


def test_each_kind_of_content_gets_its_own_result_type(parts) -> None:
    """Nothing, a fresh entry, an expired one inside the fail-safe window, a lease, bytes
    that are not an entry, an entry made stale by a clear: six distinct, typed answers."""
    reader, store, versions, counters, codec = parts
    store.data["ns:fresh"] = codec.encode({"v": 1}, NOW + 10, 1)
    store.data["ns:expired"] = codec.encode("old", NOW - 1, 1)
    store.data["ns:leased"] = lease_placeholder(b"t" * 16)
    store.data["ns:garbage"] = b"\x00not an entry"
    store.data["ns:cleared"] = codec.encode("before clear", NOW + 10, 0)

    assert reader.read("absent") is MISSING_ENTRY
    hit = reader.read("fresh")
    assert isinstance(hit, Hit)
    assert (hit.entry.value, hit.learned_at) == ({"v": 1}, versions.learned_at)
    assert isinstance(reader.read("expired"), Stale)
    assert isinstance(reader.read("leased"), Leased)
    assert isinstance(reader.read("garbage"), Unusable)
    assert isinstance(reader.read("cleared"), Unusable)
    assert (counters.l2_hits, counters.l2_misses, counters.l2_corrupt, counters.l2_stale) == (
        1,
        5,
        1,
        1,
    )


def test_a_failed_read_is_a_failed_result_counted_once(parts) -> None:
    """L2 trouble is a Failed result (the caller degrades), counted in l2_errors."""
    reader, store, _versions, counters, _codec = parts
    store.down = True
    assert isinstance(reader.read("k"), Failed)
    assert isinstance(reader.read_many(["a", "b"]), Failed)
    assert counters.l2_errors == 2


def test_a_stale_entry_offers_a_fallback_for_what_is_left_of_its_window(parts) -> None:
    """An expired entry 1 s past its expiry, with stale_ttl=60, offers its value for 59 s."""
    reader, store, _versions, _counters, codec = parts
    store.data["ns:k"] = codec.encode("old", NOW - 1, 1, (("t", 3),))
    found = reader.read("k")
    assert isinstance(found, Stale)
    fallback = reader.fallback(found)
    assert fallback is not None
    assert (fallback.value, fallback.tags, fallback.for_seconds) == ("old", ["t"], 59.0)


def test_a_batch_read_returns_only_the_hits_and_counts_the_rest(parts) -> None:
    """hits(): the servable entries of many keys in one round trip; everything else is
    counted exactly as single reads count it."""
    reader, store, _versions, counters, codec = parts
    store.data["ns:fresh"] = codec.encode("v", NOW + 10, 1)
    store.data["ns:tagged"] = codec.encode("t", NOW + 10, 1, (("tag", 1),))
    store.data["ns:expired"] = codec.encode("old", NOW - 1, 1)
    store.data["ns:cleared"] = codec.encode("before", NOW + 10, 0)
    store.data["ns:garbage"] = b"\x00garbage"
    store.data["ns:leased"] = lease_placeholder(b"t" * 16)
    keys = ["fresh", "tagged", "expired", "cleared", "garbage", "leased", "absent"]
    found = reader.hits(keys)
    assert not isinstance(found, Failed)
    assert [(key, entry.value) for key, entry, _, _ in found] == [("fresh", "v"), ("tagged", "t")]
    assert [size for *_, size in found] == [
        len(store.data["ns:fresh"]),
        len(store.data["ns:tagged"]),
    ]
    assert (counters.l2_hits, counters.l2_misses, counters.l2_corrupt, counters.l2_stale) == (
        2,
        5,
        1,
        1,
    )
