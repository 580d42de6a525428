"""Building a redis-py client from a URL with settings that suit a cache."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "DEFAULT_SOCKET_TIMEOUT", "client_from_url"]

#: Seconds a Redis command may take before the cache treats it as a miss. A healthy Redis
#: answers in well under a millisecond on a LAN; a cache that waits longer than this for it
#: is slower than the loader it fronts.
DEFAULT_SOCKET_TIMEOUT = 0.25
DEFAULT_CONNECT_TIMEOUT = 0.5

_SCHEMES = ("redis://", "rediss://", "unix://")


def client_from_url(url: str, overrides: Mapping[str, Any] | None = None) -> redis.Redis:
    """A ``redis.Redis`` for ``url`` with short timeouts and no retries; ``overrides`` win.

    redis-py 8 retries timed-out commands by default (10 retries with backoff: a GET with
    ``socket_timeout=0.3`` against a frozen server raised after 7.8 s instead of 0.3 s), so
    retries are off unless asked for.

    Since: 0.1.0
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    if not url.startswith(_SCHEMES):
        raise ValueError(f"url must start with one of {', '.join(_SCHEMES)}; got {url[:20]!r}")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise TypeError(f"redis_options must be a mapping, not {type(overrides).__name__}")
    options: dict[str, Any] = {
        "socket_timeout": DEFAULT_SOCKET_TIMEOUT,
        "socket_connect_timeout": DEFAULT_CONNECT_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 30,
    }
    options.update(overrides or {})
    if options.get("decode_responses"):
        raise ValueError("redis_options: decode_responses must be False, entries are bytes")
    return redis.Redis.from_url(url, **options)
