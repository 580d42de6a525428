"""Writes to a real database: direct writer calls vs write-through vs write-behind, same run.

The database is SQLite in a file (WAL, ``synchronous=NORMAL``, one transaction per writer call)
in a temporary folder; Redis is a private redis-server. One thread makes N ``set`` calls
(``--quick``: fewer) over K keys, round robin with a Zipf-like skew so hot keys repeat:

* ``direct``: ``writer.write(key, value)`` per call, no cache (the floor of write-through);
* ``cache only``: ``cache.set`` without a writer (Redis SET + PUBLISH, L1): the cache's part;
* ``write-through``: ``cache.set`` with ``writer=``: the database, then Redis (the per-key
  Redis lock, SET + PUBLISH, unlock) and L1;
* ``write-behind``: ``cache.set`` with ``write_behind=True``; the clock stops after
  ``close()``, so the time includes draining the queue to the database.

Reported: sets per second, writer calls and rows written. Expected: write-through costs the
direct writes plus a few Redis round trips; write-behind returns at cache speed and writes
far fewer rows (coalesced) in far fewer transactions (batched).
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks._timing import print_table
from tests.redis_server import RedisServer
from tiercache import TierCache

TITLE = "writes into SQLite: direct vs write-through vs write-behind"
KEYS = 200


class SQLiteWriter:
    """A `tiercache.Writer` into one SQLite file, one transaction per call."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT)")
        self.calls = 0
        self.rows = 0

    def _run(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.calls += 1
        self.rows += len(rows)
        self.db.execute("BEGIN")
        self.db.executemany(sql, rows)
        self.db.execute("COMMIT")

    def write(self, key: str, value: Any) -> None:
        self._run("INSERT OR REPLACE INTO kv VALUES (?, ?)", [(key, repr(value))])

    def write_many(self, items: Mapping[str, Any]) -> None:
        rows = [(key, repr(value)) for key, value in items.items()]
        self._run("INSERT OR REPLACE INTO kv VALUES (?, ?)", rows)

    def delete(self, key: str) -> None:
        self._run("DELETE FROM kv WHERE key = ?", [(key,)])

    def delete_many(self, keys: Sequence[str]) -> None:
        self._run("DELETE FROM kv WHERE key = ?", [(key,) for key in keys])

    def close(self) -> None:
        self.db.close()


def _keys(n: int) -> list[str]:
    # Skewed: key i is chosen about 1/(rank+1) as often as the hottest (a Zipf-like mix).
    out = []
    rank = 0
    for i in range(n):
        rank = (rank + 1) % KEYS if i % 3 else 0
        out.append(f"item:{rank}")
    return out


def _one(variant: str, server: RedisServer, folder: Path, n: int) -> dict[str, Any]:
    writer = SQLiteWriter(folder / f"{variant}.sqlite")
    keys = _keys(n)
    value = {"name": "widget", "price": "19.99", "stock": 17}
    try:
        if variant == "direct":
            began = time.perf_counter()
            for key in keys:
                writer.write(key, value)
            took = time.perf_counter() - began
        else:
            options: dict[str, Any] = {} if variant == "cache only" else {"writer": writer}
            if variant == "write-behind":
                options.update(write_behind=True, write_behind_delay=0.05)
            namespace = "writers-" + variant.replace(" ", "-")
            cache = TierCache.from_url(server.url, namespace=namespace, **options)
            try:
                cache.set("warm", 0)  # the first call connects and subscribes
                writer.calls = writer.rows = 0
                began = time.perf_counter()
                for key in keys:
                    cache.set(key, value)
                cache.close(timeout=60)
                took = time.perf_counter() - began
                dropped = cache.stats()["writes_dropped"]
                assert dropped == 0, f"{dropped} writes dropped"
            finally:
                cache.close()
    finally:
        writer.close()
    return {"variant": variant, "n": n, "took": took, "calls": writer.calls, "rows": writer.rows}


def run(quick: bool = False) -> None:
    n = 2_000 if quick else 10_000
    print(
        f"{n:,} sets over {KEYS} keys (skewed), one thread; SQLite file in WAL mode, one "
        "transaction per writer call; write-behind timed until close() drained its queue."
    )
    with RedisServer() as server, tempfile.TemporaryDirectory() as folder:
        results = [
            _one(v, server, Path(folder), n)
            for v in ("direct", "cache only", "write-through", "write-behind")
        ]
    direct = results[0]["took"]
    print_table(
        "sets per second (higher is better)",
        ["variant", "sets/s", "time", "vs direct", "writer calls", "rows written"],
        [
            [
                r["variant"],
                f"{r['n'] / r['took']:,.0f}",
                f"{r['took']:.2f} s",
                f"{r['took'] / direct:.2f}x",
                r["calls"],
                r["rows"],
            ]
            for r in results
        ],
    )


if __name__ == "__main__":
    from benchmarks.__main__ import main

    main(["writers"])
