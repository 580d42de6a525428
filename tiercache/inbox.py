"""What a message on the invalidation channel means to one receiving instance.

Pub/sub is at-most-once, and a channel carries whatever anyone publishes on it, so every
payload is checked before it touches L1:

* undecodable payloads are counted and logged, never raised;
* our own messages come back to us (an echo) and are ignored, except that our start-up
  probe coming back proves the channel works;
* each publisher numbers its messages: the first one heard from a publisher sets its
  baseline, an old or repeated number is ignored, and a skipped number (a gap) means a
  message never reached us, so all of L1 is flushed, since we cannot know which keys it held;
* READY messages are not numbered (a lost one only delays waiters, who poll as a bound);
* everything else is applied to the cache through its `Receiver`.
"""

from __future__ import annotations

import time
from typing import Protocol

from cachetools import LRUCache

from .bus_health import BusHealth
from .messages import (
    OP_CLEAR,
    OP_KEYS,
    OP_PROBE,
    OP_READY,
    OP_TAGS,
    OP_VALUES,
    Message,
    decode_message,
)
from .stats import RateLimitedLog

__all__ = ["Inbox", "Receiver"]

# Publishers remembered (last sequence number each); one forgotten sets a new baseline.
_ORIGINS = 4096


class Receiver(Protocol):
    """What the bus does to a cache when messages arrive or are lost."""

    def apply_keys(self, keys: list[str]) -> None:
        """Drop those L1 entries."""

    def apply_clear(self, ns_version: int) -> None:
        """The namespace was cleared: learn its version, drop all L1 entries."""

    def apply_tags(self, tags: dict[str, int]) -> None:
        """Tags were invalidated: learn their versions, drop their L1 entries."""

    def flush_l1(self, reason: str) -> None:
        """Something may have been missed: drop every L1 entry."""

    def apply_values(self, pairs: list[list[object]]) -> None:
        """Another instance wrote these keys: keep the values it sent, drop the others."""

    def own_echo(self, seq: int) -> None:
        """Our own message number ``seq`` came back: everything before it was heard."""

    def apply_ready(self, pairs: list[list[object]]) -> None:
        """A lease holder is done with these keys (``[key, entry or None]``, the entry it
        wrote if sent along): wake the callers waiting for them."""


class Inbox:
    """Decodes, orders and applies the messages one instance receives; not thread-safe
    (the listener calls it under its receive lock).

    Since: 0.2.0
    """

    __slots__ = ("_health", "_instance_id", "_log", "_origins", "_receiver", "channel", "probe")

    def __init__(
        self,
        instance_id: bytes,
        receiver: Receiver,
        health: BusHealth,
        *,
        channel: str,
        log: RateLimitedLog,
    ) -> None:
        self._instance_id = instance_id
        self._receiver = receiver
        self._health = health
        self.channel = channel
        self._log = log
        #: The nonce of the self-probe we are waiting for, if any.
        self.probe: bytes | None = None
        # Last sequence number heard from each publisher, by instance id.
        self._origins: LRUCache[bytes, int] = LRUCache(maxsize=_ORIGINS)

    def on_message(self, raw: object) -> bool:
        """Handle one payload from the channel; whether it was our awaited self-probe."""
        health = self._health
        health.received += 1
        health.last_message_at = time.monotonic()
        try:
            message = decode_message(raw)
        except Exception as exc:  # anything on the channel: never let it end the listener
            health.undecodable += 1
            self._log.warning(
                "bad-message",
                "tiercache: ignored an undecodable message on %s: %s",
                self.channel,
                exc,
            )
            return False
        if message.seq == 0:
            # Unnumbered (a READY): a wake-up outside the publisher's numbering, so it
            # neither sets nor checks the origin's sequence.
            if message.origin == self._instance_id:
                health.ignored += 1
            else:
                self._apply(message)
            return False
        if message.origin == self._instance_id:
            health.ignored += 1
            if message.op == OP_PROBE:
                return bool(message.data == self.probe)
            self._receiver.own_echo(message.seq)
            return False
        if message.op == OP_PROBE:
            health.probes_heard += 1  # another instance's start-up check: not an invalidation
        last = self._origins.get(message.origin)
        if last is not None and message.seq <= last:
            health.ignored += 1  # a duplicate or reordered old message
            return False
        self._origins[message.origin] = message.seq
        # The first message heard from a publisher sets its baseline: it may have published
        # before we subscribed, and what we missed while unsubscribed is covered by the
        # flush at (re)subscription.
        if last is not None and message.seq != last + 1:
            # A message from this publisher never reached us: we cannot know which keys.
            health.gaps += 1
            self._receiver.flush_l1("sequence gap")
        self._apply(message)
        return False

    def _apply(self, message: Message) -> None:
        if message.op == OP_KEYS:
            self._receiver.apply_keys(message.data)
        elif message.op == OP_CLEAR:
            self._receiver.apply_clear(message.data)
        elif message.op == OP_TAGS:
            self._receiver.apply_tags(message.data)
        elif message.op == OP_VALUES:
            self._receiver.apply_values(message.data)
        elif message.op == OP_READY:
            self._receiver.apply_ready(message.data)
