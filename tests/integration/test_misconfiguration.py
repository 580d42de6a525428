"""Misconfiguration raises a clear error at the first operation that meets it, against a real
redis-server; it never degrades silently to L1 + loader (Redis trouble does, and is tested in
test_faults.py).

Each case here used to look like a working cache: no Lua scripting, an ACL user lacking only
SET (refused inside a script), a database index the server does not have, TLS to a port
that does not speak it.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Iterator

import pytest
from redis.exceptions import NoPermissionError

import tiercache
from tests.integration.test_tls import certificate, tls_server  # noqa: F401 - fixtures
from tests.redis_server import RedisServer
from tests.support import Loader, run_python
from tiercache import TierCache

pytestmark = pytest.mark.redis

ADMIN_PASSWORD = "admin-pw"


@pytest.fixture(scope="module")
def acl_server(redis_binary: str) -> Iterator[RedisServer]:
    """A redis-server with a user ``noset`` that may do everything but SET."""
    server = RedisServer(["--requirepass", ADMIN_PASSWORD], binary=redis_binary).start()
    admin = server.client(password=ADMIN_PASSWORD)
    try:
        admin.execute_command("ACL", "SETUSER", "noset", "on", ">pw", "~*", "&*", "+@all", "-set")
    finally:
        admin.close()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def no_lua_server(redis_binary: str) -> Iterator[RedisServer]:
    """A redis-server whose scripting commands are renamed away, as some managed services do."""
    args = []
    for command in ("EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "SCRIPT", "FUNCTION", "FCALL"):
        args += ["--rename-command", command, ""]
    server = RedisServer(args, binary=redis_binary).start()
    try:
        yield server
    finally:
        server.stop()


def test_a_user_lacking_only_set_gets_no_permission_from_loads_and_clear(
    acl_server: RedisServer, namespace: str
) -> None:
    """The refusal inside a Lua script (a plain error reply) is a NoPermissionError too, from
    get_or_set's lease and from clear()'s version bump; nothing is counted as trouble."""
    url = f"redis://noset:pw@127.0.0.1:{acl_server.port}/0"
    with TierCache.from_url(url, namespace=namespace) as cache:
        with pytest.raises(NoPermissionError, match="inside a tiercache Lua script"):
            cache.get_or_set("k", Loader())
        with pytest.raises(NoPermissionError):
            cache.clear()
        with pytest.raises(NoPermissionError):
            cache.set("k", 1)
        stats = cache.stats()
        assert stats["l2_write_errors"] == 0
        assert stats["l2_errors"] == 0
        assert stats["breaker_opens"] == 0


@pytest.mark.parametrize(
    ("propagate_values", "refusal"),
    [(0, "no permissions"), (4096, "can't run this command")],
    ids=["pipeline", "script"],
)
def test_a_refused_set_does_not_put_the_raw_key_or_value_in_the_error(
    acl_server: RedisServer, namespace: str, propagate_values: int, refusal: str
) -> None:
    """redis-py prefixes a pipeline error with the command's arguments: the raw Redis key
    and the first bytes of the entry. The error raised by set() has neither, whether the
    write is a pipeline (invalidating only) or the script that sends values."""
    url = f"redis://noset:pw@127.0.0.1:{acl_server.port}/0"
    with (
        TierCache.from_url(url, namespace=namespace, propagate_values=propagate_values) as cache,
        pytest.raises(NoPermissionError) as excinfo,
    ):
        cache.set("user:alice@example.com", "s3cret-value")
    text = str(excinfo.value)
    assert "alice" not in text
    assert "s3cret" not in text
    assert refusal in text.lower()
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__suppress_context__


def test_a_server_without_lua_raises_configuration_error(
    no_lua_server: RedisServer, namespace: str
) -> None:
    """Loads and clear() raise ConfigurationError naming Lua, instead of loads that are
    never written and a clear() that returns while other processes keep old values."""
    with TierCache.from_url(no_lua_server.url, namespace=namespace) as cache:
        with pytest.raises(tiercache.ConfigurationError, match="Lua"):
            cache.get_or_set("k", Loader())
        with pytest.raises(tiercache.ConfigurationError, match="Lua"):
            cache.clear()
        with pytest.raises(tiercache.ConfigurationError, match="Lua"):
            cache.invalidate_tags("t")
        assert cache.stats()["l2_write_errors"] == 0


def test_fakeredis_without_its_lua_extra_raises_configuration_error_naming_the_fix() -> None:
    """fakeredis without lupa has no scripting: the error says to install fakeredis[lua]."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["lupa"] = None  # as if fakeredis were installed without its lua extra
        import fakeredis
        import tiercache
        cache = tiercache.TierCache(fakeredis.FakeRedis())
        try:
            cache.get_or_set("k", lambda: 1)
        except tiercache.ConfigurationError as exc:
            print("raised:", exc)
        else:
            print("no error")
        """
    )
    result = run_python(code, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "raised:" in result.stdout
    assert "fakeredis[lua]" in result.stdout


def test_the_demo_says_what_is_missing_without_fakeredis_lua() -> None:
    """python -m tiercache demo on fakeredis without lupa explains the problem and exits
    non-zero, instead of crashing with a TypeError halfway."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["lupa"] = None
        from tiercache.__main__ import main
        sys.argv = ["tiercache", "demo"]
        sys.exit(main())
        """
    )
    result = run_python(code, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert "fakeredis[lua]" in result.stdout + result.stderr


def test_a_database_index_out_of_range_raises_configuration_error(
    redis_server: RedisServer, namespace: str
) -> None:
    """redis://host/99 on a 16-database server: every operation raises ConfigurationError
    naming the database; the breaker does not count it as an outage."""
    url = f"redis://127.0.0.1:{redis_server.port}/99"
    with TierCache.from_url(url, namespace=namespace) as cache:
        for _ in range(3):
            with pytest.raises(tiercache.ConfigurationError, match="database 99"):
                cache.get("k")
        with pytest.raises(tiercache.ConfigurationError, match="database 99"):
            cache.get_or_set("k", Loader())
        with pytest.raises(tiercache.ConfigurationError, match="database 99"):
            cache.set("k", 1)
        assert cache.stats()["breaker_opens"] == 0


def test_tls_to_a_plain_port_says_tls_handshake_in_the_log(
    redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """rediss:// to a port that does not speak TLS: reads still degrade to the loader (a
    handshake timeout could be the network), but the log says the TLS handshake failed."""
    url = f"rediss://127.0.0.1:{redis_server.port}/0"
    options = {"socket_connect_timeout": 0.2, "socket_timeout": 0.2}
    caplog.set_level(logging.WARNING, logger="tiercache")
    with TierCache.from_url(url, namespace=namespace, redis_options=options) as cache:
        assert cache.get_or_set("k", Loader("from db")) == "from db"
    assert any("TLS handshake" in record.getMessage() for record in caplog.records), [
        record.getMessage() for record in caplog.records
    ]


def test_a_certificate_the_client_cannot_verify_raises_configuration_error(
    namespace: str,
    tls_server: tuple[int, object],  # noqa: F811 - the fixture imported above
) -> None:
    """A TLS server whose certificate fails verification (no CA given) is misconfiguration:
    ConfigurationError saying the TLS handshake failed."""
    port, _cert = tls_server
    url = f"rediss://127.0.0.1:{port}/0"
    with (
        TierCache.from_url(url, namespace=namespace) as cache,
        pytest.raises(tiercache.ConfigurationError, match="TLS handshake"),
    ):
        cache.get("k")
