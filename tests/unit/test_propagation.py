"""Value propagation on its own (``propagation.py``): which values travel, when a receiver
keeps one, and the own-write rule, with a real L1, codec and lifetimes and no Redis."""

from __future__ import annotations

from tests.support import FakeClock
from tiercache.entry import Entry, EntryCodec
from tiercache.l1 import LocalTier
from tiercache.lifetimes import Lifetimes
from tiercache.options import Settings
from tiercache.propagation import MAX_MESSAGE_VALUES, Propagation
from tiercache.stats import Counters

NOW = 1_700_000_000.0


def _parts(max_value_bytes: int = 4096) -> tuple[Propagation, LocalTier, EntryCodec, Counters]:
    clock = FakeClock(NOW)
    settings = Settings.build(ttl=300, timer=clock)
    l1 = LocalTier(100, clock)
    codec = EntryCodec(compress_threshold=1 << 20, max_value_bytes=1 << 20)
    lifetimes = Lifetimes(settings, clock, clock, two_tier=True)
    counters = Counters()
    propagation = Propagation(l1, codec, lifetimes, counters, max_value_bytes=max_value_bytes)
    return propagation, l1, codec, counters


def current(entry: Entry) -> float | None:
    return NOW  # every version current, learned now


def test_small_values_travel_and_large_ones_are_plain_invalidations() -> None:
    """Entries up to max_value_bytes go in the message; a larger one goes as [key, None];
    so does everything past the per-message budget."""
    propagation, _l1, codec, _counters = _parts(max_value_bytes=100)
    small = codec.encode("v", NOW + 60)
    large = codec.encode("x" * 500, NOW + 60)
    pairs = propagation.message(["a", "b"], [("ns:a", small, 1), ("ns:b", large, 1)])
    assert pairs == [["a", small], ["b", None]]

    propagation.max_value_bytes = MAX_MESSAGE_VALUES
    blob = codec.encode("y" * 40_000, NOW + 60)
    pairs = propagation.message(["c", "d"], [("ns:c", blob, 1), ("ns:d", blob, 1)])
    assert pairs[0] == ["c", blob]
    assert pairs[1] == ["d", None]  # over the message's budget


def test_a_received_value_is_kept_in_l1_with_an_l2_hits_lifetime() -> None:
    """A current value from another instance lands in L1, bounded by l1_ttl (30 s)."""
    propagation, l1, codec, counters = _parts()
    l1.fill("k", "old", 30.0)
    propagation.apply([["k", codec.encode({"v": 2}, NOW + 300)]], current)
    entry = l1.get("k")
    assert entry is not None
    assert entry[0] == {"v": 2}
    assert entry[1] == NOW + 30.0
    assert counters.values_received == 1


def test_a_value_whose_versions_are_old_or_bytes_that_do_not_decode_only_invalidate() -> None:
    """A value made stale by a clear/tag invalidation (validate says None), or bytes that are
    not an entry, drop the key instead of filling it."""
    propagation, l1, codec, counters = _parts()
    l1.fill("a", "old", 30.0)
    l1.fill("b", "old", 30.0)
    propagation.apply([["a", codec.encode("new", NOW + 300)]], lambda entry: None)
    propagation.apply([["b", b"\x00garbage"]], current)
    assert l1.get("a") is None
    assert l1.get("b") is None
    assert counters.values_received == 0


def test_a_load_in_flight_before_the_value_arrived_cannot_overwrite_it() -> None:
    """The received value is a write: a ticket taken before it can no longer fill."""
    propagation, l1, codec, _counters = _parts()
    ticket = l1.ticket("k")  # a load starts
    propagation.apply([["k", codec.encode("from writer", NOW + 300)]], current)
    assert not l1.fill("k", "from the slow load", 30.0, ticket)
    ticket.release()
    entry = l1.get("k")
    assert entry is not None
    assert entry[0] == "from writer"


def test_a_value_heard_before_the_echo_of_our_own_newer_write_only_invalidates() -> None:
    """We wrote k (message 7). Another instance's message for k heard before our echo 7 is
    older in Redis's order: it must not replace our value with its older one; after the
    echo, values for k are kept again."""
    propagation, l1, codec, _counters = _parts()
    l1.fill("k", "ours, newer", 30.0)
    propagation.written(["k"], 7)
    propagation.apply([["k", codec.encode("theirs, older", NOW + 300)]], current)
    assert l1.get("k") is None  # dropped: a miss reads Redis, which holds ours

    propagation.echoed(7)
    propagation.apply([["k", codec.encode("theirs, newer", NOW + 300)]], current)
    entry = l1.get("k")
    assert entry is not None
    assert entry[0] == "theirs, newer"


def test_an_echo_heard_before_the_write_was_recorded_leaves_nothing_pending() -> None:
    """A reader may drain our echo before set() records its keys: the key is not left
    'ours' forever (values from others keep being applied)."""
    propagation, l1, codec, _counters = _parts()
    propagation.echoed(3)
    propagation.written(["k"], 3)
    propagation.apply([["k", codec.encode("theirs", NOW + 300)]], current)
    entry = l1.get("k")
    assert entry is not None
    assert entry[0] == "theirs"
