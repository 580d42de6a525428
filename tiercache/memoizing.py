"""The memoize decorator: cache a function's results under stable, per-call keys.

Keys are ``memo:{module}.{qualname}:{hash of the bound arguments}`` (see ``keys.py``), so
they are the same in every process and across restarts; defaults are applied and keyword
order does not matter. Methods: ``self`` (or ``cls``) is part of the key, so its type must
define ``__tiercache_key__()`` (classes are keyed by their qualified name), or be excluded
with ``ignore=("self",)`` when results do not depend on the instance.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .keys import ArgumentKeyer, check_tags
from .options import Duration, check_optional_ttl
from .telemetry import ATTR_FUNCTION, SPAN_MEMOIZE, qualified_name

if TYPE_CHECKING:
    from .cache import TierCache

__all__ = ["Memoized", "memoize_with"]

P = ParamSpec("P")
R = TypeVar("R")


class Memoized(Generic[P, R]):
    """A memoized function: call it like the original; also `invalidate` and
    `cache_key` for one call's entry.

    Since: 0.1.0
    """

    __wrapped__: Callable[P, R]

    def __init__(
        self,
        func: Callable[P, R],
        cache: Callable[[], TierCache],
        ttl: float | None,
        ignore: Iterable[str],
        tags: tuple[str, ...] = (),
        name: str | None = None,
    ) -> None:
        functools.update_wrapper(self, func)
        self._func = func
        self._cache = cache
        self._ttl = ttl
        self._tags = tags
        self._keyer = ArgumentKeyer(func, ignore, name)
        # code.function.name wants the fully qualified name: module + qualname.
        self._span_attributes = {ATTR_FUNCTION: qualified_name(func)}

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        key = self._keyer(args, kwargs)
        cache = self._cache()
        telemetry = cache._telemetry
        if telemetry.tracing and telemetry.trace_l1_hits:
            with telemetry.span(SPAN_MEMOIZE, key, self._span_attributes):
                return cache.get_or_set(
                    key, lambda: self._func(*args, **kwargs), self._ttl, tags=self._tags
                )
        return cache.get_or_set(
            key, lambda: self._func(*args, **kwargs), self._ttl, tags=self._tags
        )

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key a call with these arguments uses."""
        return self._keyer(args, kwargs)

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Drop the cached result of a call with these arguments."""
        self._cache().delete(self._keyer(args, kwargs))

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return _BoundMemoized(self, instance)

    def __repr__(self) -> str:
        return f"<memoized {self.__wrapped__.__qualname__}>"


class _BoundMemoized:
    """A memoized method bound to an instance: ``obj.method.invalidate(x)`` works."""

    __slots__ = ("__self__", "_memoized")

    def __init__(self, memoized: Memoized[..., Any], instance: object) -> None:
        self._memoized = memoized
        self.__self__ = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._memoized(self.__self__, *args, **kwargs)

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        return self._memoized.cache_key(self.__self__, *args, **kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> None:
        self._memoized.invalidate(self.__self__, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._memoized, name)


def memoize_with(
    cache: Callable[[], TierCache],
    *,
    ttl: Duration | None = None,
    tags: Iterable[str] = (),
    ignore: Iterable[str] = (),
    name: str | None = None,
) -> Callable[[Callable[P, R]], Any]:
    """A decorator caching results in ``cache()`` (resolved at call time).

    ``name`` replaces ``module.qualname`` in the keys: give one to closures and lambdas
    whose results should be shared across processes (without it, their keys are private to
    the function object, since closures of one factory share a qualified name).

    Since: 0.1.0
    """
    ttl_s = None if ttl is None else check_optional_ttl("ttl", ttl, 0.0)
    tag_list = tuple(check_tags(tags))
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"name must be a non-empty str, not {name!r}")
    if isinstance(ignore, str):
        ignore = (ignore,)
    ignored = tuple(ignore)
    for param in ignored:
        if not isinstance(param, str):
            raise TypeError(f"ignore must hold parameter names (str), not {param!r}")

    def decorate(func: Callable[P, R]) -> Any:
        if isinstance(func, staticmethod):
            return staticmethod(Memoized(func.__func__, cache, ttl_s, ignored, tag_list, name))
        if isinstance(func, classmethod):
            return classmethod(Memoized(func.__func__, cache, ttl_s, ignored, tag_list, name))
        if not callable(func):
            raise TypeError(f"memoize decorates functions, not {type(func).__name__}")
        return Memoized(func, cache, ttl_s, ignored, tag_list, name)

    return decorate
