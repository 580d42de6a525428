"""The durable write-behind queue: a Redis stream per namespace, for writes that must survive the
process that made them (``write_behind_stream=True``).

``set``/``delete`` update the cache and ``XADD`` the write to ``{namespace}#writes`` (the key,
whether it is a delete, the value in the cache's own encoding) before they return: once they
return, the write is in Redis, not in the process. Every process of the namespace with the
option runs a flusher that reads the stream through one consumer group (``tiercache``),
each process a consumer of its own (``{pid}-{random}``): ``XREADGROUP`` hands each entry to
one consumer; it coalesces a batch by key (the last entry wins), calls the writer with the
same retries as the in-memory queue, then ``XACK``s and ``XDEL``s the entries. Entries a
consumer took but never acknowledged (it was killed, or its writer kept failing) stay
pending in the group; a consumer idle for ``lease_ttl`` is presumed dead, and any other
flusher takes its entries over with ``XAUTOCLAIM`` and writes them.

What can be lost: nothing once ``set`` returned, as long as Redis keeps the stream (Redis
persistence, AOF with ``appendfsync everysec`` or stricter, decides what a Redis crash
loses) and some process of the namespace runs with the option to drain it. What may
happen instead: a write reaches the writer twice (a consumer killed after the writer call
and before its ``XACK``; writers should be idempotent, as an upsert is), and writes of one
key made by different processes may reach the writer out of order when two consumers
take them in different batches.

Requires Redis 6.2 or later (``XAUTOCLAIM``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cachetools import LRUCache
from redis.exceptions import RedisError, ResponseError

from .entry import Entry, EntryCodec
from .errors import L2Error
from .stats import Counters, log
from .write_behind import retry_pauses
from .writer import Writer

__all__ = ["GROUP", "StreamQueue", "stream_key"]

#: The consumer group every process of a namespace reads the stream through.
GROUP = "tiercache"
_POLL = 0.005
#: Keys whose last written stream id a consumer remembers (see `StreamQueue._deliver`).
_WRITTEN_KEYS = 100_000


def stream_key(namespace: str) -> str:
    """The Redis key of a namespace's durable write-behind stream."""
    return f"{namespace}#writes"


class StreamQueue:
    """One process's producer and consumer of the namespace's write stream.

    Since: 0.3.0
    """

    def __init__(
        self,
        *,
        client: Any,
        namespace: str,
        writer: Writer,
        codec: EntryCodec,
        delay: float,
        batch_size: int,
        retries: int,
        claim_after: float,
        counters: Counters,
    ) -> None:
        self._client = client
        self._key = stream_key(namespace)
        self._writer = writer
        self._codec = codec
        self._delay = delay
        self._batch_size = batch_size
        self._retries = retries
        self._claim_ms = max(1, int(claim_after * 1000))
        self._counters = counters
        self._fresh()

    def _fresh(self) -> None:
        self._consumer = f"{os.getpid()}-{os.urandom(4).hex()}"
        # Guards _thread and _closing.
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._group_ready = False
        # key -> stream id of the newest entry this consumer wrote for it: an older entry
        # claimed later (a dead consumer's) must not overwrite it. Bounded: an LRU.
        self._written: LRUCache[str, tuple[int, int]] = LRUCache(maxsize=_WRITTEN_KEYS)

    def reset_after_fork(self) -> None:
        """A forked child is a new consumer with no flusher yet (one starts with its first
        write); the stream, and what the parent queued in it, stays shared."""
        self._fresh()

    @property
    def pending(self) -> int:
        """Entries in the stream not yet written (all processes'); -1 if Redis is away."""
        try:
            return int(self._client.xlen(self._key))
        except RedisError:
            return -1

    def put_sets(self, writer: Writer, mapping: Mapping[str, Any]) -> None:
        """Append the writes of ``mapping`` to the stream (raises if Redis refuses)."""
        self.check_writer(writer)
        rows = [(key, b"0", self._codec.encode(value, 0.0)) for key, value in mapping.items()]
        self._add(rows)

    def put_deletes(self, writer: Writer, keys: Sequence[str]) -> None:
        """Append the deletes of ``keys`` to the stream."""
        self.check_writer(writer)
        self._add([(key, b"1", b"") for key in keys])

    #: Queued writes live in Redis, not in the process.
    durable = True

    def check_writer(self, writer: Writer) -> None:
        """Only the cache's own writer (a per-call one could not be known to a drainer)."""
        if writer is not self._writer:
            raise ValueError(
                "write_behind_stream writes through the cache's own writer: another process "
                "may drain the stream, and it only knows its own; pass no writer= per call"
            )

    def _add(self, rows: list[tuple[str, bytes, bytes]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for key, deleting, value in rows:
            fields = {b"k": key.encode("utf-8", "surrogatepass"), b"d": deleting, b"v": value}
            pipe.xadd(self._key, fields)
        try:
            pipe.execute()
        except RedisError as exc:
            # Not queued, so not done: the caller must know (the cache is left unchanged).
            raise L2Error(f"write-behind stream refused the write: {exc}") from exc
        self._counters.writes_queued += len(rows)
        self._start()
        self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="tiercache-write-stream", daemon=True
                )
                self._thread.start()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every entry of the stream (any process's) is written and acknowledged;
        whether it happened within ``timeout`` seconds."""
        self._start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._wake.set()
            try:
                if self._client.xlen(self._key) == 0:
                    return True
            except RedisError:
                pass
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)  # the flushers of the namespace are writing: poll the stream

    def close(self, timeout: float | None) -> bool:
        """Drain (up to ``timeout``), then stop the flusher. What is left stays in the
        stream for another process, or this one's next start."""
        drained = self.flush(timeout)
        self._stop.set()
        self._wake.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)
        if not drained:
            log.warning(
                "tiercache: closing with write-behind writes still in the stream %r; they stay "
                "there for another process of the namespace to write",
                self._key,
            )
        return drained

    # -- the flusher ------------------------------------------------------------------------

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self._client.xgroup_create(self._key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _run(self) -> None:
        pause = max(self._delay, 0.01)
        while not self._stop.is_set():
            try:
                self._ensure_group()
                entries = self._claim() or self._read()
                if entries:
                    self._deliver(entries)
                pause = max(self._delay, 0.01)
            except RedisError as exc:
                log.warning("tiercache: write-behind stream unavailable: %s", exc)
                self._stop.wait(pause)
                pause = min(pause * 2, 5.0)

    def _claim(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply = self._client.xautoclaim(
            self._key, GROUP, self._consumer, self._claim_ms, "0-0", count=self._batch_size
        )
        claimed = [(eid, fields) for eid, fields in reply[1] if fields]
        gone = [eid for eid, fields in reply[1] if not fields]  # deleted meanwhile
        if gone:
            self._client.xack(self._key, GROUP, *gone)
        return claimed

    def _read(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        # Not a blocking XREADGROUP: the client's socket timeout is short by design. An
        # empty read waits for a local write (or the delay, for other processes' writes).
        reply = self._client.xreadgroup(
            GROUP, self._consumer, {self._key: ">"}, count=self._batch_size
        )
        entries = [(eid, fields) for eid, fields in reply[0][1] if fields] if reply else []
        if not entries:
            self._wake.wait(min(max(self._delay, 0.005), 0.1))
            self._wake.clear()
        return entries

    def _deliver(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        last: dict[str, tuple[bool, bytes]] = {}
        newest: dict[str, tuple[int, int]] = {}
        written = self._written
        for eid, fields in sorted(entries, key=lambda e: _order(e[0])):
            key = fields[b"k"].decode("utf-8", "surrogatepass")
            order = _order(eid)
            done_at = written.get(key)
            if done_at is not None and done_at > order:
                continue  # a newer entry of this key was written already: this one is older
            last.pop(key, None)  # the last entry of a key wins
            last[key] = (fields[b"d"] == b"1", fields[b"v"])
            newest[key] = order
        self._counters.writes_coalesced += len(entries) - len(last)
        values: dict[str, Any] = {}
        deletes: list[str] = []
        for key, (deleting, blob) in last.items():
            if deleting:
                deletes.append(key)
                continue
            entry = self._codec.decode(blob)
            assert isinstance(entry, Entry)
            values[key] = entry.value
        done = True
        if values:
            done = self._attempt(lambda: _write(self._writer, values), len(values)) and done
        if deletes:
            done = self._attempt(lambda: _delete(self._writer, deletes), len(deletes)) and done
        if done:
            for key, order in newest.items():
                written[key] = order
            ids = [eid for eid, _ in entries]
            pipe = self._client.pipeline(transaction=False)
            pipe.xack(self._key, GROUP, *ids)
            pipe.xdel(self._key, *ids)
            pipe.execute()

    def _attempt(self, call: Callable[[], None], count: int) -> bool:
        for pause in retry_pauses(self._delay, self._retries):
            try:
                call()
            except Exception as exc:
                if pause is None:
                    # Not dropped: left pending in the stream, and claimed again (by any
                    # flusher, this one included) once idle for ``claim_after``.
                    log.error(
                        "tiercache: write-behind could not write %d stream entries after %d "
                        "retries; they stay pending in the stream: %r",
                        count,
                        self._retries,
                        exc,
                    )
                    return False
                self._counters.write_retries += 1
                if self._stop.wait(pause):
                    return False
                continue
            self._counters.writes_flushed += count
            return True
        return False


def _order(eid: bytes) -> tuple[int, int]:
    millis, _, seq = eid.partition(b"-")
    return int(millis), int(seq or 0)


def _write(writer: Writer, values: dict[str, Any]) -> None:
    if len(values) == 1:
        key, value = next(iter(values.items()))
        writer.write(key, value)
    else:
        writer.write_many(values)


def _delete(writer: Writer, keys: list[str]) -> None:
    if len(keys) == 1:
        writer.delete(keys[0])
    else:
        writer.delete_many(keys)
