"""A Django cache backend on tiercache: ``django.core.cache`` with an in-process L1 in front of
Redis, kept coherent across workers.

    CACHES = {
        "default": {
            "BACKEND": "tiercache.contrib.django.TierCacheBackend",
            "LOCATION": "redis://localhost:6379/0",
            "OPTIONS": {"l1_ttl": 30},  # any TierCache option, and redis_options
        }
    }

Django's semantics follow its built-in ``RedisCache`` (timeouts: ``None`` is forever, 0 or
less deletes, fractions are truncated to whole seconds; ``KEY_PREFIX``/``VERSION``/
``KEY_FUNCTION``; ``CacheKeyWarning`` for keys memcached would refuse). Values are pickled
and signed with a key derived from ``SECRET_KEY`` (`tiercache.contrib.signing`) unless
``OPTIONS["serializer"]`` names another. The intended differences are in the docs' "Use
with Django" page: ``clear`` empties the namespace only, ``incr`` of a non-integer raises
``TypeError``, Redis trouble degrades instead of raising (except ``incr``), ``close`` keeps
the shared cache open.

Django builds one backend object per thread; they all share one `TierCache` per
``(LOCATION, OPTIONS)`` in the process, so a process has one L1 and one bus listener.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from django.conf import settings as django_settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache, memcache_key_warnings

from ..cache import TierCache
from ..options import MAX_DURATION
from .signing import SignedPickleSerializer, derive_key

__all__ = ["TierCacheBackend", "shared_cache"]

# Django keys carry a prefix and a version, and Django's RedisCache has no length limit.
_MAX_KEY_LENGTH = 64 * 1024
# Made keys remembered per backend object (Django's key function and its memcached checks
# cost ~2.5 µs a call, ten times an L1 hit); cleared when it reaches this size.
_KEY_MEMO = 4096

# One TierCache per (LOCATION, OPTIONS) in the process; the lock guards the dict.
_shared: dict[tuple[str, str], TierCache] = {}
_shared_lock = threading.Lock()


def shared_cache(location: str | None, options: Mapping[str, Any]) -> TierCache:
    """The process's `TierCache` for ``location`` (a Redis URL, or None/"" for L1 only) and
    ``options`` (TierCache keyword arguments plus ``redis_options``), built on first use.

    Since: 0.2.0
    """
    ident = (location or "", repr(sorted(options.items())))
    cache = _shared.get(ident)
    if cache is not None:
        return cache
    with _shared_lock:
        cache = _shared.get(ident)
        if cache is None:
            kwargs = dict(options)
            kwargs.setdefault("max_key_length", _MAX_KEY_LENGTH)
            if "serializer" not in kwargs:
                key = derive_key(django_settings.SECRET_KEY, "django-cache")
                kwargs["serializer"] = SignedPickleSerializer(key)
            if location:
                cache = TierCache.from_url(location, **kwargs)
            else:
                kwargs.pop("redis_options", None)
                cache = TierCache(None, **kwargs)
            _shared[ident] = cache
    return cache


class TierCacheBackend(BaseCache):
    """``django.core.cache`` backend: the whole ``BaseCache`` API on a shared `TierCache`.

    Since: 0.2.0
    """

    def __init__(self, server: str | list[str] | None, params: dict[str, Any]) -> None:
        super().__init__(params)
        if isinstance(server, (list, tuple)):
            if len(server) > 1:
                raise ValueError(
                    "TierCacheBackend takes one Redis URL as LOCATION (use a Sentinel or "
                    "cluster client through OPTIONS for more servers)"
                )
            server = server[0] if server else None
        self._location = server
        self._options: dict[str, Any] = dict(params.get("OPTIONS") or {})
        self._tier: TierCache | None = None
        # (key, version) -> the made key, for keys that raised no CacheKeyWarning (those
        # are made, and warned about, every time, as Django does).
        self._keys: dict[tuple[Any, Any], str] = {}

    @property
    def tier(self) -> TierCache:
        """The shared `TierCache` behind this backend."""
        tier = self._tier
        if tier is None:
            options = self._options
            if "ttl" not in options:  # the default TIMEOUT bounds l1_ttl, as ttl does
                timeout = self.default_timeout
                ttl = MAX_DURATION if timeout is None else max(1.0, float(timeout))
                options = {**options, "ttl": min(ttl, MAX_DURATION)}
            tier = self._tier = shared_cache(self._location, options)
        return tier

    def make_and_validate_key(self, key: Any, version: int | None = None) -> str:
        """Django's ``make_key`` then ``validate_key`` (``CacheKeyWarning``), remembered for
        keys that warn about nothing."""
        try:
            return self._keys[key, version]
        except (KeyError, TypeError):  # TypeError: an unhashable key, made as Django does
            pass
        made: str = self.make_key(key, version=version)
        if any(True for _ in memcache_key_warnings(made)):
            self.validate_key(made)
            return made
        if len(self._keys) >= _KEY_MEMO:
            self._keys.clear()
        with contextlib.suppress(TypeError):
            self._keys[key, version] = made
        return made

    def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> float | None:
        """Seconds as Django's RedisCache counts them: None forever, 0 for "delete"."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        return None if timeout is None else max(0, int(timeout))

    @staticmethod
    def _ttl(timeout: float | None) -> float:
        return MAX_DURATION if timeout is None else float(timeout)

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        key = self.make_and_validate_key(key, version=version)
        seconds = self.get_backend_timeout(timeout)
        if seconds == 0:  # as RedisCache: "stored then expired at once" if it was absent
            return not self.tier.has_key(key)
        return self.tier.add(key, value, self._ttl(seconds))

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        try:  # the L1-hit path: the remembered key, the shared cache, no more calls
            made = self._keys[key, version]
        except (KeyError, TypeError):
            made = self.make_and_validate_key(key, version)
        tier = self._tier
        if tier is None:
            tier = self.tier
        return tier.get(made, default)

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        key = self.make_and_validate_key(key, version=version)
        seconds = self.get_backend_timeout(timeout)
        if seconds == 0:
            self.tier.delete(key)
        else:
            self.tier.set(key, value, self._ttl(seconds))

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        seconds = self.get_backend_timeout(timeout)
        if seconds == 0:
            present = self.tier.has_key(key)
            self.tier.delete(key)
            return present
        return self.tier.touch(key, self._ttl(seconds))

    def delete(self, key: Any, version: int | None = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        present = self.tier.has_key(key)
        self.tier.delete(key)
        return present

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        key_map = {self.make_and_validate_key(key, version=version): key for key in keys}
        if not key_map:
            return {}
        found = self.tier.get_many(list(key_map))
        return {key_map[k]: v for k, v in found.items()}

    def has_key(self, key: Any, version: int | None = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        return self.tier.has_key(key)

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        key = self.make_and_validate_key(key, version=version)
        try:
            return self.tier.incr(key, delta)
        except KeyError:
            raise ValueError(f"Key '{key}' not found.") from None

    def set_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        if not data:
            return []
        safe = {self.make_and_validate_key(key, version=version): v for key, v in data.items()}
        seconds = self.get_backend_timeout(timeout)
        if seconds == 0:
            self.tier.delete_many(list(safe))
        else:
            self.tier.set_many(safe, self._ttl(seconds))
        return []

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        safe = [self.make_and_validate_key(key, version=version) for key in keys]
        if safe:
            self.tier.delete_many(safe)

    def clear(self) -> None:
        """Empty this cache's namespace in every process (not the whole Redis database)."""
        self.tier.clear()

    def close(self, **kwargs: Any) -> None:
        """Nothing to do: Django calls this after every request, and the shared cache (its
        L1, listener and connection pool) lives as long as the process."""
