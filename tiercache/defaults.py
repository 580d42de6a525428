"""The default cache used by ``@tiercache.memoize``: from `configure`, else from the
``TIERCACHE_URL`` environment variable, else an L1-only cache. Built lazily, once."""

from __future__ import annotations

import os
import threading
from typing import Any

from .cache import TierCache
from .errors import NotConfiguredError

__all__ = ["ENV_URL", "configure", "get_default", "reset_default"]

ENV_URL = "TIERCACHE_URL"

# Guards _default. Reads of an already-built default take no lock (see get_default).
_lock = threading.Lock()
_default: TierCache | None = None


def configure(url: str | None = None, *, client: Any = None, **options: Any) -> TierCache:
    """Set the default cache: from ``url`` (see `TierCache.from_url`), from a redis-py
    ``client``, or L1-only when both are None. Replaces (and closes) a previous default.

    Since: 0.1.0
    """
    global _default
    if url is not None and client is not None:
        raise ValueError("configure() takes url or client, not both")
    cache = TierCache.from_url(url, **options) if url is not None else TierCache(client, **options)
    with _lock:
        previous, _default = _default, cache
    if previous is not None:
        previous.close()
    return cache


def get_default() -> TierCache:
    """The default cache, built on first use.

    Since: 0.1.0
    """
    cache = _default
    if cache is not None:
        return cache
    return _build_default()


def _build_default() -> TierCache:
    global _default
    with _lock:
        if _default is None:
            url = os.environ.get(ENV_URL)
            if url:
                try:
                    _default = TierCache.from_url(url)
                except (TypeError, ValueError) as exc:
                    raise NotConfiguredError(f"{ENV_URL}={url!r} is not usable: {exc}") from exc
            else:
                _default = TierCache(None)
        return _default


def reset_default() -> None:
    """Close and forget the default cache (tests; reconfiguration).

    Since: 0.1.0
    """
    global _default
    with _lock:
        previous, _default = _default, None
    if previous is not None:
        previous.close()
