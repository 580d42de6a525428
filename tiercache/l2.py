"""L2: the Redis tier. Bytes in, bytes out; every Redis failure becomes `L2Error`.

Works with any redis-py client: ``Redis`` (standalone or a Sentinel master) and
``RedisCluster`` (multi-key reads use ``mget_nonatomic`` there, since keys span slots).
Misconfiguration is not trouble: authentication and ACL permission errors propagate unchanged,
so a wrong password is a clear error instead of a silent miss forever.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import redis
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError

from .errors import L2Error

__all__ = ["CLEAR_BATCH", "RedisTier"]

#: Keys unlinked per round trip by `RedisTier.clear`.
CLEAR_BATCH = 500

# Raised by redis-py for a wrong password or a missing ACL permission; these are
# misconfiguration that the user must see, not transient trouble to degrade around.
_CONFIG_ERRORS = (AuthenticationError, NoPermissionError)


@contextmanager
def _translated(operation: str) -> Iterator[None]:
    try:
        yield
    except _CONFIG_ERRORS:
        raise
    except RedisError as exc:
        raise L2Error(f"redis {operation} failed: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        # Sockets can surface raw OSErrors in a few redis-py paths (e.g. during connect).
        raise L2Error(f"redis {operation} failed: {type(exc).__name__}: {exc}") from exc


class RedisTier:
    """Thin, typed access to the Redis commands the cache needs.

    Since: 0.1.0
    """

    __slots__ = ("_cluster", "client")

    def __init__(self, client: Any) -> None:
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
        self._cluster = isinstance(client, redis.RedisCluster)

    def get(self, key: str) -> bytes | None:
        """The raw bytes at ``key``, or None."""
        # Inline rather than _translated(): this is every L2 read, and a generator-based
        # context manager costs more than the rest of this method.
        try:
            data: bytes | None = self.client.get(key)
        except _CONFIG_ERRORS:
            raise
        except (RedisError, OSError) as exc:
            raise L2Error(f"redis GET failed: {type(exc).__name__}: {exc}") from exc
        return data

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Raw bytes for each key in one round trip (per slot on a cluster)."""
        if not keys:
            return []
        with _translated("MGET"):
            if self._cluster:
                return list(self.client.mget_nonatomic(keys))
            return list(self.client.mget(keys))

    def set(self, key: str, data: bytes, ttl_ms: int) -> None:
        """``SET key data PX ttl_ms``."""
        with _translated("SET"):
            self.client.set(key, data, px=max(1, ttl_ms))

    def set_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        """Many ``SET ... PX`` in one pipelined round trip (not a transaction)."""
        if not items:
            return
        with _translated("SET (pipeline)"):
            pipe = self.client.pipeline(transaction=False)
            for key, data, ttl_ms in items:
                pipe.set(key, data, px=max(1, ttl_ms))
            pipe.execute()

    def delete(self, keys: Sequence[str]) -> None:
        """``UNLINK`` the keys (freed in the background by Redis)."""
        if not keys:
            return
        with _translated("UNLINK"):
            self.client.unlink(*keys)

    def clear(self, prefix: str) -> int:
        """Unlink every key starting with ``prefix`` using ``SCAN`` (never ``KEYS``); returns
        the number of keys unlinked. ``prefix`` must hold no glob characters."""
        removed = 0
        with _translated("SCAN/UNLINK"):
            batch: list[bytes] = []
            for key in self.client.scan_iter(match=prefix + "*", count=CLEAR_BATCH):
                batch.append(key)
                if len(batch) >= CLEAR_BATCH:
                    removed += int(self._unlink(batch))
                    batch = []
            if batch:
                removed += int(self._unlink(batch))
        return removed

    def _unlink(self, keys: list[bytes]) -> int:
        if self._cluster:
            # Keys of one batch can live in different slots; a pipeline splits them per node.
            pipe = self.client.pipeline()
            for key in keys:
                pipe.unlink(key)
            return sum(int(n) for n in pipe.execute())
        return int(self.client.unlink(*keys))

    def incr_many(self, keys: Sequence[str]) -> list[int]:
        """``INCR`` each key in one pipelined round trip; the new values."""
        with _translated("INCR"):
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.incr(key)
            return [int(v) for v in pipe.execute()]

    def publish(self, channel: str, message: bytes) -> int:
        """``PUBLISH``; the number of subscribers that received it."""
        with _translated("PUBLISH"):
            return int(self.client.publish(channel, message))

    def script(self, source: str) -> Any:
        """A registered Lua script (``EVALSHA``, loading it on first use)."""
        return self.client.register_script(source)

    def run(self, script: Any, operation: str, key: str, *args: bytes | str | int) -> Any:
        """Run a one-key script from `script`."""
        with _translated(operation):
            return script(keys=[key], args=list(args))

    def ping(self) -> None:
        """Round trip to check the connection and credentials."""
        with _translated("PING"):
            self.client.ping()

    def close(self) -> None:
        """Close the client's connections."""
        with suppress(RedisError, OSError):
            self.client.close()
