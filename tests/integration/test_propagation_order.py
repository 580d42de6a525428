"""A propagated value must not outlive a newer write that ran between its write and its
message, on a real redis-server.

Redis runs a pipeline's commands one connection at a time only while they arrive together:
a pipeline sent in several pieces (redis-py splits one past 6,000 bytes; a network splits
anything past a packet) can have another client's commands run between its ``SET`` and its
``PUBLISH``. Then the message order is no longer the write order, and a receiver that keeps
the value it is sent keeps the older one. Here the writer's connection sends each command of
a pipeline on its own and, between them, waits until Redis ran the first one and lets
another instance write the same key: the worst case, made certain. The writer's own L1 is
held to the same rule: a value it wrote must not replace a newer one it heard of meanwhile
(``set`` and ``add``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests.redis_server import RedisServer
from tests.support import WAIT, subscribed, wait_until
from tiercache import TierCache
from tiercache.layout import entry_key

pytestmark = pytest.mark.redis


class _Batch(list):  # type: ignore[type-arg]
    """The packed commands of one pipeline, one element per command."""


def _splitting_connection(
    marker: bytes, hooks: dict[str, Callable[[], None]]
) -> type[redis.Connection]:
    """A connection class that sends a pipeline's commands one by one and, once ``armed``
    with the name of a hook, calls it right after sending the first command that carries
    ``marker``, before anything else (the rest of its pipeline, or reading its reply), or,
    armed with ``"before"``, right before sending it."""

    class SplittingConnection(redis.Connection):
        armed: str | None = None

        def pack_commands(self, commands: Any) -> Any:
            return _Batch(b"".join(self.pack_command(*command)) for command in commands)

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            pieces = command if isinstance(command, _Batch) else [b"".join(command)]
            for i, packed in enumerate(pieces):
                hook = SplittingConnection.armed if marker in packed else None
                if hook is not None:
                    SplittingConnection.armed = None
                if hook == "before":
                    hooks[hook]()
                super().send_packed_command([packed], check_health and i == 0)
                if hook == "after":
                    hooks[hook]()

    return SplittingConnection


@pytest.fixture
def caches(redis_server: RedisServer, namespace: str) -> Iterator[dict[str, Any]]:
    """``make(propagate_values)``: instances A (whose writes are split as above), B and C."""
    made: list[TierCache] = []
    clients: list[redis.Redis] = []
    raw = redis_server.client()
    rkey = entry_key(namespace)("k")

    def between() -> None:
        # The writer's first command is on the wire: wait until Redis ran it, then let
        # another instance write the key, the whole set, message included, and wait until
        # the writer heard of it (its listener runs while its request thread is held here).
        assert wait_until(lambda: b"from-a" in (raw.get(rkey) or b"")), "A's SET never ran"
        heard = _heard(made[0])[0]
        made[1].set("k", "from-b")
        assert wait_until(lambda: _heard(made[0])[0] > heard), "A never heard B's set"

    def before() -> None:
        # The writer's write is about to be sent: another instance writes the key first, the
        # writer hears of it and reads the key back into its L1 from Redis (from another
        # thread, as a request would), all before the writer's own write runs.
        heard = _heard(made[0])[0]
        made[1].set("k", "from-b")
        assert wait_until(lambda: _heard(made[0])[0] > heard), "A never heard B's set"
        reader = threading.Thread(target=lambda: made[0].get("k"))
        reader.start()
        reader.join(WAIT)
        assert made[0].stats()["l1_size"] >= 1

    cls = _splitting_connection(b"from-a", {"after": between, "before": before})
    pool = redis.ConnectionPool(connection_class=cls, host="127.0.0.1", port=redis_server.port)

    def make(propagate_values: int) -> list[TierCache]:
        options = {"namespace": namespace, "propagate_values": propagate_values}
        made.append(TierCache(redis.Redis(connection_pool=pool), **options))
        clients.extend(redis_server.client() for _ in range(2))
        made.extend(TierCache(client, **options) for client in clients[-2:])
        return made

    try:
        yield {"make": make, "cls": cls, "raw": raw}
    finally:
        for cache in made:
            cache.close()
        for client in clients:
            client.close()
        pool.disconnect()
        raw.close()


def _heard(*caches: TierCache) -> list[int]:
    return [cache.stats()["bus_received"] for cache in caches]


def _wait_heard(a: TierCache, b: TierCache, c: TierCache, before: list[int], more: int) -> None:
    for cache, count in zip((a, b, c), before, strict=True):
        assert wait_until(lambda cache=cache, count=count: _heard(cache)[0] >= count + more)


@pytest.mark.parametrize("propagate_values", [4096, 0], ids=["values", "invalidate-only"])
def test_a_write_racing_another_on_the_wire_leaves_every_l1_with_what_redis_holds(
    caches: dict[str, Any], propagate_values: int
) -> None:
    """A sets k while B's whole set of k runs after A's SET reached Redis and before A's
    write returned: every instance (A, B and a bystander C) ends up serving what Redis
    holds, never the write Redis overwrote (values: C is sent both; invalidate-only: A must
    not put its own value back after B's message dropped it)."""
    a, b, c = caches["make"](propagate_values)
    for cache in (a, b, c):
        subscribed(cache, probe=True)
    for cache in (a, b, c):
        assert cache.get_or_set("k", lambda: "old") == "old"
    heard = _heard(a, b, c)
    a.set("other", "warm")  # whatever A's write runs is loaded on the server now
    _wait_heard(a, b, c, heard, 1)
    heard = _heard(a, b, c)
    caches["cls"].armed = "after"
    writer = threading.Thread(target=a.set, args=("k", "from-a"))
    writer.start()
    writer.join(WAIT)
    assert not writer.is_alive()
    assert caches["cls"].armed is None, "the writer's set was never sent"
    # Every instance hears both messages (A and B: the other's, and their own echo).
    _wait_heard(a, b, c, heard, 2)
    with TierCache(caches["raw"], namespace=a.namespace) as fresh:
        truth = fresh.get("k")  # an empty L1: what Redis holds
    assert truth in ("from-a", "from-b")
    assert {"a": a.get("k"), "b": b.get("k"), "c": c.get("k")} == dict.fromkeys("abc", truth)


def test_an_add_racing_a_set_on_the_wire_leaves_the_adder_with_what_redis_holds(
    caches: dict[str, Any],
) -> None:
    """A adds k (absent); right after A's compare-and-set ran, B sets k and A hears it
    before its add returns: A must not put its own value back over B's newer one."""
    a, b, c = caches["make"](4096)
    for cache in (a, b, c):
        subscribed(cache, probe=True)
    a.add("other", "warm")  # whatever A's add runs is loaded on the server now
    caches["cls"].armed = "after"
    assert a.add("k", "from-a")
    assert caches["cls"].armed is None, "the adder's write was never sent"
    with TierCache(caches["raw"], namespace=a.namespace) as fresh:
        assert fresh.get("k") == "from-b"  # B's set ran after A's add
    assert a.get("k") == "from-b"


def test_a_write_whose_l1_was_refilled_with_an_older_value_meanwhile_drops_it(
    caches: dict[str, Any],
) -> None:
    """B sets k just before A's set of k runs; A hears B's message while its own write is
    on the wire (k is A's then: the message only drops it) and a request thread of A reads
    "from-b" back from Redis into L1. A's write then runs: Redis holds "from-a", and A must
    not keep serving "from-b" (it did when its write only skipped its own fill)."""
    a, b, c = caches["make"](4096)
    for cache in (a, b, c):
        subscribed(cache, probe=True)
    a.set("other", "warm")  # whatever A's write runs is loaded on the server now
    caches["cls"].armed = "before"
    a.set("k", "from-a")
    assert caches["cls"].armed is None, "the writer's set was never sent"
    with TierCache(caches["raw"], namespace=a.namespace) as fresh:
        assert fresh.get("k") == "from-a"  # A's set ran after B's
    assert a.get("k") == "from-a"
    assert wait_until(lambda: b.get("k") == "from-a" and c.get("k") == "from-a")
