"""What the invalidation bus needs from Redis, as protocols: publish, and open a subscriber.

`tiercache.l2.RedisTier` (with `tiercache.l2.Subscriber`) is the implementation; tests drive
the bus with an in-memory broker of the same shape, without a server.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["BusRedis", "Publishing", "Subscribing", "Subscription"]


class Publishing(Protocol):
    """What the publisher needs from Redis (`tiercache.l2.RedisTier` has it)."""

    def publish(self, channel: str, message: bytes) -> int:
        """``PUBLISH``; the number of subscribers reached. Raises `L2Error` on failure."""
        ...


class Subscription(Protocol):
    """One subscribed pub/sub connection (`tiercache.l2.Subscriber`); one reader at a time."""

    def get_message(self, timeout: float = 0.0) -> dict[str, Any] | None:
        """The next message, confirmation or PONG, waiting up to ``timeout`` s; or None."""
        ...

    def messages(self) -> list[dict[str, Any]]:
        """Every message that has arrived, without waiting."""
        ...

    def ping(self) -> None:
        """Send a PING; the PONG arrives as a message."""
        ...

    def fileno(self) -> int | None:
        """A file descriptor to ``poll()`` for data, or None (then poll by timeout)."""
        ...

    def close(self) -> None:
        """Unsubscribe and close; never raises."""
        ...


class Subscribing(Protocol):
    """What the listener needs from Redis (`tiercache.l2.RedisTier` has it)."""

    def subscribe(self, channel: str) -> Subscription:
        """A new connection subscribed to ``channel``, without silent resubscription."""
        ...

    def mark_answered(self) -> None:
        """Redis answered: the circuit breaker need not wait out its cooldown."""
        ...


class BusRedis(Publishing, Subscribing, Protocol):
    """What the bus needs from Redis (`tiercache.l2.RedisTier` has it)."""

    def db(self) -> int:
        """The database number, part of the channel name (pub/sub ignores databases)."""
        ...
