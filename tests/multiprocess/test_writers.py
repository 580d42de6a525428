"""Writers across real processes: write-through races between processes end coherent, a failing
writer changes nothing anywhere, and a forked child's write-behind queue is its own.

The source of truth is SQLite in a file every process opens; Redis is a real server.
"""

from __future__ import annotations

from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
import redis

from tests.multiprocess.support import (
    CALL_TIMEOUT,
    FORK,
    PROPAGATION_TIMEOUT,
    Peer,
    stop_process,
    subscribe,
)
from tests.redis_server import RedisServer
from tests.sqlite_writer import SQLiteWriter, WriterDownError
from tests.support import wait_for
from tiercache import TierCache

pytestmark = pytest.mark.redis

ROUNDS = 30  # races, each on a key of its own: thirty chances per run to catch a reordering


@pytest.fixture
def db(tmp_path: Path) -> SQLiteWriter:
    return SQLiteWriter(tmp_path / "source-of-truth.sqlite")


def _race(url: str, namespace: str, path: str, tag: str, start: object, conn: Connection) -> None:
    """Child: race the other child on ROUNDS keys (one write each, released together), then
    report what it reads once both are done (its L1 must agree with the database)."""
    writer = SQLiteWriter(path, lag=0.002)
    with TierCache.from_url(url, namespace=namespace, writer=writer, l1_ttl=60) as cache:
        subscribe(cache)
        start.wait(CALL_TIMEOUT)  # type: ignore[attr-defined]
        for i in range(ROUNDS):
            start.wait(CALL_TIMEOUT)  # type: ignore[attr-defined]
            cache.set(f"hot{i}", tag)  # both racers write the same key at the same moment
        start.wait(CALL_TIMEOUT)  # type: ignore[attr-defined]
        expected = writer.rows()
        wait_for(lambda: cache.get_many(expected) == expected, PROPAGATION_TIMEOUT, "agreement")
        conn.send(cache.get_many(expected))


def test_write_through_races_of_two_processes_on_one_key_end_coherent(
    redis_server: RedisServer, namespace: str, db: SQLiteWriter, real_redis: redis.Redis
) -> None:
    """Two processes write the same keys through one database at once: each key's last value
    in the database is what Redis and both processes' L1 hold at the end."""
    start = FORK.Barrier(2)
    pipes, children = [], []
    for tag in ("A", "B"):
        mine, theirs = FORK.Pipe()
        child = FORK.Process(
            target=_race, args=(redis_server.url, namespace, db.path, tag, start, theirs)
        )
        child.start()
        pipes.append(mine)
        children.append(child)
    try:
        seen = []
        for pipe in pipes:
            assert pipe.poll(CALL_TIMEOUT), "a racer did not report"
            seen.append(pipe.recv())
    finally:
        for child in children:
            stop_process(child)
    final = db.rows()
    assert len(final) == ROUNDS
    assert seen == [final, final]
    with TierCache(real_redis, namespace=namespace) as fresh:
        assert fresh.get_many(final) == final  # from Redis
    assert sum(n for method, n in db.calls() if method == "write") == 2 * ROUNDS


@pytest.fixture
def peer(redis_server: RedisServer, namespace: str) -> Iterator[Peer]:
    other = Peer(FORK, redis_server.url, "peer")
    try:
        other.call("main", "open", namespace, l1_ttl=60)
        other.call("main", "subscribe")
        yield other
    finally:
        other.close()


def test_a_failing_writer_leaves_other_processes_unchanged(
    redis_server: RedisServer, namespace: str, db: SQLiteWriter, peer: Peer
) -> None:
    """The writer raises in one process: another process keeps serving the old value from
    its L1 and hears no message; the database is unchanged."""
    with TierCache.from_url(redis_server.url, namespace=namespace, writer=db) as cache:
        subscribe(cache)

        def heard() -> int:
            # Invalidations only: another instance's start-up probe may arrive at any time.
            stats = peer.stats("main")
            return int(stats["bus_received"] - stats["bus_probes_heard"])

        base = heard()
        cache.set("k", "old")
        wait_for(lambda: heard() > base, PROPAGATION_TIMEOUT, "the write")
        assert peer.call("main", "get", "k") == "old"
        db.fail_next(1)
        with pytest.raises(WriterDownError):
            cache.set("k", "new")
        cache.set("marker", 1)  # messages of one publisher arrive in order
        wait_for(lambda: heard() >= base + 2, PROPAGATION_TIMEOUT, "the marker")
        before = peer.stats("main")
        assert peer.call("main", "get", "k") == "old"
        assert peer.stats("main")["l1_hits"] == before["l1_hits"] + 1  # still its L1 copy
        assert heard() == base + 2
    assert db.rows() == {"k": "old", "marker": 1}


def _child_of_fork(cache: TierCache, conn: Connection) -> None:
    """Child: the queue it inherited is empty; its own write is flushed by its own flusher."""
    pending = cache.stats()["write_behind_pending"]
    cache.set("child", 2)
    flushed = cache.flush(CALL_TIMEOUT)
    conn.send((pending, flushed))
    cache.close()


def test_a_forked_child_starts_with_an_empty_write_behind_queue_and_its_own_flusher(
    redis_server: RedisServer, namespace: str, db: SQLiteWriter
) -> None:
    """The parent's queued writes stay the parent's: written once, by the parent."""
    cache = TierCache.from_url(
        redis_server.url, namespace=namespace, writer=db, write_behind=True, write_behind_delay=600
    )
    try:
        cache.set("parent", 1)
        assert cache.stats()["write_behind_pending"] == 1
        mine, theirs = FORK.Pipe()
        child = FORK.Process(target=_child_of_fork, args=(cache, theirs))
        child.start()
        try:
            assert mine.poll(CALL_TIMEOUT), "the child did not report"
            pending, flushed = mine.recv()
        finally:
            stop_process(child)
        assert (pending, flushed) == (0, True)
        assert db.rows() == {"child": 2}
        assert cache.flush(CALL_TIMEOUT)
        assert db.rows() == {"child": 2, "parent": 1}
        assert db.calls() == [("write", 1), ("write", 1)]
    finally:
        cache.close()
