"""L2: the Redis tier. Bytes in, bytes out; every Redis failure becomes `L2Error`.

Works with any redis-py client: ``Redis`` (standalone or a Sentinel master) and
``RedisCluster`` (multi-key reads use ``mget_nonatomic`` there, since keys span slots).
Every command goes through the circuit breaker (``resilience.py``): while it is open, calls
fail at once with `CircuitOpenError` instead of waiting for a timeout.

Misconfiguration is not trouble: authentication and ACL permission errors propagate
(redis-py's ``AuthenticationError`` is a ``ConnectionError``: it is singled out first), so a
wrong password is a clear error instead of a silent miss forever. Some misconfiguration
arrives as a plain error reply and is recognised by its text (`misconfiguration`): an ACL
refusal inside a Lua script, a server without scripting, a database index the server does
not have, a TLS handshake that fails on a certificate or protocol mismatch.

On a cluster, redis-py's own errors (``SlotNotCoveredError``,
``RedisClusterUnreachableError``, the rest of the ``RedisClusterException`` family) do not
derive from ``RedisError``; they are trouble all the same: `L2Error`, a miss. An unreachable
cluster and timeouts count against the breaker; a slot that no node serves, and a node that
refuses, resets or closes the connection, cost no wait and do not. The breaker is one per cluster
(the Scaling page of the docs says why).

Client-side errors (a value redis-py cannot encode) are the caller's, not Redis trouble:
they propagate unchanged and never count against the breaker.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any, Protocol, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    DataError,
    NoPermissionError,
    NoScriptError,
    RedisClusterException,
    RedisClusterUnreachableError,
    RedisError,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)
from redis.retry import Retry

from .errors import CircuitOpenError, ConfigurationError, L2Error
from .resilience import CLOSED, CircuitBreaker
from .resp import PushReader
from .shards import ShardedSubscriber, shard_channels
from .telemetry import Telemetry

__all__ = [
    "CONFIG_ERRORS",
    "L2Store",
    "RedisTier",
    "Subscriber",
    "db_of",
    "is_cluster",
    "misconfiguration",
    "server_of",
]

R = TypeVar("R")

#: Misconfiguration that the user must see, not transient trouble to degrade around: a wrong
#: password, a missing ACL permission, and what `misconfiguration` recognises.
CONFIG_ERRORS = (AuthenticationError, NoPermissionError, ConfigurationError)
# Redis did not answer: these count against the breaker. Any other error is a reply.
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, RedisClusterUnreachableError)
# Redis trouble: redis-py's cluster errors (a slot no node serves, no node reachable, ...)
# derive from RedisClusterException, not RedisError, and are trouble all the same.
_TROUBLE = (RedisError, OSError, RedisClusterException)
# Raised on our side before anything is sent: a bug at the call site, not Redis trouble.
_CLIENT_SIDE = (DataError, TypeError, ValueError)
_NO_SCRIPTING = re.compile(r"unknown command [`']?(evalsha|eval|script)\b", re.IGNORECASE)
# redis-py prefixes a pipeline's error with the command and its arguments: raw keys and
# the first bytes of values, which must not reach logs or exception texts.
# Writes keys and publishes their message in one atomic step: KEYS are the entries,
# ARGV = [channel, entry 1, px 1, entry 2, px 2, ..., message]. Atomic, unlike a pipeline,
# whose commands Redis may interleave with another client's when they arrive in pieces
# (redis-py sends a pipeline past 6,000 bytes in several writes; a network splits it into
# packets): a message that carries values must follow its writes with nothing between.
_SET_AND_PUBLISH = """
for i = 1, #KEYS do
    redis.call('SET', KEYS[i], ARGV[2 * i], 'PX', ARGV[2 * i + 1])
end
return redis.call('PUBLISH', ARGV[1], ARGV[#ARGV])
"""
_PIPELINE_PREFIX = re.compile(r"^Command # \d+ \(.*?\) of pipeline caused error: ", re.DOTALL)


def _without_arguments(exc: BaseException) -> str:
    return _PIPELINE_PREFIX.sub("", str(exc)).rstrip(". ")


def misconfiguration(exc: BaseException, db: int = 0) -> Exception | None:
    """The error to raise instead of ``exc`` if it reveals misconfiguration, else None.

    Since: 0.2.0
    """
    if isinstance(exc, NoPermissionError | AuthenticationError):
        if _PIPELINE_PREFIX.match(str(exc)):
            # Same type (callers may catch redis-py's), without the pipeline's raw arguments.
            return type(exc)(_without_arguments(exc))
        return exc
    if isinstance(exc, ResponseError):
        text = _without_arguments(exc)
        if "can't run this command" in text or "no permissions" in text.lower():
            # An ACL refusal inside a Lua script comes back as a plain error reply.
            return NoPermissionError(
                f"{text} (a command inside a tiercache Lua script was refused: the Redis user "
                "needs +@read +@write +@scripting +@pubsub on the namespace's keys)"
            )
        if _NO_SCRIPTING.search(text):
            return ConfigurationError(
                "this Redis server does not run Lua scripts (EVALSHA/SCRIPT are unavailable: "
                "renamed, disabled, or a managed service without scripting); tiercache needs "
                "them for leases, versions and clear(). With fakeredis, install its Lua "
                "support: pip install 'fakeredis[lua]'"
            )
        if "DB index is out of range" in text:
            return ConfigurationError(
                f"Redis refused database {db}: DB index is out of range (the server has fewer "
                "databases; see its 'databases' setting, or use another index in the URL)"
            )
        return None
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return ConfigurationError(
                f"TLS handshake with Redis failed: {cause}. Check that the server speaks "
                "TLS on that port (rediss://) and the certificates and CA it is given"
            )
        cause = cause.__cause__ or cause.__context__
    return None


def server_of(client: Any) -> tuple[str, int] | None:
    """``(host, port)`` of a standalone redis-py client, for telemetry; None if unknown.

    Since: 0.2.0
    """
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    host, port = kwargs.get("host"), kwargs.get("port")
    if isinstance(host, str) and isinstance(port, int):
        return host, port
    return None


def db_of(client: Any) -> int:
    """The database number of a redis-py client (0 when unknown, and always on a cluster).

    Since: 0.2.0
    """
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    db = kwargs.get("db", 0)
    return db if isinstance(db, int) else 0


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection that failed at once (refused, reset, closed by the
    server) rather than one that timed out."""
    if isinstance(exc, RedisClusterUnreachableError) or not isinstance(
        exc, RedisConnectionError | OSError
    ):
        return False
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, RedisTimeoutError | TimeoutError):
            return False
        cause = cause.__cause__ or cause.__context__
    return True


def _describe(operation: str, exc: BaseException) -> str:
    text = _without_arguments(exc)
    if isinstance(exc, RedisTimeoutError) and _handshake_timed_out(exc):
        # A TLS client to a plain port waits for a handshake that never comes.
        text += " (TLS handshake timed out: is the server speaking TLS on that port?)"
    return f"redis {operation} failed: {type(exc).__name__}: {text}"


def _handshake_timed_out(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if "handshake" in str(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a redis-py Redis Cluster client.

    Since: 0.2.0
    """
    return isinstance(client, redis.RedisCluster)


class Subscriber:
    """One pub/sub connection subscribed to one channel; made by `RedisTier.subscribe`.

    redis-py's own reconnect-and-resubscribe is switched off on this connection: after a
    dropped connection or a server restart, redis-py would resubscribe silently, and the
    messages published in between would be lost with no trace but one more ``subscribe``
    confirmation. Here a lost connection raises instead, so its owner notices the loss.

    redis-py connects and sends the ``SUBSCRIBE``; what the server pushes back is read
    from the socket by a `resp.PushReader` (about a quarter of the CPU per message of
    redis-py's read path), unless the socket cannot be had, when redis-py reads it.

    Errors that reveal misconfiguration (`misconfiguration`) are raised as such; any other
    error means the subscription is lost. Not thread-safe: one reader at a time.

    Since: 0.2.0
    """

    __slots__ = ("_db", "_pending", "_pubsub", "_reader")

    def __init__(self, pubsub: Any, db: int) -> None:
        self._pubsub = pubsub
        self._db = db
        # Read before redis-py read anything after the SUBSCRIBE it sent, so its parser
        # holds nothing this reader would miss.
        sock = _socket_of(pubsub)
        self._reader: PushReader | None = None if sock is None else PushReader(sock)
        self._pending: deque[dict[str, Any]] = deque()

    def get_message(self, timeout: float = 0.0) -> dict[str, Any] | None:
        """The next message, confirmation or PONG (a dict as redis-py gives it), waiting up
        to ``timeout`` seconds; None if nothing came."""
        reader = self._reader
        try:
            if reader is None:
                message: dict[str, Any] | None = self._pubsub.get_message(timeout=timeout)
                return message
            if not self._pending:
                self._pending.extend(reader.messages())
                if not self._pending and timeout > 0 and reader.wait(timeout):
                    self._pending.extend(reader.messages())
            return self._pending.popleft() if self._pending else None
        except Exception as exc:
            raise _misconfigured_or(exc, self._db) from None

    def messages(self) -> list[dict[str, Any]]:
        """Every message that has arrived, without waiting (``get_message`` until None)."""
        if self._reader is None or self._pending:
            found = []
            while (message := self.get_message()) is not None:
                found.append(message)
            return found
        try:
            return self._reader.messages()
        except Exception as exc:
            raise _misconfigured_or(exc, self._db) from None

    def ping(self) -> None:
        """Send a PING; its PONG arrives later as a message (``type`` ``pong``)."""
        try:
            if self._reader is None:
                self._pubsub.ping()
                return
            connection = self._pubsub.connection
            # No health check of redis-py's own: it would read the PONG itself.
            connection.send_packed_command(connection.pack_command("PING"), check_health=False)
        except Exception as exc:
            raise _misconfigured_or(exc, self._db) from None

    def fileno(self) -> int | None:
        """The connection's file descriptor, to wait for data with ``select.poll`` without
        reading; None when it cannot be had (then poll with ``get_message(timeout)``)."""
        if self._reader is not None:
            return self._reader.fileno()
        sock = _socket_of(self._pubsub)
        if sock is None:
            return None
        try:
            fd = sock.fileno()
        except (OSError, ValueError):
            return None
        return fd if isinstance(fd, int) and fd >= 0 else None

    def close(self) -> None:
        """Unsubscribe and give the connection back; never raises (a dead socket may fail
        to close, and it is gone either way)."""
        with suppress(Exception):
            self._pubsub.close()


def _socket_of(pubsub: Any) -> Any:
    """The socket of a subscribed redis-py ``PubSub``, or None.

    redis-py exposes no public way to get a connection's socket. ``Connection._sock`` is the
    one private attribute of redis-py that tiercache reads (tests/integration/
    test_subscriber.py pins it); without it the bus still works, through redis-py."""
    sock = getattr(getattr(pubsub, "connection", None), "_sock", None)
    # A real socket (TLS ones too); fakeredis' stand-in is read through redis-py.
    return sock if isinstance(sock, socket.socket) else None


def _misconfigured_or(exc: Exception, db: int) -> Exception:
    # The error to raise for ``exc`` from a subscriber: what it reveals, or itself.
    wrong = misconfiguration(exc, db)
    return exc if wrong is None else wrong


class L2Store(Protocol):
    """What the read path needs of L2: bytes in, bytes out, `L2Error` on trouble.
    `RedisTier` is the real one; tests of the read logic pass a dict-backed fake."""

    def get(self, key: str) -> bytes | None:
        """The bytes at ``key``, or None."""
        ...

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The bytes at each key, in order."""
        ...


class RedisTier:
    """Thin, typed access to the Redis commands the cache needs, behind a breaker.

    Since: 0.1.0
    """

    __slots__ = (
        "_bus_node",
        "_set_and_publish",
        "breaker",
        "client",
        "cluster",
        "sharded",
        "telemetry",
    )

    def __init__(
        self,
        client: Any,
        breaker: CircuitBreaker | None = None,
        telemetry: Telemetry | None = None,
        *,
        sharded: bool = False,
    ) -> None:
        if isinstance(client, type) or not (
            hasattr(client, "execute_command") and hasattr(client, "pipeline")
        ):
            raise TypeError(
                "client must be a redis-py client (redis.Redis, a Sentinel master or "
                f"redis.cluster.RedisCluster) or None, not {type(client).__name__}"
            )
        if getattr(getattr(client, "connection_pool", None), "connection_kwargs", {}).get(
            "decode_responses"
        ):
            raise ValueError(
                "client must be created with decode_responses=False: cache entries are bytes"
            )
        self.client = client
        self.breaker = breaker or CircuitBreaker()
        self.telemetry = telemetry
        #: Whether the client is a ``RedisCluster`` (keys of one call may span nodes).
        self.cluster = is_cluster(client)
        # Registering does no I/O; the script is loaded at its first use.
        self._set_and_publish: Any = None if self.cluster else self.script(_SET_AND_PUBLISH)
        # On a cluster: which primary carries our classic PUBLISH and SUBSCRIBE (an index
        # into the primaries; see `_pubsub_node`).
        self._bus_node = 0
        if sharded and not self.cluster:
            raise ValueError(
                'pubsub="sharded" needs a Redis Cluster client (redis.cluster.RedisCluster): '
                'on one server there is nothing to shard; use the default, "classic"'
            )
        #: Whether the bus uses sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``, see ``shards.py``).
        self.sharded = sharded

    def server(self) -> tuple[str, int] | None:
        """``(host, port)`` of a standalone client, for telemetry; None if unknown."""
        return server_of(self.client)

    def db(self) -> int:
        """The client's database number (0 when unknown, and always on a cluster)."""
        return db_of(self.client)

    def _call(self, operation: str, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        breaker = self.breaker
        if breaker.state != CLOSED and not breaker.allow():
            raise CircuitOpenError(f"redis {operation} skipped: the circuit breaker is open")
        telemetry = self.telemetry
        if telemetry is None or not telemetry.enabled:
            return self._attempt(operation, fn, *args, **kwargs)
        if telemetry.tracing:
            with telemetry.l2_span(operation):
                return self._attempt(operation, fn, *args, **kwargs)
        if not telemetry.metering:
            return self._attempt(operation, fn, *args, **kwargs)
        started = time.perf_counter()
        try:
            return self._attempt(operation, fn, *args, **kwargs)
        finally:
            telemetry.record_duration("l2", operation, time.perf_counter() - started)

    def _attempt(self, operation: str, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        breaker = self.breaker
        try:
            result = fn(*args, **kwargs)
        except _CLIENT_SIDE:
            breaker.cancel_probe()
            raise
        except _TROUBLE as exc:
            wrong = misconfiguration(exc, self.db())
            if wrong is not None:
                breaker.success()  # Redis (or the TLS layer) answered: it is not down
                raise wrong from None
            if self.cluster and _refused(exc):
                # One node refused, reset or closed the connection: that cost no wait, and
                # the other nodes may well answer. Counted, such failures would open the breaker
                # for the whole cluster (1 call in 3 failing opens it within a second under
                # load); the breaker is for waits. A half-open probe reports nothing here.
                breaker.cancel_probe()
            elif isinstance(exc, _UNREACHABLE):
                breaker.failure()
            else:
                breaker.success()
            raise L2Error(_describe(operation, exc)) from exc
        except BaseException:
            # Interrupted (KeyboardInterrupt, a gevent Timeout): the outcome is unknown, and
            # a half-open probe must report something or every later call is skipped.
            breaker.failure()
            raise
        breaker.success()
        return result

    def get(self, key: str) -> bytes | None:
        """The raw bytes at ``key``, or None."""
        data: bytes | None = self._call("GET", self.client.get, key)
        return data

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Raw bytes for each key in one round trip (per slot on a cluster)."""
        if not keys:
            return []
        mget = self.client.mget_nonatomic if self.cluster else self.client.mget
        return list(self._call("MGET", mget, keys))

    def set_many(
        self,
        items: Sequence[tuple[str, bytes, int]],
        publish: tuple[str, bytes] | None = None,
    ) -> None:
        """Many ``SET ... PX`` in one pipelined round trip (not a transaction), followed in
        the same round trip by ``PUBLISH channel message`` if ``publish`` is given (Redis
        runs a connection's commands in order: the message follows the writes)."""
        if not items and publish is None:
            return

        def pipelined() -> None:
            pipe = self.client.pipeline(transaction=False)
            for key, data, ttl_ms in items:
                pipe.set(key, data, px=max(1, ttl_ms))
            if publish is not None:
                pipe.publish(*publish)
            pipe.execute()

        # Named as the database conventions name batches: PIPELINE + the one command.
        if publish is not None:
            self._call("PIPELINE", pipelined)
        else:
            self._call("SET" if len(items) == 1 else "PIPELINE SET", pipelined)

    def set_many_and_publish(
        self, items: Sequence[tuple[str, bytes, int]], publish: tuple[str, bytes]
    ) -> None:
        """Every ``SET ... PX`` and then ``PUBLISH channel message``, atomically (one script,
        one round trip): no other client's command runs between them, so the message's
        place among the channel's messages is its writes' place among the writes. Not on a
        cluster (the keys and the channel's node may differ)."""
        if self._set_and_publish is None:
            raise L2Error("an atomic write and publish needs a single Redis server")
        channel, message = publish
        args: list[Any] = [channel]
        for _key, data, ttl_ms in items:
            args += (data, max(1, ttl_ms))
        args.append(message)
        keys = [key for key, _data, _ttl in items]
        self._call("EVALSHA set_publish", self._set_and_publish, keys=keys, args=args)

    def set_nx(self, key: str, data: bytes, ttl_ms: int) -> bool:
        """``SET key data NX PX ttl_ms``; whether it was set."""
        return bool(self._call("SET NX", self.client.set, key, data, nx=True, px=ttl_ms))

    def delete(self, keys: Sequence[str], publish: tuple[str, bytes] | None = None) -> None:
        """``UNLINK`` the keys (freed in the background by Redis), followed in the same round
        trip by ``PUBLISH channel message`` if ``publish`` is given."""
        if publish is None:
            if keys:
                self._call("UNLINK", self.client.unlink, *keys)
            return

        def pipelined() -> None:
            pipe = self.client.pipeline(transaction=False)
            if keys:
                pipe.unlink(*keys)
            pipe.publish(*publish)
            pipe.execute()

        self._call("PIPELINE", pipelined)

    def publish(self, channel: str, message: bytes) -> int:
        """``PUBLISH``; the number of subscribers that received it."""
        if self.sharded:
            return int(self._call("SPUBLISH", self.client.spublish, channel, message))
        if self.cluster:
            return int(self._call("PUBLISH", self._publish_on_node, channel, message))
        return int(self._call("PUBLISH", self.client.publish, channel, message))

    def _pubsub_node(self) -> Any:
        """The cluster primary our classic pub/sub goes through.

        A classic PUBLISH reaches the subscribers of every node (the cluster bus broadcasts
        it), so any primary will do; redis-py would pick the node of the channel's hash slot,
        and with that node dead and no replica to take over, the bus would stay down for
        good. So the bus sticks to one primary and moves to the next one when it fails
        (`_next_pubsub_node`)."""
        primaries = self.client.get_primaries()
        return primaries[self._bus_node % len(primaries)]

    def _next_pubsub_node(self) -> None:
        self._bus_node += 1

    def _publish_on_node(self, channel: str, message: bytes) -> Any:
        try:
            return self.client.publish(channel, message, target_nodes=self._pubsub_node())
        except Exception:
            self._next_pubsub_node()
            raise

    def subscribe(self, channel: str) -> Subscriber:
        """A new pub/sub connection subscribed to ``channel``, with redis-py's silent retries
        off. Its ``subscribe`` confirmation arrives as the first message.

        Not behind the breaker: a listener retries with its own backoff, and a confirmed
        subscription is what tells the breaker that Redis is back (`mark_answered`). Raises
        what redis-py raises, or the misconfiguration it reveals (`misconfiguration`).

        Since: 0.2.0
        """
        if self.sharded:
            return Subscriber(self._subscribe_sharded(channel), self.db())
        if self.cluster:
            pubsub = self.client.pubsub(node=self._pubsub_node(), ignore_subscribe_messages=False)
        else:
            pubsub = self.client.pubsub(ignore_subscribe_messages=False)
        try:
            pubsub.subscribe(channel)
            connection = getattr(pubsub, "connection", None)
            if connection is not None and hasattr(connection, "retry"):
                # Never let redis-py reconnect and resubscribe behind our back.
                connection.retry = Retry(NoBackoff(), 0)
        except BaseException as exc:
            with suppress(Exception):
                pubsub.close()
            if self.cluster:
                self._next_pubsub_node()
            if isinstance(exc, Exception):
                raise _misconfigured_or(exc, self.db()) from None
            raise
        return Subscriber(pubsub, self.db())

    def _subscribe_sharded(self, channel: str) -> ShardedSubscriber:
        """``SSUBSCRIBE`` to every sharded channel of ``channel``, one connection per node
        that owns some, each with redis-py's retries off."""
        channels = shard_channels(channel)
        by_node: dict[str, tuple[Any, list[str]]] = {}
        for name in channels:
            node = self.client.get_node_from_key(name)
            by_node.setdefault(node.name, (node, []))[1].append(name)
        pubsubs: list[Any] = []
        try:
            for node, names in by_node.values():
                pubsub = self.client.get_redis_connection(node).pubsub(
                    ignore_subscribe_messages=False
                )
                pubsubs.append(pubsub)
                for name in names:  # one SSUBSCRIBE per channel: each has its own slot
                    pubsub.ssubscribe(name)
                connection = getattr(pubsub, "connection", None)
                if connection is not None and hasattr(connection, "retry"):
                    connection.retry = Retry(NoBackoff(), 0)
        except BaseException as exc:
            for pubsub in pubsubs:
                with suppress(Exception):
                    pubsub.close()
            self._refresh_topology()
            if isinstance(exc, Exception):
                raise _misconfigured_or(exc, self.db()) from None
            raise
        return ShardedSubscriber(pubsubs, len(channels), self._refresh_topology)

    def _refresh_topology(self) -> None:
        """Ask the cluster again which node serves which slot (the listener thread calls it
        after losing a sharded subscription; a failure is left to the next attempt)."""
        with suppress(Exception):
            self.client.nodes_manager.initialize()

    def mark_answered(self) -> None:
        """Tell the breaker Redis answered outside a command of ours (e.g. it confirmed a
        subscription on a fresh connection): no need to wait out the cooldown before the
        next call.

        Since: 0.2.0
        """
        self.breaker.success()

    def script(self, source: str) -> Any:
        """A registered Lua script (``EVALSHA``, loading it on first use)."""
        return self.client.register_script(source)

    def run(self, script: Any, operation: str, key: str, *args: bytes | str | int) -> Any:
        """Run a one-key script from `script`."""
        if self.cluster:
            return self._call(f"EVALSHA {operation}", self._run_on_key_node, script, key, args)
        return self._call(f"EVALSHA {operation}", script, keys=[key], args=list(args))

    def _run_on_key_node(self, script: Any, key: str, args: tuple[Any, ...]) -> Any:
        # redis-py loads a script the server does not have yet with SCRIPT LOAD, which a
        # cluster client sends to every primary: with one of them dead, every script that
        # had not run on its key's node before the loss failed (a lease write, say, leaving
        # its placeholder behind for lease_ttl). EVAL only goes to the key's node, and
        # caches the script there for the next EVALSHA.
        try:
            return self.client.evalsha(script.sha, 1, key, *args)
        except NoScriptError:
            return self.client.eval(script.script, 1, key, *args)

    def close(self) -> None:
        """Close the client's connections."""
        with suppress(*_TROUBLE):
            self.client.close()
