"""memoize: stable per-call keys, functools.wraps metadata, methods, invalidation."""

from __future__ import annotations

import functools
import gc
import inspect
import json
import os
import pickle
import random
import re
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

import tiercache
from tests.multiprocess import memo_helpers
from tests.support import FakeClock, run_python
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


# -- nested functions, lambdas, partials, callable instances ------------------------------------

# A factory like an application's create_app(tenant): the memoized closure captures plain data
# (the tenant) and an object that is not (the "client"). Run here and in a fresh interpreter.
_FACTORY_CODE = """
import json
from tiercache import TierCache

cache = TierCache(None, namespace="memo")

def create_app(tenant, client):
    @cache.memoize()
    def greet(name):
        return f"{tenant}: hello {name} via {client!r}"
    return greet

def make_lambdas():
    return cache.memoize()(lambda x: x), cache.memoize()(
        lambda x: x
    )

first, second = make_lambdas()
result = [
    create_app("a", object()).cache_key("bob"),
    create_app("b", object()).cache_key("bob"),
    first.cache_key(1),
    second.cache_key(1),
]
"""


def _factory_keys(env: dict[str, str] | None = None) -> list[str]:
    namespace: dict[str, Any] = {"__name__": "factory_mod"}
    if env is None:
        exec(_FACTORY_CODE, namespace)
        return list(namespace["result"])
    code = (
        f"import json\nns = {{'__name__': 'factory_mod'}}\nexec({_FACTORY_CODE!r}, ns)\n"
        "print(json.dumps(ns['result']))"
    )
    proc = run_python(code, env=env)
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout))


def test_nested_function_keys_are_the_same_in_every_process() -> None:
    """Keys of closures and lambdas hold nothing process-dependent (no id()): a fresh
    interpreter with another hash seed computes the same keys."""
    here = _factory_keys()
    env = dict(os.environ, PYTHONHASHSEED="4242", PYTHONDONTWRITEBYTECODE="1")
    assert _factory_keys(env) == here
    assert all("#" not in key for key in here)


def test_nested_function_key_format_has_line_and_closure_hash() -> None:
    """A closure's key is ``memo:{module}.{qualname}@{line}~{closure hash}:{args hash}``; a
    lambda without closure variables has no ``~`` part."""
    app_a, app_b, lam1, lam2 = _factory_keys()
    assert re.fullmatch(
        r"memo:factory_mod\.create_app\.<locals>\.greet@8~[0-9a-f]{32}:[0-9a-f]{32}", app_a
    )
    assert app_a != app_b  # the tenant differs; the client object does not enter the key
    assert app_a.split(":")[2] == app_b.split(":")[2]  # same argument hash
    assert re.fullmatch(r"memo:factory_mod\.make_lambdas\.<locals>\.<lambda>@14:[0-9a-f]{32}", lam1)
    assert lam2.startswith("memo:factory_mod.make_lambdas.<locals>.<lambda>@15:")


def test_a_new_closure_never_reads_a_freed_closure_results(l1_cache: TierCache) -> None:
    """A closure made after an older one over another value was freed (CPython then reuses
    its id) is served its own value, never the old closure's."""

    def create_app(tenant: str) -> Any:
        @l1_cache.memoize()
        def whoami() -> str:
            return tenant

        return whoami

    # CPython hands a freed function's id to the next one of the same size at once: a few
    # rounds are enough (each collects garbage, which costs more the later it runs).
    for i in range(8):
        app = create_app(f"tenant-{i}")
        assert app() == f"tenant-{i}"
        del app
        gc.collect()


def test_rebinding_a_closure_variable_changes_the_key(l1_cache: TierCache) -> None:
    """A closure variable rebound with ``nonlocal`` is re-read: the next call uses a key
    for the new value, and rebinding back finds the first result again."""
    mode = "fast"
    loads: list[str] = []

    @l1_cache.memoize()
    def run(x: int) -> str:
        loads.append(mode)
        return f"{mode}:{x}"

    def switch(new: str) -> None:
        nonlocal mode
        mode = new

    assert run(1) == "fast:1"
    switch("slow")
    assert run(1) == "slow:1"
    switch("fast")
    assert run(1) == "fast:1"
    assert loads == ["fast", "slow"]


def test_mutating_a_captured_list_in_place_keeps_the_key(l1_cache: TierCache) -> None:
    """A captured list is read when decorated (and when rebound), not at every call: an
    accumulator appended to by the function does not change its keys."""
    loads: list[int] = []

    @l1_cache.memoize()
    def f(x: int) -> int:
        loads.append(x)
        return x

    assert f(1) == f(1) == 1
    assert loads == [1]


def test_variable_assigned_after_decoration_takes_part_once_assigned(
    l1_cache: TierCache,
) -> None:
    """A closure variable assigned after the decoration (an empty cell then) is read at the
    first call that sees it filled, so two factories' closures still differ."""

    def create(rate: int) -> Any:
        @l1_cache.memoize()
        def apply(x: int) -> int:
            return x * factor

        factor = rate
        return apply

    double, triple = create(2), create(3)
    assert (double(5), triple(5)) == (10, 15)
    assert double.cache_key(5) != triple.cache_key(5)


def test_live_closures_over_different_objects_warn_of_a_key_collision(
    l1_cache: TierCache,
) -> None:
    """Two live closures of one factory that differ only in captured objects that are not
    plain data share keys: memoizing the second warns, and the message says to use name=."""

    def create(client: object) -> Any:
        @l1_cache.memoize()
        def fetch(x: int) -> str:
            return f"{client!r}:{x}"

        return fetch

    first = create(object())
    with pytest.warns(tiercache.KeyCollisionWarning, match=r"name="):
        second = create(object())
    assert first.cache_key(1) == second.cache_key(1)


def test_no_collision_warning_for_the_same_closure_twice_or_a_dead_one(
    l1_cache: TierCache,
) -> None:
    """The same factory over the same objects, or after the older closure is gone, or with
    distinct name= values, is not a collision (warnings are errors in this suite)."""
    client = object()

    def create(client: object, name: str | None = None) -> Any:
        @l1_cache.memoize(name=name)
        def fetch(x: int) -> str:
            return f"{client!r}:{x}"

        return fetch

    one, two = create(client), create(client)
    assert one.cache_key(1) == two.cache_key(1)
    del one, two
    create(object())
    a, b = create(object(), name="fetch-a"), create(object(), name="fetch-b")
    assert a.cache_key(1) != b.cache_key(1)


def test_memoize_on_a_partial_keys_it_as_the_function_with_bound_arguments(
    l1_cache: TierCache,
) -> None:
    """A memoized functools.partial works: its bound arguments enter the key, as if passed,
    so ``partial(f, 2)(5)`` shares ``f(2, 5)``'s key and differs from ``partial(f, 3)(5)``."""

    def power(base: int, exp: int, *, mod: int = 0) -> int:
        return base**exp % mod if mod else base**exp

    plain = l1_cache.memoize()(power)
    twos = l1_cache.memoize()(functools.partial(power, 2))
    threes = l1_cache.memoize()(functools.partial(power, 3, mod=7))
    assert (twos(5), threes(5)) == (32, 5)
    assert twos.cache_key(5) == plain.cache_key(2, 5)
    assert threes.cache_key(5) == plain.cache_key(3, 5, mod=7)
    assert "<memoized" in repr(twos)


def test_memoize_on_a_callable_instance_is_keyed_by_its_type(l1_cache: TierCache) -> None:
    """A callable instance can be memoized; its key name is the type's qualified name, and
    the instance takes part only through ``__tiercache_key__``."""

    class Pricer:
        """Prices things."""

        def __init__(self, rate: int) -> None:
            self.rate = rate

        def __call__(self, sku: str) -> str:
            return f"{sku}*{self.rate}"

        def __tiercache_key__(self) -> int:
            return self.rate

    two, three = l1_cache.memoize()(Pricer(2)), l1_cache.memoize()(Pricer(3))
    assert (two("a"), three("a")) == ("a*2", "a*3")
    assert two.cache_key("a").startswith(f"memo:{__name__}.{Pricer.__qualname__}@")
    assert two.__doc__ == "Prices things."


def test_empty_name_is_a_value_error_and_a_non_str_name_a_type_error() -> None:
    """``name=""`` is a ValueError (a bad value); a name that is not a str, a TypeError."""
    with pytest.raises(ValueError, match="name must not be empty"):
        tiercache.memoize(name="")
    with pytest.raises(TypeError, match="name must be a str"):
        tiercache.memoize(name=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name is not valid UTF-8"):
        tiercache.memoize(name="\ud800")


def test_self_referencing_argument_is_a_type_error_before_loading(cache: TierCache) -> None:
    """A memoized call with a list that contains itself raises TypeError, not RecursionError,
    and the function does not run."""
    loads: list[object] = []

    @cache.memoize()
    def f(items: list[Any]) -> int:
        loads.append(items)
        return 1

    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(TypeError, match="argument 'items'"):
        f(looped)
    assert loads == []


# -- module-level functions: stable keys, pickling ----------------------------------------------


def test_module_level_key_is_unchanged() -> None:
    """The key of a module-level function is byte-identical to earlier releases' (users have
    these keys in Redis)."""
    assert (
        memo_helpers.square.cache_key(7)
        == "memo:tests.multiprocess.memo_helpers.square:b825dbae9258ae91793a7684a49fe69c"
    )


def test_module_level_memoized_function_pickles_by_reference() -> None:
    """A module-level memoized function pickles by qualified name, like lru_cache: unpickling
    gives the same object back."""
    assert pickle.loads(pickle.dumps(memo_helpers.square)) is memo_helpers.square


def test_nested_memoized_function_refuses_to_pickle_with_a_clear_error(
    l1_cache: TierCache,
) -> None:
    """A closure cannot be found by name in another process: pickling it is a TypeError."""
    f = l1_cache.memoize()(lambda x: x)
    with pytest.raises(TypeError, match="only module-level memoized functions pickle"):
        pickle.dumps(f)


def test_live_callable_instances_without_key_hook_warn_of_a_key_collision(
    l1_cache: TierCache,
) -> None:
    """Two live instances of one callable type without ``__tiercache_key__`` share keys:
    memoizing the second warns."""

    class Fetcher:
        def __init__(self, client: object) -> None:
            self.client = client

        def __call__(self, x: int) -> str:
            return f"{self.client!r}:{x}"

    first = l1_cache.memoize()(Fetcher(object()))
    with pytest.warns(tiercache.KeyCollisionWarning):
        second = l1_cache.memoize()(Fetcher(object()))
    assert first.cache_key(1) == second.cache_key(1)


# -- the key map: a hit remembers its key instead of encoding the arguments again -------------


class KeySpy:
    """Records the key of every memoized call made through ``cache`` (its get_or_set)."""

    def __init__(self, cache: TierCache, monkeypatch: pytest.MonkeyPatch) -> None:
        self.keys: list[str] = []
        original = cache.get_or_set

        def get_or_set(key: str, *args: Any, **kwargs: Any) -> Any:
            self.keys.append(key)
            return original(key, *args, **kwargs)

        monkeypatch.setattr(cache, "get_or_set", get_or_set)


def test_typed_arguments_never_share_a_remembered_key(
    cache: TierCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1, True, 1.0 and "1" (and 0.0 and -0.0) are equal or alike but keyed apart, on the
    first call and on every later one, each under the key cache_key() names."""
    spy = KeySpy(cache, monkeypatch)
    loads = Loads()

    @cache.memoize()
    def f(x: object) -> str:
        loads(x)
        return f"{type(x).__name__}:{x!r}"

    values: list[object] = [1, True, 1.0, "1", b"1", 0.0, -0.0, 0, False, None, "x" * 1_000]
    for _ in range(3):
        assert [f(v) for v in values] == [f"{type(v).__name__}:{v!r}" for v in values]
    assert len(loads.calls) == len(values)
    expected = [f.cache_key(v) for v in values]
    assert len(set(expected)) == len(values)
    assert spy.keys == expected * 3


def test_keyword_and_positional_calls_use_the_same_key_as_before(
    l1_cache: TierCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Positional, keyword and reordered keyword calls (and an omitted default) use one key,
    the one cache_key() gives, on first and repeated calls."""
    spy = KeySpy(l1_cache, monkeypatch)
    loads = Loads()

    @l1_cache.memoize()
    def f(a: int, b: int = 2) -> int:
        loads(a, b)
        return a + b

    for _ in range(2):
        assert f(1) == f(1, 2) == f(1, b=2) == f(a=1, b=2) == f(b=2, a=1) == 3
    assert loads.calls == [(1, 2)]
    assert set(spy.keys) == {f.cache_key(1, 2)}
    assert f.cache_key(1, 2) == f.cache_key(b=2, a=1)


class Account:
    """A key-hook object whose key follows a mutable attribute (its hash does not)."""

    def __init__(self, number: int) -> None:
        self.number = number

    def __tiercache_key__(self) -> int:
        return self.number


def test_a_key_hook_object_whose_key_changes_is_keyed_again(
    cache: TierCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An argument with __tiercache_key__ is keyed at every call, not remembered: when its
    key changes, the call uses the new key (and loads)."""
    spy = KeySpy(cache, monkeypatch)
    loads = Loads()

    @cache.memoize()
    def balance(account: Account) -> int:
        loads(account.number)
        return account.number * 10

    account = Account(1)
    assert balance(account) == balance(account) == 10
    first = balance.cache_key(account)
    account.number = 2
    assert balance(account) == 20
    assert loads.calls == [1, 2]
    assert spy.keys == [first, first, balance.cache_key(account)] != [first] * 3


def test_a_callable_instance_or_partial_whose_key_changes_is_keyed_again(
    l1_cache: TierCache,
) -> None:
    """A memoized callable instance's __tiercache_key__, or a list bound by a memoized
    partial, is read at every call: changing it changes the key."""

    def total(items: list[int], extra: int) -> int:
        return sum(items) + extra

    items = [1]
    summed = l1_cache.memoize()(functools.partial(total, items))
    assert summed(1) == 2
    items.append(10)
    assert summed(1) == 12

    class Rate:
        def __init__(self, rate: int) -> None:
            self.rate = rate

        def __call__(self, x: int) -> int:
            return x * self.rate

        def __tiercache_key__(self) -> int:
            return self.rate

    rate = Rate(2)
    scaled = l1_cache.memoize()(rate)
    assert scaled(5) == 10
    rate.rate = 3
    assert scaled(5) == 15


def test_the_key_map_is_bounded(l1_cache: TierCache, monkeypatch: pytest.MonkeyPatch) -> None:
    """The map remembers at most KEY_MAP_SIZE calls: the arguments of older ones (here
    classes, which can be watched with weak references) are let go."""
    monkeypatch.setattr("tiercache.memoizing.KEY_MAP_SIZE", 8)

    @l1_cache.memoize()
    def name_of(cls: type) -> str:
        return cls.__name__

    refs = []
    for i in range(40):
        cls = type(f"C{i}", (), {})
        assert name_of(cls) == f"C{i}"
        assert name_of(cls) == f"C{i}"
        refs.append(weakref.ref(cls))
    del cls
    gc.collect()
    alive = sum(ref() is not None for ref in refs)
    assert 0 < alive <= 8


def test_concurrent_calls_each_get_their_own_arguments_result(l1_cache: TierCache) -> None:
    """Threads released together by a Barrier call with equal-but-differently-typed
    arguments, first and repeated calls mixed: each gets the result for its own argument."""
    values: list[object] = [*range(20), True, False, 1.0, 0.0, -0.0, "1", b"1", None]

    @l1_cache.memoize()
    def describe(x: object) -> str:
        return f"{type(x).__name__}:{x!r}"

    threads = 8
    barrier = threading.Barrier(threads)
    wrong: list[tuple[object, str]] = []

    def work(seed: int) -> None:
        order = values[seed:] + values[:seed]
        barrier.wait()
        for _ in range(50):
            for v in order:
                got = describe(v)
                if got != f"{type(v).__name__}:{v!r}":
                    wrong.append((v, got))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not any(w.is_alive() for w in workers)
    assert wrong == []
