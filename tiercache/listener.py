"""The listening half of the invalidation bus: one daemon thread per cache instance.

It subscribes to the namespace's channel, applies what other instances publish to the
cache's L1 (through a `Receiver`), and detects loss, since pub/sub is at-most-once:

* every (re)subscription flushes L1: whatever was published while we were away is lost.
  redis-py would reconnect and resubscribe silently after a dropped connection or a server
  restart, its only trace one more ``subscribe`` confirmation, so its retries are off and
  *every* confirmation counts, not just the first;
* losing the subscription flushes L1 too: while unsubscribed, entries stored before the loss
  are not served (entries stored meanwhile are, so L1 + loader keep working);
* each publisher numbers its messages; a receiver that sees a gap flushes L1;
* a PING every `HEALTH_INTERVAL` must be answered within `HEALTH_TIMEOUT`: a frozen server
  is otherwise invisible to a subscriber (``get_message()`` just returns nothing);
* after subscribing, the listener publishes a probe it must receive itself, and logs a clear
  warning if it does not (ACLs, proxies that drop pub/sub, ...).

The thread waits for data with ``select.poll`` *outside* the receive lock, then drains under
it, so a busy request thread can drain what is pending itself (`Listener.drain`, about once
a millisecond): a listener thread competing for the GIL with pure-Python request work
applied invalidations at p50 3-5 ms, p99 10-18 ms after the PUBLISH; readers draining cut
that to p50 ~0.45 ms. Readers only try the lock for a few milliseconds: a non-blocking
try fails exactly when a message is in flight, because the listener then holds the lock
while it waits for the GIL. A ``select.poll`` object is not shared between threads, and
a drain takes every complete message that has arrived in one read of the socket
(`resp.PushReader`): what is left is part of a message, whose rest wakes ``poll()``.
"""

from __future__ import annotations

import logging
import os
import random
import select
import threading
import time
from contextlib import suppress
from typing import Any

from .bus_health import BusHealth
from .bus_redis import Subscribing, Subscription
from .errors import L2Error
from .inbox import Inbox, Receiver
from .l2 import CONFIG_ERRORS
from .messages import OP_PROBE
from .publisher import Publisher
from .shards import ShardedPublisher
from .stats import RateLimitedLog
from .telemetry import suppressed

__all__ = [
    "HEALTH_INTERVAL",
    "HEALTH_TIMEOUT",
    "PROBE_TIMEOUT",
    "Listener",
]

log = logging.getLogger("tiercache")

#: Seconds between PINGs on the subscriber connection.
HEALTH_INTERVAL = 1.0
#: Seconds a PING may go unanswered before the subscription is considered lost.
HEALTH_TIMEOUT = 2.0
#: Seconds the start-up probe may take to come back.
PROBE_TIMEOUT = 2.0
_POLL_MS = 50
_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 5.0
# Readers give up draining after this long waiting for the receive lock (see the docstring).
_DRAIN_LOCK_TIMEOUT = 0.005


class Listener:
    """The listener thread of one instance: (re)subscribe, health check, gap detection,
    self-probe, and the drain that request threads share with it.

    ``stop``: the event that ends the thread (and paces its backoff between attempts).

    Since: 0.2.0
    """

    def __init__(
        self,
        redis: Subscribing,
        publisher: Publisher | ShardedPublisher,
        receiver: Receiver,
        health: BusHealth,
        *,
        log: RateLimitedLog | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self._redis = redis
        self._publisher = publisher
        self.channel = publisher.channel
        self._receiver = receiver
        self._health = health
        self._log = log or RateLimitedLog()
        self._stop = stop or threading.Event()
        # Guards reads from the subscriber connection (listener and draining readers).
        self._recv_lock = threading.Lock()
        self._subscription: Subscription | None = None
        self._thread: threading.Thread | None = None
        #: True while the thread runs (cheaper to read than Thread.is_alive()).
        self.running = False
        # Set once the first subscription attempt has an outcome (subscribed or refused).
        self._settled = threading.Event()
        #: Why Redis refused the subscription (credentials, ACL), until it succeeds.
        self.config_error: Exception | None = None
        self._inbox = Inbox(
            publisher.instance_id, receiver, health, channel=self.channel, log=self._log
        )
        # Sharded pub/sub: one inbox per channel, since each channel is numbered on its own;
        # the first one's hears the probe.
        self._inboxes = {self.channel: self._inbox}
        for i, channel in enumerate(getattr(publisher, "channels", ())):
            self._inboxes[channel] = (
                self._inbox
                if i == 0
                else Inbox(publisher.instance_id, receiver, health, channel=channel, log=self._log)
            )
        self._pong_deadline: float | None = None
        self._next_ping = 0.0
        self._probe_deadline: float | None = None
        self._probe_due = False
        self._confirmed_since_connect = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> bool:
        """Start the thread unless it runs or the listener was stopped; whether it started.
        The caller serialises calls."""
        thread = self._thread
        if self._stop.is_set() or (thread is not None and thread.is_alive()):
            return False
        self._thread = threading.Thread(
            target=self._run, name=f"tiercache-bus:{self.channel}", daemon=True
        )
        self.running = True
        self._thread.start()
        return True

    def wait_settled(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the first subscription attempt to have an outcome."""
        return self._settled.wait(timeout)

    @property
    def stopped(self) -> bool:
        """Whether `close` was called."""
        return self._stop.is_set()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread (it unsubscribes); wait for it at most ``timeout`` s."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)

    # -- receiving ---------------------------------------------------------------------

    def drain(self) -> None:
        """Apply messages already waiting on the socket, from a request thread. Gives up at
        once when unsubscribed and after a few ms when the listener holds the lock."""
        if not self._health.subscribed or not self._recv_lock.acquire(timeout=_DRAIN_LOCK_TIMEOUT):
            return
        try:
            subscription = self._subscription
            if subscription is not None:
                # On an error the listener sees the same broken socket and reconnects.
                with suppress(Exception):
                    self._drain_locked(subscription)
        finally:
            self._recv_lock.release()

    def _run(self) -> None:
        try:
            self._listen()
        finally:
            self.running = False

    def _listen(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                self._connect()
                self._serve()
            except CONFIG_ERRORS as exc:
                # Wrong credentials, a missing ACL permission, a database index out of
                # range or a TLS mismatch: misconfiguration, not a lost connection.
                self.config_error = exc
                self._health.probe_ok = False  # the bus cannot work: say so on dashboards
                self._settled.set()
                self._log.warning(
                    "bus-config",
                    "tiercache: Redis refused the subscription to %s: %s",
                    self.channel,
                    exc,
                )
            except Exception as exc:
                if not self._stop.is_set():
                    self._log.warning(
                        "bus", "tiercache: invalidation listener on %s lost: %s", self.channel, exc
                    )
            finally:
                self._disconnect()
            if self._stop.is_set():
                break
            # Back off from the last time a subscription was confirmed, not from connecting:
            # a refused SUBSCRIBE or an immediate kill shows up only after _connect returns.
            attempt = 0 if self._confirmed_since_connect else attempt + 1
            self._confirmed_since_connect = False
            delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt)
            self._stop.wait(delay * (0.5 + random.random() / 2))

    def _connect(self) -> None:
        self._subscription = self._redis.subscribe(self.channel)
        self._pong_deadline = None
        self._next_ping = time.monotonic() + HEALTH_INTERVAL

    def _serve(self) -> None:
        subscription = self._subscription
        assert subscription is not None
        fd = subscription.fileno()
        poller = None
        if fd is not None:
            poller = select.poll()
            poller.register(fd, select.POLLIN | select.POLLPRI)
        while not self._stop.is_set():
            now = time.monotonic()
            if self._pong_deadline is None and now >= self._next_ping:
                with self._recv_lock:
                    subscription.ping()
                self._pong_deadline = now + HEALTH_TIMEOUT
            elif self._pong_deadline is not None and now > self._pong_deadline:
                raise L2Error(f"no PONG within {HEALTH_TIMEOUT:g} s on the subscriber connection")
            if self._probe_due:
                self._send_probe(now)
            elif self._probe_deadline is not None and now > self._probe_deadline:
                self._probe_failed()
            if poller is not None:
                poller.poll(_POLL_MS)  # outside the lock: readers may drain meanwhile
                with self._recv_lock:
                    self._drain_locked(subscription)
            else:
                with self._recv_lock:
                    self._handle(subscription.get_message(timeout=_POLL_MS / 1000))
                    self._drain_locked(subscription)

    def _disconnect(self) -> None:
        health = self._health
        with self._recv_lock:
            subscription, self._subscription = self._subscription, None
            was_subscribed, health.subscribed = health.subscribed, False
        if was_subscribed and not self._stop.is_set():
            health.losses += 1
            # Messages published from now on are lost to us: nothing cached before this
            # moment may be served; what is stored while away may.
            self._receiver.flush_l1("subscription lost")
        if subscription is not None:
            subscription.close()

    def _drain_locked(self, subscription: Subscription) -> None:
        # Everything that has arrived, in one read: what remains is an incomplete frame,
        # and poll() wakes when the rest of it comes.
        for message in subscription.messages():
            self._handle(message)

    def _handle(self, message: dict[str, Any] | None) -> None:
        if message is None:
            return
        kind = message.get("type")
        if kind in ("subscribe", b"subscribe"):
            self._on_subscribed()
        elif kind in ("pong", b"pong"):
            self._pong_deadline = None
            self._next_ping = time.monotonic() + HEALTH_INTERVAL
        elif kind in ("message", b"message") and self._inbox_of(message).on_message(
            message.get("data")
        ):
            # Our own start-up probe came back: the channel works both ways.
            self._probe_deadline = None
            self._health.probe_ok = True

    def _inbox_of(self, message: dict[str, Any]) -> Inbox:
        if len(self._inboxes) <= 2:  # the classic channel (and its name as the first shard)
            return self._inbox
        channel = message.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode(errors="replace")
        return self._inboxes.get(channel, self._inbox) if isinstance(channel, str) else self._inbox

    def _on_subscribed(self) -> None:
        self._health.subscriptions += 1
        self._confirmed_since_connect = True
        # Published while we were not listening: lost. Every confirmation counts, since
        # a client may have reconnected and resubscribed silently.
        self._receiver.flush_l1("subscribed")
        self._health.subscribed = True
        self.config_error = None
        # Redis answered on a fresh connection: no need to wait out the breaker's cooldown
        # before reading L2 again (in the soak run this cut recovery from 5.0 s to ~2.4 s).
        self._redis.mark_answered()
        self._settled.set()
        self._probe_due = True

    def _send_probe(self, now: float) -> None:
        self._probe_due = False
        nonce = self._inbox.probe = os.urandom(16)
        self._probe_deadline = now + PROBE_TIMEOUT
        try:
            # No span: the probe is the listener's own check, caused by no user request;
            # traced, it would be a one-span root trace per worker per subscription.
            with suppressed():
                self._publisher.publish(OP_PROBE, nonce)
        except L2Error as exc:
            self._probe_deadline = None
            self._log.warning("probe", "tiercache: could not publish the bus probe: %s", exc)

    def _probe_failed(self) -> None:
        self._probe_deadline = None
        self._health.probe_ok = False
        log.warning(
            "tiercache: the invalidation self-probe on channel %r did not come back within "
            "%g s: other processes' changes may not reach this L1 (stale up to l1_ttl). "
            "Check pub/sub ACLs (&channel permissions), proxies that do not pass pub/sub, "
            "and that publishers and subscribers use the same Redis.",
            self.channel,
            PROBE_TIMEOUT,
        )
