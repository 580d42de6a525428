"""The invalidation bus on a real redis-server: subscription, self-probe, loss and
resubscription (killed connection, dead or frozen server), sequence gaps, garbage on the
channel, ACLs, readers draining pending messages, and close()."""

from __future__ import annotations

import contextlib
import logging
import re
import select
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
import redis
from redis.exceptions import NoPermissionError

from tests.redis_server import RedisServer
from tests.support import WAIT, CacheFactory, Loader, subscribed, wait_until
from tiercache import TierCache, listener
from tiercache.bus_health import BusHealth
from tiercache.l2 import RedisTier
from tiercache.listener import Listener
from tiercache.messages import MESSAGE_VERSION, OP_KEYS, channel_name, encode_message
from tiercache.publisher import Publisher

pytestmark = pytest.mark.redis

FAKE_ORIGIN = b"\xfa" * 16  # another instance, speaking the wire format by hand
OTHER_ORIGIN = b"\xfb" * 16

MakeCache = Callable[..., TierCache]


@pytest.fixture
def make_cache(namespace: str) -> Iterator[MakeCache]:
    """Build ``TierCache.from_url`` caches on the test's namespace; all closed afterwards."""
    with CacheFactory(namespace=namespace) as factory:

        def make(server: RedisServer, url: str | None = None, **options: Any) -> TierCache:
            return factory(client=url or server.url, **options)

        yield make


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client to the session server, for PUBLISH and PUBSUB."""
    client = redis_server.client()
    try:
        yield client
    finally:
        client.close()


def started(cache: TierCache) -> TierCache:
    """Use ``cache`` once and wait until its listener subscribed and heard its own probe."""
    subscribed(cache, probe=True)
    return cache


def started_pair(server: RedisServer, make_cache: MakeCache) -> tuple[TierCache, TierCache]:
    """A reader and a writer on one namespace, each having heard both start-up probes."""
    reader = started(make_cache(server))
    writer = started(make_cache(server))
    assert wait_until(lambda: stat(reader, "bus_received") == 2)  # its probe + the writer's
    return reader, writer


def stat(cache: TierCache, name: str) -> int:
    return cache.stats()[name]


def served_from_l1(cache: TierCache, key: str) -> bool:
    """Read ``key`` once; whether the read was an L1 hit."""
    hits = stat(cache, "l1_hits")
    cache.get(key)
    return stat(cache, "l1_hits") == hits + 1


def served_from_l2(cache: TierCache, key: str) -> bool:
    """Read ``key`` once; whether the read was an L2 hit."""
    hits = stat(cache, "l2_hits")
    cache.get(key)
    return stat(cache, "l2_hits") == hits + 1


def publish_keys(client: redis.Redis, namespace: str, origin: bytes, seq: int, *keys: str) -> int:
    """PUBLISH a hand-made OP_KEYS message; the number of subscribers it reached."""
    return int(
        client.publish(channel_name(namespace), encode_message(origin, seq, OP_KEYS, list(keys)))
    )


def wait_received(cache: TierCache, count: int) -> None:
    """Wait until the listener has handled ``count`` messages in all (its own included)."""
    assert wait_until(lambda: stat(cache, "bus_received") >= count), cache.stats()


# -- start-up -------------------------------------------------------------------------------


def test_first_use_subscribes_probes_the_channel_and_flushes_l1_once(
    redis_server: RedisServer, make_cache: MakeCache
) -> None:
    """First use subscribes once, its probe comes back, L1 is flushed exactly once."""
    cache = make_cache(redis_server)
    before = cache.stats()
    assert before["bus_subscribed"] == 0
    assert before["bus_subscriptions"] == 0
    assert before["bus_probe_ok"] == -1
    assert before["bus_last_message_age_ms"] == -1

    started(cache)

    after = cache.stats()
    assert after["bus_subscribed"] == 1
    assert after["bus_subscriptions"] == 1
    assert after["l1_flushes"] == 1
    assert after["bus_losses"] == 0
    assert after["bus_sent"] == 1  # the probe
    assert after["bus_received"] == after["bus_ignored"] == 1  # its echo
    assert after["bus_last_message_age_ms"] >= 0


def test_own_echo_is_ignored_and_keeps_the_writers_l1_entry(
    redis_server: RedisServer, make_cache: MakeCache
) -> None:
    """A set's own message comes back, is counted as ignored and drops nothing."""
    cache = started(make_cache(redis_server))

    cache.set("k", "v")

    assert wait_until(lambda: stat(cache, "bus_ignored") == 2)  # probe + this echo
    assert served_from_l1(cache, "k")
    assert stat(cache, "l1_flushes") == 1
    assert stat(cache, "bus_sent") == 2


# -- losing and regaining the subscription --------------------------------------------------


def test_listener_resubscribes_by_itself_after_client_kill_and_flushes_l1(
    fresh_redis_server: RedisServer, make_cache: MakeCache, namespace: str
) -> None:
    """After CLIENT KILL it resubscribes alone; a message sent meanwhile is lost, L1 flushed."""
    server = fresh_redis_server
    cache = started(make_cache(server))
    cache.set("k", "v")
    assert wait_until(lambda: stat(cache, "bus_ignored") == 2)
    assert served_from_l1(cache, "k")
    flushes = stat(cache, "l1_flushes")

    killer = server.client()
    try:
        # Atomic on the server: the subscriber is gone when the PUBLISH runs, whatever the
        # listener thread does meanwhile.
        pipe = killer.pipeline(transaction=True)
        pipe.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        pipe.publish(
            channel_name(namespace), encode_message(FAKE_ORIGIN, 1, OP_KEYS, ["k", "other"])
        )
        killed, receivers = pipe.execute()
    finally:
        killer.close()
    assert (killed, receivers) == (1, 0)  # the message reached nobody: lost

    assert wait_until(
        lambda: stat(cache, "bus_subscriptions") == 2 and stat(cache, "bus_ignored") == 3
    ), cache.stats()  # resubscribed, and the new probe came back
    stats = cache.stats()
    assert stats["bus_subscribed"] == 1
    assert stats["bus_losses"] == 1
    assert stats["l1_flushes"] == flushes + 2  # one when the loss is noticed, one at resubscribe
    assert stats["bus_received"] == stats["bus_ignored"]  # only our own probes and echo
    assert served_from_l2(cache, "k")


def test_while_unsubscribed_old_entries_are_not_served_new_ones_are_and_restart_resubscribes(
    fresh_redis_server: RedisServer, make_cache: MakeCache
) -> None:
    """Guarantee 2 while Redis is dead: older L1 entries unserved, newer served; restart resyncs."""
    server = fresh_redis_server
    cache = started(make_cache(server))
    cache.set("before", "old")
    assert served_from_l1(cache, "before")

    server.kill()
    assert wait_until(lambda: stat(cache, "bus_subscribed") == 0)
    assert stat(cache, "bus_losses") == 1
    assert stat(cache, "l1_flushes") == 2

    assert cache.get("before", default="miss") == "miss"
    reload = Loader("from loader")
    assert cache.get_or_set("before", reload) == "from loader"
    during = Loader("during")
    assert cache.get_or_set("during", during) == "during"
    cache.set("written", 5)  # Redis is down: counted and logged, kept in L1
    assert served_from_l1(cache, "during")
    assert cache.get_or_set("during", during) == "during"
    assert cache.get("written") == 5
    assert (reload.calls, during.calls) == (1, 1)
    assert stat(cache, "bus_subscribed") == 0

    server.restart()
    assert wait_until(
        lambda: stat(cache, "bus_subscribed") == 1 and stat(cache, "bus_subscriptions") == 2
    ), cache.stats()
    assert stat(cache, "l1_flushes") == 3
    assert cache.get_or_set("during", during) == "during"
    assert during.calls == 2  # flushed at resubscription; the restarted server is empty


def test_frozen_server_is_noticed_by_the_ping_health_check_and_resubscribed_after_resume(
    fresh_redis_server: RedisServer, make_cache: MakeCache
) -> None:
    """A frozen server misses a PONG: loss noticed, L1 flushed; after SIGCONT it resubscribes."""
    server = fresh_redis_server
    cache = started(make_cache(server))

    server.pause()
    try:
        assert wait_until(lambda: stat(cache, "bus_subscribed") == 0), cache.stats()
        assert stat(cache, "bus_losses") == 1
        assert stat(cache, "l1_flushes") == 2
    finally:
        server.resume()

    assert wait_until(
        lambda: stat(cache, "bus_subscribed") == 1 and stat(cache, "bus_subscriptions") == 2
    ), cache.stats()
    assert stat(cache, "l1_flushes") == 3


# -- sequence numbers -----------------------------------------------------------------------


def test_sequence_gap_flushes_l1_duplicates_are_ignored_and_new_origins_set_a_baseline(
    redis_server: RedisServer, make_cache: MakeCache, admin: redis.Redis, namespace: str
) -> None:
    """First seq is a baseline, a skipped one flushes L1, an old/repeated one is ignored."""
    cache = started(make_cache(redis_server))
    cache.set("k", "v")
    assert wait_until(lambda: stat(cache, "bus_ignored") == 2)
    received, flushes = stat(cache, "bus_received"), stat(cache, "l1_flushes")

    publish_keys(admin, namespace, FAKE_ORIGIN, 1, "other")
    wait_received(cache, received + 1)
    assert (stat(cache, "bus_gaps"), stat(cache, "l1_flushes")) == (0, flushes)
    assert served_from_l1(cache, "k")

    publish_keys(admin, namespace, FAKE_ORIGIN, 3, "other")  # seq 2 never arrives
    wait_received(cache, received + 2)
    assert (stat(cache, "bus_gaps"), stat(cache, "l1_flushes")) == (1, flushes + 1)
    assert served_from_l2(cache, "k")

    ignored = stat(cache, "bus_ignored")
    publish_keys(admin, namespace, FAKE_ORIGIN, 3, "k")  # duplicate
    publish_keys(admin, namespace, FAKE_ORIGIN, 2, "k")  # older than the last one seen
    wait_received(cache, received + 4)
    assert stat(cache, "bus_ignored") == ignored + 2
    assert (stat(cache, "bus_gaps"), stat(cache, "l1_flushes")) == (1, flushes + 1)
    assert served_from_l1(cache, "k")  # an ignored message drops nothing

    publish_keys(admin, namespace, OTHER_ORIGIN, 57, "k")  # unknown origin, any seq
    wait_received(cache, received + 5)
    assert (stat(cache, "bus_gaps"), stat(cache, "l1_flushes")) == (1, flushes + 1)
    assert served_from_l2(cache, "k")  # applied: its key was dropped


# -- bad input on the channel ---------------------------------------------------------------


GARBAGE = [
    b"",
    b"not msgpack \xc1",
    msgpack.packb("a string"),
    msgpack.packb([MESSAGE_VERSION + 1, FAKE_ORIGIN, 1, OP_KEYS, ["k"]]),  # a future version
    msgpack.packb([MESSAGE_VERSION, FAKE_ORIGIN, 1, OP_KEYS, "k"]),  # keys not a list
    msgpack.packb([MESSAGE_VERSION, "origin", 1, OP_KEYS, ["k"]]),
]


def test_garbage_on_the_channel_is_counted_and_the_listener_keeps_working(
    redis_server: RedisServer,
    make_cache: MakeCache,
    admin: redis.Redis,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Undecodable payloads are counted and logged; the listener stays up and still applies."""
    caplog.set_level(logging.WARNING, logger="tiercache")
    reader, writer = started_pair(redis_server, make_cache)
    received = stat(reader, "bus_received")
    writer.set("k", 1)
    wait_received(reader, received + 1)
    assert reader.get("k") == 1

    for raw in GARBAGE:
        admin.publish(channel_name(namespace), raw)
    assert wait_until(lambda: stat(reader, "bus_undecodable") == len(GARBAGE)), reader.stats()

    stats = reader.stats()
    assert (stats["bus_subscribed"], stats["bus_subscriptions"], stats["bus_losses"]) == (1, 1, 0)
    assert stats["bus_gaps"] == 0
    assert any("undecodable" in r.getMessage() for r in caplog.records)

    writer.set("k", 2)
    wait_received(reader, received + 2 + len(GARBAGE))
    assert reader.get("k") == 2
    assert stat(reader, "bus_losses") == 0


def test_array_in_the_op_field_is_undecodable_not_a_lost_subscription(
    redis_server: RedisServer, make_cache: MakeCache, admin: redis.Redis, namespace: str
) -> None:
    """A message with an array where the op belongs counts as undecodable; no loss."""
    cache = started(make_cache(redis_server))
    received = stat(cache, "bus_received")

    admin.publish(channel_name(namespace), msgpack.packb([1, FAKE_ORIGIN, 1, [1], ["k"]]))

    wait_received(cache, received + 1)
    assert wait_until(lambda: stat(cache, "bus_undecodable") == 1, timeout=1.0)
    assert stat(cache, "bus_losses") == 0


# -- ACL: no permission on the channel ------------------------------------------------------


def _grant(server: RedisServer, *rules: str) -> None:
    """ACL SETUSER u with ``rules``, as the default user."""
    admin = server.client()
    try:
        admin.execute_command("ACL", "SETUSER", "u", *rules)
    finally:
        admin.close()


def _warned(caplog: pytest.LogCaptureFixture, *parts: str) -> bool:
    return any(
        r.levelno == logging.WARNING and all(p in r.getMessage() for p in parts)
        for r in caplog.records
    )


def test_user_without_channel_permission_gets_an_error_naming_the_acl_and_a_warning(
    fresh_redis_server: RedisServer,
    make_cache: MakeCache,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without &tiercache:inv:*, reads raise NoPermissionError naming the ACL, and it is logged."""
    # SUBSCRIBE is refused: bus_probe_ok says 0 (not working), so a dashboard alerting on it
    # fires. Granting the channel later heals the cache without a restart.
    caplog.set_level(logging.WARNING, logger="tiercache")
    server = fresh_redis_server
    _grant(server, "on", ">pw", "~*", "+@all", "resetchannels")
    cache = make_cache(server, url=f"redis://u:pw@127.0.0.1:{server.port}/0")
    channel = channel_name(namespace)
    loader = Loader("v")

    # The refusal may arrive after the first call's bounded wait for the listener.
    with contextlib.suppress(NoPermissionError):
        cache.get("first-use")
    assert wait_until(lambda: _warned(caplog, channel, "no permissions")), caplog.messages
    with pytest.raises(NoPermissionError, match=re.escape(f"&{channel}")):
        cache.get_or_set("k", loader)
    assert loader.calls == 0
    stats = cache.stats()
    assert (stats["bus_subscribed"], stats["bus_subscriptions"], stats["bus_probe_ok"]) == (
        0,
        0,
        0,
    )

    _grant(server, "allchannels")
    assert wait_until(lambda: stat(cache, "bus_probe_ok") == 1), cache.stats()
    assert cache.get_or_set("k", loader) == "v"


class DelaySpy(threading.Event):
    """A listener's stop event, recording how long the listener backs off between attempts."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is not None:
            self.waits.append(timeout)
        return super().wait(timeout)


class NullReceiver:
    """A receiver with no L1 behind it."""

    def apply_keys(self, keys: list[str]) -> None:
        """Nothing to drop."""

    def apply_clear(self, ns_version: int) -> None:
        """Nothing to drop."""

    def apply_tags(self, tags: dict[str, int]) -> None:
        """Nothing to drop."""

    def flush_l1(self, reason: str) -> None:
        """Nothing to drop."""

    def apply_values(self, pairs: list[list[object]]) -> None:
        """Nothing to keep."""

    def own_echo(self, seq: int) -> None:
        """Nothing was written."""

    def apply_ready(self, pairs: list[list[object]]) -> None:
        """Nobody waits."""


def test_refused_subscription_is_retried_with_growing_backoff(
    fresh_redis_server: RedisServer, namespace: str
) -> None:
    """A subscription Redis keeps refusing is retried less and less often, not every 0.1 s."""
    server = fresh_redis_server
    _grant(server, "on", ">pw", "~*", "+@all", "resetchannels")
    client = redis.Redis.from_url(f"redis://u:pw@127.0.0.1:{server.port}/0")
    tier = RedisTier(client)
    health = BusHealth()
    spy = DelaySpy()
    bus_listener = Listener(
        tier, Publisher(tier, channel_name(namespace), health), NullReceiver(), health, stop=spy
    )
    try:
        assert bus_listener.start()
        assert wait_until(lambda: len(spy.waits) >= 4), spy.waits
        assert isinstance(bus_listener.config_error, NoPermissionError)
    finally:
        bus_listener.close(WAIT)
        client.close()

    # Jitter only halves a delay: with doubling the 4th is >= 4x the 1st; a backoff stuck at
    # one step keeps every delay within 2x of the others.
    assert spy.waits[3] > 2 * spy.waits[0], spy.waits


# -- readers apply pending messages themselves ----------------------------------------------


def test_busy_reader_thread_sees_another_instances_invalidation(
    redis_server: RedisServer, make_cache: MakeCache
) -> None:
    """A thread hammering get_or_set on an L1 hit sees another instance's set, bounded."""
    reader, writer = started_pair(redis_server, make_cache)
    received = stat(reader, "bus_received")
    writer.set("k", "old")
    wait_received(reader, received + 1)
    loader = Loader("loaded")
    assert reader.get_or_set("k", loader) == "old"
    warmed, seen = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hammer() -> None:
        deadline = time.monotonic() + WAIT
        reads = 0
        try:
            while time.monotonic() < deadline:
                value = reader.get_or_set("k", loader)
                sum(i * i for i in range(50))  # some pure-Python work between reads
                reads += 1
                if reads == 1000:
                    warmed.set()
                if value == "new":
                    seen.set()
                    return
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)

    thread = threading.Thread(target=hammer, name="busy-reader")
    thread.start()
    try:
        assert warmed.wait(WAIT)
        assert stat(reader, "l1_hits") >= 1000  # the reader is on the L1-hit path
        writer.set("k", "new")
        assert seen.wait(WAIT)
    finally:
        thread.join(WAIT)
    assert not thread.is_alive()
    assert errors == []
    assert loader.calls == 0


class ParkableListener:
    """Stands in for ``select.poll`` in ``tiercache.listener``: on demand, the listener's
    next ``poll()`` parks (outside the receive lock) until released, so only a reader's
    ``drain()`` can apply what arrives meanwhile."""

    def __init__(self) -> None:
        self.park = threading.Event()
        self.parked = threading.Event()
        self.release = threading.Event()

    def make_poller(self) -> Any:
        real = select.poll()
        gate = self

        class Poller:
            def register(self, fd: int, mask: int) -> None:
                real.register(fd, mask)

            def poll(self, timeout_ms: int) -> list[tuple[int, int]]:
                if gate.park.is_set() and not gate.release.is_set():
                    gate.parked.set()
                    gate.release.wait(WAIT)
                return real.poll(timeout_ms)

        return Poller()


def test_drain_applies_a_pending_message_while_the_listener_is_parked(
    redis_server: RedisServer, make_cache: MakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the listener stuck in poll(), a reader's Bus.drain() applies the waiting message."""
    # invalidate-only, so the applied message is visible as an emptied L1
    writer = started(make_cache(redis_server, propagate_values=0))  # keeps the real poll
    gate = ParkableListener()
    fake_select = SimpleNamespace(
        poll=gate.make_poller, POLLIN=select.POLLIN, POLLPRI=select.POLLPRI
    )
    monkeypatch.setattr(listener, "select", fake_select)
    reader = started(make_cache(redis_server, propagate_values=0))  # the one that parks
    reader.set("k", "old")
    assert wait_until(lambda: stat(reader, "bus_ignored") == 2)
    bus = reader._coherence.bus  # type: ignore[union-attr]

    gate.park.set()
    try:
        assert gate.parked.wait(WAIT)
        received = stat(reader, "bus_received")
        writer.set("k", "new")
        assert stat(reader, "l1_size") == 1  # nobody has applied it yet

        def drained() -> bool:
            bus.drain()
            return stat(reader, "bus_received") == received + 1

        assert wait_until(drained)
        assert stat(reader, "l1_size") == 0
        assert not gate.release.is_set()  # the listener is still parked: drain() did it
    finally:
        gate.release.set()
    assert reader.get("k") == "new"


# -- close ----------------------------------------------------------------------------------


def _subscribers(client: redis.Redis, channel: str) -> int:
    ((_, count),) = client.pubsub_numsub(channel)
    return int(count)


def test_close_stops_the_listener_and_unsubscribes(
    redis_server: RedisServer, make_cache: MakeCache, admin: redis.Redis, namespace: str
) -> None:
    """After close() the listener thread ends and the server has no subscriber left."""
    channel = channel_name(namespace)
    cache = started(make_cache(redis_server))
    threads = [t for t in threading.enumerate() if channel in t.name]
    assert len(threads) == 1
    assert _subscribers(admin, channel) == 1

    cache.close()

    threads[0].join(WAIT)
    assert not threads[0].is_alive()
    assert wait_until(lambda: _subscribers(admin, channel) == 0)
    assert stat(cache, "bus_subscribed") == 0


def test_close_is_not_counted_as_a_subscription_loss(
    redis_server: RedisServer, make_cache: MakeCache
) -> None:
    """bus_losses counts lost subscriptions, not the one close() ends on purpose."""
    cache = started(make_cache(redis_server))

    cache.close()

    assert stat(cache, "bus_losses") == 0
