"""Write-through and write-behind, on fakeredis and a real Redis, with a writer into SQLite in
a file."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.sqlite_writer import SQLiteWriter, WriterDownError
from tests.support import CacheFactory, FakeClock, subscribed, wait_for
from tiercache import SerializationError, TierCache, Writer

FLUSH_TIMEOUT = 30.0  # bounds every drain below; a healthy run takes milliseconds


@pytest.fixture
def make_cache(
    redis_client: redis.Redis, namespace: str, clock: FakeClock
) -> Iterator[Callable[..., TierCache]]:
    with CacheFactory(redis_client, namespace=namespace) as make:
        yield make


@pytest.fixture
def db(tmp_path: Path) -> SQLiteWriter:
    return SQLiteWriter(tmp_path / "source-of-truth.sqlite")


def raw(client: redis.Redis, namespace: str, key: str) -> bytes | None:
    return client.get(f"{namespace}:{key}")  # type: ignore[return-value]


def test_a_writer_implements_the_protocol(db: SQLiteWriter) -> None:
    """The test writer is a tiercache.Writer without inheriting anything."""
    assert isinstance(db, Writer)


def test_a_non_writer_is_refused_naming_the_option() -> None:
    """writer= must have the four methods; checked at construction and per call."""
    with pytest.raises(TypeError, match="writer"):
        TierCache(None, writer=object())
    with TierCache(None) as cache, pytest.raises(TypeError, match="writer"):
        cache.set("k", 1, writer=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="write_behind needs a writer"):
        TierCache(None, write_behind=True)


# -- write-through --------------------------------------------------------------------------


def test_write_through_writes_the_source_then_the_cache(
    make_cache: Callable[..., TierCache], db: SQLiteWriter
) -> None:
    """set/set_many/delete/delete_many call the writer and change the cache."""
    cache = make_cache(writer=db)
    cache.set("a", 1)
    cache.set_many({"b": 2, "c": 3})
    assert db.rows() == {"a": 1, "b": 2, "c": 3}
    assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": 2, "c": 3}
    cache.delete("a")
    cache.delete_many(["b", "c"])
    assert db.rows() == {}
    assert cache.get_many(["a", "b", "c"]) == {}
    assert [m for m, _ in db.calls()] == ["write", "write_many", "delete", "delete_many"]


def test_a_failing_writer_leaves_both_tiers_and_other_instances_unchanged(
    make_cache: Callable[..., TierCache],
    db: SQLiteWriter,
    redis_client: redis.Redis,
    namespace: str,
) -> None:
    """The writer raises: its exception reaches the caller unchanged, L1 and L2 keep the old
    value, and no other instance hears of a write."""
    writer_cache, other = make_cache(writer=db), make_cache()
    subscribed(writer_cache, probe=True)  # its probe reaches the other one too: before `base`
    subscribed(other, probe=True)
    base = other.stats()["bus_received"]

    def received() -> int:
        return int(other.stats()["bus_received"]) - base

    writer_cache.set("k", "old")
    wait_for(lambda: received() >= 1, FLUSH_TIMEOUT, "the first write's message")
    assert other.get("k") == "old"  # now in the other instance's L1
    before = raw(redis_client, namespace, "k")
    db.fail_next(2)
    with pytest.raises(WriterDownError):
        writer_cache.set("k", "new")
    with pytest.raises(WriterDownError):
        writer_cache.delete("k")
    assert raw(redis_client, namespace, "k") == before
    assert writer_cache.get("k") == "old"
    assert other.get("k") == "old"
    # Messages from one publisher arrive in order: once the marker's is in, any message the
    # failed calls had sent would be too.
    writer_cache.set("marker", 1)
    wait_for(lambda: received() >= 2, FLUSH_TIMEOUT, "the marker's message")
    assert received() == 2
    assert writer_cache.stats()["writer_errors"] == 2
    assert db.rows() == {"k": "old", "marker": 1}


def test_a_value_the_cache_cannot_store_never_reaches_the_writer(
    make_cache: Callable[..., TierCache], db: SQLiteWriter
) -> None:
    """SerializationError before the writer is called: the source and the cache agree."""
    cache = make_cache(writer=db)
    with pytest.raises(SerializationError):
        cache.set("k", object())
    assert db.calls() == []


def test_a_per_call_writer_overrides_the_caches(
    make_cache: Callable[..., TierCache], db: SQLiteWriter, tmp_path: Path
) -> None:
    """writer= on one call writes through that writer only."""
    other = SQLiteWriter(tmp_path / "other.sqlite")
    cache = make_cache(writer=db)
    cache.set("k", 1, writer=other)
    assert other.rows() == {"k": 1}
    assert db.rows() == {}


def test_concurrent_write_throughs_on_one_key_leave_the_cache_with_the_writers_last(
    make_cache: Callable[..., TierCache], db: SQLiteWriter
) -> None:
    """8 threads write one key through a real database: the cache ends with the value the
    database kept (no slower writer writes an older value back)."""
    cache = make_cache(writer=db)
    start = threading.Barrier(8)

    def work(thread: int) -> None:
        start.wait(FLUSH_TIMEOUT)
        for i in range(25):
            cache.set("hot", f"{thread}-{i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(FLUSH_TIMEOUT)
    assert cache.get("hot") == db.rows()["hot"]
    other = make_cache()
    assert other.get("hot") == db.rows()["hot"]


# -- write-behind ---------------------------------------------------------------------------


def test_many_sets_on_100_keys_across_8_threads_reach_the_writer_coalesced_none_lost(
    make_cache: Callable[..., TierCache], db: SQLiteWriter, request: pytest.FixtureRequest
) -> None:
    """Every key's last value reaches the database by close(); writes were coalesced and
    batched (far fewer rows written than sets). 10,000 sets on the real server; 2,000 on
    fakeredis and the cluster, where the queue under test is the same code and the Redis
    side is covered by the other tests of this module."""
    sets = 10_000 if request.node.callspec.params["redis_client"] == "real" else 2_000
    cache = make_cache(
        writer=db, write_behind=True, write_behind_delay=0.05, write_behind_batch_size=50
    )
    start = threading.Barrier(8)

    def work(thread: int) -> None:
        start.wait(FLUSH_TIMEOUT)
        for i in range(sets // 8):
            cache.set(f"k{(i * 7 + thread) % 100}", thread * 10_000 + i)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(FLUSH_TIMEOUT)
    cached = cache.get_many([f"k{n}" for n in range(100)])
    cache.close(timeout=FLUSH_TIMEOUT)
    stats = cache.stats()
    assert db.rows() == cached
    assert len(cached) == 100
    assert stats["writes_queued"] == sets
    assert stats["writes_dropped"] == 0
    assert stats["writes_flushed"] + stats["writes_coalesced"] == sets
    rows_written = sum(n for _, n in db.calls())
    assert rows_written == stats["writes_flushed"] < sets
    assert max(n for _, n in db.calls()) <= 50


def test_a_writer_that_fails_for_a_while_then_recovers_loses_nothing(
    make_cache: Callable[..., TierCache], db: SQLiteWriter
) -> None:
    """Failures within the retry bound: every write arrives, retries counted, none dropped."""
    cache = make_cache(
        writer=db, write_behind=True, write_behind_delay=0.001, write_behind_retries=5
    )
    db.fail_next(4)
    cache.set_many({f"k{n}": n for n in range(20)})
    cache.delete("k0")
    assert cache.flush(FLUSH_TIMEOUT)
    assert db.rows() == {f"k{n}": n for n in range(1, 20)}
    stats = cache.stats()
    assert stats["write_retries"] >= 4
    assert stats["writes_dropped"] == 0


def test_writes_past_the_retry_bound_are_dropped_counted_and_logged(
    make_cache: Callable[..., TierCache], db: SQLiteWriter, caplog: pytest.LogCaptureFixture
) -> None:
    """A writer still failing after the last retry: the batch is dropped, in stats and the
    log; the cache keeps the values."""
    cache = make_cache(
        writer=db, write_behind=True, write_behind_delay=0.001, write_behind_retries=2
    )
    db.fail_next(3)
    with caplog.at_level(logging.ERROR, logger="tiercache"):
        cache.set_many({"a": 1, "b": 2})
        assert cache.flush(FLUSH_TIMEOUT)
    assert db.rows() == {}
    assert cache.stats()["writes_dropped"] == 2
    assert cache.stats()["write_retries"] == 2
    assert "write-behind dropped 2 write(s) after 3 attempt(s)" in caplog.text
    assert cache.get("a") == 1


def test_write_behind_waits_for_its_delay_unless_flushed(
    make_cache: Callable[..., TierCache], db: SQLiteWriter
) -> None:
    """With a long delay nothing reaches the writer until flush(); the cache has it at once."""
    cache = make_cache(writer=db, write_behind=True, write_behind_delay=600)
    cache.set("k", 1)
    assert cache.get("k") == 1
    assert cache.stats()["write_behind_pending"] == 1
    assert db.calls() == []
    assert cache.flush(FLUSH_TIMEOUT)
    assert db.rows() == {"k": 1}
    assert cache.stats()["write_behind_pending"] == 0


def test_a_full_batch_is_written_without_waiting_for_the_delay(
    make_cache: Callable[..., TierCache], db: SQLiteWriter
) -> None:
    """write_behind_batch_size writes queued: the flusher writes them at once."""
    cache = make_cache(
        writer=db, write_behind=True, write_behind_delay=600, write_behind_batch_size=10
    )
    cache.set_many({f"k{n}": n for n in range(10)})
    stats: dict[str, Any] = {}

    def written() -> bool:
        stats.update(cache.stats())
        return bool(stats["writes_flushed"] == 10)

    wait_for(written, FLUSH_TIMEOUT, "a full batch to be written")
    assert db.calls() == [("write_many", 10)]


def test_close_drops_what_it_cannot_write_in_time_and_says_so(
    make_cache: Callable[..., TierCache], db: SQLiteWriter, caplog: pytest.LogCaptureFixture
) -> None:
    """close(timeout=0) with a writer that keeps failing: the queue is dropped, counted."""
    cache = make_cache(
        writer=db, write_behind=True, write_behind_delay=600, write_behind_retries=1000
    )
    db.fail_next(10**9)
    cache.set("k", 1)
    with caplog.at_level(logging.ERROR, logger="tiercache"):
        cache.close(timeout=0.05)
    assert cache.stats()["writes_dropped"] == 1
    assert "dropped" in caplog.text


# -- the durable queue (a Redis stream) -------------------------------------------------------


def test_the_durable_queue_needs_write_behind_and_redis(db: SQLiteWriter) -> None:
    """write_behind_stream is refused without write_behind, and without Redis."""
    with pytest.raises(ValueError, match="write_behind_stream needs write_behind"):
        TierCache(None, writer=db, write_behind_stream=True)
    with pytest.raises(ValueError, match="write_behind_stream needs Redis"):
        TierCache(None, writer=db, write_behind=True, write_behind_stream=True)


@pytest.mark.redis
def test_the_durable_queue_writes_through_the_stream_and_refuses_other_writers(
    real_redis: redis.Redis, namespace: str, db: SQLiteWriter, tmp_path: Path
) -> None:
    """Writes reach the database through the stream, which ends empty; a per-call writer is
    refused before the cache changes (a process draining the stream could not know it)."""
    with TierCache(
        real_redis, namespace=namespace, writer=db, write_behind=True, write_behind_stream=True
    ) as cache:
        cache.set_many({f"k{n}": n for n in range(50)})
        cache.delete("k0")
        assert cache.flush(FLUSH_TIMEOUT)
        assert db.rows() == {f"k{n}": n for n in range(1, 50)}
        assert real_redis.xlen(f"{namespace}#writes") == 0
        with pytest.raises(ValueError, match="own writer"):
            cache.set("k1", "other", writer=SQLiteWriter(tmp_path / "other.sqlite"))
        assert cache.get("k1") == 1
