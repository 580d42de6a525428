"""The publishing half of the invalidation bus: numbered messages, one PUBLISH each.

Each cache instance publishes under an identity of its own (16 random bytes, new after a
fork) and numbers its messages 1, 2, 3, ... in the order they are published. Pub/sub is
at-most-once; the numbers let every receiver notice a message that never reached it (a gap)
and flush its L1 instead of serving what that message would have dropped.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from .bus_health import BusHealth
from .bus_redis import Publishing
from .errors import L2Error
from .messages import OP_PROBE, encode_message

__all__ = ["Publisher"]


class Publisher:
    """Numbers and publishes one instance's messages on its channel.

    Since: 0.2.0
    """

    __slots__ = ("_health", "_lock", "_redis", "_seq", "channel", "instance_id")

    def __init__(self, redis: Publishing, channel: str, health: BusHealth) -> None:
        self._redis = redis
        self.channel = channel
        self._health = health
        #: Who we are on the channel: our own messages come back to us and are ignored.
        self.instance_id = os.urandom(16)
        # Guards _seq and the PUBLISH that carries it, so numbers go out in order.
        self._lock = threading.Lock()
        self._seq = 0

    def publish(
        self,
        op: int,
        data: Any,
        send: Callable[[str, bytes], object] | None = None,
        numbered: Callable[[int], None] | None = None,
    ) -> int:
        """Publish one message; raises `L2Error` on failure. A lost number shows up as a gap
        at every receiver once a later message arrives.

        ``send(channel, message)``, if given, publishes it instead of a bare ``PUBLISH``: a
        write that carries its own invalidation in the same round trip (the write first,
        then the PUBLISH, in one pipeline). It runs under the lock that keeps numbers in
        publish order, so a receiver sees this instance's messages in number order.
        ``numbered(seq)``, if given, learns the message's number before it is sent (its
        echo may come back before this call returns). Returns the message's number."""
        health = self._health
        with self._lock:
            self._seq += 1
            raw = encode_message(self.instance_id, self._seq, op, data)
            if numbered is not None:
                numbered(self._seq)
            try:
                (send or self._redis.publish)(self.channel, raw)
            except L2Error:
                health.publish_errors += 1
                raise
            health.sent += 1
            if op == OP_PROBE:
                health.probes_sent += 1
            return self._seq

    def unnumbered(self, op: int, data: Any) -> bytes:
        """The message ``op``/``data`` with number 0, outside this instance's numbering:
        for a READY wake-up, whose loss must not look like a lost invalidation."""
        return encode_message(self.instance_id, 0, op, data)

    def publish_unnumbered(self, op: int, data: Any) -> None:
        """Publish an `unnumbered` message; raises `L2Error` on failure."""
        try:
            self._redis.publish(self.channel, self.unnumbered(op, data))
        except L2Error:
            self._health.publish_errors += 1
            raise
        self._health.sent += 1
