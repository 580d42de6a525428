"""Building a redis-py client from a URL with settings that suit a cache.

Three topologies, one policy (short timeouts, no hidden retries):

* ``redis://``, ``rediss://``, ``unix://``: one server, as redis-py reads the URL;
* ``redis+cluster://[user:password@]host:port[,host:port...][/]``: a ``RedisCluster`` that
  starts from any of the listed nodes (``rediss+cluster://`` for TLS);
* ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``: the primary of
  ``service`` as the listed sentinels name it, followed through failovers
  (``rediss+sentinel://`` for TLS to the primary). The credentials are the primary's;
  sentinels that need their own go in ``redis_options={"sentinel_kwargs": {...}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

__all__ = [
    "CLUSTER_SCHEMES",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_SOCKET_TIMEOUT",
    "SENTINEL_SCHEMES",
    "client_from_url",
    "no_retry",
]

#: Seconds a Redis command may take before the cache treats it as a miss. A healthy Redis
#: answers in well under a millisecond on a LAN; a cache that waits longer than this for it
#: is slower than the loader it fronts.
DEFAULT_SOCKET_TIMEOUT = 0.25
DEFAULT_CONNECT_TIMEOUT = 0.5

_SCHEMES = ("redis://", "rediss://", "unix://")
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")


def no_retry() -> Retry:
    """A redis-py ``Retry`` that never retries: a failed command fails at once.

    Since: 0.2.0
    """
    return Retry(NoBackoff(), 0)


def client_from_url(url: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """A redis-py client for ``url`` with short timeouts and no retries; ``overrides`` win.

    redis-py 8 retries timed-out commands by default (10 retries with backoff: a GET with
    ``socket_timeout=0.3`` against a frozen server raised after 7.8 s instead of 0.3 s), and
    ``RedisCluster`` has retries of its own on top (``retry``, which replaces the deprecated
    ``cluster_error_retry_attempts``): with one primary dead, one call blocked 11.3 s with a
    default client. So retries are off unless asked for, for every topology: a
    ``redis.Redis`` (standalone, or a Sentinel primary) or a ``RedisCluster``.

    Since: 0.1.0
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    schemes = _SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES
    if not url.startswith(schemes):
        raise ValueError(f"url must start with one of {', '.join(schemes)}; got {url[:20]!r}")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise TypeError(f"redis_options must be a mapping, not {type(overrides).__name__}")
    options: dict[str, Any] = {
        "socket_timeout": DEFAULT_SOCKET_TIMEOUT,
        "socket_connect_timeout": DEFAULT_CONNECT_TIMEOUT,
        "retry": no_retry(),
    }
    if not url.startswith(CLUSTER_SCHEMES):
        options["health_check_interval"] = 30
    options.update(overrides or {})
    if options.get("decode_responses"):
        raise ValueError("redis_options: decode_responses must be False, entries are bytes")
    if url.startswith(CLUSTER_SCHEMES):
        return _cluster(url, options)
    if url.startswith(SENTINEL_SCHEMES):
        return _sentinel(url, options)
    return redis.Redis.from_url(url, **options)


def _hosts(url: str, netloc: str) -> list[tuple[str, int]]:
    hosts = []
    for part in netloc.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"url must list host:port pairs separated by commas; got {url!r}")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def _split(url: str) -> tuple[str, str | None, str | None, list[tuple[str, int]], str]:
    """(scheme, username, password, hosts, path) of a multi-host URL."""
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        credentials, _, netloc = netloc.rpartition("@")
        user, colon, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    if not netloc:
        raise ValueError(f"url names no host:port; got {url!r}")
    return scheme, username, password, _hosts(url, netloc), urlsplit("/" + path).path


def _credentials(username: str | None, password: str | None) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if username is not None:
        found["username"] = username
    if password is not None:
        found["password"] = password
    return found


def _cluster(url: str, options: dict[str, Any]) -> RedisCluster:
    scheme, username, password, hosts, path = _split(url)
    if path.strip("/") not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0; got {url!r}")
    options.pop("db", None)
    kwargs = {**_credentials(username, password), **options}
    if scheme.startswith("rediss"):
        kwargs.setdefault("ssl", True)
    # redis-py does not annotate ClusterNode.__init__.
    nodes = [ClusterNode(host, port) for host, port in hosts]  # type: ignore[no-untyped-call]
    return RedisCluster(startup_nodes=nodes, **kwargs)


def _sentinel(url: str, options: dict[str, Any]) -> redis.Redis:
    scheme, username, password, hosts, path = _split(url)
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(
            f"a Sentinel url is redis+sentinel://host:port[,host:port...]/service[/db]; got {url!r}"
        )
    service, db = unquote(parts[0]), int(parts[1]) if len(parts) == 2 else 0
    sentinel_kwargs = dict(options.pop("sentinel_kwargs", None) or {})
    for name in ("socket_timeout", "socket_connect_timeout", "retry"):
        # Asking a sentinel who the primary is must be as short as a cache command.
        sentinel_kwargs.setdefault(name, options[name])
    kwargs = {**_credentials(username, password), **options}
    kwargs.setdefault("db", db)
    if scheme.startswith("rediss"):
        kwargs.setdefault("ssl", True)
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, **kwargs)
    client: redis.Redis = sentinel.master_for(service, redis_class=redis.Redis)
    return client
