"""tiercache: an in-process L1 in front of a Redis L2.

>>> from tiercache import TierCache
>>> cache = TierCache(None)          # L1 only; pass a redis-py client for L1 + L2
>>> cache.get_or_set("answer", lambda: 42)
42
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar, overload

from ._version import __version__
from .cache import TierCache
from .codec import Compressor, MsgpackSerializer, Serializer
from .defaults import configure, get_default, reset_default
from .errors import (
    CircuitOpenError,
    ConfigurationError,
    CorruptEntryError,
    KeyCollisionWarning,
    L2Error,
    LoaderTimeoutError,
    NotConfiguredError,
    ReentrantLoadError,
    SerializationError,
    TierCacheError,
)
from .memoizing import Memoized, memoize_with
from .options import Breaker, Duration
from .sentinel import MISSING, Missing
from .writer import Writer

__all__ = [
    "MISSING",
    "Breaker",
    "CircuitOpenError",
    "Compressor",
    "ConfigurationError",
    "CorruptEntryError",
    "KeyCollisionWarning",
    "L2Error",
    "LoaderTimeoutError",
    "Memoized",
    "Missing",
    "MsgpackSerializer",
    "NotConfiguredError",
    "ReentrantLoadError",
    "SerializationError",
    "Serializer",
    "TierCache",
    "TierCacheError",
    "Writer",
    "__version__",
    "configure",
    "get_default",
    "memoize",
]

P = ParamSpec("P")
R = TypeVar("R")


@overload
def memoize(func: Callable[P, R], /) -> Memoized[P, R]: ...
@overload
def memoize(
    func: None = None,
    /,
    *,
    ttl: Duration | None = None,
    tags: Iterable[str] = (),
    ignore: Iterable[str] = (),
    name: str | None = None,
) -> Callable[[Callable[P, R]], Memoized[P, R]]: ...
def memoize(
    func: Callable[..., Any] | None = None,
    /,
    *,
    ttl: Duration | None = None,
    tags: Iterable[str] = (),
    ignore: Iterable[str] = (),
    name: str | None = None,
) -> Any:
    """Cache a function's results in the default cache (``configure()``, ``TIERCACHE_URL``,
    else L1-only), resolved at each call, so configuring after decorating works.

    Use bare (``@memoize``) or with options (``@memoize(ttl=60, tags=("prices",))``). The
    decorated function is a `Memoized` typed with its parameters and return type, and gains
    ``.invalidate(*args, **kw)`` (drops one call's entry in every instance) and
    ``.cache_key(*args, **kw)``. Arguments must be of types with a canonical
    encoding (see `tiercache.keys`); others raise ``TypeError``.

    Since: 0.1.0
    """
    decorator = memoize_with(get_default, ttl=ttl, tags=tags, ignore=ignore, name=name)
    if func is not None:
        return decorator(func)
    return decorator


def _reset_default_for_tests() -> None:
    reset_default()
