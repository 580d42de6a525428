"""The peers benchmark's plumbing: its key and operation sequences and its staleness maths.

No timing is asserted: these are pure functions over synthetic timestamps.
"""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks import peers

MS = 1_000_000  # ns


def test_key_sequence_is_fixed_by_its_seed_and_zipf_shaped() -> None:
    first = peers.key_sequence(7, n=20_000)
    assert first == peers.key_sequence(7, n=20_000)
    assert first != peers.key_sequence(8, n=20_000)
    counts = Counter(first)
    assert all(0 <= k < peers.KEYS for k in counts)
    # Zipf(1.1) over 1,000 keys: key 0 draws ~17%, key 1 about half of that.
    assert 0.14 < counts[0] / len(first) < 0.20
    assert counts[0] > counts[1] > counts[9] > counts[99]


@pytest.mark.parametrize("rate", [0.0, 0.001, 0.01])
def test_op_sequence_writes_at_the_rate_half_sets_half_deletes(rate: float) -> None:
    ops = peers.op_sequence(3, rate, n=200_000)
    assert ops == peers.op_sequence(3, rate, n=200_000)
    counts = Counter(ops)
    writes = counts[1] + counts[2]
    assert writes == pytest.approx(rate * len(ops), rel=0.15, abs=1)
    if rate:
        assert counts[1] == pytest.approx(counts[2], rel=0.25)


def test_stale_age_is_counted_from_the_next_versions_return() -> None:
    ring_v = [0] * (peers.RING * 2)
    ring_t = [0] * (peers.RING * 2)
    k = 1
    assert peers.stale_age(ring_v, ring_t, k, seen=0, started=100 * MS) == 0  # nothing newer
    slot = k * peers.RING + 1 % peers.RING
    ring_v[slot], ring_t[slot] = 1, 40 * MS  # version 1 returned at 40 ms
    assert peers.stale_age(ring_v, ring_t, k, seen=0, started=100 * MS) == 60 * MS
    assert peers.stale_age(ring_v, ring_t, k, seen=0, started=30 * MS) == 0  # read began first
    assert peers.stale_age(ring_v, ring_t, k, seen=1, started=100 * MS) == 0  # up to date


def test_analyze_staleness_lags_and_stale_reads() -> None:
    done = [(1, 1000 * MS), (2, 2000 * MS)]
    reads = [
        (500 * MS, 0),
        (1010 * MS, 0),  # stale by 10 ms
        (1100 * MS, 0),  # stale by 100 ms: version 1 was still unseen 100 ms after its return
        (1200 * MS, 1),  # version 1 first seen 200 ms after it returned
        (2500 * MS, 1),  # stale by 500 ms
        (2600 * MS, 2),  # version 2 first seen after 600 ms
    ]
    result = peers.analyze_staleness(done, [t for t, _ in reads], [v for _, v in reads])
    assert result["lags_ns"] == [100 * MS, 500 * MS]
    assert (result["fresh_p50_ns"], result["fresh_p99_ns"]) == (200 * MS, 600 * MS)
    assert result["unseen"] == 0
    assert not result["censored"]
    assert (result["lag_p50_ns"], result["lag_p99_ns"]) == (100 * MS, 500 * MS)
    assert (result["stale_reads"], result["stale50_reads"]) == (3, 2)


def test_a_write_whose_next_read_sees_it_was_stale_for_zero() -> None:
    result = peers.analyze_staleness([(1, 1000 * MS)], [900 * MS, 1001 * MS], [0, 1])
    assert result["lags_ns"] == [0]
    assert result["fresh_p50_ns"] == 1 * MS
    assert result["stale_reads"] == 0


def test_a_write_never_seen_is_a_floor_counted_at_the_last_read() -> None:
    done = [(1, 1000 * MS)]
    result = peers.analyze_staleness(done, [900 * MS, 1500 * MS, 3000 * MS], [0, 0, 0])
    assert result["unseen"] == 1
    assert result["censored"]
    assert result["lag_max_ns"] == 2000 * MS
    assert result["fresh_p50_ns"] is None
    assert result["stale50_reads"] == 2


def test_weighted_quantile() -> None:
    points = [(1.0, 1.0), (2.0, 1.0), (10.0, 98.0)]
    assert peers.weighted_quantile(points, 0.01) == 1.0
    assert peers.weighted_quantile(points, 0.02) == 2.0
    assert peers.weighted_quantile(points, 0.5) == 10.0
