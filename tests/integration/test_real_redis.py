"""TierCache against a real redis-server: from_url, credentials and ACLs, a killed or frozen
server, and L2 hits after L1 eviction."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError

import tiercache
from tests.redis_server import RedisServer
from tests.support import Loader, wait_until
from tiercache import TierCache

pytestmark = pytest.mark.redis

PASSWORD = "secret"


@pytest.fixture(scope="module")
def auth_server(redis_binary: str) -> Iterator[RedisServer]:
    """A private redis-server with --requirepass, an ACL user allowed only to read and to use
    pub/sub (``reader``), and one allowed to read but not to use pub/sub (``deaf``)."""
    server = RedisServer(["--requirepass", PASSWORD], binary=redis_binary).start()
    try:
        admin = server.client(password=PASSWORD)
        try:
            admin.execute_command(
                "ACL",
                "SETUSER",
                "reader",
                "on",
                ">pw",
                "~*",
                "&*",
                "-@all",
                "+get",
                "+mget",
                "+subscribe",
                "+publish",
                "+ping",
            )
            admin.execute_command(
                "ACL", "SETUSER", "deaf", "on", ">pw", "~*", "-@all", "+get", "+mget"
            )
        finally:
            admin.close()
        yield server
    finally:
        server.stop()


def _url(server: RedisServer, userinfo: str) -> str:
    return f"redis://{userinfo}@127.0.0.1:{server.port}/0"


def test_from_url_cache_works_end_to_end(redis_server: RedisServer, namespace: str) -> None:
    """A from_url cache loads, stores in Redis, and a second from_url cache reads it (L2)."""
    with (
        TierCache.from_url(redis_server.url, namespace=namespace) as first,
        TierCache.from_url(redis_server.url, namespace=namespace) as second,
    ):
        loader = Loader({"sku": "A1", "price": "9.90"})
        assert first.get_or_set("p:A1", loader) == {"sku": "A1", "price": "9.90"}
        first.set_many({"a": 1, "b": (2, 3)})

        assert second.get_or_set("p:A1", Loader("never")) == {"sku": "A1", "price": "9.90"}
        assert second.get_many(["a", "b", "c"]) == {"a": 1, "b": (2, 3)}
        assert second.stats()["l2_hits"] == 3
        assert loader.calls == 1

        first.delete("a")
        first.clear()
        assert first.get_many(["p:A1", "a", "b"]) == {}


def test_close_closes_the_client_from_url_created(
    redis_server: RedisServer, namespace: str
) -> None:
    """close() on a from_url cache closes its connections (the server sees them go)."""
    name = "tc-close-" + namespace
    observer = redis_server.client()
    try:
        cache = TierCache.from_url(
            redis_server.url, namespace=namespace, redis_options={"client_name": name}
        )
        cache.set("k", 1)
        assert name in _client_names(observer)

        cache.close()

        # The server drops a closed connection on its next event-loop turn; each CLIENT LIST
        # is a round trip, so a bounded number of them is a bounded wait.
        for _ in range(200):
            if name not in _client_names(observer):
                break
        assert name not in _client_names(observer)
    finally:
        observer.close()


def _client_names(client: redis.Redis) -> set[str]:
    names = set()
    for entry in client.client_list():
        name = entry.get("name")
        names.add(name.decode() if isinstance(name, bytes) else str(name))
    return names


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda c: c.get("k"), id="get"),
        pytest.param(lambda c: c.get_or_set("k", Loader()), id="get_or_set"),
        pytest.param(lambda c: c.set("k", 1), id="set"),
        pytest.param(lambda c: c.get_many(["k"]), id="get_many"),
    ],
)
@pytest.mark.parametrize("userinfo", [f":wrong-{PASSWORD}", ""], ids=["wrong", "missing"])
def test_bad_password_raises_authentication_error_on_first_use(
    auth_server: RedisServer, namespace: str, userinfo: str, operation: Any
) -> None:
    """A wrong or missing password is a clear AuthenticationError, not a silent miss."""
    url = _url(auth_server, userinfo) if userinfo else auth_server.url
    with TierCache.from_url(url, namespace=namespace) as cache:
        with pytest.raises(AuthenticationError):
            operation(cache)
        assert cache.stats()["l2_errors"] == 0


def test_right_password_works(auth_server: RedisServer, namespace: str) -> None:
    """With the right password in the URL the cache uses Redis normally."""
    url = _url(auth_server, f":{PASSWORD}")
    with (
        TierCache.from_url(url, namespace=namespace) as first,
        TierCache.from_url(url, namespace=namespace) as second,
    ):
        first.set("k", "v")
        assert second.get("k") == "v"
        assert second.stats()["l2_hits"] == 1


def test_acl_user_without_pubsub_permission_gets_a_clear_error_naming_the_channel(
    auth_server: RedisServer, namespace: str
) -> None:
    """A user that may read but not SUBSCRIBE would get a cache whose invalidations never
    arrive: the first operation raises NoPermissionError naming the channel instead."""
    with TierCache.from_url(_url(auth_server, "deaf:pw"), namespace=namespace) as cache:
        with pytest.raises(NoPermissionError, match=f"tiercache:inv:{namespace}"):
            cache.get("k")
        with pytest.raises(NoPermissionError, match="ACL"):
            cache.get_or_set("k", Loader())


def test_acl_user_without_write_permission_raises_no_permission_error(
    auth_server: RedisServer, namespace: str
) -> None:
    """A user lacking SET gets NoPermissionError from set and from a load's write-back;
    reads it may do still work."""
    with TierCache.from_url(_url(auth_server, "reader:pw"), namespace=namespace) as cache:
        assert cache.get("k", default="miss") == "miss"

        with pytest.raises(NoPermissionError):
            cache.set("k", 1)
        with pytest.raises(NoPermissionError):
            cache.get_or_set("k2", Loader())
        assert cache.stats()["l2_write_errors"] == 0


def test_reads_degrade_to_the_loader_while_redis_is_killed_and_recover_after_restart(
    fresh_redis_server: RedisServer, namespace: str
) -> None:
    """With Redis killed, reads answer from L1/loader and never raise; entries cached before
    the bus was lost are not served (guarantee 2), entries stored meanwhile are; after a
    restart L2 is used again without any call to reconnect."""
    server = fresh_redis_server
    # The writer sends no values: the reader's read of "after" must go to Redis.
    writer = TierCache.from_url(server.url, namespace=namespace, propagate_values=0)
    reader = TierCache.from_url(server.url, namespace=namespace)
    try:
        writer.set("before", 1)
        assert reader.get("before") == 1  # the reader's connection is pooled now

        server.kill()
        try:
            assert wait_until(lambda: reader.stats()["bus_subscribed"] == 0)
            loader = Loader("from db")
            assert reader.get_or_set("k", loader) == "from db"
            assert reader.get("absent", default="miss") == "miss"
            # "before" was cached before the subscription was lost: not served any more.
            assert reader.get_many(["before", "absent"]) == {}
            writer.set("during", 2)  # logged and counted, not raised
            assert reader.get_or_set("k", loader) == "from db"  # stored meanwhile: from L1
            assert loader.calls == 1
            assert reader.stats()["l2_errors"] >= 2
            assert writer.stats()["l2_write_errors"] == 1
        finally:
            server.restart()

        hits = reader.stats()["l2_hits"]
        writer.set("after", 3)
        assert reader.get("after") == 3
        assert reader.stats()["l2_hits"] == hits + 1
    finally:
        writer.close()
        reader.close()


def test_reads_degrade_to_the_loader_while_redis_is_frozen(
    fresh_redis_server: RedisServer, namespace: str
) -> None:
    """A frozen Redis (SIGSTOP: connections hang) degrades reads to the loader, no error."""
    server = fresh_redis_server
    cache = TierCache.from_url(server.url, namespace=namespace)
    try:
        cache.set("warm", 1)  # connect while the server answers
        server.pause()
        try:
            # Completing at all shows the client does not retry forever; its bound is the socket
            # timeout (a speed, measured in benchmarks, not asserted here).
            assert cache.get_or_set("k", Loader("from db")) == "from db"
            assert cache.get("absent", default="miss") == "miss"
        finally:
            server.resume()
        assert cache.stats()["l2_errors"] >= 1
    finally:
        cache.close()


def test_raise_on_write_error_surfaces_a_killed_redis_as_l2_error(
    fresh_redis_server: RedisServer, namespace: str
) -> None:
    """With raise_on_write_error=True, a write to a dead server raises tiercache.L2Error."""
    server = fresh_redis_server
    with TierCache.from_url(server.url, namespace=namespace, raise_on_write_error=True) as cache:
        server.kill()
        with pytest.raises(tiercache.L2Error):
            cache.set("k", 1)


def test_entry_evicted_from_l1_is_an_l2_hit(redis_server: RedisServer, namespace: str) -> None:
    """With l1_maxsize=1 the evicted key is read back from Redis, not reloaded."""
    with TierCache.from_url(redis_server.url, namespace=namespace, l1_maxsize=1) as cache:
        cache.set("a", "A")
        cache.set("b", "B")  # evicts "a" from L1
        assert cache.stats()["l1_size"] == 1
        loader = Loader("reloaded")

        assert cache.get_or_set("a", loader) == "A"

        assert loader.calls == 0
        assert cache.stats()["l2_hits"] == 1


def test_a_cache_dropped_without_close_stops_its_listener_and_warns(
    redis_server: RedisServer, namespace: str
) -> None:
    """Garbage-collecting an unclosed cache stops its bus thread and closes the connections
    from_url made, with a ResourceWarning, as an unclosed file does."""
    import gc
    import threading

    cache = TierCache.from_url(redis_server.url, namespace=namespace)
    cache.get_or_set("k", Loader())
    thread_name = f"tiercache-bus:tiercache:inv:{namespace}"
    assert any(t.name == thread_name for t in threading.enumerate())

    holder = [cache]
    del cache

    def drop() -> None:
        holder.clear()
        gc.collect()  # in case a reference cycle keeps it

    with pytest.warns(ResourceWarning, match="never closed"):
        drop()

    assert wait_until(lambda: all(t.name != thread_name for t in threading.enumerate()))


def test_a_load_after_a_delete_costs_two_round_trips(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a delete, the next get_or_set asks "the value, or the lease" in one script and
    writes with the lease in another: two round trips (it used to be GET, lease, write)."""
    import threading

    import redis.connection

    from tests.support import subscribed

    sent: list[int] = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(threading.get_ident())
        return send(self, *args, **kwargs)

    with TierCache.from_url(redis_server.url, namespace=namespace) as cache:
        subscribed(cache, probe=True)
        for value in (1, 2):  # the first round loads the scripts into the server
            cache.set("k", 0)
            cache.delete("k")
            monkeypatch.setattr(
                redis.connection.AbstractConnection, "send_packed_command", counting
            )
            sent.clear()
            assert cache.get_or_set("k", Loader(value)) == value
            monkeypatch.undo()
        mine = [ident for ident in sent if ident == threading.get_ident()]
    assert len(mine) == 2


def _wait_behind_a_slow_load(a: TierCache, b: TierCache, key: str, sent: list[int]) -> int:
    """A deletes ``key`` and loads it slowly; B asks for it meanwhile and waits. Returns how
    many commands B's thread sent (``sent`` collects the sending threads' idents)."""
    import threading

    from tests.support import WAIT

    a.set(key, 0)
    assert b.get(key) == 0
    heard = b.stats()["bus_received"]
    a.delete(key)
    assert wait_until(lambda: b.stats()["bus_received"] > heard)  # B knows k changed
    entered, release = threading.Event(), threading.Event()

    def slow() -> str:
        entered.set()
        release.wait(WAIT)
        return "from A"

    loading = threading.Thread(target=lambda: a.get_or_set(key, slow))
    loading.start()
    assert entered.wait(WAIT)
    waits = b.stats()["lease_waits"]
    results: list[Any] = []
    waiter = threading.Thread(target=lambda: results.append(b.get_or_set(key, Loader("B"))))
    sent.clear()
    waiter.start()
    assert wait_until(lambda: b.stats()["lease_waits"] > waits)
    release.set()
    loading.join(WAIT)
    waiter.join(WAIT)
    assert results == ["from A"]
    return sent.count(waiter.ident or 0)


def test_a_waiter_in_another_process_costs_one_round_trip(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a delete, B asks "the value, or the lease" and finds A loading: that same
    script registers B as a waiter, and A's lease write sends B the value with its READY.
    B's thread makes one round trip in all (it used to be three: the script, the waiter
    registration, and a GET after the READY)."""
    import threading

    import redis.connection

    from tests.support import subscribed

    sent: list[int] = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(threading.get_ident())
        return send(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    with (
        TierCache.from_url(redis_server.url, namespace=namespace) as a,
        TierCache.from_url(redis_server.url, namespace=namespace) as b,
    ):
        subscribed(a, probe=True)
        subscribed(b, probe=True)
        _wait_behind_a_slow_load(a, b, "k0", sent)  # loads the scripts into the server
        assert _wait_behind_a_slow_load(a, b, "k1", sent) == 1


def test_a_refused_subscription_message_reads_cleanly(
    auth_server: RedisServer, namespace: str
) -> None:
    """The error naming the channel quotes the server's reason once, without a doubled
    period between it and the advice that follows."""
    url = _url(auth_server, f":wrong-{PASSWORD}")
    with TierCache.from_url(url, namespace=namespace) as cache:
        # The first call meets the refused subscription (or the refused command itself).
        for _ in range(2):
            with pytest.raises(AuthenticationError) as excinfo:
                cache.get("k")
            if "cannot subscribe" in str(excinfo.value):
                break
    text = str(excinfo.value)
    assert "cannot subscribe" in text
    assert ".." not in text
    assert "Check the credentials" in text
