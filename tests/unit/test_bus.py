"""The invalidation bus driven without Redis, through its seams: a fake `BusRedis` whose
subscriptions have no pollable descriptor (so the listener polls with a timeout), the inbox's
ordering rules, the publisher's numbering and the fork reset. The same behaviours on a real
server: tests/integration/test_bus.py."""

from __future__ import annotations

import queue
import threading
from typing import Any

import fakeredis
import pytest

from tests.support import WAIT, wait_until
from tiercache.bus import Bus, BusRedis, InvalidationBus
from tiercache.bus_health import BusHealth
from tiercache.inbox import Inbox
from tiercache.l2 import RedisTier, Subscriber
from tiercache.messages import (
    OP_CLEAR,
    OP_KEYS,
    OP_PROBE,
    OP_READY,
    OP_TAGS,
    OP_VALUES,
    decode_message,
    encode_message,
)
from tiercache.resilience import CLOSED, OPEN, CircuitBreaker
from tiercache.stats import RateLimitedLog

ORIGIN = b"\xfa" * 16


class FakeSubscription:
    """A subscription on the fake broker: a queue of redis-py-shaped message dicts."""

    def __init__(self, broker: FakeRedis) -> None:
        self.broker = broker
        self.inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.inbox.put({"type": "subscribe", "data": 1})

    def get_message(self, timeout: float = 0.0) -> dict[str, Any] | None:
        try:
            return self.inbox.get(timeout=timeout) if timeout else self.inbox.get_nowait()
        except queue.Empty:
            return None

    def messages(self) -> list[dict[str, Any]]:
        found = []
        while (message := self.get_message()) is not None:
            found.append(message)
        return found

    def ping(self) -> None:
        self.inbox.put({"type": "pong", "data": b""})

    def fileno(self) -> int | None:
        return None  # nothing to poll(): the listener waits in get_message(timeout)

    def close(self) -> None:
        with self.broker.lock:
            if self in self.broker.subscriptions:
                self.broker.subscriptions.remove(self)


class FakeRedis:
    """An in-memory pub/sub broker with the `BusRedis` surface."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.subscriptions: list[FakeSubscription] = []
        self.published: list[bytes] = []
        self.answered = 0

    def db(self) -> int:
        return 0

    def publish(self, channel: str, message: bytes) -> int:
        with self.lock:
            self.published.append(message)
            for subscription in self.subscriptions:
                subscription.inbox.put({"type": "message", "data": message})
            return len(self.subscriptions)

    def subscribe(self, channel: str) -> FakeSubscription:
        subscription = FakeSubscription(self)
        with self.lock:
            self.subscriptions.append(subscription)
        return subscription

    def mark_answered(self) -> None:
        self.answered += 1


class RecordingReceiver:
    """Records what the bus asks of the cache."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def apply_keys(self, keys: list[str]) -> None:
        self.calls.append(("keys", keys))

    def apply_clear(self, ns_version: int) -> None:
        self.calls.append(("clear", ns_version))

    def apply_tags(self, tags: dict[str, int]) -> None:
        self.calls.append(("tags", tags))

    def flush_l1(self, reason: str) -> None:
        self.calls.append(("flush", reason))

    def apply_values(self, pairs: list[list[object]]) -> None:
        self.calls.append(("values", pairs))

    def own_echo(self, seq: int) -> None:
        self.calls.append(("echo", seq))

    def apply_ready(self, pairs: list[list[object]]) -> None:
        self.calls.append(("ready", pairs))


@pytest.fixture
def broker() -> FakeRedis:
    return FakeRedis()


def _started(broker: BusRedis, receiver: RecordingReceiver) -> Bus:
    bus = Bus(broker, "ns", receiver)
    bus.ensure_started()
    assert wait_until(lambda: bus.health()["bus_probe_ok"] == 1), bus.health()
    return bus


def test_listener_without_a_pollable_descriptor_subscribes_probes_and_applies(
    broker: FakeRedis,
) -> None:
    """With no fileno() the listener polls by timeout: it subscribes, hears its own probe,
    flushes L1 once at subscription and applies another instance's messages."""
    receiver, other_receiver = RecordingReceiver(), RecordingReceiver()
    bus = _started(broker, receiver)
    other = _started(broker, other_receiver)
    try:
        assert receiver.calls[0] == ("flush", "subscribed")
        other.publish_keys(["k"])
        other.publish_tags({"t": 3})
        other.publish_clear(7)
        assert wait_until(lambda: len(receiver.calls) == 4), receiver.calls
        assert receiver.calls[1:] == [("keys", ["k"]), ("tags", {"t": 3}), ("clear", 7)]
        health = bus.health()
        assert (health["bus_subscribed"], health["bus_subscriptions"]) == (1, 1)
        assert health["bus_probes_heard"] == 1  # the other instance's start-up probe
        assert health["bus_gaps"] == 0
    finally:
        bus.close(WAIT)
        other.close(WAIT)
    assert bus.health()["bus_subscribed"] == 0
    assert broker.subscriptions == []


def test_a_confirmed_subscription_tells_redis_it_answered(broker: FakeRedis) -> None:
    """Each subscription confirmation is reported to the Redis tier (its breaker)."""
    bus = _started(broker, RecordingReceiver())
    try:
        assert broker.answered == 1
    finally:
        bus.close(WAIT)


def test_published_messages_are_numbered_in_publish_order(broker: FakeRedis) -> None:
    """publish_keys/tags/clear send one message each, numbered 1, 2, 3 under one origin."""
    bus: InvalidationBus = Bus(broker, "ns", RecordingReceiver())
    bus.publish_keys(["a", "b"])
    bus.publish_tags({"t": 2})
    bus.publish_clear(5)

    messages = [decode_message(raw) for raw in broker.published]
    assert [(m.seq, m.op, m.data) for m in messages] == [
        (1, OP_KEYS, ["a", "b"]),
        (2, OP_TAGS, {"t": 2}),
        (3, OP_CLEAR, 5),
    ]
    assert len({m.origin for m in messages}) == 1
    assert bus.health()["bus_sent"] == 3


def test_reset_after_fork_gives_a_new_identity_fresh_counters_and_keeps_a_closed_bus_closed(
    broker: FakeRedis,
) -> None:
    """After a fork: new instance id, sequence restarts, counters reset; closed stays closed."""
    bus = Bus(broker, "ns", RecordingReceiver())
    bus.publish_keys(["a"])
    bus.close()

    bus.reset_after_fork()
    bus.publish_keys(["b"])
    bus.ensure_started()

    first, second = (decode_message(raw) for raw in broker.published)
    assert first.origin != second.origin
    assert second.seq == 1
    assert bus.health()["bus_sent"] == 1
    assert not bus.listener.running
    assert broker.subscriptions == []


def _inbox(receiver: RecordingReceiver, health: BusHealth) -> Inbox:
    return Inbox(b"\x01" * 16, receiver, health, channel="ch", log=RateLimitedLog())


def test_inbox_sets_a_baseline_ignores_old_numbers_and_flushes_on_a_gap() -> None:
    """First number from an origin is a baseline, old/repeated ones are ignored, a gap flushes."""
    receiver, health = RecordingReceiver(), BusHealth()
    inbox = _inbox(receiver, health)

    for seq in (5, 6, 6, 4, 8):
        inbox.on_message(encode_message(ORIGIN, seq, OP_KEYS, [f"k{seq}"]))

    assert receiver.calls == [
        ("keys", ["k5"]),
        ("keys", ["k6"]),
        ("flush", "sequence gap"),
        ("keys", ["k8"]),
    ]
    assert (health.received, health.ignored, health.gaps) == (5, 2, 1)


def test_inbox_recognises_its_own_probe_and_ignores_its_own_echo() -> None:
    """Only the awaited probe of this instance reports True; own messages are not applied,
    but the echo of an own invalidation is reported (its number: value propagation needs
    to know when its own write's message came back)."""
    receiver, health = RecordingReceiver(), BusHealth()
    inbox = _inbox(receiver, health)
    inbox.probe = b"nonce"

    assert not inbox.on_message(encode_message(b"\x01" * 16, 1, OP_KEYS, ["k"]))
    assert not inbox.on_message(encode_message(b"\x01" * 16, 2, OP_PROBE, b"other"))
    assert inbox.on_message(encode_message(b"\x01" * 16, 3, OP_PROBE, b"nonce"))
    assert not inbox.on_message(b"garbage \xc1")

    assert receiver.calls == [("echo", 1)]
    assert (health.received, health.ignored, health.undecodable) == (4, 3, 1)


def test_a_lost_message_carrying_a_value_flushes_before_the_next_value_is_kept() -> None:
    """Values travel in numbered messages like invalidations: when one is lost (a gap), the
    receiver flushes L1 first, so nothing it kept survives the write it never heard, and
    only then keeps the value of the message that revealed the gap."""
    receiver, health = RecordingReceiver(), BusHealth()
    inbox = _inbox(receiver, health)

    inbox.on_message(encode_message(ORIGIN, 1, OP_VALUES, [["k", b"v1"]]))
    # number 2 (k = v2) never arrives
    inbox.on_message(encode_message(ORIGIN, 3, OP_VALUES, [["other", b"x"]]))

    assert receiver.calls == [
        ("values", [["k", b"v1"]]),
        ("flush", "sequence gap"),
        ("values", [["other", b"x"]]),
    ]
    assert health.gaps == 1


def test_an_unnumbered_ready_neither_sets_nor_breaks_an_origins_numbering() -> None:
    """READY messages carry number 0: applied as they come, never a baseline, never a gap
    (a lost READY only delays waiters), and our own are ignored."""
    receiver, health = RecordingReceiver(), BusHealth()
    inbox = _inbox(receiver, health)

    inbox.on_message(encode_message(ORIGIN, 0, OP_READY, [["a", None]]))
    inbox.on_message(encode_message(ORIGIN, 5, OP_KEYS, ["k5"]))
    inbox.on_message(encode_message(ORIGIN, 0, OP_READY, [["b", b"entry"]]))
    inbox.on_message(encode_message(ORIGIN, 6, OP_KEYS, ["k6"]))
    inbox.on_message(encode_message(b"\x01" * 16, 0, OP_READY, [["mine", None]]))

    assert receiver.calls == [
        ("ready", [["a", None]]),
        ("keys", ["k5"]),
        ("ready", [["b", b"entry"]]),
        ("keys", ["k6"]),
    ]
    assert (health.gaps, health.ignored) == (0, 1)


def test_mark_answered_closes_an_open_breaker() -> None:
    """RedisTier.mark_answered() is the breaker's "Redis answered" signal for the bus."""
    tier = RedisTier(fakeredis.FakeRedis(), breaker=CircuitBreaker(failures=1))
    tier.breaker.failure()
    assert tier.breaker.state == OPEN

    tier.mark_answered()

    assert tier.breaker.state == CLOSED


def test_subscriber_without_a_socket_has_no_descriptor() -> None:
    """A pub/sub object without a connected socket gives fileno() None: the bus then polls."""
    pubsub = fakeredis.FakeRedis().pubsub()
    try:
        assert Subscriber(pubsub, 0).fileno() is None
    finally:
        pubsub.close()
