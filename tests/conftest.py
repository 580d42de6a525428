"""Shared fixtures: Redis backends (fakeredis and a real redis-server) and test isolation.

Backends:

- ``fake_redis``: a fresh ``fakeredis.FakeRedis`` on its own ``FakeServer`` per test.
- ``real_redis``: a client to the session's real ``redis-server``, flushed before the test.
- ``cluster_redis``: a ``RedisCluster`` client to the session's 3-primary cluster, flushed
  before the test (``redis_cluster``: the :class:`~tests.redis_cluster.RedisClusterProcesses`).
- ``redis_client``: parametrized over the three, so a behaviour suite runs on every backend
  (``-m "not redis"`` keeps only fakeredis; ``-m "not cluster"`` skips the cluster).
- ``redis_server``: the session's :class:`~tests.redis_server.RedisServer`;
  ``fresh_redis_server``: a private one per test, for tests that kill, pause or restart it;
  ``redis_binary``: the binary's path, for tests that build their own ``RedisServer``.

Per test: ``namespace``, a unique namespace; ``clock``, a :class:`~tests.support.FakeClock`
(plain helpers live in ``tests/support.py``).

Without ``redis-server`` on PATH, real-Redis tests are skipped with a reason, unless ``CI=true``
or ``TIERCACHE_REQUIRE_REDIS=1``, where they fail: CI must not go green by skipping them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import fakeredis
import pytest
import redis

from tests.redis_cluster import RedisClusterProcesses, cluster_tools_missing
from tests.redis_server import RedisServer, find_redis_server
from tests.support import FakeClock, unique_namespace


def _redis_required() -> bool:
    """True when a missing redis-server must fail the run instead of skipping."""
    ci = os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}
    return ci or os.environ.get("TIERCACHE_REQUIRE_REDIS", "").strip() == "1"


def _require_redis_binary() -> str:
    """Return the redis-server path, or skip (fail on CI) the requesting test."""
    binary = find_redis_server()
    if binary is None:
        reason = "redis-server is not on PATH (install it, e.g. apt-get install redis-server)"
        if _redis_required():
            pytest.fail(f"{reason}; required because CI=true or TIERCACHE_REQUIRE_REDIS=1")
        pytest.skip(reason)
    return binary


def _start_redis_server() -> RedisServer:
    """Start a RedisServer, or skip/fail the requesting test when there is no binary."""
    binary = _require_redis_binary()
    # A binary that is present but cannot start is a real error, not a reason to skip.
    return RedisServer(binary=binary).start()


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say which redis-server the real-Redis tests use."""
    binary = find_redis_server()
    if binary is None:
        action = "fail" if _redis_required() else "be skipped"
        return [f"redis-server: not found on PATH (real-Redis tests will {action})"]
    try:
        version = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        version = f"version unknown ({exc})"
    return [f"redis-server: {binary} ({version})"]


@pytest.fixture(scope="session")
def redis_binary() -> str:
    """Path of redis-server, for tests that build their own RedisServer (skip/fail as above)."""
    return _require_redis_binary()


def _running_redis_server() -> Iterator[RedisServer]:
    """A started RedisServer, stopped when the fixture using it ends."""
    server = _start_redis_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole session (free loopback port, temp dir)."""
    yield from _running_redis_server()


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    """A private real redis-server for one test, free to be killed, paused or restarted."""
    yield from _running_redis_server()


@pytest.fixture
def real_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A bytes-returning client to the session server, after FLUSHALL."""
    if redis_server.paused:  # a test left it frozen: thaw it for the next one
        redis_server.resume()
    if not redis_server.running:  # a test killed it: bring it back on the same port
        redis_server.restart()
    client = redis_server.client(decode_responses=False)
    try:
        client.flushall()
        yield client
    finally:
        client.close()


@pytest.fixture
def fake_redis() -> Iterator[fakeredis.FakeRedis]:
    """A fakeredis client on a fresh, private FakeServer (bytes responses)."""
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    try:
        yield client
    finally:
        client.close()


def require_cluster_tools() -> None:
    """Skip (fail on CI) the requesting test when a cluster or Sentinel set cannot start."""
    reason = cluster_tools_missing()
    if reason is not None:
        if _redis_required():
            pytest.fail(f"{reason}; required because CI=true or TIERCACHE_REQUIRE_REDIS=1")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcesses]:
    """One 3-primary Redis Cluster for the whole session (free ports, temp dirs)."""
    require_cluster_tools()
    with RedisClusterProcesses() as cluster:
        yield cluster


@pytest.fixture
def cluster_redis(redis_cluster: RedisClusterProcesses) -> Iterator[redis.RedisCluster]:
    """A bytes-returning ``RedisCluster`` client to the session cluster, after FLUSHALL."""
    redis_cluster.flushall()
    client = redis_cluster.client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(
    params=[
        "fake",
        pytest.param("real", marks=pytest.mark.redis),
        pytest.param("cluster", marks=[pytest.mark.redis, pytest.mark.cluster]),
    ]
)
def redis_client(request: pytest.FixtureRequest) -> redis.Redis:
    """The same test on fakeredis, the real server (marked ``redis``) and the cluster
    (marked ``redis`` and ``cluster``)."""
    client: redis.Redis = request.getfixturevalue(f"{request.param}_redis")
    return client


@pytest.fixture(
    scope="module",
    params=["standalone", pytest.param("cluster", marks=pytest.mark.cluster)],
)
def topology_url(request: pytest.FixtureRequest) -> str:
    """The URL of the session's standalone server, then of its cluster: cross-process tests
    run on both (``from_url`` takes either)."""
    if request.param == "cluster":
        cluster: RedisClusterProcesses = request.getfixturevalue("redis_cluster")
        return cluster.url
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
def topology_redis(topology_url: str, request: pytest.FixtureRequest) -> redis.Redis:
    """A flushed client to the server or cluster behind ``topology_url``."""
    name = "cluster_redis" if topology_url.startswith("redis+cluster") else "real_redis"
    client: redis.Redis = request.getfixturevalue(name)
    return client


@pytest.fixture
def namespace() -> str:
    """A namespace of this test's own, so that no test reads another's keys or hears its bus."""
    return unique_namespace()


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at :data:`tests.support.START`, for ``timer=`` and a breaker's ``clock=``."""
    return FakeClock()


def _reset_default_cache() -> None:
    # Only a tiercache that was imported can hold a default cache, so look it up instead of
    # importing it: no import cost, and a broken package cannot break unrelated tests.
    module = sys.modules.get("tiercache")
    reset = getattr(module, "_reset_default_for_tests", None)
    if reset is not None:
        reset()


@pytest.fixture(autouse=True)
def _reset_tiercache_default() -> Iterator[None]:
    """Give every test a pristine default cache (``tiercache.configure``/``memoize``)."""
    _reset_default_cache()
    yield
    _reset_default_cache()
