"""The Flask-Caching backend: the cachelib API with cachelib's semantics, and Flask-Caching's
``@cache.cached`` / ``@cache.memoize`` on it, on fakeredis and a real redis-server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

pytest.importorskip("flask_caching")

from flask import Flask
from flask_caching import Cache

from tests.support import FakeClock, run_threads, unique_namespace
from tiercache import TierCache as CoreCache
from tiercache.contrib.flask import TierCache
from tiercache.contrib.signing import SignedPickleSerializer, derive_key

Make = Callable[..., TierCache]


@pytest.fixture
def make(redis_client: redis.Redis, clock: FakeClock) -> Iterator[Make]:
    namespace = unique_namespace("fl")
    cores: list[CoreCache] = []

    def build(**kwargs: Any) -> TierCache:
        core = CoreCache(
            redis_client,
            namespace=namespace,
            timer=clock,
            serializer=SignedPickleSerializer(derive_key("s" * 32, "flask-cache")),
        )
        cores.append(core)
        return TierCache(core, **kwargs)

    yield build
    for core in cores:
        core.close()


@pytest.fixture
def cache(make: Make) -> TierCache:
    return make()


def test_get_set_add_delete(cache: TierCache) -> None:
    """The basic calls answer as cachelib's: None for a miss, bools for writes."""
    assert cache.get("k") is None
    assert cache.set("k", {"a": 1}) is True
    assert cache.get("k") == {"a": 1}
    assert cache.add("k", 2) is False
    assert cache.add("new", 2) is True
    assert cache.has("new")
    assert cache.delete("new") is True
    assert cache.delete("new") is False
    assert not cache.has("new")


def test_many_calls(cache: TierCache) -> None:
    """set_many returns the keys set; get_many keeps order; delete_many the deleted ones."""
    assert cache.set_many({"a": 1, "b": 2}) == ["a", "b"]
    assert cache.get_many("a", "missing", "b") == [1, None, 2]
    assert cache.get_dict("a", "b") == {"a": 1, "b": 2}
    assert cache.delete_many("a", "missing") == ["a"]
    assert cache.get("a") is None


def test_timeouts_follow_cachelib(make: Make, clock: FakeClock) -> None:
    """None is the default timeout, 0 never expires, a negative timeout deletes."""
    cache = make(default_timeout=10)
    cache.set("default", 1)
    cache.set("forever", 1, timeout=0)
    cache.set("short", 1, timeout=100)
    clock.advance(11)
    assert cache.get("default") is None
    assert cache.get("forever") == 1
    assert cache.get("short") == 1
    cache.set("short", 2, timeout=-1)
    assert cache.get("short") is None


def test_inc_dec_start_from_zero_and_are_atomic(make: Make) -> None:
    """inc of a missing key starts at 0; concurrent incs lose nothing."""
    cache = make()
    assert cache.inc("n") == 1
    assert cache.dec("n", 3) == -2
    backends = [make() for _ in range(4)]
    run_threads([lambda b=b: [b.inc("c") for _ in range(20)] for b in backends])
    assert cache.get("c") == 80


def test_key_prefix(make: Make) -> None:
    """key_prefix keeps two apps' keys apart on one namespace."""
    one, two = make(key_prefix="one/"), make(key_prefix="two/")
    one.set("k", 1)
    assert two.get("k") is None
    assert one.get("k") == 1


def test_clear(cache: TierCache) -> None:
    """clear() empties the namespace and answers True."""
    cache.set("k", 1)
    assert cache.clear() is True
    assert cache.get("k") is None


def test_flask_caching_decorators(redis_server: Any) -> None:
    """CACHE_TYPE by import path: @cache.cached and @cache.memoize cache through tiercache."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="flask-secret",
        CACHE_TYPE="tiercache.contrib.flask.TierCache",
        CACHE_REDIS_URL=redis_server.url,
        CACHE_OPTIONS={"namespace": unique_namespace("flapp")},
    )
    cache = Cache(app)
    calls: list[str] = []

    @app.route("/")
    @cache.cached(timeout=60)
    def index() -> str:
        calls.append("index")
        return f"hello {len(calls)}"

    @cache.memoize(60)
    def square(x: int) -> int:
        calls.append(f"square {x}")
        return x * x

    backend = cache.cache
    assert isinstance(backend, TierCache)
    try:
        client = app.test_client()
        assert client.get("/").data == b"hello 1"
        assert client.get("/").data == b"hello 1"
        with app.app_context():
            assert square(3) == 9
            assert square(3) == 9
            cache.delete_memoized(square, 3)
            assert square(3) == 9
        assert calls == ["index", "square 3", "square 3"]
    finally:
        backend.cache.close()


test_flask_caching_decorators = pytest.mark.redis(test_flask_caching_decorators)


def test_factory_needs_a_secret_key() -> None:
    """Without SECRET_KEY (and no serializer) the backend refuses to start, clearly."""
    app = Flask(__name__)
    app.config.update(CACHE_TYPE="tiercache.contrib.flask.TierCache")
    with pytest.raises(ValueError, match="SECRET_KEY"):
        Cache(app)
