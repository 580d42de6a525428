"""Options: every constructor argument is validated before any I/O, errors name it."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import fakeredis
import pytest
import redis

from tiercache import TierCache


def build(**options: Any) -> TierCache:
    return TierCache(None, **options)


# -- namespace ---------------------------------------------------------------------------------


@pytest.mark.parametrize("namespace", ["a", "shop", "Shop_1.v2-x", "x" * 128])
def test_valid_namespaces_are_accepted(namespace: str) -> None:
    """Letters, digits, '_', '.', '-' up to 128 characters."""
    assert build(namespace=namespace).namespace == namespace


@pytest.mark.parametrize("namespace", ["", "a:b", "a b", "shop*", "x" * 129, "é", "a\n"])
def test_bad_namespace_is_a_value_error_naming_it(namespace: str) -> None:
    """A namespace that could smuggle a ':' segment, a glob or whitespace is refused."""
    with pytest.raises(ValueError, match=r"^namespace must be 1-128 characters"):
        build(namespace=namespace)


@pytest.mark.parametrize("namespace", [None, b"shop", 1])
def test_non_str_namespace_is_a_type_error_naming_it(namespace: object) -> None:
    """The namespace must be a str."""
    with pytest.raises(TypeError, match=r"^namespace must be a str"):
        build(namespace=namespace)


# -- durations ---------------------------------------------------------------------------------

DURATION_OPTIONS = ["ttl", "l1_ttl", "lease_ttl"]


@pytest.mark.parametrize("name", DURATION_OPTIONS)
@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf, timedelta(0)])
def test_non_positive_or_non_finite_duration_is_a_value_error(name: str, value: object) -> None:
    """Durations must be finite and > 0; the message names the option."""
    with pytest.raises(ValueError, match=rf"^{name} must be a finite duration > 0"):
        build(**{name: value})


@pytest.mark.parametrize("name", [*DURATION_OPTIONS, "lease_wait"])
@pytest.mark.parametrize("value", [True, False, "10", b"10", [10], object()])
def test_duration_of_wrong_type_is_a_type_error(name: str, value: object) -> None:
    """bool, str and others are not durations (bool is an int, and still refused)."""
    with pytest.raises(TypeError, match=rf"^{name} must be a number of seconds or a timedelta"):
        build(**{name: value})


def test_lease_wait_may_be_zero_but_not_negative() -> None:
    """lease_wait=0 means "do not wait"; a negative wait is a ValueError naming it."""
    assert build(lease_wait=0).settings.lease_wait == 0.0
    with pytest.raises(ValueError, match=r"^lease_wait must be a finite duration >= 0"):
        build(lease_wait=-1)


def test_durations_accept_timedelta_int_and_float() -> None:
    """Seconds as int/float, or a timedelta, all become float seconds."""
    settings = build(ttl=timedelta(minutes=2), l1_ttl=45, lease_ttl=1.5).settings
    assert (settings.ttl, settings.l1_ttl, settings.lease_ttl) == (120.0, 45.0, 1.5)
    assert all(type(v) is float for v in (settings.ttl, settings.l1_ttl, settings.lease_ttl))


def test_l1_ttl_longer_than_ttl_is_a_value_error_naming_both() -> None:
    """L1 may not outlive the L2 copy it mirrors; the message names l1_ttl and ttl."""
    with pytest.raises(ValueError, match=r"^l1_ttl \(60 s\) must not exceed ttl \(30 s\)"):
        build(ttl=30, l1_ttl=60)
    with pytest.raises(ValueError, match=r"l1_ttl .* ttl"):
        build(l1_ttl=timedelta(hours=1))  # default ttl is 300 s


def test_l1_ttl_equal_to_ttl_is_accepted() -> None:
    """The bound is inclusive."""
    assert build(ttl=30, l1_ttl=timedelta(seconds=30)).settings.l1_ttl == 30.0


@pytest.mark.parametrize(
    ("ttl", "expected"),
    [(300, 30.0), (30, 30.0), (10, 10.0), (0.5, 0.5), (timedelta(minutes=5), 30.0)],
)
def test_l1_ttl_defaults_to_min_of_30_and_ttl(ttl: object, expected: float) -> None:
    """Without l1_ttl, it is min(30 s, ttl)."""
    assert build(ttl=ttl).settings.l1_ttl == expected


def test_defaults_are_documented_values() -> None:
    """The defaults the docs promise."""
    settings = build().settings
    assert settings.namespace == "tiercache"
    assert settings.ttl == 300.0
    assert settings.l1_ttl == 30.0
    assert settings.l1_maxsize == 10_000
    assert settings.max_key_length == 1024
    assert settings.max_value_bytes == 32 * 1024 * 1024
    assert settings.trace_l1_hits is False  # L1 hits counted, not traced (span volume)


TEN_YEARS = 10 * 365 * 24 * 3600


@pytest.mark.parametrize("name", [*DURATION_OPTIONS, "lease_wait"])
def test_duration_over_ten_years_is_a_value_error_naming_it(name: str) -> None:
    """Durations are capped at ten years (regression: ttl=1e300 passed validation, then
    set() raised struct.error packing the expiry into the entry header)."""
    extra = {"ttl": TEN_YEARS} if name == "l1_ttl" else {}
    assert getattr(build(**{name: TEN_YEARS}, **extra).settings, name) == TEN_YEARS
    with pytest.raises(ValueError, match=rf"^{name} must be at most"):
        build(**{name: 1e300})
    with pytest.raises(ValueError, match=rf"^{name} must be at most"):
        build(**{name: timedelta(days=3660 + 1)})


def test_largest_ttl_round_trips_through_l2(fake_redis: fakeredis.FakeRedis) -> None:
    """The largest accepted ttl can actually be written to and read back from Redis."""
    with TierCache(fake_redis, ttl=TEN_YEARS) as cache:
        cache.set("k", 1)
        assert cache.get("k") == 1
        assert fake_redis.pttl("tiercache:k") > 0


# -- integers ----------------------------------------------------------------------------------

INT_OPTIONS = {"l1_maxsize": 1, "max_key_length": 1, "compress_threshold": 0, "max_value_bytes": 1}


@pytest.mark.parametrize(("name", "minimum"), INT_OPTIONS.items())
def test_int_option_accepts_its_minimum(name: str, minimum: int) -> None:
    """The smallest allowed value is accepted and stored."""
    assert getattr(build(**{name: minimum}).settings, name) == minimum


@pytest.mark.parametrize(("name", "minimum"), INT_OPTIONS.items())
def test_int_option_below_minimum_is_a_value_error_naming_it(name: str, minimum: int) -> None:
    """One below the minimum is a ValueError naming the option and the bound."""
    with pytest.raises(ValueError, match=rf"^{name} must be >= {minimum}"):
        build(**{name: minimum - 1})


@pytest.mark.parametrize("name", INT_OPTIONS)
@pytest.mark.parametrize("value", [1.0, "10", True, None])
def test_int_option_of_wrong_type_is_a_type_error_naming_it(name: str, value: object) -> None:
    """Floats, strings, bools and None are refused for integer options."""
    with pytest.raises(TypeError, match=rf"^{name} must be an int"):
        build(**{name: value})


def test_l1_maxsize_bounds_l1() -> None:
    """The validated l1_maxsize is the bound the L1 applies."""
    cache = build(l1_maxsize=2)
    for key in "abc":
        cache.set(key, key)
    assert cache.stats()["l1_size"] == 2
    assert cache.stats()["l1_maxsize"] == 2


# -- other options -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, "yes", None])
def test_raise_on_write_error_must_be_a_bool(value: object) -> None:
    """raise_on_write_error takes True/False only."""
    with pytest.raises(TypeError, match=r"^raise_on_write_error must be a bool"):
        build(raise_on_write_error=value)


def test_timer_must_be_callable() -> None:
    """timer= takes a zero-argument clock."""
    with pytest.raises(TypeError, match=r"^timer must be a callable"):
        build(timer=123.0)


def test_serializer_without_dumps_and_loads_is_a_type_error() -> None:
    """A serializer that does not fit the Serializer protocol is refused."""
    with pytest.raises(TypeError, match=r"^serializer must have dumps"):
        build(serializer=object())


def test_options_are_keyword_only() -> None:
    """Everything after the client is keyword-only (httpx style)."""
    with pytest.raises(TypeError):
        TierCache(None, "namespace")  # type: ignore[misc]


@pytest.mark.parametrize("ttl", [0, -1, math.nan, True])
def test_per_call_ttl_is_validated_naming_ttl(ttl: object) -> None:
    """set()/get_or_set() validate their own ttl= argument the same way."""
    cache = build()
    with pytest.raises((TypeError, ValueError), match=r"^ttl must be"):
        cache.set("k", 1, ttl=ttl)  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError), match=r"^ttl must be"):
        cache.get_or_set("k", lambda: 1, ttl=ttl)  # type: ignore[arg-type]


# -- the client --------------------------------------------------------------------------------


@pytest.mark.parametrize("client", ["not a client", 42, object()])
def test_non_client_is_a_type_error(client: object) -> None:
    """Something that is not a redis-py client (nor None) is a TypeError naming ``client``."""
    with pytest.raises(TypeError, match=r"^client must be a redis-py client"):
        TierCache(client)


def test_client_class_instead_of_instance_is_a_type_error_naming_client() -> None:
    """A classic slip, TierCache(redis.Redis), gets a message that names ``client``
    (regression: it failed later in register_script() with an unrelated message)."""
    with pytest.raises(TypeError, match=r"^client must be a redis-py client"):
        TierCache(redis.Redis)


def test_client_decoding_responses_is_a_value_error() -> None:
    """A client built with decode_responses=True would hand us str: refused up front."""
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses=False"):
            TierCache(client)
    finally:
        client.close()


def test_none_client_is_l1_only() -> None:
    """TierCache(None) is an L1-only cache."""
    assert "L1-only" in repr(build())


# -- from_url ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [None, b"redis://localhost", 6379])
def test_from_url_with_non_str_is_a_type_error(url: object) -> None:
    """The URL must be a str."""
    with pytest.raises(TypeError, match=r"^url must be a str"):
        TierCache.from_url(url)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url", ["", "localhost:6379", "http://localhost:6379", "redis:/localhost", "REDIS://x"]
)
def test_from_url_with_unknown_scheme_is_a_value_error(url: str) -> None:
    """Only redis://, rediss:// and unix:// are accepted."""
    with pytest.raises(ValueError, match=r"^url must start with one of redis://"):
        TierCache.from_url(url)


def test_from_url_does_no_io_at_construction() -> None:
    """Building a cache for a port nobody listens on succeeds: the client connects lazily."""
    cache = TierCache.from_url("redis://127.0.0.1:1/0", namespace="lazy")
    try:
        assert "L1+L2" in repr(cache)
        assert cache.namespace == "lazy"
    finally:
        cache.close()


def test_from_url_rejects_decode_responses_in_redis_options() -> None:
    """redis_options cannot turn on decode_responses."""
    with pytest.raises(ValueError, match="decode_responses must be False"):
        TierCache.from_url("redis://127.0.0.1:1/0", redis_options={"decode_responses": True})


def test_from_url_rejects_non_mapping_redis_options() -> None:
    """redis_options must be a mapping."""
    with pytest.raises(TypeError, match=r"^redis_options must be a mapping"):
        TierCache.from_url("redis://127.0.0.1:1/0", redis_options=[("db", 1)])  # type: ignore[arg-type]


def test_from_url_closes_its_client_when_an_option_is_bad(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bad cache option raises, and the client built for the URL is closed, not leaked."""
    from tiercache import connect

    built: list[redis.Redis] = []
    closes: list[int] = []
    real_client_from_url = connect.client_from_url

    def client_from_url(url: str, overrides: Any = None) -> redis.Redis:
        client = real_client_from_url(url, overrides)
        original = client.close

        def close() -> None:
            closes.append(1)
            original()

        client.close = close  # type: ignore[method-assign]
        built.append(client)
        return client

    monkeypatch.setattr(connect, "client_from_url", client_from_url)
    try:
        with pytest.raises(ValueError, match=r"^ttl must be"):
            TierCache.from_url("redis://127.0.0.1:1/0", ttl=-1)
        assert len(built) == 1
        assert closes, "the client built by from_url was not closed"
    finally:
        for client in built:  # break the client -> close -> client cycle
            del client.close
        built.clear()


def test_from_url_with_rediss_user_password_and_db_builds_a_tls_acl_client() -> None:
    """``rediss://user:pw@host:port/db`` gives a TLS client with that ACL user, database,
    short timeouts and no retries, and a channel naming the database; no I/O happens."""
    cache = TierCache.from_url("rediss://app:s3cret@127.0.0.1:6390/2", namespace="tls")
    try:
        pool = cache._l2.client.connection_pool  # type: ignore[union-attr]
        kwargs = pool.connection_kwargs
        assert pool.connection_class is redis.connection.SSLConnection
        assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("app", "s3cret", 2)
        assert kwargs["socket_timeout"] == 0.25
        assert kwargs["retry"].get_retries() == 0
        assert cache._coherence.bus.channel == "tiercache:inv:2:tls"  # type: ignore[union-attr]
    finally:
        cache.close()


# -- one source of truth ---------------------------------------------------------------------


def test_the_constructor_signature_takes_every_option_with_its_table_default() -> None:
    """TierCache's keyword-only parameters are exactly OPTIONS, in order, with its defaults."""
    import inspect

    from tiercache.options import OPTIONS

    params = list(inspect.signature(TierCache.__init__).parameters.values())[2:]
    assert [p.name for p in params] == [o.name for o in OPTIONS]
    assert all(p.kind is p.KEYWORD_ONLY for p in params)
    assert [p.default for p in params] == [o.default for o in OPTIONS]


def test_settings_has_one_field_per_option() -> None:
    """Settings' fields are the options' names, in the same order."""
    import dataclasses

    from tiercache.options import OPTIONS, Settings

    assert [f.name for f in dataclasses.fields(Settings)] == [o.name for o in OPTIONS]


def test_the_docs_options_table_is_rendered_from_the_options() -> None:
    """docs/api.md holds exactly the table tiercache.options.options_table() renders (run
    ``python -m tiercache.options`` to regenerate it)."""
    from tests.support import REPO_ROOT
    from tiercache.options import options_table

    text = (REPO_ROOT / "docs" / "api.md").read_text()
    assert options_table() in text


def test_an_unknown_option_is_a_type_error_naming_it() -> None:
    """Settings.build refuses names that are not options (a typo must not be ignored)."""
    from tiercache.options import Settings

    with pytest.raises(TypeError, match="l1_maxsise"):
        Settings.build(l1_maxsise=3)


def test_a_compressor_without_the_protocol_methods_is_a_type_error() -> None:
    """compressor= must have compress(data) and decompress(data, max_size)."""
    with pytest.raises(TypeError, match="compressor must have"):
        build(compressor=object())


def test_value_propagation_with_sharded_pubsub_is_a_value_error_naming_both() -> None:
    """propagate_values orders received values against the instance's own message numbers,
    which sharded pub/sub keeps per channel: the combination is refused before any I/O."""
    from tiercache.options import Settings

    with pytest.raises(ValueError, match=r"propagate_values.*pubsub"):
        Settings.build(pubsub="sharded", propagate_values=4096)


def test_value_propagation_defaults_to_4_kib_with_classic_pubsub() -> None:
    """Left unset, propagate_values is 4 KiB on the classic channel and 0 on sharded ones."""
    from tiercache.options import Settings

    assert Settings.build().propagate_values == 4096
    assert Settings.build(pubsub="sharded").propagate_values == 0
    assert Settings.build(pubsub="sharded", propagate_values=0).propagate_values == 0


def test_value_propagation_on_a_cluster_is_off_by_default_and_refused_when_asked() -> None:
    """A cluster cannot write a key and publish its value in one atomic step: unset means 0
    there, and asking for values is a ValueError before any I/O."""
    from tiercache.options import Settings

    assert Settings.build(cluster=True).propagate_values == 0
    assert Settings.build(cluster=True, propagate_values=0).propagate_values == 0
    with pytest.raises(ValueError, match="propagate_values needs a single Redis server"):
        Settings.build(cluster=True, propagate_values=4096)
