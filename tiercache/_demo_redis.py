"""Where ``python -m tiercache demo`` gets its Redis: an embedded fakeredis server, or the
one at ``--url``, checked before the walk-through starts and counted after it ends."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import redis

from .cache import TierCache

__all__ = ["caches", "fakeredis_available", "keys_left", "unreachable"]


def fakeredis_available() -> bool:
    """Whether fakeredis (the ``demo`` extra) can be imported to embed a Redis."""
    try:
        import fakeredis  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def caches(
    url: str | None, a_options: Mapping[str, Any], b_options: Mapping[str, Any]
) -> Iterator[tuple[TierCache, TierCache]]:
    """Caches A and B on one Redis (an embedded fakeredis server, or ``url``), closed after."""
    with ExitStack() as stack:
        if url is None:
            import fakeredis

            server = fakeredis.FakeServer()
            client_a = stack.enter_context(fakeredis.FakeRedis(server=server))
            client_b = stack.enter_context(fakeredis.FakeRedis(server=server))
            a = stack.enter_context(TierCache(client_a, **a_options))
            b = stack.enter_context(TierCache(client_b, **b_options))
        else:
            # from_url: short timeouts and no hidden retries; each cache closes its client.
            a = stack.enter_context(TierCache.from_url(url, **a_options))
            b = stack.enter_context(TierCache.from_url(url, **b_options))
        yield a, b


def unreachable(url: str) -> str | None:
    """Why Redis at ``url`` cannot be used, or None if it answers PING."""
    try:
        probe = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    except ValueError as exc:
        return f"bad URL: {exc}"
    try:
        probe.ping()
    except (redis.RedisError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        probe.close()
    return None


def keys_left(url: str, namespace: str) -> int | None:
    """How many keys of ``namespace`` are still in Redis (None if it cannot tell)."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2) as client:
            return sum(1 for _ in client.scan_iter(match=f"{namespace}:*", count=500))
    except (redis.RedisError, OSError):
        return None
