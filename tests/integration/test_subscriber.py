"""`RedisTier.subscribe` on a real redis-server: the subscriber's file descriptor (the one
place tiercache reads a private attribute of redis-py) and no silent resubscription."""

from __future__ import annotations

import select
from collections.abc import Iterator

import pytest
import redis

from tests.redis_server import RedisServer
from tests.support import WAIT, wait_until
from tiercache.l2 import RedisTier, Subscriber

pytestmark = pytest.mark.redis

CHANNEL = "tiercache:test:subscriber"


@pytest.fixture
def tier(redis_server: RedisServer) -> Iterator[RedisTier]:
    """A Redis tier over a fresh client to the session server."""
    client = redis_server.client(decode_responses=False)
    try:
        yield RedisTier(client)
    finally:
        client.close()


def _confirmed(subscriber: Subscriber) -> None:
    message = subscriber.get_message(timeout=WAIT)
    assert message is not None
    assert message["type"] in ("subscribe", b"subscribe")


def test_fileno_is_the_subscribed_socket_that_poll_wakes_on(tier: RedisTier) -> None:
    """fileno() is the connection's descriptor: poll() wakes when a message arrives.

    It pins redis-py's private ``Connection._sock``, which has no public equivalent: if a
    redis-py release renames it, this test fails (the bus would fall back to polling)."""
    subscriber = tier.subscribe(CHANNEL)
    try:
        _confirmed(subscriber)
        fd = subscriber.fileno()
        assert isinstance(fd, int)
        assert fd >= 0
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(0) == []

        assert tier.publish(CHANNEL, b"hello") == 1

        assert poller.poll(int(WAIT * 1000)) == [(fd, select.POLLIN)]
        message = subscriber.get_message(timeout=0)
        assert message is not None
        assert (message["type"], message["data"]) in (("message", b"hello"), (b"message", b"hello"))
    finally:
        subscriber.close()


def test_ping_is_answered_by_a_pong_message(tier: RedisTier) -> None:
    """ping() sends a PING whose PONG arrives as a message of type pong."""
    subscriber = tier.subscribe(CHANNEL)
    try:
        _confirmed(subscriber)
        subscriber.ping()
        message = subscriber.get_message(timeout=WAIT)
        assert message is not None
        assert message["type"] in ("pong", b"pong")
    finally:
        subscriber.close()


def test_killed_connection_raises_instead_of_resubscribing_silently(
    fresh_redis_server: RedisServer,
) -> None:
    """After CLIENT KILL the subscriber raises: a lost subscription is never hidden."""
    client = fresh_redis_server.client(decode_responses=False)
    admin = fresh_redis_server.client()
    tier = RedisTier(client)
    subscriber = tier.subscribe(CHANNEL)
    try:
        _confirmed(subscriber)
        assert admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") == 1

        def raised() -> bool:
            try:
                subscriber.get_message(timeout=0.01)
            except (redis.ConnectionError, OSError):
                return True
            return False

        assert wait_until(raised)
    finally:
        subscriber.close()
        admin.close()
        client.close()


@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
def test_messages_and_pongs_are_read_from_the_socket_in_either_protocol(
    redis_server: RedisServer, protocol: int
) -> None:
    """After redis-py subscribes, tiercache reads the socket itself (RESP2 arrays or RESP3
    pushes): confirmations, messages in publish order, and PONGs come through as before."""
    client = redis_server.client(decode_responses=False, protocol=protocol)
    tier = RedisTier(client)
    subscriber = tier.subscribe(CHANNEL)
    try:
        _confirmed(subscriber)
        for i in range(3):
            assert tier.publish(CHANNEL, b"m%d" % i) == 1
        got: list[bytes] = []
        assert wait_until(
            lambda: got.extend(m["data"] for m in subscriber.messages()) or len(got) == 3
        )
        assert got == [b"m0", b"m1", b"m2"]
        subscriber.ping()
        message = subscriber.get_message(timeout=WAIT)
        assert message is not None
        assert message["type"] == "pong"
    finally:
        subscriber.close()
        client.close()
