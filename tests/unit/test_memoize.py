"""memoize: stable per-call keys, functools.wraps metadata, methods, invalidation."""

from __future__ import annotations

import inspect
import random
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

import tiercache
from tests.support import FakeClock
from tiercache import Memoized, TierCache

CLOCK_START = 1_000_000.0  # where this module's fake clocks start


class Loads:
    """Records the calls a loader actually ran."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def __call__(self, *args: Any) -> Any:
        self.calls.append(args if len(args) != 1 else args[0])
        return args


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TIERCACHE_URL: the default cache is L1-only unless configure() is called."""
    monkeypatch.delenv("TIERCACHE_URL", raising=False)


@pytest.fixture
def l1_cache() -> Iterator[TierCache]:
    with TierCache(None, namespace="memo") as cache:
        yield cache


@pytest.fixture
def redis_cache(fake_redis: fakeredis.FakeRedis) -> Iterator[TierCache]:
    with TierCache(fake_redis, namespace="shop") as cache:
        yield cache


@pytest.fixture(params=["l1", "redis"])
def cache(request: pytest.FixtureRequest) -> TierCache:
    """Each behaviour on an L1-only cache and on an L1 + fakeredis cache."""
    fixture = "l1_cache" if request.param == "l1" else "redis_cache"
    result: TierCache = request.getfixturevalue(fixture)
    return result


# -- the default cache -------------------------------------------------------------------------


def test_bare_memoize_uses_an_l1_only_default_cache(no_env: None) -> None:
    """@tiercache.memoize without arguments caches in the default, L1-only cache."""
    loads = Loads()

    @tiercache.memoize
    def square(x: int) -> int:
        loads(x)
        return x * x

    assert square(3) == 9
    assert square(3) == 9
    assert loads.calls == [3]
    assert "L1-only" in repr(tiercache.get_default())


def test_memoize_with_ttl_on_the_default_cache_expires(no_env: None) -> None:
    """@tiercache.memoize(ttl=60) keeps a result 60 seconds (on the default cache's clock)."""
    clock = FakeClock(CLOCK_START)
    tiercache.configure(timer=clock)
    loads = Loads()

    @tiercache.memoize(ttl=60)
    def price(sku: str) -> str:
        loads(sku)
        return f"price of {sku}"

    assert price("A1") == "price of A1"
    clock.now += 50  # inside the ttl even after any jitter
    price("A1")
    assert loads.calls == ["A1"]
    clock.now += 10.1
    price("A1")
    assert loads.calls == ["A1", "A1"]


def test_l1_only_memoized_result_lives_the_whole_ttl(
    no_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In L1-only mode a memoized result lives exactly ``ttl`` (no Redis, so no jitter;
    regression: the load path shortened it by up to 10%)."""
    monkeypatch.setattr(random, "random", lambda: 0.99)  # the largest jitter draw
    clock = FakeClock(CLOCK_START)
    tiercache.configure(timer=clock)
    loads = Loads()

    @tiercache.memoize(ttl=60)
    def price(sku: str) -> str:
        loads(sku)
        return sku

    price("A1")
    clock.now += 59.9
    price("A1")
    assert loads.calls == ["A1"]


def test_configure_switches_the_default_cache_after_decoration(
    no_env: None, fake_redis: fakeredis.FakeRedis
) -> None:
    """The default cache is resolved at each call: configure() after decorating takes over."""
    loads = Loads()

    @tiercache.memoize
    def greet(name: str) -> str:
        loads(name)
        return f"hello {name}"

    greet("ann")
    assert fake_redis.dbsize() == 0  # L1-only so far
    tiercache.configure(client=fake_redis)
    assert greet("ann") == "hello ann"
    assert loads.calls == ["ann", "ann"]  # a new cache: loaded again, now through Redis
    assert fake_redis.exists(f"tiercache:{greet.cache_key('ann')}") == 1


# -- metadata ----------------------------------------------------------------------------------


def test_wraps_metadata_is_kept(l1_cache: TierCache) -> None:
    """__name__, __qualname__, __doc__, __module__ and __wrapped__ come from the function."""

    def original(a: int, b: str = "x") -> str:
        """Docstring of the original."""
        return b * a

    memoized = l1_cache.memoize()(original)
    assert isinstance(memoized, Memoized)
    assert memoized.__name__ == "original"
    assert memoized.__qualname__ == original.__qualname__
    assert memoized.__doc__ == "Docstring of the original."
    assert memoized.__module__ == __name__
    assert memoized.__wrapped__ is original
    assert inspect.signature(memoized) == inspect.signature(original)


def test_bare_default_memoize_also_keeps_metadata(no_env: None) -> None:
    """The bare form wraps the same way."""

    @tiercache.memoize
    def documented() -> None:
        """Doc."""

    assert documented.__name__ == "documented"
    assert documented.__doc__ == "Doc."


# -- caching behaviour -------------------------------------------------------------------------


def test_loader_runs_once_per_distinct_arguments(cache: TierCache) -> None:
    """Repeated calls with the same arguments hit the cache; new arguments load."""
    loads = Loads()

    @cache.memoize()
    def f(x: int) -> int:
        loads(x)
        return x + 1

    assert [f(1), f(1), f(2), f(2), f(1)] == [2, 2, 3, 3, 2]
    assert loads.calls == [1, 2]


def test_cached_none_is_not_reloaded(cache: TierCache) -> None:
    """A function returning None is cached like any other result."""
    loads = Loads()

    @cache.memoize()
    def nothing(x: int) -> None:
        loads(x)

    assert nothing(1) is None
    assert nothing(1) is None
    assert loads.calls == [1]


def test_keyword_order_and_defaults_give_one_key(cache: TierCache) -> None:
    """f(1), f(1, 2), f(a=1, b=2), f(b=2, a=1) are one call, one key, one load."""
    loads = Loads()

    @cache.memoize()
    def f(a: int, b: int = 2, **extra: int) -> int:
        loads(a, b, tuple(sorted(extra.items())))
        return a + b

    spellings: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((1,), {}),
        ((1, 2), {}),
        ((), {"a": 1, "b": 2}),
        ((), {"b": 2, "a": 1}),
    ]
    assert {f.cache_key(*args, **kw) for args, kw in spellings} == {f.cache_key(1)}
    for args, kw in spellings:
        assert f(*args, **kw) == 3
    assert f(1, x=1, y=2) == f(1, y=2, x=1)
    assert len(loads.calls) == 2


def test_different_functions_do_not_share_keys(cache: TierCache) -> None:
    """The qualified name is part of the key."""

    @cache.memoize()
    def double(x: int) -> int:
        return 2 * x

    @cache.memoize()
    def triple(x: int) -> int:
        return 3 * x

    assert double.cache_key(5) != triple.cache_key(5)
    assert (double(5), triple(5)) == (10, 15)


def test_string_arguments_are_not_confused_by_splitting(cache: TierCache) -> None:
    """f("a b") and f("a", "b") are distinct calls."""

    @cache.memoize()
    def join(*parts: str) -> str:
        return "|".join(parts)

    assert join("a b") == "a b"
    assert join("a", "b") == "a|b"


def test_invalidate_makes_the_next_call_load_again(cache: TierCache) -> None:
    """.invalidate(args) drops that call's entry only."""
    loads = Loads()

    @cache.memoize()
    def f(x: int, y: int = 0) -> int:
        loads(x)
        return x

    f(1)
    f(2)
    f.invalidate(1, y=0)
    f(1)
    f(2)
    assert loads.calls == [1, 2, 1]


def test_invalidate_removes_the_entry_from_redis(
    redis_cache: TierCache, fake_redis: fakeredis.FakeRedis
) -> None:
    """In L1 + L2 mode the Redis key goes too."""

    @redis_cache.memoize()
    def f(x: int) -> int:
        return x

    f(1)
    redis_key = f"shop:{f.cache_key(1)}"
    assert fake_redis.exists(redis_key) == 1
    f.invalidate(1)
    assert fake_redis.exists(redis_key) == 0


def test_cache_key_is_the_key_stored_in_redis(
    redis_cache: TierCache, fake_redis: fakeredis.FakeRedis
) -> None:
    """.cache_key(args) is the key under which the value sits, as ``namespace:key``."""

    @redis_cache.memoize()
    def lookup(user_id: int, *, full: bool = False) -> dict[str, int]:
        return {"id": user_id}

    lookup(42)
    key = lookup.cache_key(42)
    assert key.startswith(f"memo:{__name__}.")
    assert "lookup" in key
    assert fake_redis.keys("shop:memo:*") == [f"shop:{key}".encode()]
    assert redis_cache.get(key) == {"id": 42}


def test_memoize_tags_are_invalidated_by_invalidate_tags(cache: TierCache) -> None:
    """@cache.memoize(tags=...) entries go away with cache.invalidate_tags(tag)."""
    loads = Loads()

    @cache.memoize(tags=("prices",))
    def price(sku: str) -> str:
        loads(sku)
        return sku

    price("A")
    cache.invalidate_tags("other")
    price("A")
    cache.invalidate_tags("prices")
    price("A")
    assert loads.calls == ["A", "A"]


def test_exceptions_are_not_cached(cache: TierCache) -> None:
    """A loader that raises propagates its exception unchanged and caches nothing."""
    attempts: list[int] = []

    class FlakyError(Exception):
        pass

    @cache.memoize()
    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) < 3:
            raise FlakyError(f"attempt {len(attempts)}")
        return x

    for n in (1, 2):
        with pytest.raises(FlakyError, match=f"attempt {n}"):
            flaky(7)
    assert flaky(7) == 7
    assert flaky(7) == 7
    assert attempts == [7, 7, 7]


def test_unhashable_but_encodable_arguments_work(cache: TierCache) -> None:
    """Lists, dicts and sets are fine as arguments (keys come from encoding, not hash())."""
    loads = Loads()

    @cache.memoize()
    def total(items: list[int], weights: dict[str, int], seen: set[str]) -> int:
        loads(tuple(items))
        return sum(items)

    assert total([1, 2], {"a": 1, "b": 2}, {"x", "y"}) == 3
    assert total([1, 2], {"b": 2, "a": 1}, {"y", "x"}) == 3
    assert total([2, 1], {"a": 1, "b": 2}, {"x", "y"}) == 3
    assert loads.calls == [(1, 2), (2, 1)]


def test_unencodable_argument_is_a_type_error_before_loading(cache: TierCache) -> None:
    """An argument with no canonical encoding raises TypeError naming it; nothing runs."""
    loads = Loads()

    @cache.memoize()
    def f(conn: object) -> None:
        loads(conn)

    with pytest.raises(TypeError, match=r"argument 'conn' of type object"):
        f(object())
    with pytest.raises(TypeError, match=r"argument 'conn'\[0\]"):
        f.cache_key([object()])
    assert loads.calls == []


# -- methods -----------------------------------------------------------------------------------


class Repo:
    """A method receiver keyed by its id."""

    loads: list[tuple[int, int]]

    def __init__(self, repo_id: int) -> None:
        self.repo_id = repo_id

    def __tiercache_key__(self) -> int:
        return self.repo_id


def test_method_on_a_type_with_tiercache_key(cache: TierCache) -> None:
    """self is keyed by __tiercache_key__: equal ids share entries, others do not."""
    loads: list[tuple[int, int]] = []

    class Users(Repo):
        @cache.memoize()
        def get(self, user_id: int) -> tuple[int, int]:
            loads.append((self.repo_id, user_id))
            return (self.repo_id, user_id)

    a, a_again, b = Users(1), Users(1), Users(2)
    assert a.get(10) == (1, 10)
    assert a_again.get(10) == (1, 10)
    assert b.get(10) == (2, 10)
    assert loads == [(1, 10), (2, 10)]
    assert a.get.cache_key(10) == a_again.get.cache_key(10) != b.get.cache_key(10)
    a.get.invalidate(10)
    a_again.get(10)
    assert loads == [(1, 10), (2, 10), (1, 10)]
    assert a.get.__name__ == "get"


def test_method_with_self_ignored_shares_results_across_instances(cache: TierCache) -> None:
    """ignore=("self",) leaves the instance out of the key."""
    loads: list[int] = []

    class Rates:
        @cache.memoize(ignore=("self",))
        def rate(self, currency: str) -> float:
            loads.append(1)
            return 1.5

    assert Rates().rate("EUR") == Rates().rate("EUR") == 1.5
    assert len(loads) == 1
    assert Rates().rate.cache_key("EUR") == Rates.rate.cache_key(None, "EUR")


def test_method_without_key_hook_or_ignore_is_a_type_error(cache: TierCache) -> None:
    """A plain instance as self cannot be encoded: TypeError naming 'self'."""

    class Plain:
        @cache.memoize()
        def value(self) -> int:
            return 1

    with pytest.raises(TypeError, match=r"argument 'self' of type"):
        Plain().value()


def test_staticmethod_works_in_both_decorator_orders(cache: TierCache) -> None:
    """@memoize over @staticmethod and @staticmethod over @memoize both cache."""
    loads: list[str] = []

    class Tools:
        @cache.memoize()
        @staticmethod
        def outer(x: int) -> str:
            loads.append(f"outer{x}")
            return f"o{x}"

        @staticmethod
        @cache.memoize()
        def inner(x: int) -> str:
            loads.append(f"inner{x}")
            return f"i{x}"

    assert Tools.outer(1) == Tools().outer(1) == "o1"
    assert Tools.inner(1) == Tools().inner(1) == "i1"
    assert loads == ["outer1", "inner1"]
    Tools.outer.invalidate(1)
    Tools.outer(1)
    assert loads == ["outer1", "inner1", "outer1"]


def test_classmethod_is_keyed_by_the_class(cache: TierCache) -> None:
    """A memoized classmethod caches per class (both decorator orders)."""
    loads: list[str] = []

    class Catalog:
        @cache.memoize()
        @classmethod
        def outer(cls, x: int) -> str:
            loads.append(cls.__name__)
            return f"{cls.__name__}{x}"

        @classmethod
        @cache.memoize()
        def inner(cls, x: int) -> str:
            loads.append(cls.__name__)
            return f"{cls.__name__}{x}"

    class Special(Catalog):
        pass

    assert Catalog.outer(1) == Catalog.outer(1) == "Catalog1"
    assert Special.outer(1) == "Special1"
    assert Catalog.inner(1) == Catalog().inner(1) == "Catalog1"
    assert loads == ["Catalog", "Special", "Catalog"]


# -- decoration-time validation ----------------------------------------------------------------


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), "60"])
def test_bad_ttl_is_refused_at_decoration(ttl: object) -> None:
    """memoize(ttl=...) validates the ttl when decorating, naming it."""
    with pytest.raises((TypeError, ValueError), match=r"^ttl must be"):
        tiercache.memoize(ttl=ttl)  # type: ignore[call-overload]


def test_ignore_of_unknown_parameter_is_refused_at_decoration(l1_cache: TierCache) -> None:
    """A typo in ignore= is caught when decorating, not at the first call."""
    with pytest.raises(ValueError, match=r"ignore names parameters \['slef'\]"):

        @l1_cache.memoize(ignore=("slef",))
        def f(self: object) -> None: ...


def test_ignore_accepts_a_single_name_string(l1_cache: TierCache) -> None:
    """ignore="conn" means the one parameter, not the letters c, o, n, n."""

    @l1_cache.memoize(ignore="conn")
    def f(conn: object, x: int) -> int:
        return x

    assert f(object(), 1) == 1
    assert f.cache_key(object(), 1) == f.cache_key(None, 1)


def test_non_callable_is_refused(l1_cache: TierCache) -> None:
    """memoize decorates callables only."""
    with pytest.raises(TypeError, match="memoize decorates functions"):
        l1_cache.memoize()(42)


def test_bare_cache_memoize_works_like_bare_default_memoize(l1_cache: TierCache) -> None:
    """@cache.memoize without parentheses decorates, as @tiercache.memoize does."""
    loads: list[int] = []

    @l1_cache.memoize
    def f(x: int) -> int:
        loads.append(x)
        return x

    assert f(1) == f(1) == 1
    assert loads == [1]


def test_closures_with_the_same_qualname_do_not_share_results(l1_cache: TierCache) -> None:
    """Two memoized closures from one factory (same qualname) never return each other's
    values: either memoize refuses such functions at decoration, or their keys differ."""

    def make(n: int) -> Any:
        @l1_cache.memoize()
        def add(x: int) -> int:
            return x + n

        return add

    try:
        add_one, add_hundred = make(1), make(100)
        double = l1_cache.memoize()(lambda x: 2 * x)
        square = l1_cache.memoize()(lambda x: x * x)
    except (TypeError, ValueError):
        return  # refusing ambiguous names up front is an acceptable fix
    assert (add_one(10), add_hundred(10)) == (11, 110)
    assert (double(3), square(3)) == (6, 9)
