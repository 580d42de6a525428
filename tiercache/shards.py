"""Sharded pub/sub (``SSUBSCRIBE``/``SPUBLISH``, Redis 7): channels per slot group.

A classic ``PUBLISH`` on Redis Cluster is broadcast to every node over the cluster bus, so
every node carries every invalidation. With ``pubsub="sharded"`` a namespace has
`SLOT_GROUPS` channels instead of one: group ``g`` covers the hash slots
``[g * 16384 / SLOT_GROUPS, (g + 1) * 16384 / SLOT_GROUPS)``, and its channel carries a hash
tag chosen so the channel itself hashes into that range. A key's invalidation goes, with
``SPUBLISH``, to the channel of the group of the key's own slot: it stays inside the shard
that holds the key (its primary and replicas). Clears and tag invalidations go to the first
channel: every receiver hears every channel. A receiver subscribes to all the channels (one
connection per node that owns some of them: `ShardedSubscriber`).

Each channel is numbered on its own (a publisher per channel, one identity), so loss is
detected per channel as on the classic channel. A channel whose slot moves (resharding) or
whose node fails over is unsubscribed by Redis (an ``sunsubscribe`` push) or its connection
dies: the subscriber raises, and the listener flushes L1 and subscribes again on the new
owners. Nothing is lost silently.

Since: 0.2.0
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from .bus_health import BusHealth
from .bus_redis import Publishing
from .errors import L2Error
from .messages import OP_KEYS
from .publisher import Publisher

__all__ = ["SLOT_GROUPS", "ShardedPublisher", "ShardedSubscriber", "group_of", "shard_channels"]

#: Channels per namespace in sharded mode: enough to spread over a cluster of 16 primaries,
#: few enough that a receiver's subscriptions stay cheap.
SLOT_GROUPS = 16
_GROUP_SLOTS = REDIS_CLUSTER_HASH_SLOTS // SLOT_GROUPS


def group_of(redis_key: str) -> int:
    """The slot group of a Redis key (its hash slot's group).

    Since: 0.2.0
    """
    return key_slot(redis_key.encode()) // _GROUP_SLOTS


def _tag_for(group: int) -> str:
    # The first tag "g0", "g1", ... whose slot lies in the group (found in a few dozen tries).
    n = 0
    while key_slot(f"g{n}".encode()) // _GROUP_SLOTS != group:
        n += 1
    return f"g{n}"


_TAGS = tuple(_tag_for(g) for g in range(SLOT_GROUPS))


def shard_channels(channel: str) -> list[str]:
    """The `SLOT_GROUPS` sharded channels of a namespace channel, by group.

    Since: 0.2.0
    """
    return [f"{channel}:{{{tag}}}" for tag in _TAGS]


class ShardedPublisher:
    """Publishes one instance's messages on the sharded channels: keys by their group,
    everything else (clears, tags, the listener's probe) on the first one. Quacks like
    `Publisher` for the listener.

    Since: 0.2.0
    """

    __slots__ = ("_publishers", "_rkey", "channel", "channels", "instance_id")

    def __init__(
        self, redis: Publishing, channel: str, health: BusHealth, rkey: Callable[[str], str]
    ) -> None:
        self.channels = shard_channels(channel)
        self._publishers = [Publisher(redis, ch, health) for ch in self.channels]
        self.instance_id = self._publishers[0].instance_id
        for publisher in self._publishers:
            publisher.instance_id = self.instance_id  # one identity, a numbering per channel
        #: The namespace channel, which `RedisTier.subscribe` expands to `channels`.
        self.channel = channel
        self._rkey = rkey

    def unnumbered(self, op: int, data: Any) -> bytes:
        """As `Publisher.unnumbered`."""
        return self._publishers[0].unnumbered(op, data)

    def publish_unnumbered(self, op: int, data: Any) -> None:
        """As `Publisher.publish_unnumbered`, on the first channel (every receiver listens
        on every channel)."""
        self._publishers[0].publish_unnumbered(op, data)

    def publish(
        self,
        op: int,
        data: Any,
        send: Callable[[str, bytes], object] | None = None,
        numbered: Callable[[int], None] | None = None,
    ) -> int:
        """Publish one message; raises `L2Error` if any part of it could not be sent.
        Returns 0: each channel numbers its messages, there is no one number to give
        (value propagation, which needs one, is refused with sharded pub/sub)."""
        if send is not None:
            # A write that carries its PUBLISH in its own pipeline is a single-server
            # feature; sharded pub/sub runs on a cluster, where writes publish separately.
            raise L2Error("sharded pub/sub cannot publish inside a write's pipeline")
        if numbered is not None:
            raise L2Error("sharded pub/sub has no one message number to give")
        if op != OP_KEYS:
            # A clear, tags (which only drop entries: their order against key messages on
            # other channels does not matter) or the listener's probe: every receiver
            # listens on every channel, so the first one reaches them all.
            self._publishers[0].publish(op, data)
            return 0
        by_group: dict[int, list[str]] = {}
        for key in data:
            by_group.setdefault(group_of(self._rkey(key)), []).append(key)
        failed: L2Error | None = None
        for group, keys in by_group.items():
            try:
                self._publishers[group].publish(op, keys)
            except L2Error as exc:  # the other groups still hear of their keys
                failed = exc
        if failed is not None:
            raise failed
        return 0


class ShardedSubscriber:
    """Subscribed to every sharded channel of a namespace, through one connection per node
    that owns some; one `Subscription` to the listener.

    Confirmations and PONGs are collapsed: one ``subscribe`` once every channel is
    confirmed, one ``pong`` once every connection answered the PING. An ``sunsubscribe``
    push (a channel's slot moved) or a lost connection raises, so the listener flushes L1
    and subscribes again. Not thread-safe: one reader at a time.

    Since: 0.2.0
    """

    def __init__(
        self, pubsubs: Sequence[Any], channels: int, on_lost: Callable[[], object] = lambda: None
    ) -> None:
        self._pubsubs = list(pubsubs)
        self._channels = channels
        # Called before raising a loss: the channels may have new owners (resharding,
        # failover), which the client must learn before the listener subscribes again.
        self._on_lost = on_lost
        self._poller: Any = None
        self._confirmed = 0
        self._pongs = 0

    def get_message(self, timeout: float = 0.0) -> dict[str, Any] | None:
        """The next message (``smessage`` shown as ``message``), the collapsed ``subscribe``
        or ``pong``, waiting up to ``timeout`` seconds; None if nothing came."""
        try:
            return self._next(timeout)
        except BaseException:
            self._on_lost()
            raise

    def messages(self) -> list[dict[str, Any]]:
        """Every message that has arrived, without waiting (``get_message`` until None)."""
        found = []
        while (message := self.get_message()) is not None:
            found.append(message)
        return found

    def _next(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while True:
            for pubsub in self._pubsubs:
                while True:
                    raw = pubsub.get_message(timeout=0)
                    if raw is None:
                        break
                    message = self._translate(raw)
                    if message is not None:
                        return message
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._wait(remaining):
                return None

    def _wait(self, timeout: float) -> bool:
        poller = self._poller
        if poller is None:
            # Registered once: the connections are fixed for this subscriber's life (retries
            # are off, so a lost connection ends the subscriber instead of reconnecting).
            poller = select.poll()
            for pubsub in self._pubsubs:
                sock = getattr(getattr(pubsub, "connection", None), "_sock", None)
                if sock is None:
                    return self._nap(timeout)
                poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
            self._poller = poller
        return bool(poller.poll(max(1, int(timeout * 1000))))

    @staticmethod
    def _nap(timeout: float) -> bool:
        time.sleep(min(timeout, 0.005))  # no socket to wait on: poll at a short interval
        return True

    def _translate(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        kind = raw.get("type")
        if isinstance(kind, bytes):
            kind = kind.decode()
        if kind == "smessage":
            return {"type": "message", "channel": raw.get("channel"), "data": raw.get("data")}
        if kind == "ssubscribe":
            self._confirmed += 1
            if self._confirmed >= self._channels:
                return {"type": "subscribe", "channel": raw.get("channel"), "data": 1}
            return None
        if kind == "sunsubscribe":
            raise L2Error(
                "a sharded invalidation channel moved to another node (resharding or "
                "failover): subscribing again"
            )
        if kind == "pong":
            self._pongs += 1
            if self._pongs >= len(self._pubsubs):
                self._pongs = 0
                return {"type": "pong"}
            return None
        return None

    def ping(self) -> None:
        """PING every connection; one ``pong`` comes back once all have answered."""
        self._pongs = 0
        for pubsub in self._pubsubs:
            pubsub.ping()

    def fileno(self) -> int | None:
        """None: several connections (`get_message` waits on all of them itself)."""
        return None

    def close(self) -> None:
        """Close every connection; never raises."""
        for pubsub in self._pubsubs:
            with suppress(Exception):
                pubsub.close()
