"""Propagation across processes and instances (guarantees 1 and 2 of
docs/consistency.md).

Process A is spawned (a fresh interpreter), process B is forked; both live for the module
and open new caches, on a new namespace, for every test. A caches entries in its L1, B
writes, and once B's call has returned A must see the change within a bounded poll. Every
cache has ``l1_ttl=60``: far beyond every wait here, so only the bus can explain a change.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.multiprocess.support import (
    PRICES,
    PROPAGATION_TIMEOUT,
    Peer,
    subscribe,
)
from tests.support import wait_for
from tiercache import TierCache

pytestmark = pytest.mark.redis

L1_TTL = 60.0


@pytest.fixture(scope="module")
def peers(topology_url: str) -> Iterator[tuple[Peer, Peer]]:
    """Process A (spawn) and process B (fork), alive for the whole module (once on one
    server, once on a cluster)."""
    a = Peer(multiprocessing.get_context("spawn"), topology_url, "peer-A")
    try:
        b = Peer(multiprocessing.get_context("fork"), topology_url, "peer-B")
        try:
            yield a, b
        finally:
            b.close()
    finally:
        a.close()


@pytest.fixture
def pair(
    peers: tuple[Peer, Peer], namespace: str, topology_redis: redis.Redis
) -> Iterator[tuple[Peer, Peer]]:
    """A and B, each with a subscribed cache "main" on this test's namespace."""
    for peer in peers:
        peer.call("main", "open", namespace, l1_ttl=L1_TTL)
    try:
        for peer in peers:
            peer.call("main", "subscribe")
        yield peers
    finally:
        for peer in peers:
            peer.call("", "close_all")


def _l1_reads(peer: Peer, cache: str, expected: dict[str, Any]) -> None:
    """Assert that reading ``expected`` on ``peer`` gives those values, all from L1."""
    before = peer.stats(cache)
    got = {key: peer.call(cache, "get", key) for key in expected}
    after = peer.stats(cache)
    assert got == expected
    assert after["l1_hits"] - before["l1_hits"] == len(expected), "not all served from L1"
    assert after["l2_hits"] == before["l2_hits"]


WRITES = [
    pytest.param("set", ("k1", "new1"), {"k1": "new1", "k2": "old2"}, id="set"),
    pytest.param("delete", ("k1",), {"k1": None, "k2": "old2"}, id="delete"),
    pytest.param(
        "set_many", ({"k1": "new1", "k2": "new2"},), {"k1": "new1", "k2": "new2"}, id="set_many"
    ),
    pytest.param("delete_many", (["k1", "k2"],), {"k1": None, "k2": None}, id="delete_many"),
]


@pytest.mark.parametrize(("op", "args", "expected"), WRITES)
def test_write_in_one_process_reaches_the_l1_of_another_through_the_bus(
    pair: tuple[Peer, Peer], op: str, args: tuple[Any, ...], expected: dict[str, Any]
) -> None:
    """After B's write returns, A serves the new value (or a miss) within the bounded poll."""
    a, b = pair
    old = {"k1": "old1", "k2": "old2", "k3": "old3"}
    for key, value in old.items():
        assert a.call("main", "get_or_set", key, value) == value
    _l1_reads(a, "main", old)
    before = a.stats("main")

    b.call("main", op, *args)  # returns once the write has returned in B

    wait_for(
        lambda: {key: a.call("main", "get", key) for key in expected} == expected,
        PROPAGATION_TIMEOUT,
        f"A to see B's {op}",
    )
    after = a.stats("main")
    assert after["bus_received"] > before["bus_received"]
    # Dropped key by key, not by a flush (a gap or a resubscription would flush).
    assert after["l1_flushes"] == before["l1_flushes"]
    assert after["bus_gaps"] == 0
    _l1_reads(a, "main", {"k3": "old3"})  # an untouched key stays in A's L1


def test_two_instances_in_one_process_hear_each_other(topology_url: str, namespace: str) -> None:
    """Instances are the unit of coherence: two caches in one process invalidate each other."""
    with (
        TierCache.from_url(topology_url, namespace=namespace, l1_ttl=L1_TTL) as first,
        TierCache.from_url(topology_url, namespace=namespace, l1_ttl=L1_TTL) as second,
    ):
        subscribe(first)
        subscribe(second)
        assert first.get_or_set("k", lambda: "old") == "old"
        assert second.get_or_set("j", lambda: "old") == "old"
        hits = first.stats()["l1_hits"]
        assert first.get("k") == "old"
        assert first.stats()["l1_hits"] == hits + 1

        second.set("k", "new")
        wait_for(lambda: first.get("k") == "new", PROPAGATION_TIMEOUT, "first to see set")
        first.delete("j")
        wait_for(lambda: second.get("j") is None, PROPAGATION_TIMEOUT, "second to see delete")

        for cache in (first, second):
            stats = cache.stats()
            assert stats["bus_received"] > stats["bus_ignored"]  # it heard the other one
            assert stats["l1_flushes"] == 1  # the subscription's only
            assert stats["bus_gaps"] == 0


def test_own_echo_is_ignored_and_does_not_flush_own_l1(topology_url: str, namespace: str) -> None:
    """An instance's own message comes back, is counted as ignored, and its L1 keeps the entry."""
    with TierCache.from_url(topology_url, namespace=namespace, l1_ttl=L1_TTL) as cache:
        before = subscribe(cache)
        cache.set("k", "mine")
        wait_for(
            lambda: cache.stats()["bus_ignored"] > before["bus_ignored"],
            PROPAGATION_TIMEOUT,
            "the echo of our own set",
        )
        after = cache.stats()
        assert cache.get("k") == "mine"
        last = cache.stats()
        assert after["bus_received"] - before["bus_received"] == 1
        assert after["bus_ignored"] - before["bus_ignored"] == 1
        assert last["l1_flushes"] == before["l1_flushes"]
        assert last["l1_hits"] == after["l1_hits"] + 1  # still served from L1
        assert last["l2_hits"] == after["l2_hits"]


def test_invalidate_tags_in_one_process_drops_exactly_the_tagged_entries_in_another(
    pair: tuple[Peer, Peer],
) -> None:
    """B invalidates one tag: A drops the entries carrying it and keeps every other one."""
    a, b = pair
    assert a.call("main", "get_or_set", "t1", "red1", tags=("red",)) == "red1"
    a.call("main", "set", "t2", "red2", tags=("red", "green"))
    assert a.call("main", "get_or_set", "t3", "blue3", tags=("blue",)) == "blue3"
    a.call("main", "set", "u1", "plain1")
    assert a.call("main", "get_or_set", "u2", "plain2") == "plain2"
    kept = {"t3": "blue3", "u1": "plain1", "u2": "plain2"}
    _l1_reads(a, "main", {"t1": "red1", "t2": "red2", **kept})
    before = a.stats("main")

    b.call("main", "invalidate_tags", "red")

    wait_for(
        lambda: a.call("main", "get", "t1") is None and a.call("main", "get", "t2") is None,
        PROPAGATION_TIMEOUT,
        "A to drop the entries tagged red",
    )
    after = a.stats("main")
    assert after["l1_size"] == len(kept)
    assert after["l1_flushes"] == before["l1_flushes"]
    _l1_reads(a, "main", kept)
    # The tagged entries are stale in L2 for everyone; the others are still there.
    assert b.call("main", "get", "t2") is None
    assert b.call("main", "get", "t3") == "blue3"


def test_clear_in_one_process_empties_the_namespace_in_another_and_spares_other_namespaces(
    pair: tuple[Peer, Peer], namespace: str, topology_redis: redis.Redis
) -> None:
    """B clears: A's L1 empties and A reads misses from L2; another namespace is untouched."""
    a, b = pair
    other = namespace + "-other"
    # invalidate-only in "other": B's reads there must come from Redis (counted below)
    a.call("other", "open", other, l1_ttl=L1_TTL, propagate_values=0)
    b.call("other", "open", other, l1_ttl=L1_TTL, propagate_values=0)
    a.call("other", "subscribe")
    b.call("other", "subscribe")
    for cache in ("main", "other"):
        assert a.call(cache, "get_or_set", "k1", f"{cache}1") == f"{cache}1"
        a.call(cache, "set", "k2", f"{cache}2")
    _l1_reads(a, "main", {"k1": "main1", "k2": "main2"})

    b.call("main", "clear")

    wait_for(lambda: a.stats("main")["l1_size"] == 0, PROPAGATION_TIMEOUT, "A's L1 to be emptied")
    assert a.call("main", "get_many", ["k1", "k2"]) == {}  # L2 entries are older than the clear
    assert b.call("main", "get", "k1") is None
    _l1_reads(a, "other", {"k1": "other1", "k2": "other2"})
    assert b.call("other", "get_many", ["k1", "k2"]) == {"k1": "other1", "k2": "other2"}
    assert b.stats("other")["l2_hits"] == 2
    assert topology_redis.exists(f"{other}:k1", f"{other}:k2") == 2


def test_memoize_invalidate_in_one_process_reaches_the_other(
    pair: tuple[Peer, Peer], topology_redis: redis.Redis
) -> None:
    """A memoized call cached in A is reloaded there after B calls ``.invalidate`` with its args."""
    a, b = pair
    assert a.call("main", "memo_key", "A1") == b.call("main", "memo_key", "A1")
    topology_redis.hset(PRICES, "A1", 100)
    assert a.call("main", "memo", "A1") == 100
    topology_redis.hset(PRICES, "A1", 200)
    before = a.stats("main")
    assert a.call("main", "memo", "A1") == 100  # served from A's L1
    assert a.stats("main")["l1_hits"] == before["l1_hits"] + 1

    b.call("main", "memo_invalidate", "A1")

    wait_for(
        lambda: a.call("main", "memo", "A1") == 200,
        PROPAGATION_TIMEOUT,
        "A to reload the memoized price",
    )
    assert a.stats("main")["loads"] == before["loads"] + 1
