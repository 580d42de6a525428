"""Redis Cluster: construction, redis-py's cluster errors, and a node that dies under load.

The session cluster (``redis_cluster``: 3 primaries, no replicas,
``cluster-require-full-coverage no``) serves the quick tests; the tests that kill a node
start a cluster of their own and are marked ``slow``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import RedisClusterUnreachableError, SlotNotCoveredError

from tests.conftest import require_cluster_tools
from tests.redis_cluster import RedisClusterProcesses
from tests.support import WAIT, LoadThreads, subscribed, unique_namespace, wait_until
from tiercache import TierCache
from tiercache.connect import client_from_url
from tiercache.errors import L2Error
from tiercache.l2 import RedisTier
from tiercache.layout import channel_name, version_key
from tiercache.resilience import OPEN, CircuitBreaker
from tiercache.shards import group_of, shard_channels

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

MISSING: Any = object()


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterProcesses]:
    """A cluster of this test's own, free to lose a node."""
    require_cluster_tools()
    with RedisClusterProcesses() as cluster:
        yield cluster


def test_cluster_url_builds_a_cluster_client_with_short_timeouts_and_no_retries(
    redis_cluster: RedisClusterProcesses,
) -> None:
    """redis+cluster:// gives a RedisCluster whose own retries and node retries are off."""
    client = client_from_url(redis_cluster.url)
    try:
        assert isinstance(client, redis.RedisCluster)
        assert client.retry.get_retries() == 0
        node = client.get_default_node()
        kwargs = client.get_redis_connection(node).connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 0.25
        assert kwargs["retry"].get_retries() == 0
    finally:
        client.close()


def test_from_url_on_a_cluster_caches_and_invalidates_across_instances(
    redis_cluster: RedisClusterProcesses, namespace: str
) -> None:
    """TierCache.from_url(redis+cluster://...) works end to end: L2 shared, bus delivering."""
    with (
        TierCache.from_url(redis_cluster.url, namespace=namespace, l1_ttl=60) as first,
        TierCache.from_url(redis_cluster.url, namespace=namespace, l1_ttl=60) as second,
    ):
        subscribed(first)
        subscribed(second)
        first.set_many({f"k{i}": i for i in range(50)})
        assert second.get_many([f"k{i}" for i in range(50)]) == {f"k{i}": i for i in range(50)}
        first.set("k1", "new")
        assert wait_until(lambda: second.get("k1") == "new")


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(SlotNotCoveredError("slot 42 is not covered"), id="slot-not-covered"),
        pytest.param(RedisClusterUnreachableError("no node answered"), id="unreachable"),
    ],
)
def test_cluster_exceptions_are_a_miss_not_a_crash(
    cluster_redis: redis.RedisCluster, namespace: str, monkeypatch: Any, error: Exception
) -> None:
    """redis-py's RedisClusterException family (not RedisError) is L2 trouble: a miss."""
    assert not isinstance(error, redis.RedisError)
    with TierCache(cluster_redis, namespace=namespace) as cache:
        cache.set("k", 1)

        def fail(*_args: Any, **_kwargs: Any) -> Any:
            raise error

        monkeypatch.setattr(cluster_redis, "get", fail)
        monkeypatch.setattr(cluster_redis, "mget_nonatomic", fail)
        fresh = TierCache(cluster_redis, namespace=namespace)
        try:
            assert fresh.get("k", MISSING) is MISSING
            assert fresh.get_many(["k", "j"]) == {}
            assert fresh.get_or_set("k", lambda: 2) == 2
            assert fresh.stats()["l2_errors"] >= 3
        finally:
            fresh.close()


@pytest.mark.slow
def test_dead_primary_under_load_is_a_miss_in_bounded_time_and_other_slots_keep_serving(
    own_cluster: RedisClusterProcesses, namespace: str
) -> None:
    """Kill one primary (no replica) under 8 threads: no exception reaches a caller, no call
    takes 1 s, and the keys of the surviving slots are still read from L2."""
    keys = [f"k{i}" for i in range(200)]
    with (
        TierCache.from_url(own_cluster.url, namespace=namespace) as writer,
        TierCache.from_url(own_cluster.url, namespace=namespace, l1_maxsize=1) as reader,
    ):
        subscribed(writer)
        subscribed(reader)
        writer.set_many({key: key for key in keys})
        # Not the node of the namespace version, which every read checks (see the next test).
        version_node = own_cluster.node_for_key(version_key(namespace, ""))
        victim = next(n for n in own_cluster.nodes if n is not version_node)
        survivors = [k for k in keys if own_cluster.node_for_key(f"{namespace}:{k}") is not victim]

        def call(i: int) -> None:
            key = keys[i % len(keys)]
            if i % 3 == 0:
                reader.get_many(keys[i % 150 : i % 150 + 50])
            elif i % 3 == 1:
                reader.get_or_set(key, lambda k=key: k)
            else:
                writer.set(key, key)

        with LoadThreads(call) as load:
            assert wait_until(lambda: load.calls > 200)
            victim.kill()
            killed_at = load.calls
            assert wait_until(lambda: load.calls > killed_at + 2000, timeout=WAIT)
        assert load.errors == []
        assert max(load.durations) < 1.0, f"slowest call {max(load.durations):.3f} s"
        before = reader.stats()["l2_hits"]
        assert wait_until(lambda: reader.get_many(survivors[:20]) == {k: k for k in survivors[:20]})
        assert reader.stats()["l2_hits"] > before


@pytest.mark.slow
def test_bus_moves_to_a_live_primary_and_flushes_l1_when_its_node_dies(
    own_cluster: RedisClusterProcesses,
) -> None:
    """The subscriber's node dies: the listener flushes L1, resubscribes through another
    primary, and invalidations reach it again."""
    probe = client_from_url(own_cluster.url)
    bus_port = probe.get_primaries()[0].port  # where every instance's bus starts
    probe.close()
    # A namespace whose version key survives: reads and writes check it (a namespace whose
    # version lives on a dead primary has no L2 until that slot is served again).
    namespace = next(
        ns
        for ns in (unique_namespace() for _ in range(100))
        if own_cluster.node_for_key(version_key(ns, "")).port != bus_port
    )
    with (
        TierCache.from_url(own_cluster.url, namespace=namespace, l1_ttl=60) as writer,
        TierCache.from_url(own_cluster.url, namespace=namespace, l1_ttl=60) as reader,
    ):
        before = subscribed(reader)
        subscribed(writer)
        reader_l2 = reader._l2
        assert reader_l2 is not None
        assert reader_l2._pubsub_node().port == bus_port
        key = next(
            f"k{i}"
            for i in range(100)
            if own_cluster.node_for_key(f"{namespace}:k{i}").port != bus_port
        )
        next(n for n in own_cluster.nodes if n.port == bus_port).kill()

        def resubscribed() -> bool:
            stats = reader.stats()
            return (
                stats["bus_subscribed"] == 1
                and stats["bus_subscriptions"] > before["bus_subscriptions"]
            )

        assert wait_until(resubscribed, timeout=WAIT)
        after = reader.stats()
        assert after["bus_losses"] > before["bus_losses"]
        assert after["l1_flushes"] > before["l1_flushes"]
        assert reader_l2._pubsub_node().port != bus_port
        writer.set(key, "old")
        assert reader.get(key) == "old"

        def delivered() -> bool:
            writer.set(key, "new")
            return reader.get(key) == "new"

        assert wait_until(delivered, timeout=WAIT)


# -- sharded pub/sub -----------------------------------------------------------------------


def test_sharded_pubsub_needs_a_cluster_client(fake_redis: redis.Redis) -> None:
    """pubsub="sharded" on a single-server client is a ValueError naming the option."""
    with pytest.raises(ValueError, match='pubsub="sharded"'):
        TierCache(fake_redis, pubsub="sharded")


def test_sharded_bus_carries_keys_clear_and_tags_between_instances(
    redis_cluster: RedisClusterProcesses, namespace: str
) -> None:
    """With pubsub="sharded", sets, deletes, clear and invalidate_tags reach the other
    instance's L1, key by key (no flush), over SPUBLISH on the keys' own shards."""
    options = {"namespace": namespace, "l1_ttl": 60, "pubsub": "sharded"}
    with (
        TierCache.from_url(redis_cluster.url, **options) as writer,
        TierCache.from_url(redis_cluster.url, **options) as reader,
    ):
        subscribed(writer, probe=True)
        before = subscribed(reader, probe=True)
        keys = [f"k{i}" for i in range(30)]
        writer.set_many(dict.fromkeys(keys, "old"))
        writer.set("tagged", "old", tags=("t",))
        assert reader.get_many([*keys, "tagged"]) == dict.fromkeys([*keys, "tagged"], "old")

        writer.set_many(dict.fromkeys(keys, "new"))
        writer.delete("k0")
        assert wait_until(lambda: reader.get_many(keys) == dict.fromkeys(keys[1:], "new"))
        after = reader.stats()
        assert after["l1_flushes"] == before["l1_flushes"]
        assert after["bus_gaps"] == 0

        writer.invalidate_tags("t")
        assert wait_until(lambda: reader.get("tagged", MISSING) is MISSING)
        writer.set("k1", "cleared?")
        reader.get("k1")
        writer.clear()
        assert wait_until(lambda: reader.get("k1", MISSING) is MISSING)


@pytest.mark.slow
def test_sharded_bus_resubscribes_and_flushes_when_a_channel_slot_moves(
    own_cluster: RedisClusterProcesses, namespace: str
) -> None:
    """Resharding: the slot of a sharded channel moves to another primary. Redis unsubscribes
    the channel; the listener flushes L1, subscribes on the new owner and hears it again."""
    options = {"namespace": namespace, "l1_ttl": 60, "pubsub": "sharded"}
    with (
        TierCache.from_url(own_cluster.url, **options) as writer,
        TierCache.from_url(own_cluster.url, **options) as reader,
    ):
        subscribed(writer, probe=True)
        before = subscribed(reader, probe=True)
        key = "moving"
        group = group_of(f"{namespace}:{key}")
        channel = shard_channels(channel_name(namespace))[group]
        slot = key_slot(channel.encode())
        source = own_cluster.node_for_key(channel)
        target = next(n for n in own_cluster.nodes if n is not source)
        ids = {
            n.port: n.client().execute_command("CLUSTER", "MYID").decode() for n in (source, target)
        }
        moved = False
        for node in (target, source):  # an empty slot: no keys to migrate
            client = node.client()
            try:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])
                moved = True
            finally:
                client.close()
        assert moved

        def resubscribed() -> bool:
            stats = reader.stats()
            return (
                stats["bus_subscribed"] == 1
                and stats["bus_subscriptions"] > before["bus_subscriptions"]
            )

        assert wait_until(resubscribed, timeout=WAIT)
        assert reader.stats()["l1_flushes"] > before["l1_flushes"]
        writer.set(key, "old")
        assert reader.get(key) == "old"

        def delivered() -> bool:
            writer.set(key, "new")
            return reader.get(key) == "new"

        assert wait_until(delivered, timeout=WAIT)


@pytest.mark.slow
def test_resharding_under_load_moves_keys_without_an_exception_or_a_stall(
    own_cluster: RedisClusterProcesses, namespace: str
) -> None:
    """Slots move to another primary (MIGRATING/IMPORTING, MIGRATE, SETSLOT) while 8 threads
    read and write: redis-py follows the ASK/MOVED redirects; no exception reaches a caller,
    no call takes 1 s, and every key reads back its value from L2 afterwards."""
    keys = [f"k{i}" for i in range(300)]
    with (
        TierCache.from_url(own_cluster.url, namespace=namespace) as writer,
        TierCache.from_url(own_cluster.url, namespace=namespace, l1_maxsize=1) as reader,
    ):
        subscribed(writer)
        subscribed(reader)
        writer.set_many({key: key for key in keys})
        slots = sorted({key_slot(f"{namespace}:{k}".encode()) for k in keys[:40]})

        def call(i: int) -> None:
            if i % 2:
                reader.get_many(keys[i % 250 : i % 250 + 50])
            else:
                writer.set(keys[i % len(keys)], keys[i % len(keys)])

        with LoadThreads(call) as load:
            assert wait_until(lambda: load.calls > 100)
            moved = 0
            for slot in slots:
                owner = own_cluster.node_for_slot(slot)
                target = next(n for n in own_cluster.nodes if n is not owner)
                moved += own_cluster.move_slot(slot, target)
            assert moved >= 40
            done = load.calls
            assert wait_until(lambda: load.calls > done + 200)
        assert load.errors == []
        assert max(load.durations) < 1.0, f"slowest call {max(load.durations):.3f} s"
        assert wait_until(lambda: reader.get_many(keys) == {k: k for k in keys})


@pytest.fixture
def replicated_cluster() -> Iterator[RedisClusterProcesses]:
    """3 primaries with a replica each, of this test's own."""
    require_cluster_tools()
    with RedisClusterProcesses(replicas=1) as cluster:
        yield cluster


@pytest.mark.slow
@pytest.mark.parametrize("pubsub", ["classic", "sharded"])
def test_failover_inside_the_cluster_under_load_resumes_l2_and_the_bus(
    replicated_cluster: RedisClusterProcesses, pubsub: str
) -> None:
    """A primary with a replica dies under 8 threads: no exception reaches a caller; once the
    replica is promoted, its slots serve from L2 again and the bus (classic or sharded)
    delivers again, without a restart."""
    cluster = replicated_cluster
    probe = client_from_url(cluster.url)
    bus_port = probe.get_primaries()[0].port
    probe.close()
    victim = next(n for n in cluster.primaries() if n.port != bus_port)
    # A namespace whose version lives elsewhere, and keys on the victim's slots.
    namespace = next(
        ns
        for ns in (unique_namespace() for _ in range(100))
        if cluster.node_for_key(version_key(ns, "")) is not victim
    )
    keys = [f"k{i}" for i in range(200)]
    lost = [k for k in keys if cluster.node_for_key(f"{namespace}:{k}") is victim]
    options = {"namespace": namespace, "l1_ttl": 60, "pubsub": pubsub}
    with (
        TierCache.from_url(cluster.url, **options) as writer,
        TierCache.from_url(cluster.url, **options) as reader,
    ):
        subscribed(writer)
        subscribed(reader)
        writer.set_many({key: key for key in keys})

        def call(i: int) -> None:
            key = keys[i % len(keys)]
            if i % 2:
                reader.get_or_set(key, lambda k=key: k)
            else:
                writer.set(key, key)

        with LoadThreads(call) as load:
            assert wait_until(lambda: load.calls > 100)
            victim.kill()
            killed_at = time.monotonic()
            assert wait_until(lambda: len(cluster.primaries()) == 3, timeout=WAIT)
            promoted_at = time.monotonic()

            def l2_again() -> bool:
                # A new instance has an empty L1: its value can only come from L2.
                fresh = TierCache.from_url(cluster.url, **options)
                try:
                    return bool(fresh.get(lost[0]) == lost[0])
                finally:
                    fresh.close()

            assert wait_until(l2_again, timeout=WAIT)
            l2_at = time.monotonic()

            def delivered() -> bool:
                writer.set(lost[1], "new")
                return reader.get(lost[1]) == "new"

            reader.get(lost[1])
            assert wait_until(delivered, timeout=WAIT)
            print(
                f"promoted {promoted_at - killed_at:.2f} s after the kill; L2 again "
                f"{l2_at - promoted_at:.2f} s and the bus {time.monotonic() - promoted_at:.2f} s "
                "after the promotion"
            )
        assert load.errors == []
        # A get_or_set may wait for a lease taken just before the kill: its placeholder was
        # replicated, its holder's write was lost with the primary, so waiters wait out
        # lease_wait (5 s), as for any lease whose holder is gone. Nothing else may stall.
        assert max(load.durations) < 5.0 + 1.0, f"slowest call {max(load.durations):.3f} s"
        slow = [d for d in load.durations if d >= 1.0]
        assert len(slow) <= 8, f"{len(slow)} calls of 1 s or more"
        assert wait_until(lambda: reader.stats()["bus_subscribed"] == 1)


def _raising(exc: BaseException) -> Any:
    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    return fail


def _caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("error", "counted"),
    [
        pytest.param(
            _caused(redis.ConnectionError("Error 111"), ConnectionRefusedError()),
            False,
            id="refused",
        ),
        pytest.param(
            _caused(redis.ConnectionError("reading"), ConnectionResetError()), False, id="reset"
        ),
        pytest.param(redis.ConnectionError("Connection closed by server"), False, id="closed"),
        pytest.param(redis.TimeoutError("Timeout reading"), True, id="timeout"),
        pytest.param(RedisClusterUnreachableError("no node"), True, id="unreachable"),
    ],
)
def test_on_a_cluster_only_waits_count_against_the_breaker(
    cluster_redis: redis.RedisCluster, monkeypatch: Any, error: BaseException, counted: bool
) -> None:
    """One node refusing, resetting or closing costs no wait and does not open the breaker
    for the whole cluster; a timeout or an unreachable cluster counts."""
    tier = RedisTier(cluster_redis, CircuitBreaker(failures=1))
    monkeypatch.setattr(cluster_redis, "get", _raising(error))
    with pytest.raises(L2Error):
        tier.get("k")
    assert (tier.breaker.state == OPEN) is counted


def test_scripts_load_on_their_key_node_only(
    redis_cluster: RedisClusterProcesses,
    cluster_redis: redis.RedisCluster,
    namespace: str,
    monkeypatch: Any,
) -> None:
    """A script the key's node does not have yet is sent there with EVAL, not loaded with
    SCRIPT LOAD, which a cluster client sends to every primary (one dead primary would make
    every new script fail, e.g. a lease write, leaving its placeholder behind)."""
    for node in redis_cluster.nodes:
        client = node.client()
        try:
            client.script_flush()
        finally:
            client.close()
    monkeypatch.setattr(
        cluster_redis, "script_load", _raising(redis.ConnectionError("a primary is down"))
    )
    with TierCache(cluster_redis, namespace=namespace) as cache:
        assert cache.get_or_set("k", lambda: "loaded") == "loaded"
        stats = cache.stats()
        assert stats["l2_errors"] == 0
        assert stats["l2_write_errors"] == 0
    with TierCache(cluster_redis, namespace=namespace) as other:
        assert other.get("k") == "loaded"  # from L2: the lease write went through
