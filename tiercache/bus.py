"""The invalidation bus of one cache instance: a `Publisher`, a `Listener` and a `BusHealth`.

One channel per namespace (``messages.channel_name``), one subscriber connection and one
daemon listener thread per `TierCache` with an L2 (instances, not processes, are the unit of
coherence), started lazily on first use and again after a fork. How loss is detected:
``listener.py`` and ``inbox.py``; how messages are numbered: ``publisher.py``.

`InvalidationBus` is the bus as the rest of the cache sees it, so the read and write logic
can be tested with a fake bus. What the bus needs from Redis (`BusRedis`, in ``bus_redis.py``)
and what it does to the cache (`Receiver`, in ``inbox.py``) are protocols too, re-exported
here, so the bus can be driven without a server.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

from .bus_health import BusHealth
from .bus_redis import BusRedis
from .errors import ConfigurationError
from .inbox import Receiver
from .layout import entry_key
from .listener import Listener
from .messages import OP_CLEAR, OP_KEYS, OP_READY, OP_TAGS, OP_VALUES, channel_name
from .publisher import Publisher
from .shards import ShardedPublisher
from .stats import RateLimitedLog

__all__ = ["FIRST_SUBSCRIBE_WAIT", "Bus", "BusRedis", "InvalidationBus", "Receiver"]

#: Seconds the first operation waits for the new listener to subscribe, so that the flush at
#: subscription does not throw away the first values this instance caches.
FIRST_SUBSCRIBE_WAIT = 0.25


class InvalidationBus(Protocol):
    """The bus as the rest of the cache sees it."""

    def publish_keys(
        self,
        keys: list[str],
        send: Callable[[str, bytes], object] | None = None,
        numbered: Callable[[int], None] | None = None,
    ) -> int:
        """Tell the other instances these keys changed (raises `L2Error`)."""
        ...

    def publish_values(
        self,
        pairs: list[list[Any]],
        send: Callable[[str, bytes], object] | None = None,
        numbered: Callable[[int], None] | None = None,
    ) -> int:
        """Tell the other instances these keys were written, values included."""
        ...

    def publish_ready(self, keys: list[str]) -> None:
        """Wake the processes waiting for these keys' leases."""
        ...

    def ready_message(self, key: str, entry: bytes | None) -> tuple[str, bytes] | None:
        """``(channel, message)`` of a READY for ``key`` carrying ``entry``, for a lease
        write to publish in its own atomic step; None where that cannot be done."""
        ...

    def publish_clear(self, ns_version: int) -> None:
        """Tell the other instances the namespace was cleared (raises `L2Error`)."""
        ...

    def publish_tags(self, tags: dict[str, int]) -> None:
        """Tell the other instances these tags were invalidated (raises `L2Error`)."""
        ...

    def ensure_started(self, pid: int | None = None) -> None:
        """Start listening in this process if not yet (cheap when it does)."""
        ...

    def drain(self) -> None:
        """Apply messages already waiting, from a request thread."""
        ...

    def raise_if_refused(self) -> None:
        """Raise if Redis refused the subscription (misconfiguration)."""
        ...

    def health(self) -> dict[str, int]:
        """The ``bus_*`` counters for ``stats()``."""
        ...

    def close(self, timeout: float = 2.0) -> None:
        """Stop listening, waiting at most ``timeout`` seconds."""
        ...

    def reset_after_fork(self) -> None:
        """In a forked child: a new identity and no listener yet."""
        ...


class Bus:
    """Publisher, listener thread and health record of one cache instance.

    Since: 0.1.0
    """

    def __init__(self, redis: BusRedis, namespace: str, receiver: Receiver) -> None:
        self._redis = redis
        self._namespace = namespace
        self.channel = channel_name(namespace, redis.db())
        self._receiver = receiver
        self._log = RateLimitedLog()
        self._build(threading.Event())

    def _build(self, stop: threading.Event) -> None:
        self._pid = os.getpid()
        # Guards starting the listener thread and the fork check before it.
        self._start_lock = threading.Lock()
        self._health = BusHealth()
        self.publisher: Publisher | ShardedPublisher
        if getattr(self._redis, "sharded", False):  # pubsub="sharded": channels per slot group
            rkey = entry_key(self._namespace)
            self.publisher = ShardedPublisher(self._redis, self.channel, self._health, rkey)
        else:
            self.publisher = Publisher(self._redis, self.channel, self._health)
        self.listener = Listener(
            self._redis, self.publisher, self._receiver, self._health, log=self._log, stop=stop
        )

    # -- publishing ----------------------------------------------------------------------

    def publish(self, op: int, data: Any) -> None:
        """Publish one message (``messages.OP_*``); raises `L2Error` on failure."""
        self.publisher.publish(op, data)

    def publish_keys(
        self,
        keys: list[str],
        send: Callable[[str, bytes], object] | None = None,
        numbered: Callable[[int], None] | None = None,
    ) -> int:
        """Tell the other instances these keys changed (raises `L2Error`); ``send``: a
        write that publishes the message in its own round trip, ``numbered``: told the
        message's number before it is sent (`Publisher.publish`). Returns the number."""
        return self.publisher.publish(OP_KEYS, keys, send, numbered)

    def publish_values(
        self,
        pairs: list[list[Any]],
        send: Callable[[str, bytes], object] | None = None,
        numbered: Callable[[int], None] | None = None,
    ) -> int:
        """Tell the other instances these keys were written, with the entry of each small
        value (``[key, entry or None]``), as `publish_keys` does; ``numbered`` learns the
        message's number before it is sent (`Publisher.publish`)."""
        return self.publisher.publish(OP_VALUES, pairs, send, numbered)

    def publish_ready(self, keys: list[str]) -> None:
        """Tell the processes waiting for these keys' leases that their holder is done
        (unnumbered: `Publisher.unnumbered`)."""
        self.publisher.publish_unnumbered(OP_READY, [[key, None] for key in keys])

    def ready_message(self, key: str, entry: bytes | None) -> tuple[str, bytes] | None:
        """``(channel, message)`` of a READY for ``key`` carrying ``entry`` (the bytes its
        holder writes, or None), for the lease write to publish in the same atomic step;
        None with sharded pub/sub, whose channel depends on the key's slot."""
        if isinstance(self.publisher, ShardedPublisher):
            return None
        return self.channel, self.publisher.unnumbered(OP_READY, [[key, entry]])

    def publish_clear(self, ns_version: int) -> None:
        """Tell the other instances the namespace was cleared (raises `L2Error`)."""
        self.publisher.publish(OP_CLEAR, ns_version)

    def publish_tags(self, tags: dict[str, int]) -> None:
        """Tell the other instances these tags were invalidated (raises `L2Error`)."""
        self.publisher.publish(OP_TAGS, tags)

    # -- listening -----------------------------------------------------------------------

    def ensure_started(self, pid: int | None = None) -> None:
        """Start the listener if it is not running in this process (cheap when it is);
        ``pid``: the caller's ``os.getpid()``, if it just read it."""
        if self.listener.running and self._pid == (pid or os.getpid()):
            return
        with self._start_lock:
            if self._pid != os.getpid():
                # Some servers fork without running at-fork hooks (uWSGI with its default
                # options), and the parent's thread object still says it is alive in the
                # child: only the pid tells.
                self.reset_after_fork()
            listener = self.listener
            started = listener.start()
        if started:
            # Bounded: with Redis down this costs one wait per listener start, not per call.
            listener.wait_settled(FIRST_SUBSCRIBE_WAIT)

    def drain(self) -> None:
        """Apply messages already waiting on the socket, from a request thread. Gives up at
        once when unsubscribed and after a few ms when the listener holds the lock."""
        self.listener.drain()

    def raise_if_refused(self) -> None:
        """Raise a clear error if Redis refused the subscription: misconfiguration must not
        look like a working cache whose invalidations silently never arrive."""
        exc = self.listener.config_error
        if exc is None:
            return
        hint = f"tiercache cannot subscribe to its invalidation channel {self.channel!r}: "
        hint += str(exc).rstrip(". ") + "."
        if not isinstance(exc, ConfigurationError):
            hint += (
                " Check the credentials, and that the Redis user may use that channel "
                f"(ACL: &{self.channel} or allchannels) and PUBLISH/SUBSCRIBE."
            )
        raise type(exc)(hint) from exc

    def health(self) -> dict[str, int]:
        """Bus counters for ``stats()`` (the ``bus_*`` keys)."""
        return self._health.snapshot()

    @property
    def subscribed(self) -> bool:
        """Whether the listener is subscribed right now (messages can reach us)."""
        return self._health.subscribed

    def close(self, timeout: float = 2.0) -> None:
        """Stop the listener and unsubscribe; bounded by ``timeout``."""
        self.listener.close(timeout)

    def reset_after_fork(self) -> None:
        """In a forked child: a new identity, fresh counters, no listener, and the parent's
        subscriber socket left alone (closing it could disturb the parent). A pub/sub
        connection has no fork check of its own: one inherited through fork keeps reading
        the parent's socket (of 200 messages the child got 199, the parent 1)."""
        stop = threading.Event()
        if self.listener.stopped:
            stop.set()
        self._build(stop)
