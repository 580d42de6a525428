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
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from .errors import KeyCollisionWarning
from .keys import KEY_MAP_SIZE, ArgumentKeyer, _check_text, check_tags, claim_prefix, mappable
from .options import Duration, check_optional_ttl
from .telemetry import ATTR_FUNCTION, SPAN_MEMOIZE

if TYPE_CHECKING:
    from .cache import TierCache

__all__ = ["BoundMemoized", "Memoized", "memoize_with"]

P = ParamSpec("P")
Q = ParamSpec("Q")
R = TypeVar("R")
S = TypeVar("S")


class _UnmappableError(Exception):
    """Raised inside the key map's function so the map does not remember this call (a
    ``functools.lru_cache`` stores every value its function returns, never an exception)."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key


#: What the key map returns for a call: its key, and its loader (``func`` with the call's
#: arguments bound), built once per remembered call instead of once per hit.
_Found = tuple[str, Callable[[], Any]]


def _key_map(keyer: ArgumentKeyer, func: Callable[..., Any]) -> Callable[..., _Found]:
    """The function a call's key is looked up with: ``lookup(*args, **kwargs)`` returns
    ``(key, loader)``, or raises `_UnmappableError` carrying the key.

    Computing the stable key (bind, encode, BLAKE2b) is most of a hit's cost, so keys are
    remembered by the arguments and their exact types (``lru_cache(typed=True)``, which
    builds that tuple, looks it up and keeps LRU order in C, thread-safe without a lock of
    ours): ``f(1)``, ``f(True)`` and ``f(1.0)`` never share an entry. Only calls whose every
    argument is an immutable scalar with one encoding per value (see `keys.mappable`) are
    remembered; others (and unhashable ones, which the map raises TypeError for) are keyed
    from scratch each time, as before. The map holds `KEY_MAP_SIZE` calls at most.
    """
    if keyer.varying:
        # A callable instance's __tiercache_key__ (or a partial's mutable bound argument)
        # may change the key while the arguments stay equal: nothing can be remembered.
        def unmapped(*args: Any, **kwargs: Any) -> _Found:
            raise _UnmappableError(keyer(args, kwargs))

        return unmapped

    if keyer.closure:
        # A rebound closure variable changes the prefix: it is part of what is remembered,
        # and the key is computed under the prefix it was looked up with.
        def compute_under(prefix: str, /, *args: Any, **kwargs: Any) -> _Found:
            key = keyer.key_with(prefix, args, kwargs)
            if not mappable(args, kwargs):
                raise _UnmappableError(key)
            return key, functools.partial(func, *args, **kwargs)

        remembered = functools.lru_cache(maxsize=KEY_MAP_SIZE, typed=True)(compute_under)

        def lookup(*args: Any, **kwargs: Any) -> _Found:
            return remembered(keyer.prefix, *args, **kwargs)

        return lookup

    def compute(*args: Any, **kwargs: Any) -> _Found:
        key = keyer(args, kwargs)
        if not mappable(args, kwargs):
            raise _UnmappableError(key)
        return key, functools.partial(func, *args, **kwargs)

    return functools.lru_cache(maxsize=KEY_MAP_SIZE, typed=True)(compute)


class Memoized(Generic[P, R]):
    """A memoized function: call it like the original; also `invalidate` and
    `cache_key` for one call's entry.

    Typed with the function's parameters and return type (``Memoized[[str], Decimal]``), so
    ``price("A1")``, ``price.invalidate("A1")`` and ``price.cache_key("A1")`` are checked.

    Since: 0.1.0
    """

    __wrapped__: Callable[P, R]

    def __init__(
        self,
        func: Callable[P, R],
        cache: TierCache | Callable[[], TierCache],
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
        # A cache given itself (``cache.memoize``) is used as is; a resolver (the default
        # cache, which configure() may replace) is called at each call.
        self._fixed: TierCache | None = None if callable(cache) else cache
        self._cache: Callable[[], TierCache] = cache if callable(cache) else lambda: cache
        self._ttl = ttl
        self._tags = tags
        self._keyer = ArgumentKeyer(func, ignore, name)
        self._lookup = _key_map(self._keyer, func)
        # code.function.name wants the fully qualified name: module + qualname.
        target = getattr(func, "func", func) if isinstance(func, functools.partial) else func
        module = getattr(target, "__module__", None) or type(target).__module__
        self._span_attributes = {ATTR_FUNCTION: f"{module}.{qualname}"}
        self._call: Callable[..., R] = self._caller()
        # Each memoized function gets a subclass of its own whose __call__ is the closure
        # `_caller` built (collaborators in cells, not looked up on self): calling the
        # instance then runs that closure directly, without the method above in between.
        # An L1 hit costs ~450 ns in all, and this saves ~50 of them (benchmarks/memoize.py).
        own = type(self)
        self.__class__ = type(
            own.__name__,
            (own,),
            {
                "__call__": staticmethod(self._call),
                "__slots__": (),
                "__module__": own.__module__,
                "__qualname__": own.__qualname__,
            },
        )
        if not claim_prefix(self._keyer):
            warnings.warn(
                f"{self!r} shares its key prefix {self._keyer.prefix!r} with another live "
                "memoized function that captures other objects or runs other code: each "
                "would be served the other's results. Give them distinct name= values.",
                KeyCollisionWarning,
                stacklevel=3,
            )

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Return the cached result of this call, calling the function on a miss."""
        # Not reached for instances made by __init__: see the subclass it installs.
        return self._call(*args, **kwargs)

    def _caller(self) -> Callable[..., R]:
        lookup, keyer, func = self._lookup, self._keyer, self._func
        ttl, tags, resolve = self._ttl, self._tags, self._cache
        span_attributes = self._span_attributes

        def recover(
            error: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[str, Callable[[], R]]:
            # The key map had nothing to remember for this call.
            if isinstance(error, _UnmappableError):
                return error.key, functools.partial(func, *args, **kwargs)
            if isinstance(error, TypeError):
                # An unhashable argument (a list) cannot be looked up: key it from scratch,
                # which also raises the TypeError naming an argument that cannot be encoded
                # (on its own: the map's failure adds nothing to it).
                try:
                    key = keyer(args, kwargs)
                except TypeError as unencodable:
                    raise unencodable from None
                return key, functools.partial(func, *args, **kwargs)
            raise error

        def traced(cache: TierCache, key: str, loader: Callable[[], R]) -> R:
            with cache.telemetry.span(SPAN_MEMOIZE, key, span_attributes):
                return cache.get_or_set(key, loader, ttl, tags=tags)

        if self._fixed is None:

            def call(*args: Any, **kwargs: Any) -> R:
                loader: Callable[[], R]
                try:
                    # Without keywords, no ``**{}`` (it would build an empty dict).
                    key, loader = lookup(*args, **kwargs) if kwargs else lookup(*args)
                except Exception as error:
                    key, loader = recover(error, args, kwargs)
                cache = resolve()
                telemetry = cache.telemetry
                if telemetry.tracing and telemetry.trace_l1_hits:
                    return traced(cache, key, loader)
                return cache.get_or_set(key, loader, ttl, tags=tags)

            return call

        # A cache's telemetry object is fixed for its life; whether it records spans is not.
        fixed, telemetry = self._fixed, self._fixed.telemetry

        def call_fixed(*args: Any, **kwargs: Any) -> R:
            loader: Callable[[], R]
            try:
                key, loader = lookup(*args, **kwargs) if kwargs else lookup(*args)
            except Exception as error:
                key, loader = recover(error, args, kwargs)
            if telemetry.tracing and telemetry.trace_l1_hits:
                return traced(fixed, key, loader)
            return fixed.get_or_set(key, loader, ttl, tags=tags)

        return call_fixed

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key a call with these arguments uses."""
        return self._keyer(args, kwargs)

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Drop the cached result of a call with these arguments."""
        self._cache().delete(self._keyer(args, kwargs))

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Memoized[P, R]: ...
    @overload
    def __get__(
        self: Memoized[Concatenate[S, Q], R], instance: S, owner: type[Any] | None = None
    ) -> BoundMemoized[Q, R]: ...
    def __get__(self, instance: object, owner: type[Any] | None = None) -> Any:
        """Accessed on an instance: the memoized method bound to it (`BoundMemoized`)."""
        if instance is None:
            return self
        # The overloads above tie the first parameter to the instance; here it is untyped.
        method: Memoized[Concatenate[Any, ...], R] = self  # type: ignore[assignment]
        return BoundMemoized(method, instance)

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


class BoundMemoized(Generic[P, R]):
    """A memoized method bound to an instance: ``obj.method(x)``,
    ``obj.method.invalidate(x)`` and ``obj.method.cache_key(x)`` pass ``obj`` as ``self``.

    Since: 0.2.0
    """

    __slots__ = ("__self__", "_memoized")

    def __init__(self, memoized: Memoized[Concatenate[Any, P], R], instance: object) -> None:
        self._memoized = memoized
        self.__self__ = instance

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._memoized(self.__self__, *args, **kwargs)

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key a call with these arguments (and this instance) uses."""
        return self._memoized.cache_key(self.__self__, *args, **kwargs)

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Drop the cached result of a call with these arguments (and this instance)."""
        self._memoized.invalidate(self.__self__, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._memoized, name)


def memoize_with(
    cache: TierCache | Callable[[], TierCache],
    *,
    ttl: Duration | None = None,
    tags: Iterable[str] = (),
    ignore: Iterable[str] = (),
    name: str | None = None,
) -> Callable[[Callable[P, R]], Memoized[P, R]]:
    """A decorator caching results in ``cache``, or in ``cache()`` resolved at each call.

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

    def decorate(func: Callable[P, R]) -> Memoized[P, R]:
        # Above @staticmethod/@classmethod the result stays that kind of method, wrapping
        # the memoized function: typed as the Memoized it holds (what access returns).
        if isinstance(func, staticmethod):
            static = Memoized(func.__func__, cache, ttl_s, ignored, tag_list, name)
            return staticmethod(static)  # type: ignore[return-value]
        if isinstance(func, classmethod):
            bound = Memoized(func.__func__, cache, ttl_s, ignored, tag_list, name)
            return classmethod(bound)
        if not callable(func):
            raise TypeError(f"memoize decorates functions, not {type(func).__name__}")
        return Memoized(func, cache, ttl_s, ignored, tag_list, name)

    return decorate
