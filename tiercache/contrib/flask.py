"""A Flask-Caching backend on tiercache: ``@cache.cached`` and ``@cache.memoize`` served from
an in-process L1 in front of Redis, kept coherent across workers.

    app.config.update(
        CACHE_TYPE="tiercache.contrib.flask.TierCache",
        CACHE_REDIS_URL="redis://localhost:6379/0",
        CACHE_OPTIONS={"l1_ttl": 30},  # any TierCache option, and redis_options
    )
    cache = Cache(app)

The cachelib ``BaseCache`` API with cachelib's semantics: a timeout of 0 never expires,
``None`` is the default timeout, ``get`` answers None for a miss, ``inc`` of a missing key
starts from 0. Values are pickled and signed with a key derived from ``SECRET_KEY``
(`tiercache.contrib.signing`) unless ``CACHE_OPTIONS["serializer"]`` names another.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from flask import Flask
from flask_caching.backends.base import BaseCache

from ..cache import TierCache as CoreCache
from ..options import MAX_DURATION
from .signing import SignedPickleSerializer, derive_key

__all__ = ["TierCache"]

# Options Flask-Caching itself puts into CACHE_OPTIONS; the rest go to the core cache.
_OWN = ("default_timeout", "ignore_delete_many_errors")


class TierCache(BaseCache):
    """Flask-Caching backend: the cachelib API on a `tiercache.TierCache`.

    Args:
        cache: the core cache to use.
        default_timeout: seconds for ``set`` without a timeout (0: never expires).
        key_prefix: prepended to every key (``CACHE_KEY_PREFIX``).

    Since: 0.2.0
    """

    def __init__(
        self,
        cache: CoreCache,
        default_timeout: int = 300,
        key_prefix: str = "",
        ignore_delete_many_errors: bool = False,
    ) -> None:
        super().__init__(
            default_timeout=default_timeout, ignore_delete_many_errors=ignore_delete_many_errors
        )
        self.cache = cache
        self.key_prefix = key_prefix

    @classmethod
    def factory(
        cls, app: Flask, config: dict[str, Any], args: list[Any], kwargs: dict[str, Any]
    ) -> TierCache:
        """Build the backend from the app's config (called by ``Cache(app)``)."""
        options = {name: value for name, value in kwargs.items() if name not in _OWN}
        if "serializer" not in options:
            secret = app.config.get("SECRET_KEY")
            if not secret:
                raise ValueError(
                    "tiercache.contrib.flask.TierCache signs its pickled values with a key "
                    "derived from SECRET_KEY: set SECRET_KEY, or pass a serializer in "
                    "CACHE_OPTIONS"
                )
            options["serializer"] = SignedPickleSerializer(derive_key(secret, "flask-cache"))
        options.setdefault("max_key_length", 64 * 1024)
        options.setdefault("namespace", "flask")
        url = config.get("CACHE_REDIS_URL")
        if url:
            core = CoreCache.from_url(url, **options)
        else:
            options.pop("redis_options", None)
            core = CoreCache(None, **options)
        return cls(
            core,
            default_timeout=kwargs.get("default_timeout", 300),
            key_prefix=config.get("CACHE_KEY_PREFIX") or "",
            ignore_delete_many_errors=kwargs.get("ignore_delete_many_errors", False),
        )

    def _ttl(self, timeout: int | dt.timedelta | None) -> float | None:
        """Seconds for the core cache; MAX for "never expires"; None for "already expired"."""
        seconds = self._normalize_timeout(timeout)
        if seconds == 0:
            return MAX_DURATION
        if seconds < 0:
            return None
        return float(min(seconds, math.floor(MAX_DURATION)))

    def get(self, key: str) -> Any:
        return self.cache.get(self.key_prefix + key)

    def get_many(self, *keys: str) -> list[Any]:
        found = self.cache.get_many([self.key_prefix + key for key in keys])
        return [found.get(self.key_prefix + key) for key in keys]

    def get_dict(self, *keys: str) -> dict[str, Any]:
        return dict(zip(keys, self.get_many(*keys), strict=True))

    def set(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        ttl = self._ttl(timeout)
        if ttl is None:
            self.cache.delete(self.key_prefix + key)
        else:
            self.cache.set(self.key_prefix + key, value, ttl)
        return True

    def add(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        ttl = self._ttl(timeout)
        if ttl is None:
            return not self.has(key)
        return self.cache.add(self.key_prefix + key, value, ttl)

    def set_many(
        self, mapping: dict[str, Any], timeout: int | dt.timedelta | None = None
    ) -> list[Any]:
        ttl = self._ttl(timeout)
        prefixed = {self.key_prefix + key: value for key, value in mapping.items()}
        if ttl is None:
            self.cache.delete_many(list(prefixed))
        elif prefixed:
            self.cache.set_many(prefixed, ttl)
        return list(mapping)

    def delete(self, key: str) -> bool:
        present = self.has(key)
        self.cache.delete(self.key_prefix + key)
        return present

    def delete_many(self, *keys: str) -> list[Any]:
        present = [key for key in keys if self.has(key)]
        if keys:
            self.cache.delete_many([self.key_prefix + key for key in keys])
        return present

    def has(self, key: str) -> bool:
        return self.cache.has_key(self.key_prefix + key)

    def clear(self) -> bool:
        """Empty this cache's namespace in every process (not the whole Redis database)."""
        self.cache.clear()
        return True

    def inc(self, key: str, delta: int = 1) -> int | None:
        """Add ``delta`` atomically; a missing key starts from 0 (as cachelib's RedisCache)."""
        full = self.key_prefix + key
        for _ in range(64):  # each lap lost a race with another writer of the key
            try:
                return self.cache.incr(full, delta)
            except KeyError:
                if self.cache.add(full, delta, self._ttl(None)):
                    return delta
        return None

    def dec(self, key: str, delta: int = 1) -> int | None:
        return self.inc(key, -delta)
