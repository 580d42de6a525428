"""The invalidation bus: publish what changed, listen for what others changed.

One channel per namespace (``messages.channel_name``), one subscriber connection and one
daemon listener thread per `TierCache` with an L2 (instances, not processes,
are the unit of coherence), started lazily on first use and again after a fork.

Pub/sub is at-most-once, so loss is detected, not hoped away:

* every (re)subscription flushes L1, because whatever was published while we were away is
  lost; redis-py resubscribes silently after a reconnect (field-notes 2), so *every*
  ``subscribe`` confirmation counts, not just the first;
* losing the subscription flushes L1 too: while unsubscribed, entries stored before the loss
  are not served (entries stored meanwhile are, so L1 + loader keep working);
* each publisher numbers its messages; a receiver that sees a gap flushes L1;
* a PING every ``HEALTH_INTERVAL`` must be answered within ``HEALTH_TIMEOUT``: a frozen server
  is otherwise invisible to a subscriber (field-notes 3);
* after subscribing, the listener publishes a probe it must receive itself, and logs a clear
  warning if it does not (ACLs, proxies that drop pub/sub, ...).

The listener waits for data with ``select.poll`` *outside* the receive lock, then drains
under it; busy request threads drain pending messages themselves about once a millisecond
(`Bus.drain`) because a listener thread competing for the GIL applies them late
(field-notes 18).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import threading
import time
from typing import Any, Protocol

from cachetools import LRUCache
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import ConfigurationError, L2Error
from .l2 import CONFIG_ERRORS, RedisTier, misconfiguration
from .messages import (
    OP_CLEAR,
    OP_KEYS,
    OP_PROBE,
    OP_TAGS,
    Message,
    channel_name,
    decode_message,
    encode_message,
)
from .stats import RateLimitedLog
from .telemetry import suppressed

__all__ = [
    "FIRST_SUBSCRIBE_WAIT",
    "HEALTH_INTERVAL",
    "HEALTH_TIMEOUT",
    "PROBE_TIMEOUT",
    "Bus",
    "Receiver",
]

log = logging.getLogger("tiercache")

#: Seconds between PINGs on the subscriber connection.
HEALTH_INTERVAL = 1.0
#: Seconds a PING may go unanswered before the subscription is considered lost.
HEALTH_TIMEOUT = 2.0
#: Seconds the start-up probe may take to come back.
PROBE_TIMEOUT = 2.0
#: Seconds the first operation waits for the new listener to subscribe, so that the flush at
#: subscription does not throw away the first values this instance caches.
FIRST_SUBSCRIBE_WAIT = 0.25
_POLL_MS = 50
_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 5.0
# Readers give up draining after this long waiting for the receive lock (field-notes 18).
_DRAIN_LOCK_TIMEOUT = 0.005


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


class Bus:
    """Publisher, listener thread and bus health of one cache instance.

    Since: 0.1.0
    """

    def __init__(self, l2: RedisTier, namespace: str, receiver: Receiver) -> None:
        self._l2 = l2
        self.channel = channel_name(namespace, l2.db())
        self._receiver = receiver
        self._log = RateLimitedLog()
        self._init_state()

    def _init_state(self) -> None:
        self._pid = os.getpid()
        self.instance_id = os.urandom(16)
        # Guards _seq and the PUBLISH that carries it, so numbers go out in order.
        self._publish_lock = threading.Lock()
        self._seq = 0
        # Guards reads from the subscriber connection (listener and draining readers).
        self._recv_lock = threading.Lock()
        # Guards starting/stopping the listener thread.
        self._start_lock = threading.Lock()
        self._pubsub: Any = None
        self._thread: threading.Thread | None = None
        # True while _run is running (cheaper to read than Thread.is_alive()).
        self._running = False
        self._stop = threading.Event()
        self.subscribed = False
        self._subscribed_event = threading.Event()
        # Set once the first subscription attempt has an outcome (subscribed or refused).
        self._settled = threading.Event()
        #: Why Redis refused the subscription (credentials, ACL), until it succeeds.
        self.config_error: Exception | None = None
        self._origins: LRUCache[bytes, int] = LRUCache(maxsize=4096)
        self._pong_deadline: float | None = None
        self._next_ping = 0.0
        self._probe_nonce: bytes | None = None
        self._probe_deadline: float | None = None
        self._probe_due = False
        self._confirmed_since_connect = False
        # Health, reported by stats().
        self.sent = 0
        self.probes_sent = 0
        self.probes_heard = 0
        self.publish_errors = 0
        self.received = 0
        self.ignored = 0
        self.undecodable = 0
        self.gaps = 0
        self.subscriptions = 0
        self.losses = 0
        self.probe_ok: bool | None = None
        self.last_message_at: float | None = None

    # -- publishing ----------------------------------------------------------------------

    def publish(self, op: int, data: Any) -> None:
        """Publish one message; raises `L2Error` on failure. A
        lost number shows up as a gap at every receiver once a later message arrives."""
        with self._publish_lock:
            self._seq += 1
            raw = encode_message(self.instance_id, self._seq, op, data)
            try:
                self._l2.publish(self.channel, raw)
            except L2Error:
                self.publish_errors += 1
                raise
            self.sent += 1
            if op == OP_PROBE:
                self.probes_sent += 1

    # -- listener lifecycle ----------------------------------------------------------------

    def ensure_started(self, pid: int | None = None) -> None:
        """Start the listener if it is not running in this process (cheap when it is);
        ``pid``: the caller's ``os.getpid()``, if it just read it."""
        if self._running and self._pid == (pid or os.getpid()):
            return
        with self._start_lock:
            if self._pid != os.getpid():
                # uWSGI does not run at-fork hooks (field-notes 5): the pid tells.
                self.reset_after_fork()
            thread = self._thread
            if self._stop.is_set() or (thread is not None and thread.is_alive()):
                return
            self._thread = threading.Thread(
                target=self._run, name=f"tiercache-bus:{self.channel}", daemon=True
            )
            self._running = True
            self._thread.start()
        # Bounded: with Redis down this costs one wait per listener start, not per call.
        self._settled.wait(FIRST_SUBSCRIBE_WAIT)

    def raise_if_refused(self) -> None:
        """Raise a clear error if Redis refused the subscription: misconfiguration must not
        look like a working cache whose invalidations silently never arrive."""
        exc = self.config_error
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

    def close(self, timeout: float = 2.0) -> None:
        """Stop the listener and unsubscribe; bounded by ``timeout``."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)

    def reset_after_fork(self) -> None:
        """In a forked child: a new identity, no listener, and the parent's subscriber socket
        left alone (closing it could disturb the parent; redis-py checks pids on close)."""
        stop = self._stop.is_set()
        self._init_state()
        if stop:
            self._stop.set()

    # -- receiving ---------------------------------------------------------------------

    def drain(self) -> None:
        """Apply messages already waiting on the socket, from a request thread. Gives up at
        once when unsubscribed and after a few ms when the listener holds the lock."""
        if not self.subscribed or not self._recv_lock.acquire(timeout=_DRAIN_LOCK_TIMEOUT):
            return
        try:
            pubsub = self._pubsub
            if pubsub is not None:
                # On an error the listener sees the same broken socket and reconnects.
                with contextlib.suppress(Exception):
                    self._drain_locked(pubsub)
        finally:
            self._recv_lock.release()

    def _run(self) -> None:
        try:
            self._listen()
        finally:
            self._running = False

    def _listen(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                try:
                    self._connect()
                    self._serve()
                except Exception as exc:
                    # A database index out of range or a TLS mismatch refuses the subscriber
                    # connection with a plain error: misconfiguration, not a lost connection.
                    wrong = misconfiguration(exc, self._l2.db())
                    if wrong is None:
                        raise
                    raise wrong from None
            except CONFIG_ERRORS as exc:
                self.config_error = exc
                self.probe_ok = False  # the bus cannot work: say so where dashboards look
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
        pubsub = self._l2.client.pubsub(ignore_subscribe_messages=False)
        try:
            pubsub.subscribe(self.channel)
            connection = getattr(pubsub, "connection", None)
            if connection is not None and hasattr(connection, "retry"):
                # Never let redis-py reconnect and resubscribe behind our back.
                connection.retry = Retry(NoBackoff(), 0)
        except BaseException:
            pubsub.close()
            raise
        self._pubsub = pubsub
        self._pong_deadline = None
        self._next_ping = time.monotonic() + HEALTH_INTERVAL

    def _serve(self) -> None:
        pubsub = self._pubsub
        sock = getattr(getattr(pubsub, "connection", None), "_sock", None)
        poller = None
        if sock is not None:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        while not self._stop.is_set():
            now = time.monotonic()
            if self._pong_deadline is None and now >= self._next_ping:
                with self._recv_lock:
                    pubsub.ping()
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
                    self._drain_locked(pubsub)
            else:
                with self._recv_lock:
                    self._handle(pubsub.get_message(timeout=_POLL_MS / 1000))
                    self._drain_locked(pubsub)

    def _disconnect(self) -> None:
        with self._recv_lock:
            pubsub, self._pubsub = self._pubsub, None
            was_subscribed, self.subscribed = self.subscribed, False
            self._subscribed_event.clear()
        if was_subscribed and not self._stop.is_set():
            self.losses += 1
            # Messages published from now on are lost to us: nothing cached before this
            # moment may be served; what is stored while away may (design guarantee 2).
            self._receiver.flush_l1("subscription lost")
        if pubsub is not None:
            # A dead socket may fail to close; it is gone either way.
            with contextlib.suppress(Exception):
                pubsub.close()

    def _drain_locked(self, pubsub: Any) -> None:
        while True:
            message = pubsub.get_message(timeout=0)
            if message is None:
                return
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
        elif kind in ("message", b"message"):
            self._on_message(message.get("data"))

    def _on_subscribed(self) -> None:
        self.subscriptions += 1
        self._confirmed_since_connect = True
        # Published while we were not listening: lost. Every confirmation counts, since
        # redis-py may have reconnected and resubscribed silently.
        self._receiver.flush_l1("subscribed")
        self.subscribed = True
        self.config_error = None
        # Redis answered on a fresh connection: no need to wait out the breaker's cooldown
        # before reading L2 again (in the soak run this cut recovery from 5.0 s to ~2.4 s).
        self._l2.breaker.success()
        self._subscribed_event.set()
        self._settled.set()
        self._probe_due = True

    def _on_message(self, raw: object) -> None:
        self.received += 1
        self.last_message_at = time.monotonic()
        try:
            message = decode_message(raw)
        except Exception as exc:  # anything on the channel: never let it end the listener
            self.undecodable += 1
            self._log.warning(
                "bad-message",
                "tiercache: ignored an undecodable message on %s: %s",
                self.channel,
                exc,
            )
            return
        if message.origin == self.instance_id:
            if message.op == OP_PROBE and message.data == self._probe_nonce:
                self._probe_deadline = None
                if self.probe_ok is not True:
                    self.probe_ok = True
            self.ignored += 1
            return
        if message.op == OP_PROBE:
            self.probes_heard += 1  # another instance's start-up check: not an invalidation
        last = self._origins.get(message.origin)
        if last is not None and message.seq <= last:
            self.ignored += 1  # a duplicate or reordered old message
            return
        self._origins[message.origin] = message.seq
        # The first message heard from a publisher sets its baseline: it may have published
        # before we subscribed, and what we missed while unsubscribed is covered by the
        # flush at (re)subscription.
        if last is not None and message.seq != last + 1:
            # A message from this publisher never reached us: we cannot know which keys.
            self.gaps += 1
            self._receiver.flush_l1("sequence gap")
        self._apply(message)

    def _apply(self, message: Message) -> None:
        if message.op == OP_KEYS:
            self._receiver.apply_keys(message.data)
        elif message.op == OP_CLEAR:
            self._receiver.apply_clear(message.data)
        elif message.op == OP_TAGS:
            self._receiver.apply_tags(message.data)

    def _send_probe(self, now: float) -> None:
        self._probe_due = False
        self._probe_nonce = os.urandom(16)
        self._probe_deadline = now + PROBE_TIMEOUT
        try:
            # No span: the probe is the listener's own check, caused by no user request;
            # traced, it would be a one-span root trace per worker per subscription.
            with suppressed():
                self.publish(OP_PROBE, self._probe_nonce)
        except L2Error as exc:
            self._probe_deadline = None
            self._log.warning("probe", "tiercache: could not publish the bus probe: %s", exc)

    def _probe_failed(self) -> None:
        self._probe_deadline = None
        self.probe_ok = False
        log.warning(
            "tiercache: the invalidation self-probe on channel %r did not come back within "
            "%g s: other processes' changes may not reach this L1 (stale up to l1_ttl). "
            "Check pub/sub ACLs (&channel permissions), proxies that do not pass pub/sub, "
            "and that publishers and subscribers use the same Redis.",
            self.channel,
            PROBE_TIMEOUT,
        )

    # -- health --------------------------------------------------------------------------

    def health(self) -> dict[str, int]:
        """Bus counters for ``stats()``."""
        last = self.last_message_at
        age_ms = -1 if last is None else int((time.monotonic() - last) * 1000)
        probe = {None: -1, False: 0, True: 1}[self.probe_ok]
        return {
            "bus_subscribed": int(self.subscribed),
            "bus_subscriptions": self.subscriptions,
            "bus_losses": self.losses,
            "bus_sent": self.sent,
            "bus_probes_sent": self.probes_sent,
            "bus_probes_heard": self.probes_heard,
            "bus_publish_errors": self.publish_errors,
            "bus_received": self.received,
            "bus_ignored": self.ignored,
            "bus_undecodable": self.undecodable,
            "bus_gaps": self.gaps,
            "bus_probe_ok": probe,
            "bus_last_message_age_ms": age_ms,
        }
