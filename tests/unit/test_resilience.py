"""The circuit breaker, tested through `CircuitBreaker` itself, and how `RedisTier`'s
commands report to it, tested through `RedisTier`'s own methods.

Redis goes down by switching the fakeredis server off (``FakeServer.connected = False``:
every command raises ``ConnectionError``); failures fakeredis cannot produce (a timeout, an
ACL refusal, a probe that never returns) replace the redis-py client's ``get``. Every
cooldown runs on a fake clock; concurrency is driven by Events with bounded waits.
"""

from __future__ import annotations

import threading
from typing import Any

import fakeredis
import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError

from tests.support import WAIT, FakeClock
from tiercache import L2Error
from tiercache.errors import CircuitOpenError
from tiercache.l2 import RedisTier
from tiercache.resilience import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)  # the breaker's cooldown clock


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(failures=3, reset_after=5.0, clock=clock)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def client(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    client = fakeredis.FakeRedis(server=server)
    client.set("answered", b"PONG")
    client.rpush("a-list", b"x")  # GET on it is an error reply: WRONGTYPE
    return client


@pytest.fixture
def tier(client: fakeredis.FakeRedis, breaker: CircuitBreaker) -> RedisTier:
    return RedisTier(client, breaker)


def fail_unreachable(tier: RedisTier, server: fakeredis.FakeServer, times: int) -> None:
    """``times`` reads that find Redis down, each raising L2Error; Redis is up again after."""
    server.connected = False
    try:
        for _ in range(times):
            with pytest.raises(L2Error):
                tier.get("answered")
    finally:
        server.connected = True


def open_breaker(breaker: CircuitBreaker) -> None:
    for _ in range(3):
        breaker.failure()
    assert breaker.state == OPEN


# -- the state machine ---------------------------------------------------------------------


def test_breaker_starts_closed_and_allows_calls(breaker: CircuitBreaker) -> None:
    """A new breaker is closed and lets every call through without counting a skip."""
    assert breaker.state == CLOSED
    assert all(breaker.allow() for _ in range(10))
    assert breaker.skipped == 0
    assert breaker.opens == 0


def test_breaker_opens_after_n_consecutive_failures(breaker: CircuitBreaker) -> None:
    """failures-1 consecutive failures keep it closed; the failures-th opens it once."""
    breaker.failure()
    breaker.failure()
    assert breaker.state == CLOSED
    assert breaker.allow()

    breaker.failure()

    assert breaker.state == OPEN
    assert breaker.opens == 1


def test_success_resets_the_consecutive_failure_count(breaker: CircuitBreaker) -> None:
    """Failures separated by a success never add up to an open breaker."""
    for _ in range(5):
        breaker.failure()
        breaker.failure()
        breaker.success()
    assert breaker.state == CLOSED
    assert breaker.opens == 0
    assert breaker.consecutive == 0


def test_open_breaker_skips_calls_and_counts_them(breaker: CircuitBreaker) -> None:
    """While open (before reset_after), allow() is False and every refusal is counted."""
    open_breaker(breaker)

    assert [breaker.allow() for _ in range(4)] == [False] * 4
    assert breaker.skipped == 4
    assert breaker.state == OPEN


def test_one_probe_is_let_through_after_reset_after(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """Just before reset_after nothing passes; at reset_after exactly one call passes
    (half-open) and the next ones are still skipped."""
    open_breaker(breaker)
    clock.advance(4.999)
    assert not breaker.allow()

    clock.advance(0.001)

    assert breaker.allow()
    assert breaker.state == HALF_OPEN
    assert not breaker.allow()
    assert not breaker.allow()
    assert breaker.skipped == 3


def test_probe_success_closes_the_breaker(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """A successful probe closes the breaker with a clean failure count."""
    open_breaker(breaker)
    clock.advance(5.0)
    assert breaker.allow()

    breaker.success()

    assert breaker.state == CLOSED
    assert breaker.consecutive == 0
    assert breaker.allow()
    # A single failure after closing does not reopen it: the count started over.
    breaker.failure()
    assert breaker.state == CLOSED


def test_probe_failure_reopens_the_breaker_for_another_reset_after(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """A failed probe opens the breaker again at once (one failure is enough) and the
    cooldown starts over from the probe's failure."""
    open_breaker(breaker)
    clock.advance(5.0)
    assert breaker.allow()

    breaker.failure()

    assert breaker.state == OPEN
    assert breaker.opens == 2
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()
    assert breaker.state == HALF_OPEN


def test_reset_closes_the_breaker_and_forgets_failures(breaker: CircuitBreaker) -> None:
    """reset() (used after a fork) closes it and forgets the consecutive failures."""
    open_breaker(breaker)
    breaker.reset()
    assert breaker.state == CLOSED
    assert breaker.allow()
    breaker.failure()
    breaker.failure()
    assert breaker.state == CLOSED  # two failures after the reset, not five
    breaker.failure()
    assert breaker.state == OPEN


def test_repr_names_the_settings_and_state(breaker: CircuitBreaker) -> None:
    """The repr shows failures, reset_after and the state by name."""
    assert repr(breaker) == "CircuitBreaker(failures=3, reset_after=5, state='closed')"
    open_breaker(breaker)
    assert "state='open'" in repr(breaker)


# -- RedisTier: what counts as a failure ---------------------------------------------------


def test_unreachable_redis_counts_as_failure_and_raises_l2_error(
    tier: RedisTier, server: fakeredis.FakeServer, breaker: CircuitBreaker
) -> None:
    """A connection error becomes L2Error (cause kept) and counts as a failure."""
    server.connected = False
    with pytest.raises(L2Error) as excinfo:
        tier.get("answered")
    assert isinstance(excinfo.value.__cause__, redis.ConnectionError)
    assert not isinstance(excinfo.value, CircuitOpenError)
    assert breaker.consecutive == 1


def test_a_timeout_counts_as_failure_and_raises_l2_error(
    tier: RedisTier,
    client: fakeredis.FakeRedis,
    breaker: CircuitBreaker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A timeout becomes L2Error (cause kept) and counts as a failure."""

    def timed_out(*args: Any, **kwargs: Any) -> Any:
        raise redis.TimeoutError("timed out")

    monkeypatch.setattr(client, "get", timed_out)
    with pytest.raises(L2Error) as excinfo:
        tier.get("answered")
    assert isinstance(excinfo.value.__cause__, redis.TimeoutError)
    assert not isinstance(excinfo.value, CircuitOpenError)
    assert breaker.consecutive == 1


def test_three_unreachable_calls_open_the_breaker_and_the_fourth_is_not_attempted(
    tier: RedisTier, server: fakeredis.FakeServer, breaker: CircuitBreaker
) -> None:
    """Once open, every command raises CircuitOpenError without reaching Redis, even one
    that Redis (up again) would answer."""
    fail_unreachable(tier, server, 3)

    with pytest.raises(CircuitOpenError):
        tier.get("answered")
    with pytest.raises(CircuitOpenError):
        tier.get_many(["answered"])

    assert breaker.state == OPEN
    assert breaker.skipped == 2


def test_error_reply_counts_as_success(
    tier: RedisTier, server: fakeredis.FakeServer, breaker: CircuitBreaker
) -> None:
    """An error reply (WRONGTYPE, OOM) raises L2Error but proves Redis is there: it resets
    the failure count, so failures around it never open the breaker."""
    for _ in range(4):
        fail_unreachable(tier, server, 2)
        with pytest.raises(L2Error) as excinfo:
            tier.get("a-list")
        assert isinstance(excinfo.value.__cause__, redis.ResponseError)
    assert breaker.state == CLOSED
    assert breaker.opens == 0


def test_error_reply_to_the_probe_closes_the_breaker(
    tier: RedisTier, breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """A half-open probe answered with an error reply closes the breaker."""
    open_breaker(breaker)
    clock.advance(5.0)
    with pytest.raises(L2Error):
        tier.get("a-list")
    assert breaker.state == CLOSED


@pytest.mark.parametrize(
    "error",
    [AuthenticationError("invalid password"), NoPermissionError("no permissions for GET")],
    ids=["auth", "acl"],
)
def test_config_errors_propagate_unchanged_and_do_not_open_the_breaker(
    tier: RedisTier,
    client: fakeredis.FakeRedis,
    breaker: CircuitBreaker,
    error: Exception,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Wrong credentials / ACL refusals are raised as themselves (not L2Error) and count as
    an answer from Redis, never against it."""

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(client, "get", refused)
    for _ in range(5):
        with pytest.raises(type(error)) as excinfo:
            tier.get("answered")
        assert excinfo.value is error
        assert not isinstance(excinfo.value, L2Error)
    assert breaker.state == CLOSED
    assert breaker.opens == 0


def test_probe_success_closes_the_breaker_and_returns_the_answer(
    tier: RedisTier, breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """After reset_after, the next command is the probe: its answer is returned and closes
    the breaker."""
    open_breaker(breaker)
    with pytest.raises(CircuitOpenError):
        tier.get("answered")
    clock.advance(5.0)

    assert tier.get("answered") == b"PONG"

    assert breaker.state == CLOSED


def test_concurrent_callers_are_skipped_while_the_probe_is_in_flight(
    tier: RedisTier,
    client: fakeredis.FakeRedis,
    breaker: CircuitBreaker,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While one probe is waiting for Redis, every other caller gets CircuitOpenError at
    once; when the probe succeeds, calls go through again."""
    open_breaker(breaker)
    clock.advance(5.0)
    probing = threading.Event()
    release = threading.Event()
    results: list[Any] = []
    real_get = client.get

    def slow_get(*args: Any, **kwargs: Any) -> Any:
        probing.set()
        assert release.wait(WAIT)
        return real_get(*args, **kwargs)

    monkeypatch.setattr(client, "get", slow_get)
    prober = threading.Thread(target=lambda: results.append(tier.get("answered")))
    prober.start()
    try:
        assert probing.wait(WAIT)
        assert breaker.state == HALF_OPEN
        others: list[BaseException] = []

        def other() -> None:
            try:
                tier.get_many(["answered"])
            except CircuitOpenError as exc:
                others.append(exc)

        threads = [threading.Thread(target=other) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert len(others) == 4
        assert breaker.state == HALF_OPEN
    finally:
        release.set()
        prober.join(WAIT)
    assert results == [b"PONG"]
    assert breaker.state == CLOSED
    assert tier.get_many(["answered"]) == [b"PONG"]


def test_breaker_recovers_after_a_probe_that_raised_a_non_redis_exception(
    tier: RedisTier,
    client: fakeredis.FakeRedis,
    breaker: CircuitBreaker,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A probe that dies of an unexpected exception must not wedge the breaker: after
    another reset_after a new probe is let through."""
    open_breaker(breaker)
    clock.advance(5.0)

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("not a Redis error")

    with monkeypatch.context() as patch:
        patch.setattr(client, "get", interrupted)
        with pytest.raises(RuntimeError):
            tier.get("answered")
    clock.advance(5.0)

    assert tier.get("answered") == b"PONG"
    assert breaker.state == CLOSED


def test_a_client_side_error_is_raised_and_never_counted_against_redis(
    tier: RedisTier, breaker: CircuitBreaker
) -> None:
    """A key redis-py cannot encode (a lone surrogate) fails before any I/O: the error is
    the caller's, raised unchanged, and five of them do not open the breaker."""
    for _ in range(5):
        with pytest.raises(UnicodeEncodeError):
            tier.get("user:\ud800")
    assert breaker.state == CLOSED
    assert breaker.consecutive == 0
    assert tier.get("user:ok") is None


def test_a_probe_that_fails_on_the_client_side_lets_the_next_caller_probe(
    tier: RedisTier, breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """A half-open probe that never reached Redis proves nothing: the breaker stays open
    and the very next call is let through as the probe (no second cooldown)."""
    open_breaker(breaker)
    clock.advance(5.0)
    with pytest.raises(UnicodeEncodeError):
        tier.get("\ud800")
    assert breaker.state == OPEN
    assert tier.get("fine") is None
    assert breaker.state == CLOSED


def test_redis_tier_without_a_breaker_gets_a_default_one() -> None:
    """RedisTier(client) builds a closed default breaker (5 failures, 5 s)."""
    tier = RedisTier(fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    assert tier.breaker.state == CLOSED
    assert repr(tier.breaker) == "CircuitBreaker(failures=5, reset_after=5, state='closed')"
