"""The durable write-behind queue (a Redis stream per namespace) across real processes: a
process SIGKILLed with writes queued, some of them taken by its flusher and never written,
loses none once another process drains the stream."""

from __future__ import annotations

import os
import signal
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.multiprocess.support import CALL_TIMEOUT, FORK, stop_process
from tests.redis_server import RedisServer
from tests.sqlite_writer import SQLiteWriter
from tiercache import TierCache

pytestmark = pytest.mark.redis

KEYS = 100
DRAIN_TIMEOUT = 30.0


class StuckWriter(SQLiteWriter):
    """A writer whose calls never return (a database that hangs): the batch its flusher took
    stays pending, unacknowledged, in the stream's group."""

    def _run(self, method: str, sql: str, rows: list[tuple[Any, ...]]) -> None:
        threading.Event().wait()  # never set: the process is killed while waiting


def _doomed(url: str, namespace: str, path: str, conn: Connection) -> None:
    """Child: 3 rounds of sets on KEYS keys and some deletes through the stream, then report
    and wait to be killed."""
    cache = TierCache.from_url(
        url,
        namespace=namespace,
        writer=StuckWriter(path),
        write_behind=True,
        write_behind_stream=True,
        write_behind_batch_size=10,
        write_behind_delay=0.001,
    )
    for round_ in range(3):
        cache.set_many({f"k{n}": round_ * 1000 + n for n in range(KEYS)})
    cache.delete_many([f"k{n}" for n in range(0, KEYS, 10)])
    conn.send(cache.stats()["writes_queued"])
    threading.Event().wait()  # killed here (SIGKILL: no close, no flush)


def test_a_sigkilled_process_loses_no_write_once_another_drains_the_stream(
    redis_server: RedisServer, namespace: str, tmp_path: Path, real_redis: redis.Redis
) -> None:
    """Every key ends in the database with its last value (deleted keys absent), written by
    a second process that claims the dead one's pending entries and reads the rest."""
    db = SQLiteWriter(tmp_path / "source-of-truth.sqlite")
    mine, theirs = FORK.Pipe()
    child = FORK.Process(target=_doomed, args=(redis_server.url, namespace, db.path, theirs))
    child.start()
    try:
        assert mine.poll(CALL_TIMEOUT), "the child did not report"
        assert mine.recv() == 3 * KEYS + KEYS // 10
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    finally:
        stop_process(child)
    assert db.rows() == {}
    group = real_redis.xinfo_groups(f"{namespace}#writes")[0]
    assert group["pending"] > 0  # the dead consumer took a batch and never acknowledged it

    with TierCache.from_url(
        redis_server.url,
        namespace=namespace,
        writer=db,
        write_behind=True,
        write_behind_stream=True,
        lease_ttl=0.2,  # a consumer idle this long is presumed dead: its entries are claimed
    ) as drainer:
        assert drainer.flush(DRAIN_TIMEOUT)
    expected = {f"k{n}": 2000 + n for n in range(KEYS) if n % 10}
    assert db.rows() == expected
    assert real_redis.xlen(f"{namespace}#writes") == 0
