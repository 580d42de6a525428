"""The RedisServer test harness itself: start, stop, kill, restart, pause and resume."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.redis_server import RedisServer, RedisServerError

# Tests that build their own RedisServer still skip (or fail on CI) without a binary.
pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("redis_binary")]

FAST_FAIL = {
    "socket_timeout": 0.2,
    "socket_connect_timeout": 0.2,
    "retry": Retry(NoBackoff(), 0),
}


@pytest.fixture
def fast_client(fresh_redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client that fails within 0.2 s instead of redis-py's default retries."""
    client = fresh_redis_server.client(**FAST_FAIL)
    try:
        yield client
    finally:
        client.close()


def test_session_server_answers_ping(redis_server: RedisServer, real_redis: redis.Redis) -> None:
    """The session server is up on loopback, not on the system port, and answers PING."""
    assert redis_server.host == "127.0.0.1"
    assert redis_server.port != 6379
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert real_redis.ping() is True
    assert int(real_redis.info("server")["process_id"]) == redis_server.pid


def test_real_redis_is_flushed_and_returns_bytes(real_redis: redis.Redis) -> None:
    """real_redis starts empty and returns bytes (decode_responses=False)."""
    assert real_redis.dbsize() == 0
    real_redis.set("k", "v")
    assert real_redis.get("k") == b"v"


def test_url_works_with_from_url(redis_server: RedisServer) -> None:
    """The url property is accepted by redis-py's from_url."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_debug_command_is_enabled(fast_client: redis.Redis) -> None:
    """DEBUG SLEEP works (--enable-debug-command local), as fault tests rely on it."""
    reply = fast_client.execute_command("DEBUG", "SLEEP", "0")  # type: ignore[no-untyped-call]
    assert reply in (b"OK", "OK", True)


def test_kill_makes_connections_fail(
    fresh_redis_server: RedisServer, fast_client: redis.Redis
) -> None:
    """After kill() the process is reaped and new commands fail with ConnectionError."""
    assert fast_client.ping() is True
    fresh_redis_server.kill()
    assert not fresh_redis_server.running
    with pytest.raises(redis.ConnectionError):
        fast_client.ping()


def test_restart_keeps_the_port_and_starts_empty(
    fresh_redis_server: RedisServer, fast_client: redis.Redis
) -> None:
    """restart() after a kill serves again on the same port, with a new pid and no data."""
    port, old_pid = fresh_redis_server.port, fresh_redis_server.pid
    fast_client.set("k", "v")
    fresh_redis_server.kill()
    fresh_redis_server.restart()
    assert fresh_redis_server.port == port
    assert fresh_redis_server.pid != old_pid
    assert fast_client.ping() is True  # same client object reconnects
    assert fast_client.get("k") is None


def test_restart_of_a_running_server(fresh_redis_server: RedisServer) -> None:
    """restart() on a live server replaces the process and keeps the port."""
    port, old_pid = fresh_redis_server.port, fresh_redis_server.pid
    fresh_redis_server.restart()
    assert (fresh_redis_server.port, fresh_redis_server.running) == (port, True)
    assert fresh_redis_server.pid != old_pid


def test_pause_times_out_and_resume_recovers(
    fresh_redis_server: RedisServer, fast_client: redis.Redis
) -> None:
    """While paused a GET times out within its socket_timeout; after resume it works."""
    fast_client.set("k", "v")
    fresh_redis_server.pause()
    assert fresh_redis_server.paused
    # fast_client has no retries and a short socket_timeout: the GET raises instead of
    # hanging (pytest-timeout bounds the test); its speed is not asserted.
    with pytest.raises(redis.TimeoutError):
        fast_client.get("k")
    fresh_redis_server.resume()
    assert not fresh_redis_server.paused
    assert fast_client.get("k") == b"v"


def test_stop_while_paused_is_bounded_and_idempotent() -> None:
    """stop() ends a frozen server promptly, reaps it, and can be called again."""
    server = RedisServer().start()
    server.pause()
    server.stop()  # returns at all: SIGCONT + SIGTERM, then SIGKILL after a bounded wait
    assert not server.running
    assert server.log_path is None  # temp dir removed
    server.stop()


def test_context_manager_stops_the_server() -> None:
    """Leaving the with-block stops the server: its port refuses connections."""
    with RedisServer() as server:
        port = server.port
        assert server.running
    assert not server.running
    client = redis.Redis(port=port, **FAST_FAIL)
    try:
        with pytest.raises(redis.ConnectionError):
            client.ping()
    finally:
        client.close()


def test_extra_args_are_passed_to_the_server() -> None:
    """Extra arguments such as --requirepass reach redis-server; start() still waits."""
    with RedisServer(["--requirepass", "s3cret"]) as server:
        anonymous = server.client(**FAST_FAIL)
        authed = server.client(password="s3cret", **FAST_FAIL)
        try:
            with pytest.raises(redis.AuthenticationError):
                anonymous.ping()
            assert authed.ping() is True
        finally:
            anonymous.close()
            authed.close()


def test_failed_start_raises_with_the_log_tail() -> None:
    """A server that cannot start raises RedisServerError quoting its log."""
    server = RedisServer(["--no-such-option", "1"])
    try:
        with pytest.raises(RedisServerError, match="no-such-option"):
            server.start()
        assert not server.running
    finally:
        server.stop()


def test_system_port_is_refused() -> None:
    """Port 6379 belongs to the system Redis and is refused before anything starts."""
    with pytest.raises(ValueError, match="6379"):
        RedisServer(port=6379)
