"""A `tiercache.Writer` into a real database, SQLite in a file, for the writer tests.

It opens a connection per call (so it is thread-safe, fork-safe and picklable: only the path
travels) and records every call it gets in the database too, so a test can count them from
any process. ``fail_next(n)`` makes the next ``n`` calls raise `WriterDownError`.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["SQLiteWriter", "WriterDownError"]


class WriterDownError(Exception):
    """The database refused the write (a test's injected failure)."""


class SQLiteWriter:
    """Rows ``(key, value as JSON)`` in table ``kv``; calls logged in table ``calls``."""

    def __init__(self, path: Path | str, lag: float = 0.0) -> None:
        self.path = str(path)
        #: Up to this many seconds (random) between the commit and the return: a writer whose
        #: answer is slow, the case where two racing writers can reach the cache reordered.
        self.lag = lag
        self._failures = 0
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT)")
            db.execute("CREATE TABLE IF NOT EXISTS calls (method TEXT, count INTEGER)")

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "lag": self.lag}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["lag"])  # type: ignore[misc]

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def fail_next(self, calls: int) -> None:
        """Make the next ``calls`` calls raise."""
        with self._lock:
            self._failures = calls

    def _check(self) -> None:
        with self._lock:
            if self._failures > 0:
                self._failures -= 1
                raise WriterDownError("database unavailable")

    def _run(self, method: str, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._check()
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(sql, rows)
            db.execute("INSERT INTO calls VALUES (?, ?)", (method, len(rows)))
            db.execute("COMMIT")
        finally:
            db.close()
        if self.lag:
            time.sleep(random.uniform(0, self.lag))  # the slow answer (see `lag`)

    def write(self, key: str, value: Any) -> None:
        self._run("write", "INSERT OR REPLACE INTO kv VALUES (?, ?)", [(key, json.dumps(value))])

    def write_many(self, items: Mapping[str, Any]) -> None:
        rows = [(key, json.dumps(value)) for key, value in items.items()]
        self._run("write_many", "INSERT OR REPLACE INTO kv VALUES (?, ?)", rows)

    def delete(self, key: str) -> None:
        self._run("delete", "DELETE FROM kv WHERE key = ?", [(key,)])

    def delete_many(self, keys: Sequence[str]) -> None:
        self._run("delete_many", "DELETE FROM kv WHERE key = ?", [(key,) for key in keys])

    # -- reading back ------------------------------------------------------------------------

    def rows(self) -> dict[str, Any]:
        """Every stored row, decoded."""
        db = self._connect()
        try:
            return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM kv")}
        finally:
            db.close()

    def calls(self) -> list[tuple[str, int]]:
        """Every successful call, in order: ``(method, number of keys)``."""
        db = self._connect()
        try:
            return [(m, n) for m, n in db.execute("SELECT method, count FROM calls ORDER BY rowid")]
        finally:
            db.close()
