"""Related caches across processes, the worked example of the Caching patterns page: a detail
under its own key, lists tagged ``users:list``, an aggregate tagged ``users:agg``. A change
in one process reaches exactly the related entries in the other."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.multiprocess.support import FORK, PROPAGATION_TIMEOUT, Peer
from tests.redis_server import RedisServer
from tests.support import wait_for

pytestmark = pytest.mark.redis

LIST = ("users:list",)
AGG = ("users:agg",)


@pytest.fixture
def pair(redis_server: RedisServer, namespace: str) -> Iterator[tuple[Peer, Peer]]:
    """A reader process and a writer process, each with a subscribed cache on the namespace."""
    reader = Peer(FORK, redis_server.url, "reader")
    try:
        writer = Peer(FORK, redis_server.url, "writer")
        try:
            for peer in (reader, writer):
                peer.call("main", "open", namespace, l1_ttl=60)
                peer.call("main", "subscribe")
            yield reader, writer
        finally:
            writer.close()
    finally:
        reader.close()


def _cached(peer: Peer, key: str, fresh: object, tags: tuple[str, ...] = ()) -> object:
    """What ``peer`` serves for ``key``; ``fresh`` is what its loader would return."""
    return peer.call("main", "get_or_set", key, fresh, tags=tags)


def test_a_rename_updates_the_detail_and_the_lists_but_not_the_aggregate(
    pair: tuple[Peer, Peer],
) -> None:
    """set of the detail + invalidate_tags("users:list") in the writer: the reader serves the
    new detail and reloads its lists; its aggregate and other details stay cached."""
    reader, writer = pair
    assert _cached(reader, "user:1", {"name": "ada"}) == {"name": "ada"}
    assert _cached(reader, "user:2", {"name": "bob"}) == {"name": "bob"}
    assert _cached(reader, "users:active:1", ["ada", "bob"], LIST) == ["ada", "bob"]
    assert _cached(reader, "users:count", 2, AGG) == 2

    writer.call("main", "set", "user:1", {"name": "zoe"})
    writer.call("main", "invalidate_tags", "users:list")

    wait_for(
        lambda: _cached(reader, "users:active:1", ["bob", "zoe"], LIST) == ["bob", "zoe"],
        PROPAGATION_TIMEOUT,
        "the list to be reloaded",
    )
    assert _cached(reader, "user:1", {"name": "loader"}) == {"name": "zoe"}  # the set value
    before = reader.stats("main")
    assert _cached(reader, "user:2", {"name": "loader"}) == {"name": "bob"}
    assert _cached(reader, "users:count", 99, AGG) == 2
    after = reader.stats("main")
    assert after["l1_hits"] - before["l1_hits"] == 2  # both still in L1
    assert after["loads"] == before["loads"]


def test_adding_a_user_reloads_lists_and_aggregates_everywhere(pair: tuple[Peer, Peer]) -> None:
    """invalidate_tags("users:list", "users:agg") in the writer: the reader reloads both
    kinds; the details it holds are untouched."""
    reader, writer = pair
    assert _cached(reader, "user:1", {"name": "ada"}) == {"name": "ada"}
    assert _cached(reader, "users:active:1", ["ada"], LIST) == ["ada"]
    assert _cached(reader, "users:count", 1, AGG) == 1

    writer.call("main", "set", "user:2", {"name": "bob"})
    writer.call("main", "invalidate_tags", "users:list", "users:agg")

    wait_for(
        lambda: _cached(reader, "users:count", 2, AGG) == 2,
        PROPAGATION_TIMEOUT,
        "the aggregate to be reloaded",
    )
    assert _cached(reader, "users:active:1", ["ada", "bob"], LIST) == ["ada", "bob"]
    assert _cached(reader, "user:2", {"name": "loader"}) == {"name": "bob"}
    before = reader.stats("main")
    assert _cached(reader, "user:1", {"name": "loader"}) == {"name": "ada"}
    assert reader.stats("main")["l1_hits"] == before["l1_hits"] + 1
