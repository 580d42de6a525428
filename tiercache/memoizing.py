"""The memoize decorator: cache a function's results under stable, per-call keys.

Keys are ``memo:{module}.{qualname}:{hash of the bound arguments}`` (see ``keys.py``), so
they are the same in every process and across restarts; defaults are applied and keyword
order does not matter. Methods: ``self`` (or ``cls``) is part of the key, so its type must
define ``__tiercache_key__()`` (classes are keyed by their qualified name), or be excluded
with ``ignore=("self",)`` when results do not depend on the instance. Nested functions and
lambdas add ``@{line}`` and a hash of their plain-data closure variables; partials and
callable instances work too (see `ArgumentKeyer`). Module-level memoized functions pickle by
qualified name, so ``multiprocessing`` pools can map them.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .errors import KeyCollisionWarning
from .keys import ArgumentKeyer, _check_text, check_tags, claim_prefix
from .options import Duration, check_optional_ttl
from .telemetry import ATTR_FUNCTION, SPAN_MEMOIZE

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
        qualname = getattr(func, "__qualname__", None)
        if isinstance(qualname, str):
            functools.update_wrapper(self, func)
        else:
            # A callable instance or a partial: copy what exists, not the instance's own
            # attributes (they could shadow cache_key/invalidate).
            functools.update_wrapper(self, func, updated=())
            target = getattr(func, "func", func) if isinstance(func, functools.partial) else func
            qualname = getattr(target, "__qualname__", None)
            if not isinstance(qualname, str):
                qualname = type(target).__qualname__
        self._label: str = qualname
        self._func = func
        self._cache = cache
        self._ttl = ttl
        self._tags = tags
        self._keyer = ArgumentKeyer(func, ignore, name)
        if not claim_prefix(self._keyer):
            warnings.warn(
                f"{self!r} shares its key prefix {self._keyer.prefix!r} with another live "
                "memoized function that captures other objects or runs other code: each "
                "would be served the other's results. Give them distinct name= values.",
                KeyCollisionWarning,
                stacklevel=3,
            )
        # code.function.name wants the fully qualified name: module + qualname.
        target = getattr(func, "func", func) if isinstance(func, functools.partial) else func
        module = getattr(target, "__module__", None) or type(target).__module__
        self._span_attributes = {ATTR_FUNCTION: f"{module}.{qualname}"}

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
        return f"<memoized {self._label}>"

    def __reduce__(self) -> str:
        # Pickled by reference, as functools.lru_cache does: the unpickling process imports
        # the module and finds the memoized object under the same qualified name, so
        # multiprocessing can send a module-level memoized function to its workers.
        qualname = self.__dict__.get("__qualname__")
        if not isinstance(qualname, str) or "<locals>" in qualname or "<lambda>" in qualname:
            raise TypeError(f"cannot pickle {self!r}: only module-level memoized functions pickle")
        return qualname


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

    ``name`` replaces ``module.qualname`` (and the ``@line`` of a nested function) in the
    keys; closure variables holding plain data are still part of them. Memoizing a function
    while another live one would share its keys warns with `KeyCollisionWarning`: give them
    distinct names. A non-str ``name`` is a `TypeError`, an empty one a `ValueError`.

    Since: 0.1.0
    """
    ttl_s = None if ttl is None else check_optional_ttl("ttl", ttl, 0.0)
    tag_list = tuple(check_tags(tags))
    if name is not None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        name = str.__str__(name)  # a str subclass: its base value, as for keys
        if not name:
            raise ValueError("name must not be empty")
        _check_text(name, "name")
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
