"""Write-through and write-behind: the `Writer` protocol and the order of a write.

A `Writer` persists to the application's source of truth (a database). With one, ``set`` and
``delete`` become:

* **write-through** (the default): the writer first; only when it returns are L2 and L1
  written and the other instances told. When it raises, nothing in the cache changes and the
  exception reaches the caller unchanged.
* **write-behind** (``write_behind=True``): the cache at once, the writer's call queued for a
  background flusher (``write_behind.py``).

Ordering. Two write-throughs of one key race twice: in the writer and in the cache. If the
write the writer saw first reached the cache last, the cache would keep a value the source of
truth has already replaced, until its ``ttl``. So each write holds the key's lock over both
halves: a striped lock in the process, and, with Redis, a short lock key in Redis
(``{namespace}#write:{key}``, ``SET NX PX`` with a token, released only by its holder) so
writers in other processes queue behind it too. The Redis lock lives ``lease_ttl``; a
writer call that outlives it loses the ordering guarantee against other processes (not
within the process). When Redis is down, the process lock alone orders the writes.

Write-behind also takes the process lock over the cache write and the enqueue, so the queue's
last value for a key is the cache's.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from .entry import EntryCodec
from .errors import L2Error
from .l2 import RedisTier
from .layout import write_lock_key
from .stats import Counters, RateLimitedLog

__all__ = ["STRIPES", "KeyLocks", "Persist", "Writer"]

#: Process-local locks the keys are spread over (by CRC32): two keys rarely share one, and
#: sharing only serialises their writes.
STRIPES = 64
_POLL_FIRST = 0.001
_POLL_MAX = 0.025

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@runtime_checkable
class Writer(Protocol):
    """Persists the cache's writes to the source of truth. Implement the four methods; no
    base class to import. ``items`` and ``keys`` are the cache keys (without namespace).

    Since: 0.3.0
    """

    def write(self, key: str, value: Any) -> None:
        """Persist one value."""

    def write_many(self, items: Mapping[str, Any]) -> None:
        """Persist several values (one transaction, ideally)."""

    def delete(self, key: str) -> None:
        """Remove one key's record."""

    def delete_many(self, keys: Sequence[str]) -> None:
        """Remove several keys' records."""


class KeyLocks:
    """Per-key ordering of writes: striped process locks, and a Redis lock per key when
    ``l2`` is given (see the module docstring).

    Since: 0.3.0
    """

    __slots__ = ("_l2", "_log", "_namespace", "_stripes", "_ttl_ms", "_unlock")

    def __init__(
        self, namespace: str, l2: RedisTier | None, ttl: float, l2_log: RateLimitedLog
    ) -> None:
        self._namespace = namespace
        self._l2 = l2
        self._ttl_ms = max(1, int(ttl * 1000))
        self._log = l2_log
        # Each guards the writes of the keys that hash to it (writer call + cache write).
        self._stripes = [threading.Lock() for _ in range(STRIPES)]
        self._unlock: Any = None if l2 is None else l2.script(_UNLOCK)

    def reset_after_fork(self) -> None:
        """Fresh locks in a forked child (a parent thread may have held one)."""
        self._stripes = [threading.Lock() for _ in range(STRIPES)]

    @contextlib.contextmanager
    def local(self, keys: Sequence[str]) -> Iterator[None]:
        """Hold the process locks of ``keys`` (in stripe order: no deadlock)."""
        stripes = self._stripes
        held = [stripes[i] for i in sorted({_stripe(key) for key in keys})]
        for lock in held:
            lock.acquire()
        try:
            yield
        finally:
            for lock in reversed(held):
                lock.release()

    @contextlib.contextmanager
    def everywhere(self, keys: Sequence[str]) -> Iterator[None]:
        """Hold the process locks and, with Redis, the Redis locks of ``keys``."""
        with self.local(keys):
            taken: list[tuple[str, bytes]] = []
            try:
                if self._l2 is not None:
                    for key in sorted(set(keys)):
                        rkey = write_lock_key(self._namespace, key)
                        token = self._acquire(rkey)
                        if token is None:
                            break  # Redis away: the process lock alone orders the writes
                        taken.append((rkey, token))
                yield
            finally:
                for rkey, token in reversed(taken):
                    self._release(rkey, token)

    def _acquire(self, rkey: str) -> bytes | None:
        assert self._l2 is not None
        token = os.urandom(12)
        pause = _POLL_FIRST
        deadline = time.monotonic() + 2 * self._ttl_ms / 1000
        while True:
            try:
                if self._l2.set_nx(rkey, token, self._ttl_ms):
                    return token
            except L2Error as exc:
                self._log.warning("write-lock", "tiercache: write lock unavailable: %s", exc)
                return None
            if time.monotonic() >= deadline:  # cannot happen unless the lock is renewed
                self._log.warning("write-lock", "tiercache: write lock wait timed out")
                return None
            time.sleep(pause)  # another process writes this key: wait for its turn
            pause = min(pause * 2, _POLL_MAX)

    def _release(self, rkey: str, token: bytes) -> None:
        assert self._l2 is not None
        with contextlib.suppress(L2Error):
            self._l2.run(self._unlock, "write unlock", rkey, token)


def _stripe(key: str) -> int:
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % STRIPES


SetMany = Callable[[list[str], Mapping[str, Any], float, list[str]], None]
DeleteMany = Callable[[list[str]], None]


class Queue(Protocol):
    """What `Persist` needs from the write-behind queue."""

    #: Whether the queue outlives the process (a Redis stream): then a write is queued
    #: before the cache changes, so a write the queue refused changes nothing.
    durable: bool

    def check_writer(self, writer: Writer) -> None: ...
    def put_sets(self, writer: Writer, mapping: Mapping[str, Any]) -> None: ...
    def put_deletes(self, writer: Writer, keys: Sequence[str]) -> None: ...


class Persist:
    """``set``/``delete`` with the writer in the loop (through or behind), around the cache's
    own write (`Writes.set_many`/`delete_many`).

    Since: 0.3.0
    """

    __slots__ = ("_behind", "_codec", "_counters", "_delete", "_locks", "_queue", "_set", "writer")

    def __init__(
        self,
        *,
        writer: Writer | None,
        queue: Queue | None,
        locks: KeyLocks,
        codec: EntryCodec,
        counters: Counters,
        set_many: SetMany,
        delete_many: DeleteMany,
    ) -> None:
        self.writer = writer
        self._queue = queue
        self._locks = locks
        self._codec = codec
        self._counters = counters
        self._set = set_many
        self._delete = delete_many

    def set_many(
        self,
        keys: list[str],
        mapping: Mapping[str, Any],
        ttl: float,
        tags: list[str],
        writer: Writer | None,
    ) -> None:
        """Store the items: in the cache only, or with the writer (through or behind)."""
        writer = writer or self.writer
        if writer is None:
            self._set(keys, mapping, ttl, tags)
            return
        queue = self._queue
        if queue is not None:
            queue.check_writer(writer)
            items = {key: mapping[key] for key in keys}
            with self._locks.local(keys):
                if queue.durable:
                    queue.put_sets(writer, items)
                    self._set(keys, mapping, ttl, tags)
                else:
                    self._set(keys, mapping, ttl, tags)
                    queue.put_sets(writer, items)
            return
        for key in keys:  # refuse what the cache cannot store before the writer sees it
            self._codec.prepare(mapping[key])
        with self._locks.everywhere(keys):
            try:
                if len(keys) == 1:
                    writer.write(keys[0], mapping[keys[0]])
                else:
                    writer.write_many({key: mapping[key] for key in keys})
            except BaseException:
                self._counters.writer_errors += 1
                raise
            self._set(keys, mapping, ttl, tags)

    def delete_many(self, keys: list[str], writer: Writer | None) -> None:
        """Remove the keys: from the cache only, or with the writer (through or behind)."""
        writer = writer or self.writer
        if writer is None:
            self._delete(keys)
            return
        queue = self._queue
        if queue is not None:
            queue.check_writer(writer)
            with self._locks.local(keys):
                if queue.durable:
                    queue.put_deletes(writer, keys)
                    self._delete(keys)
                else:
                    self._delete(keys)
                    queue.put_deletes(writer, keys)
            return
        with self._locks.everywhere(keys):
            try:
                if len(keys) == 1:
                    writer.delete(keys[0])
                else:
                    writer.delete_many(keys)
            except BaseException:
                self._counters.writer_errors += 1
                raise
            self._delete(keys)
