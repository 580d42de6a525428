"""Fault injection against a real redis-server under concurrent load (guarantees 5-7
of docs/consistency.md).

Each test runs 8 threads of mixed ``get_or_set`` / ``set`` / ``delete`` calls on two
`TierCache` instances sharing a private server, injects one fault, and records what the
callers saw: operations, exceptions that reached them, wrong values, stale serves and breaker
opens (printed; run with ``-s`` or ``-rP`` to see the lines). The fault schedule itself
(e.g. "Redis stays dead for 1.5 s") is the only fixed wait; everything else is a bounded
poll on the caches' counters.
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import zstandard

import tiercache
from tests.redis_server import RedisServer
from tests.support import WAIT, CacheFactory, FakeClock, wait_until
from tiercache import Breaker, TierCache
from tiercache.entry import HEADER_SIZE

pytestmark = pytest.mark.redis

THREADS = 8
KEYS = 40
MAX_RUN = 20.0  # seconds: a workload never outlives this, whatever the test does
DOWN_FOR = 1.5  # seconds Redis stays dead in the kill/restart schedule
PAUSE_MS = 2000  # CLIENT PAUSE / DEBUG SLEEP length


def value_for(key: str) -> dict[str, Any]:
    """The one correct value of ``key``: every loader and every set writes exactly this."""
    return {"key": key, "payload": "x" * 64}


@dataclass
class ThreadLog:
    ops: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    wrong: int = 0


class Workload:
    """8 threads of mixed load; ``reads`` of the ops are get_or_set on ``k0..k{KEYS-1}``,
    the rest split between set on the same keys and delete on ``delete_prefix`` keys."""

    def __init__(
        self,
        caches: list[TierCache],
        *,
        loader: Callable[[str], Any] = value_for,
        reads: float = 0.8,
        delete_prefix: str = "k",
        seed: int = 7,
    ) -> None:
        self.caches = caches
        self.loader = loader
        self.reads = reads
        self.delete_prefix = delete_prefix
        self.seed = seed
        self.stop = threading.Event()
        self.logs = [ThreadLog() for _ in range(THREADS)]
        self.threads = [
            threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True)
            for i in range(THREADS)
        ]

    def _run(self, index: int) -> None:
        rng = random.Random(self.seed + index)
        cache = self.caches[index % len(self.caches)]
        log = self.logs[index]
        deadline = time.monotonic() + MAX_RUN
        # Zipf-ish: key i is picked with weight 1 / (i + 1).
        weights = [1 / (i + 1) for i in range(KEYS)]
        while not self.stop.is_set() and time.monotonic() < deadline:
            key = f"k{rng.choices(range(KEYS), weights)[0]}"
            roll = rng.random()
            try:
                if roll < self.reads:
                    op = "get_or_set"
                    got = cache.get_or_set(key, lambda key=key: self.loader(key))
                    if got != value_for(key):
                        log.wrong += 1
                elif roll < self.reads + (1 - self.reads) / 2:
                    op = "set"
                    cache.set(key, value_for(key))
                else:
                    op = "delete"
                    cache.delete(f"{self.delete_prefix}{key[1:]}")
            except Exception as exc:
                op = "error"
                if len(log.errors) < 20:
                    log.errors.append(f"{type(exc).__name__}: {exc}")
            log.ops[op] += 1

    def __enter__(self) -> Workload:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(WAIT)
        assert not any(t.is_alive() for t in self.threads), "a load thread is stuck"

    @property
    def total(self) -> int:
        return sum(sum(log.ops.values()) for log in self.logs)

    @property
    def errors(self) -> list[str]:
        return [e for log in self.logs for e in log.errors]

    @property
    def wrong(self) -> int:
        return sum(log.wrong for log in self.logs)

    def stat(self, name: str) -> int:
        """A counter summed over the caches."""
        return sum(c.stats().get(name, 0) for c in self.caches)

    def report(self, title: str, **extra: Any) -> None:
        ops: Counter[str] = Counter()
        for log in self.logs:
            ops.update(log.ops)
        counters = {
            name: self.stat(name)
            for name in (
                "stale_serves",
                "breaker_opens",
                "l2_errors",
                "l2_skipped",
                "l2_write_errors",
                "l2_corrupt",
                "l2_hits",
                "loads",
                "load_errors",
                "bus_subscriptions",
                "l1_flushes",
            )
        }
        parts = [f"ops={self.total}", f"by_op={dict(ops)}", f"caller_exceptions={self.errors}"]
        parts += [f"wrong_values={self.wrong}"]
        parts += [f"{k}={v}" for k, v in {**counters, **extra}.items()]
        print(f"\n[{title}] " + " ".join(parts))


@pytest.fixture
def make_cache(
    fresh_redis_server: RedisServer, namespace: str
) -> Iterator[Callable[..., TierCache]]:
    """Caches on the test's private server; listener subscribed before the load starts."""
    with CacheFactory(
        fresh_redis_server.url,
        settle=True,
        namespace=namespace,
        ttl=30,
        l1_ttl=0.2,  # short: reads keep going to Redis
    ) as factory:

        def make(**options: Any) -> TierCache:
            options.setdefault("breaker", Breaker(failures=5, reset_after=0.5))  # one per cache
            return factory(**options)

        yield make


def test_sigkill_and_restart_under_load_reaches_no_caller_and_recovers_by_itself(
    fresh_redis_server: RedisServer, make_cache
) -> None:
    """Redis SIGKILLed mid-load and restarted on the same port 1.5 s later: no caller sees
    an exception or a wrong value; afterwards, with no call from the user, L2 is used again
    and every listener resubscribes, flushing its L1."""
    server = fresh_redis_server
    caches = [make_cache(), make_cache()]
    with Workload(caches) as load:
        assert wait_until(lambda: load.stat("l2_hits") > 50 and load.total > 500)

        server.kill()
        killed_at = load.total
        assert wait_until(lambda: all(c.stats()["bus_subscribed"] == 0 for c in caches))
        time.sleep(DOWN_FOR)  # the fault schedule: Redis stays dead this long
        ops_while_down = load.total - killed_at
        hits = load.stat("l2_hits")
        flushes = [c.stats()["l1_flushes"] for c in caches]
        subscriptions = [c.stats()["bus_subscriptions"] for c in caches]
        opens = load.stat("breaker_opens")

        server.restart()

        assert wait_until(lambda: load.stat("l2_hits") > hits + 50)
        assert wait_until(
            lambda: all(
                c.stats()["bus_subscriptions"] > n
                for c, n in zip(caches, subscriptions, strict=True)
            )
        )
        assert wait_until(lambda: all(c.stats()["breaker_state"] == 0 for c in caches))
    load.report("sigkill+restart", ops_while_down=ops_while_down, breaker_opens_at_kill=opens)

    assert load.errors == []
    assert load.wrong == 0
    assert ops_while_down > 100  # callers kept getting answers while Redis was dead
    assert opens >= 1
    assert all(c.stats()["l1_flushes"] > n for c, n in zip(caches, flushes, strict=True))


@pytest.mark.parametrize("fault", ["client_pause", "debug_sleep"])
def test_frozen_redis_under_load_opens_the_breaker_and_it_closes_after(
    fresh_redis_server: RedisServer, make_cache, fault: str
) -> None:
    """While Redis does not answer (CLIENT PAUSE ALL, or DEBUG SLEEP), callers get answers
    from L1 and the loader, the breaker opens; once Redis answers again it closes."""
    caches = [make_cache(), make_cache()]
    admin = fresh_redis_server.client()  # no socket timeout: DEBUG SLEEP blocks it
    sleeper: threading.Thread | None = None
    try:
        with Workload(caches) as load:
            assert wait_until(lambda: load.stat("l2_hits") > 50)
            errors_before = load.stat("l2_errors") + load.stat("l2_write_errors")
            if fault == "client_pause":
                admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
            else:
                sleeper = threading.Thread(
                    target=admin.execute_command, args=("DEBUG", "SLEEP", PAUSE_MS / 1000)
                )
                sleeper.start()
            frozen_at = load.total

            assert wait_until(lambda: load.stat("breaker_opens") >= 1)
            assert wait_until(lambda: load.total > frozen_at + 100)
            answered_while_frozen = load.total - frozen_at
            if sleeper is not None:
                sleeper.join(WAIT)
            assert wait_until(lambda: all(c.stats()["breaker_state"] == 0 for c in caches))
            hits = load.stat("l2_hits")
            assert wait_until(lambda: load.stat("l2_hits") > hits + 20)
        load.report(fault, answered_while_frozen=answered_while_frozen)
    finally:
        if sleeper is not None:
            sleeper.join(WAIT)
        admin.close()

    assert load.errors == []
    assert load.wrong == 0
    # Timeouts were seen, and absorbed. By reads or by writes: when a write meets the freeze
    # first, its replay is pending and reads skip Redis until it succeeds (guarantee 1), so
    # which counter moves depends on which of the 8 threads got there first.
    assert load.stat("l2_errors") + load.stat("l2_write_errors") > errors_before


def test_redis_refusing_writes_oom_keeps_reads_working_and_counts_write_errors(
    fresh_redis_server: RedisServer, make_cache
) -> None:
    """With maxmemory tiny and noeviction, Redis refuses writes with OOM: reads of what it
    holds keep hitting, writes are counted in l2_write_errors, callers see no exception and
    only correct values, and the breaker stays closed (an OOM reply is an answer).
    raise_on_write_error=True makes set raise tiercache.L2Error."""
    caches = [make_cache(), make_cache()]
    for i in range(KEYS):
        caches[0].set(f"k{i}", value_for(f"k{i}"))
    admin = fresh_redis_server.client()
    try:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        with pytest.raises(redis.ResponseError, match="maxmemory"):  # OutOfMemoryError
            admin.set("probe", "x")

        # Reads of what Redis holds still hit (a fresh instance: nothing in its L1).
        reader = make_cache()
        keys = [f"k{i}" for i in range(KEYS)]
        assert reader.get_many(keys) == {key: value_for(key) for key in keys}
        assert reader.stats()["l2_hits"] == KEYS

        with Workload(caches) as load:
            assert wait_until(lambda: load.stat("l2_write_errors") > 200)
        load.report("oom")
        assert load.errors == []
        assert load.wrong == 0
        assert load.stat("breaker_opens") == 0

        strict = make_cache(raise_on_write_error=True)
        with pytest.raises(tiercache.L2Error, match="OutOfMemoryError"):
            strict.set("k0", value_for("k0"))
        assert strict.get_or_set("fresh", lambda: "loaded") == "loaded"  # loads still work
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()


def test_failing_loader_with_stale_entries_serves_stale_values_not_errors(
    fresh_redis_server: RedisServer, make_cache
) -> None:
    """Entries past ttl but inside stale_ttl: with the loader failing on every call, every
    reader (the instance that loaded them and one that never did) gets the stale values; the
    throttle keeps loader calls to about one per key."""
    clock = FakeClock()
    options = {"ttl": 10, "l1_ttl": 10, "stale_ttl": 60, "fail_safe_throttle": 30}
    caches = [make_cache(timer=clock, **options), make_cache(timer=clock, **options)]
    for i in range(KEYS):
        caches[0].get_or_set(f"k{i}", lambda i=i: value_for(f"k{i}"))
    clock.advance(11)  # every entry is now expired, inside its fail-safe window

    def failing(key: str) -> Any:
        raise ConnectionRefusedError(f"database down while loading {key}")

    # Deletes go to other keys: a deleted entry has no stale value, by design.
    with Workload(caches, loader=failing, delete_prefix="gone") as load:
        assert wait_until(lambda: load.total > 2000)
    load.report("loader failing, stale entries")

    assert load.errors == []
    assert load.wrong == 0
    assert load.stat("stale_serves") >= KEYS // 2
    # Throttled: about one failed load per key per instance, not one per call.
    assert load.stat("load_errors") <= 2 * KEYS


def _zstd_bomb(size: int) -> bytes:
    """A small zstd frame that declares (and holds) ``size`` zero bytes."""
    out = io.BytesIO()
    chunk = b"\0" * (1 << 20)
    with zstandard.ZstdCompressor().stream_writer(out, size=size, closefd=False) as writer:
        for _ in range(size // len(chunk)):
            writer.write(chunk)
    return out.getvalue()


def _garbage(rng: random.Random, valid: bytes, bomb: bytes) -> bytes:
    kinds = [
        lambda: rng.randbytes(rng.randrange(1, 64)),
        lambda: b"",
        lambda: b"\xff" + valid[1:],  # unknown format version
        lambda: valid[: max(1, len(valid) // 2)],  # truncated
        lambda: b'{"foreign": "json"}',
        # A valid header flagged zstd-compressed, then a frame declaring 64 MiB, twice the
        # default max_value_bytes: a decompression bomb.
        lambda: valid[:1] + b"\x01" + valid[2:HEADER_SIZE] + bomb,
    ]
    return rng.choice(kinds)()


def test_garbage_bytes_in_redis_are_misses_the_loader_refills(
    fresh_redis_server: RedisServer, make_cache, namespace: str
) -> None:
    """Another writer keeps overwriting the cache's keys with garbage (random, empty,
    unknown version, truncated, foreign, a zstd bomb): readers never see an exception or a
    wrong value, l2_corrupt counts the bad entries and the loader refills them."""
    caches = [make_cache(), make_cache()]
    raw = fresh_redis_server.client()
    rng = random.Random(3)
    bomb = _zstd_bomb(64 << 20)
    assert len(bomb) < 64 << 10
    try:
        caches[0].set("k0", value_for("k0"))
        valid = raw.get(f"{namespace}:k0")
        assert valid is not None
        with Workload(caches) as load:
            deadline = time.monotonic() + WAIT
            while load.stat("l2_corrupt") < 100 and time.monotonic() < deadline:
                raw.set(f"{namespace}:k{rng.randrange(KEYS)}", _garbage(rng, valid, bomb))
                time.sleep(0.002)  # pacing of the fault injector, not a wait for state
            loads_before = load.stat("loads")
            assert wait_until(lambda: load.stat("loads") > loads_before)
        load.report("garbage")
    finally:
        raw.close()

    assert load.errors == []
    assert load.wrong == 0
    assert load.stat("l2_corrupt") >= 100


def test_entries_cached_before_the_bus_was_lost_are_no_fail_safe_fallback(
    fresh_redis_server: RedisServer, make_cache
) -> None:
    """Documented limit: when Redis dies, the listener's loss of subscription flushes L1
    (guarantee 2), so values cached before the outage are gone; with the loader failing too,
    the caller gets the loader's error. Values loaded during the outage are a fallback."""
    clock = FakeClock()
    cache = make_cache(timer=clock, ttl=10, l1_ttl=10, stale_ttl=60)
    cache.get_or_set("before", lambda: "old")
    fresh_redis_server.kill()
    assert wait_until(lambda: cache.stats()["bus_subscribed"] == 0)
    assert cache.get_or_set("during", lambda: "loaded while down") == "loaded while down"
    clock.advance(11)

    def failing() -> Any:
        raise ConnectionRefusedError("database down too")

    with pytest.raises(ConnectionRefusedError):
        cache.get_or_set("before", failing)
    assert cache.get_or_set("during", failing) == "loaded while down"
    assert cache.stats()["stale_serves"] == 1
