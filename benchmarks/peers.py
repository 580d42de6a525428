"""Peers: tiercache against the caches its users would pick instead, same workload, one run.

Every peer is configured here, on the redis-server this benchmark starts (a free loopback
port through ``tests/redis_server.py``, never 6379), with the same ~1 KB values (a dict of a
key index, a version number and a 1,000-character string) and the same loader:

- ``hand-written``: a ``cachetools.TTLCache`` under a ``threading.Lock`` in front of redis-py
  (msgpack values, ``SET ... EX``); no invalidation at all, so its L1 TTL is tiercache's
  ``l1_ttl`` (30 s) for fairness. A ``set`` updates its own L1, a ``delete`` pops it.
- ``django-redis``: Django's cache API (``django.core.cache.cache``: ``get_or_set``, ``set``,
  ``delete``) with ``django_redis.cache.RedisCache``, configured in each worker process with
  ``settings.configure(CACHES=...)``. No L1.
- ``flask-caching``: ``flask_caching.Cache(app, config={"CACHE_TYPE": "RedisCache", ...})``
  on a Flask app (its backend is cachelib's ``RedisCache``); read-through is ``get``, then
  ``set`` on a miss (Flask-Caching has no get-or-set). No L1.
- ``dogpile``: a dogpile.cache region on ``dogpile.cache.redis`` (``get_or_create``, ``set``,
  ``delete``) with ``distributed_lock=True`` (the documented setting for several processes
  sharing one Redis; lock polls every 0.1 s, its default). No L1.
- ``cashews``: cashews' client-side two-tier (``client_side=true``: an in-memory cache kept
  coherent by Redis client tracking in broadcast mode), async: one event loop per worker
  process, the workload's threads run as that many tasks, and every operation ends with
  ``await asyncio.sleep(0)`` as a request handler gives the loop back, so its invalidation
  listener gets to run. redis-py 8 speaks RESP3 by default, and over RESP3 cashews'
  invalidation never fires (it keeps serving overwritten values), so its URL forces
  ``?protocol=2``.
- ``tiercache+values``: ``TierCache.from_url(url, namespace=..., ttl=300, l1_ttl=30)``,
  ``get_or_set`` for reads, ``set``/``delete`` for writes; defaults otherwise (so value
  propagation is on). The targets judge this row: it is what users get.
- ``tiercache``: the same with ``propagate_values=0`` (a ``set`` only invalidates).

Workloads: 1 process x 1 thread and 4 processes x 2 threads, 1,000 keys, Zipf(1.1) key choice
precomputed per worker thread from a fixed seed (the same sequence for every peer), at 1%,
0.1% and 0% writes (half ``set``, half ``delete``; ``--set-share`` changes the mix; reads are
read-through). Before each timed phase the worker processes read every key once (L2 and L1
warm), then a barrier starts them together. Per peer: throughput, p50/p99 per operation,
Redis commands per operation (``INFO commandstats`` deltas of this benchmark's own server;
commands run inside a Lua script count too) and reads stale by more than 50 ms (a
read is stale when a newer version of its key had finished being written before the read
started; every write bumps the key's version in a shared "database" first, under a per-key
lock, so versions follow write order). Peers run interleaved: every round runs each peer
once per workload, in rotating order; tables show the median of the rounds.

Staleness: one writer process and one reader process per peer on one key. The writer
alternates ``set(new version)`` and "update the database, then ``delete``" every 20 ms and
stamps each return with ``CLOCK_MONOTONIC`` (system-wide on Linux, so comparable across
processes); the reader reads every ~0.2 ms. Per write: how long after it returned the reader
still saw an older version (p50/p99); per read: stale by more than 50 ms.

Stampede: 4 processes x 8 threads (cashews: 8 tasks) ask for one cold key at once (a
multiprocessing Barrier, then an Event per process); the loader takes 50 ms. Loader calls
across the processes and the slowest caller's latency. Before that, each process's threads
read one warm-up key each, all at once, so connection pools are as warm as a running
service's (the key is cold, not the process). A ``loader only (floor)`` row runs
the same 32 callers with no cache at all (each runs the loader): its slowest caller is what
scheduling 32 threads on this machine costs, the floor under every peer's.

Processes come from ``multiprocessing.get_context("spawn")``: each worker starts from a
clean interpreter, as separate app servers would, with no threads, sockets or Django/asyncio
state inherited from the parent; the pool starts once and serves every cell, so the spawn
cost is paid once. Synchronization is by Barrier and Event with bounded waits and joins; the
only sleeps pace the staleness writer and reader and stand for the loader's work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import importlib.metadata
import importlib.util
import itertools
import json
import math
import multiprocessing
import os
import platform
import random
import statistics
import sys
import threading
import time
import traceback
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as ``python benchmarks/peers.py``
    sys.path.insert(0, str(ROOT))

from benchmarks._timing import environment, print_table  # noqa: E402

TITLE = "tiercache vs django-redis, Flask-Caching, dogpile.cache, cashews, a hand-written two-tier"

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "peers"
KEYS = 1000
ZIPF_S = 1.1
PAYLOAD = "x" * 1000  # with the key index and version: ~1 KB serialized
TTL = 300  # seconds, L2 lifetime for every peer
L1_TTL = 30  # tiercache's l1_ttl (its default, min(30, ttl)) and the hand-written TTLCache's
WRITE_RATES = (0.01, 0.001, 0.0)
SHAPES = ((1, 1), (4, 2))  # (processes, threads per process)
POOL_PROCESSES = 4
SEQ_LEN = 1 << 16  # precomputed operations per thread, replayed cyclically
MASK = SEQ_LEN - 1
STRIPES = 64  # per-key write locks (key index % STRIPES)
RING = 8  # completion times kept per key: the last RING versions
STALE_LIMIT_NS = 50_000_000
WRITE_EVERY = 0.020  # staleness: seconds between two writes
READ_PAUSE = 0.0002  # staleness: the reader's pause between reads (a request's other work)
STAMPEDE_PROCS = 4
STAMPEDE_THREADS = 8
STAMPEDE_LOAD = 0.050  # seconds the stampede's loader takes
STAMPEDE_SLACK = 0.005  # target: slowest caller <= loader + 5 ms
BARRIER_TIMEOUT = 120.0
RESULT_TIMEOUT = 120.0  # a worker's own bound on a cell's threads/tasks
REPLY_TIMEOUT = 240.0  # the parent's bound on a worker's reply
START_TIMEOUT = 60.0
QUANTILES = 1000  # points of each process's latency sketch

HAND = "hand-written"
CASHEWS = "cashews"
TIERCACHE = "tiercache"
#: tiercache as configured by default: value propagation on (propagate_values=4 KiB), a
#: set hands the value over; TIERCACHE is the same cache invalidating only.
TIERCACHE_VALUES = "tiercache+values"
#: not a cache: every caller runs the loader itself. Only in the stampede, as its floor: how
#: long 32 threads in 4 processes take to run a 50 ms loader each on this machine.
LOADER_ONLY = "loader only (floor)"
PEERS = (HAND, "django-redis", "flask-caching", "dogpile", CASHEWS, TIERCACHE, TIERCACHE_VALUES)
#: modules a peer needs; it is skipped when one is missing
REQUIRES = {
    HAND: ("cachetools", "msgpack", "redis"),
    "django-redis": ("django", "django_redis"),
    "flask-caching": ("flask", "flask_caching", "cachelib"),
    "dogpile": ("dogpile.cache",),
    CASHEWS: ("cashews",),
    TIERCACHE: ("tiercache",),
    TIERCACHE_VALUES: ("tiercache",),
}
DISTRIBUTIONS = (
    "tiercache",
    "redis",
    "hiredis",
    "msgpack",
    "cachetools",
    "Django",
    "django-redis",
    "Flask",
    "Flask-Caching",
    "cachelib",
    "dogpile.cache",
    "cashews",
    "matplotlib",
)


# -- values, keys and the "database" ------------------------------------------------------


def make_value(k: int, version: int) -> dict[str, Any]:
    """The value of key index ``k`` at ``version``."""
    return {"k": k, "v": version, "p": PAYLOAD}


def zipf_cum_weights(n: int = KEYS, s: float = ZIPF_S) -> list[float]:
    """Cumulative weights of key ``i`` drawn with weight ``1 / (i + 1) ** s``."""
    return list(itertools.accumulate(1.0 / (i + 1) ** s for i in range(n)))


def key_sequence(seed: int, n: int = SEQ_LEN) -> array[int]:
    """``n`` key indexes drawn Zipf(1.1) from a fixed seed."""
    rng = random.Random(seed)
    return array("H", rng.choices(range(KEYS), cum_weights=zipf_cum_weights(), k=n))


def op_sequence(seed: int, write_rate: float, n: int = SEQ_LEN, set_share: float = 0.5) -> bytes:
    """``n`` operations: 0 read, 1 set, 2 delete (writes at ``write_rate``, a ``set_share``
    of them sets, the rest deletes)."""
    rng = random.Random(seed)
    rand = rng.random
    return bytes((1 if rand() < set_share else 2) if rand() < write_rate else 0 for _ in range(n))


def stale_age(ring_v: Any, ring_t: Any, k: int, seen: int, started: int) -> int:
    """How long (ns) before ``started`` a version of key ``k`` newer than ``seen`` had been
    written, or 0 when none had. Exact when version ``seen + 1`` is still in the ring, a lower
    bound when newer writes have replaced it."""
    slot = k * RING + (seen + 1) % RING
    if ring_v[slot] < seen + 1:
        return 0  # the next write has not returned yet: the read is not stale
    return max(0, started - ring_t[slot])


def _load(db: Any, k: int) -> dict[str, Any]:
    """The loader: the current version of key ``k`` from the shared "database"."""
    return make_value(k, db[k])


# -- peers --------------------------------------------------------------------------------


class HandWritten:
    """cachetools.TTLCache + threading.Lock in front of redis-py; no invalidation."""

    has_l1 = True

    def __init__(self, url: str) -> None:
        import cachetools
        import msgpack
        import redis

        self._redis = redis.Redis.from_url(url)
        self._l1: cachetools.TTLCache[str, Any] = cachetools.TTLCache(10_000, ttl=L1_TTL)
        self._lock = threading.Lock()
        self._pack = msgpack.packb
        self._unpack = msgpack.unpackb

    def read(self, key: str, loader: Callable[[], Any]) -> Any:
        with self._lock:
            try:
                return self._l1[key]
            except KeyError:
                pass
        raw = self._redis.get(key)
        if raw is None:
            value = loader()
            self._redis.set(key, self._pack(value), ex=TTL)
        else:
            value = self._unpack(raw)
        with self._lock:
            self._l1[key] = value
        return value

    def set(self, key: str, value: Any) -> None:
        self._redis.set(key, self._pack(value), ex=TTL)
        with self._lock:
            self._l1[key] = value

    def delete(self, key: str) -> None:
        self._redis.delete(key)
        with self._lock:
            self._l1.pop(key, None)

    def close(self) -> None:
        self._redis.close()


class LoaderOnly:
    """No cache at all: the stampede's floor (each caller runs the loader, in parallel)."""

    has_l1 = False

    def __init__(self, url: str) -> None:
        pass

    def read(self, key: str, loader: Callable[[], Any]) -> Any:
        return loader()

    def set(self, key: str, value: Any) -> None:
        pass

    def delete(self, key: str) -> None:
        pass

    def close(self) -> None:
        pass


class DjangoRedis:
    """django-redis through Django's cache API (``django.core.cache.cache``)."""

    has_l1 = False

    def __init__(self, url: str) -> None:
        import django
        from django.conf import settings

        if not settings.configured:
            settings.configure(
                CACHES={
                    "default": {
                        "BACKEND": "django_redis.cache.RedisCache",
                        "LOCATION": url,
                        "TIMEOUT": TTL,
                        "KEY_PREFIX": "dj",
                        "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
                    }
                }
            )
            django.setup()
        from django.core.cache import cache

        self._cache = cache

    def read(self, key: str, loader: Callable[[], Any]) -> Any:
        return self._cache.get_or_set(key, loader, TTL)

    def set(self, key: str, value: Any) -> None:
        self._cache.set(key, value, TTL)

    def delete(self, key: str) -> None:
        self._cache.delete(key)

    def close(self) -> None:
        pass  # the connection pool is Django's, kept for the process


class FlaskCaching:
    """Flask-Caching's RedisCache through ``flask_caching.Cache`` on a Flask app."""

    has_l1 = False

    def __init__(self, url: str) -> None:
        from flask import Flask
        from flask_caching import Cache

        app = Flask("tiercache_peers")
        config = {
            "CACHE_TYPE": "RedisCache",
            "CACHE_REDIS_URL": url,
            "CACHE_DEFAULT_TIMEOUT": TTL,
            "CACHE_KEY_PREFIX": "flask:",
        }
        self._cache = Cache(app, config=config)
        self._backend = self._cache.cache

    def read(self, key: str, loader: Callable[[], Any]) -> Any:
        value = self._cache.get(key)
        if value is None:
            value = loader()
            self._cache.set(key, value, timeout=TTL)
        return value

    def set(self, key: str, value: Any) -> None:
        self._cache.set(key, value, timeout=TTL)

    def delete(self, key: str) -> None:
        self._cache.delete(key)

    def close(self) -> None:
        for client in {self._backend._write_client, self._backend._read_client}:
            client.close()


class Dogpile:
    """A dogpile.cache region on the ``dogpile.cache.redis`` backend."""

    has_l1 = False

    def __init__(self, url: str) -> None:
        from dogpile.cache import make_region

        self._region = make_region().configure(
            "dogpile.cache.redis",
            expiration_time=TTL,
            arguments={
                "url": url,
                "redis_expiration_time": TTL + 60,  # must outlive dogpile's own expiry
                "distributed_lock": True,
                "thread_local_lock": False,  # required with distributed_lock
                "lock_timeout": 5,
            },
        )

    def read(self, key: str, loader: Callable[[], Any]) -> Any:
        return self._region.get_or_create(key, loader)

    def set(self, key: str, value: Any) -> None:
        self._region.set(key, value)

    def delete(self, key: str) -> None:
        self._region.delete(key)

    def close(self) -> None:
        self._region.backend.writer_client.close()


class TierCachePeer:
    """tiercache through its public API, invalidating only (no value travels with a set)."""

    has_l1 = True
    #: read-only, overridden by subclasses
    options: dict[str, Any] = {"propagate_values": 0}  # noqa: RUF012

    def __init__(self, url: str) -> None:
        from tiercache import TierCache

        self._cache = TierCache.from_url(
            url, namespace="peers", ttl=TTL, l1_ttl=L1_TTL, **self.options
        )
        self.read = self._cache.get_or_set
        self.set = self._cache.set
        self.delete = self._cache.delete

    def stats(self) -> dict[str, int]:
        return self._cache.stats()

    def close(self) -> None:
        self._cache.close()


class TierCacheValuesPeer(TierCachePeer):
    """tiercache as configured by default: other processes keep a set's value in L1."""

    options: dict[str, Any] = {}  # noqa: RUF012


class Cashews:
    """cashews' client-side two-tier (async), RESP2 forced."""

    @staticmethod
    def url(url: str) -> str:
        # RESP3 (redis-py 8's default) never delivers cashews' invalidations: force RESP2.
        return f"{url}?client_side=true&protocol=2"

    async def start(self, url: str) -> None:
        from cashews import Cache

        self._cache = Cache()
        self._cache.setup(self.url(url))
        await self._cache.init()

    async def read(self, key: str, loader: Callable[[], Any]) -> Any:
        return await self._cache.get_or_set(key, loader, expire=TTL)

    async def set(self, key: str, value: Any) -> None:
        await self._cache.set(key, value, expire=TTL)

    async def delete(self, key: str) -> None:
        await self._cache.delete(key)

    async def close(self) -> None:
        await self._cache.close()


SYNC_PEERS: dict[str, Callable[[str], Any]] = {
    HAND: HandWritten,
    "django-redis": DjangoRedis,
    "flask-caching": FlaskCaching,
    "dogpile": Dogpile,
    TIERCACHE: TierCachePeer,
    TIERCACHE_VALUES: TierCacheValuesPeer,
    LOADER_ONLY: LoaderOnly,
}


# -- worker processes ---------------------------------------------------------------------


class Shared:
    """State shared by the parent and the worker processes (passed at spawn)."""

    def __init__(self, ctx: Any) -> None:
        self.db = ctx.RawArray("q", KEYS)  # the "database": current version of each key
        self.ring_v = ctx.RawArray("q", KEYS * RING)  # versions whose write has returned
        self.ring_t = ctx.RawArray("q", KEYS * RING)  # ... and when (CLOCK_MONOTONIC, ns)
        self.locks = [ctx.Lock() for _ in range(STRIPES)]
        self.loads = ctx.Value("q", 0)
        self.barriers = {n: ctx.Barrier(n + 1) for n in (1, 2, STAMPEDE_PROCS, POOL_PROCESSES)}

    def reset(self) -> None:
        for arr in (self.db, self.ring_v, self.ring_t):
            ctypes.memset(ctypes.addressof(arr), 0, ctypes.sizeof(arr))
        with self.loads.get_lock():
            self.loads.value = 0


def _worker(index: int, conn: Any, shared: Shared) -> None:
    """A worker process: run the cells the parent sends until told to stop."""
    conn.send("ready")
    sequences: dict[tuple[Any, ...], Any] = {}
    while True:
        try:
            cmd = conn.recv()
        except EOFError:
            return
        if cmd["kind"] == "stop":
            return
        try:
            result = _run_cell(index, cmd, shared, sequences)
            conn.send({"ok": result})
        except BaseException as exc:
            shared.barriers[cmd["procs"]].abort()
            detail = traceback.format_exc(limit=6)
            conn.send({"error": f"{type(exc).__name__}: {exc}", "trace": detail})


def _run_cell(index: int, cmd: dict[str, Any], shared: Shared, seqs: dict[Any, Any]) -> Any:
    kind = cmd["kind"]
    if kind == "throughput":
        for t in range(cmd["threads"]):
            share = cmd["set_share"]
            for what in (("keys", index, t), ("ops", index, t, cmd["write_rate"], share)):
                if what not in seqs:
                    seed = 10_000 + 100 * index + t
                    seqs[what] = (
                        key_sequence(seed)
                        if what[0] == "keys"
                        else op_sequence(seed, what[3], set_share=share)
                    )
        cmd = {
            **cmd,
            "seqs": [
                (seqs[("keys", index, t)], seqs[("ops", index, t, cmd["write_rate"], share)])
                for t in range(cmd["threads"])
            ],
        }
    if cmd["peer"] == CASHEWS:
        return asyncio.run(_async_cell(index, cmd, shared))
    return _sync_cell(index, cmd, shared)


def _role(index: int, cmd: dict[str, Any]) -> str:
    if cmd["kind"] == "staleness":
        return "writer" if index == 0 else "reader"
    return cmd["kind"]


def _sync_cell(index: int, cmd: dict[str, Any], shared: Shared) -> dict[str, Any]:
    peer = SYNC_PEERS[cmd["peer"]](cmd["url"])
    try:
        role = _role(index, cmd)
        ctx = _prepare_sync(peer, role, index, cmd, shared)
        threads = cmd["threads"] if role in ("throughput", "stampede") else 1
        body = {
            "throughput": _throughput_thread,
            "writer": _writer_thread,
            "reader": _reader_thread,
            "stampede": _stampede_thread,
        }[role]
        go = threading.Event()
        cancelled = threading.Event()
        results: list[Any] = [None] * threads
        errors: list[BaseException] = []

        def target(t: int) -> None:
            try:
                if not go.wait(BARRIER_TIMEOUT):
                    raise TimeoutError("never started")
                if cancelled.is_set():
                    return
                results[t] = body(peer, ctx, t, cmd, shared)
            except BaseException as exc:
                errors.append(exc)

        workers = [
            threading.Thread(target=target, args=(t,), daemon=True, name=f"peers-{t}")
            for t in range(threads)
        ]
        for w in workers:
            w.start()
        barrier = shared.barriers[cmd["procs"]]
        started = False
        try:
            barrier.wait(BARRIER_TIMEOUT)  # L2 filled
            if role == "throughput" and peer.has_l1:
                for k in range(KEYS):  # this process's L1, from L2
                    peer.read(ctx["keys"][k], ctx["loaders"][k])
            barrier.wait(BARRIER_TIMEOUT)  # warm: the parent snapshots the server's counters
            barrier.wait(BARRIER_TIMEOUT)  # go
            started = True
        finally:
            if not started:
                cancelled.set()
            go.set()
        for w in workers:
            w.join(RESULT_TIMEOUT)
        if any(w.is_alive() for w in workers):
            raise TimeoutError("a worker thread did not finish")
        if errors:
            raise errors[0]
        stats = peer.stats() if hasattr(peer, "stats") else None
        return _summarize(role, results, stats)
    finally:
        peer.close()


async def _async_cell(index: int, cmd: dict[str, Any], shared: Shared) -> dict[str, Any]:
    peer = Cashews()
    await peer.start(cmd["url"])
    try:
        role = _role(index, cmd)
        ctx = await _prepare_async(peer, role, index, cmd, shared)
        tasks = cmd["threads"] if role in ("throughput", "stampede") else 1
        body = {
            "throughput": _throughput_task,
            "writer": _writer_task,
            "reader": _reader_task,
            "stampede": _stampede_task,
        }[role]
        barrier = shared.barriers[cmd["procs"]]
        # Blocking the loop here is fine: nothing of ours runs until the start.
        barrier.wait(BARRIER_TIMEOUT)  # L2 filled
        if role == "throughput":
            for k in range(KEYS):
                await peer.read(ctx["keys"][k], ctx["loaders"][k])
            await asyncio.sleep(0.05)  # let the listener drain the warm-up's own messages
        barrier.wait(BARRIER_TIMEOUT)  # warm
        barrier.wait(BARRIER_TIMEOUT)  # go
        results = await asyncio.wait_for(
            asyncio.gather(*(body(peer, ctx, t, cmd, shared) for t in range(tasks))),
            RESULT_TIMEOUT,
        )
        return _summarize(role, list(results), None)
    finally:
        await peer.close()


def _fill_share(index: int, procs: int) -> range:
    """The keys process ``index`` writes to L2 before the timed phase (the processes share
    the work); afterwards each process with an L1 reads every key once, from L2."""
    return range(index * KEYS // procs, (index + 1) * KEYS // procs)


def _keys(cmd: dict[str, Any]) -> list[str]:
    return [f"{cmd['prefix']}{i}" for i in range(KEYS)]


def _prepare_sync(
    peer: Any, role: str, index: int, cmd: dict[str, Any], shared: Shared
) -> dict[str, Any]:
    keys = _keys(cmd)
    loaders = [functools.partial(_load, shared.db, k) for k in range(KEYS)]
    if role == "throughput":
        for k in _fill_share(index, cmd["procs"]):
            peer.set(keys[k], make_value(k, 0))
    elif role == "reader":
        peer.read(keys[0], loaders[0])
    elif role == "stampede":
        _warm_threads(peer, cmd["threads"], keys, loaders)
    return {"keys": keys, "loaders": loaders}


def _warm_threads(peer: Any, threads: int, keys: list[str], loaders: list[Any]) -> None:
    """Each of ``threads`` threads reads its own key, all at once: a running service's
    connection pool holds a connection per busy thread, and the stampede is about a cold
    key, not a cold process (new connections would cost every peer ~5 ms here)."""
    start = threading.Barrier(threads)

    def read(t: int) -> None:
        start.wait(BARRIER_TIMEOUT)
        peer.read(keys[t], loaders[t])

    workers = [threading.Thread(target=read, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(BARRIER_TIMEOUT)


async def _prepare_async(
    peer: Cashews, role: str, index: int, cmd: dict[str, Any], shared: Shared
) -> dict[str, Any]:
    keys = _keys(cmd)
    loaders = [functools.partial(_load, shared.db, k) for k in range(KEYS)]
    if role == "throughput":
        for k in _fill_share(index, cmd["procs"]):
            await peer.set(keys[k], make_value(k, 0))
    elif role == "reader":
        await peer.read(keys[0], loaders[0])
    elif role == "stampede":  # as _warm_threads: one read per task, all at once
        await asyncio.gather(*(peer.read(keys[t], loaders[t]) for t in range(cmd["threads"])))
    return {"keys": keys, "loaders": loaders}


def _throughput_thread(
    peer: Any, ctx: dict[str, Any], t: int, cmd: dict[str, Any], shared: Shared
) -> dict[str, Any]:
    keys, loaders = ctx["keys"], ctx["loaders"]
    seq_k, seq_op = cmd["seqs"][t]
    read, set_, delete = peer.read, peer.set, peer.delete
    db, ring_v, ring_t, locks = shared.db, shared.ring_v, shared.ring_t, shared.locks
    now = time.monotonic_ns
    reads, writes = array("q"), array("q")
    r_append, w_append = reads.append, writes.append
    stale = stale50 = 0
    i = 0
    started = t1 = now()
    end = started + int(cmd["duration"] * 1e9)
    while t1 < end:
        k = seq_k[i & MASK]
        op = seq_op[i & MASK]
        i += 1
        if op == 0:
            t0 = now()
            value = read(keys[k], loaders[k])
            t1 = now()
            r_append(t1 - t0)
            seen = value["v"]
            if seen < db[k]:
                age = stale_age(ring_v, ring_t, k, seen, t0)
                if age > 0:
                    stale += 1
                    if age > STALE_LIMIT_NS:
                        stale50 += 1
        else:
            with locks[k % STRIPES]:
                version = db[k] + 1
                db[k] = version  # the "database" first, then the cache
                if op == 1:
                    new = make_value(k, version)
                    t0 = now()
                    set_(keys[k], new)
                else:
                    t0 = now()
                    delete(keys[k])
                t1 = now()
                slot = k * RING + version % RING
                ring_t[slot] = t1
                ring_v[slot] = version
            w_append(t1 - t0)
    return {
        "elapsed": t1 - started,
        "reads": reads,
        "writes": writes,
        "stale": stale,
        "stale50": stale50,
    }


async def _throughput_task(
    peer: Cashews, ctx: dict[str, Any], t: int, cmd: dict[str, Any], shared: Shared
) -> dict[str, Any]:
    keys, loaders = ctx["keys"], ctx["loaders"]
    seq_k, seq_op = cmd["seqs"][t]
    read, set_, delete = peer.read, peer.set, peer.delete
    db, ring_v, ring_t, locks = shared.db, shared.ring_v, shared.ring_t, shared.locks
    now = time.monotonic_ns
    yield_ = asyncio.sleep
    reads, writes = array("q"), array("q")
    r_append, w_append = reads.append, writes.append
    stale = stale50 = 0
    i = 0
    started = t1 = now()
    end = started + int(cmd["duration"] * 1e9)
    while t1 < end:
        k = seq_k[i & MASK]
        op = seq_op[i & MASK]
        i += 1
        if op == 0:
            t0 = now()
            value = await read(keys[k], loaders[k])
            t1 = now()
            r_append(t1 - t0)
            seen = value["v"]
            if seen < db[k]:
                age = stale_age(ring_v, ring_t, k, seen, t0)
                if age > 0:
                    stale += 1
                    if age > STALE_LIMIT_NS:
                        stale50 += 1
        else:
            # The key's lock is a process lock and the other tasks of this loop may want it:
            # never block the loop on it (the holder could be a task of this very loop).
            lock = locks[k % STRIPES]
            while not lock.acquire(False):
                await yield_(0)
            try:
                version = db[k] + 1
                db[k] = version
                if op == 1:
                    new = make_value(k, version)
                    t0 = now()
                    await set_(keys[k], new)
                else:
                    t0 = now()
                    await delete(keys[k])
                t1 = now()
                slot = k * RING + version % RING
                ring_t[slot] = t1
                ring_v[slot] = version
            finally:
                lock.release()
            w_append(t1 - t0)
        await yield_(0)  # a request handler returns to the loop: the listener runs
    return {
        "elapsed": t1 - started,
        "reads": reads,
        "writes": writes,
        "stale": stale,
        "stale50": stale50,
    }


def _writer_thread(
    peer: Any, ctx: dict[str, Any], t: int, cmd: dict[str, Any], shared: Shared
) -> dict[str, Any]:
    key, db = ctx["keys"][0], shared.db
    done: list[tuple[int, int]] = []
    start = time.monotonic()
    version = 0
    while time.monotonic() - start < cmd["duration"]:
        version += 1
        db[0] = version
        if version % 2:
            peer.set(key, make_value(0, version))
        else:
            peer.delete(key)
        done.append((version, time.monotonic_ns()))
        time.sleep(max(0.0, start + version * WRITE_EVERY - time.monotonic()))  # pacing
    return {"done": done}


async def _writer_task(
    peer: Cashews, ctx: dict[str, Any], t: int, cmd: dict[str, Any], shared: Shared
) -> dict[str, Any]:
    key, db = ctx["keys"][0], shared.db
    done: list[tuple[int, int]] = []
    start = time.monotonic()
    version = 0
    while time.monotonic() - start < cmd["duration"]:
        version += 1
        db[0] = version
        if version % 2:
            await peer.set(key, make_value(0, version))
        else:
            await peer.delete(key)
        done.append((version, time.monotonic_ns()))
        await asyncio.sleep(max(0.0, start + version * WRITE_EVERY - time.monotonic()))
    return {"done": done}


def _reader_thread(
    peer: Any, ctx: dict[str, Any], t: int, cmd: dict[str, Any], shared: Shared
) -> dict[str, Any]:
    key, loader = ctx["keys"][0], ctx["loaders"][0]
    started, seen = array("q"), array("q")
    end = time.monotonic_ns() + int((cmd["duration"] + 0.2) * 1e9)
    while (t0 := time.monotonic_ns()) < end:
        seen.append(peer.read(key, loader)["v"])
        started.append(t0)
        time.sleep(READ_PAUSE)  # the rest of a request's work
    return {"started": started, "seen": seen}


async def _reader_task(
    peer: Cashews, ctx: dict[str, Any], t: int, cmd: dict[str, Any], shared: Shared
) -> dict[str, Any]:
    key, loader = ctx["keys"][0], ctx["loaders"][0]
    started, seen = array("q"), array("q")
    end = time.monotonic_ns() + int((cmd["duration"] + 0.2) * 1e9)
    while (t0 := time.monotonic_ns()) < end:
        seen.append((await peer.read(key, loader))["v"])
        started.append(t0)
        await asyncio.sleep(READ_PAUSE)
    return {"started": started, "seen": seen}


def _slow_loader(shared: Shared) -> dict[str, Any]:
    with shared.loads.get_lock():
        shared.loads.value += 1
    time.sleep(STAMPEDE_LOAD)  # the database query
    return make_value(0, 0)


async def _slow_loader_async(shared: Shared) -> dict[str, Any]:
    with shared.loads.get_lock():
        shared.loads.value += 1
    await asyncio.sleep(STAMPEDE_LOAD)
    return make_value(0, 0)


def _stampede_thread(
    peer: Any, ctx: dict[str, Any], t: int, cmd: dict[str, Any], shared: Shared
) -> dict[str, Any]:
    key = f"{cmd['prefix']}cold"
    t0 = time.monotonic_ns()
    peer.read(key, functools.partial(_slow_loader, shared))
    return {"latency": time.monotonic_ns() - t0}


async def _stampede_task(
    peer: Cashews, ctx: dict[str, Any], t: int, cmd: dict[str, Any], shared: Shared
) -> dict[str, Any]:
    key = f"{cmd['prefix']}cold"
    t0 = time.monotonic_ns()
    await peer.read(key, functools.partial(_slow_loader_async, shared))
    return {"latency": time.monotonic_ns() - t0}


def _sketch(values: Sequence[int], points: int = QUANTILES) -> list[int]:
    """``points + 1`` evenly spaced order statistics of ``values`` (sorted), min to max."""
    if not values:
        return []
    ordered = sorted(values)
    last = len(ordered) - 1
    return [ordered[round(i * last / points)] for i in range(points + 1)]


def _summarize(role: str, results: list[Any], stats: dict[str, int] | None) -> dict[str, Any]:
    """What a process sends back: small, whatever the number of operations."""
    if role == "throughput":
        reads = array("q")
        writes = array("q")
        for r in results:
            reads.extend(r["reads"])
            writes.extend(r["writes"])
        return {
            "ops": len(reads) + len(writes),
            "elapsed": max(r["elapsed"] for r in results),
            "reads": len(reads),
            "read_sketch": _sketch(reads),
            "writes": sorted(writes),
            "stale": sum(r["stale"] for r in results),
            "stale50": sum(r["stale50"] for r in results),
            "stats": stats,
        }
    if role == "reader":
        return {"started": list(results[0]["started"]), "seen": list(results[0]["seen"])}
    if role == "writer":
        return {"done": results[0]["done"]}
    return {"latencies": [r["latency"] for r in results]}


# -- the parent: pool, cells, analysis ------------------------------------------------------


class CellError(RuntimeError):
    """A cell failed in a worker (the peer is dropped from the rest of the run)."""


class Pool:
    """POOL_PROCESSES spawned worker processes, reused by every cell."""

    def __init__(self, url: str) -> None:
        self.url = url
        ctx = multiprocessing.get_context("spawn")
        self.shared = Shared(ctx)
        self.conns: list[Any] = []
        self.procs: list[Any] = []
        for i in range(POOL_PROCESSES):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker, args=(i, child, self.shared), name=f"peers-{i}", daemon=True
            )
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        for i in range(POOL_PROCESSES):
            if self._recv(i, START_TIMEOUT) != "ready":
                raise RuntimeError(f"worker {i} did not start")
        import redis

        self.redis = redis.Redis.from_url(url)

    def _recv(self, i: int, timeout: float) -> Any:
        if not self.conns[i].poll(timeout):
            raise RuntimeError(f"worker {i} did not answer within {timeout:g} s")
        return self.conns[i].recv()

    def commandstats(self) -> dict[str, int]:
        info = self.redis.info("commandstats")
        return {
            name.removeprefix("cmdstat_"): int(v["calls"])
            for name, v in info.items()
            if name != "cmdstat_info"
        }

    def run(self, cmd: dict[str, Any], procs: int) -> tuple[list[Any], dict[str, int]]:
        """Run one cell on workers 0..procs-1; return their results and the commands the
        server executed between the start and the end of the timed phase."""
        self.shared.reset()
        cmd = {**cmd, "procs": procs, "url": self.url}
        for i in range(procs):
            self.conns[i].send(cmd)
        barrier = self.shared.barriers[procs]
        before: dict[str, int] = {}
        broken = False
        try:
            barrier.wait(BARRIER_TIMEOUT)  # L2 filled
            barrier.wait(BARRIER_TIMEOUT)  # L1s warm
            before = self.commandstats()
            barrier.wait(BARRIER_TIMEOUT)  # go
        except threading.BrokenBarrierError:
            broken = True
        replies = [self._recv(i, REPLY_TIMEOUT) for i in range(procs)]
        after = self.commandstats()
        errors = [r for r in replies if "error" in r]
        if broken or errors:
            barrier.reset()
            detail = errors[0]["trace"] if errors else "a barrier broke"
            raise CellError(detail)
        delta = {name: after[name] - before.get(name, 0) for name in after}
        return [r["ok"] for r in replies], {n: d for n, d in delta.items() if d}

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send({"kind": "stop"})
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        self.redis.close()


def weighted_quantile(points: Sequence[tuple[float, float]], q: float) -> float:
    """The ``q`` quantile of (value, weight) points."""
    ordered = sorted(points)
    total = sum(w for _, w in ordered)
    target = q * total
    acc = 0.0
    for value, weight in ordered:
        acc += weight
        if acc >= target:
            return value
    return ordered[-1][0] if ordered else 0.0


def _latency_points(replies: list[dict[str, Any]]) -> list[tuple[float, float]]:
    points: list[tuple[float, float]] = []
    for r in replies:
        sketch = r["read_sketch"]
        if sketch:
            w = r["reads"] / len(sketch)
            points.extend((v, w) for v in sketch)
        points.extend((v, 1.0) for v in r["writes"])
    return points


def analyze_throughput(replies: list[dict[str, Any]], commands: dict[str, int]) -> dict[str, Any]:
    """One cell's numbers from its processes' replies."""
    ops = sum(r["ops"] for r in replies)
    points = _latency_points(replies)
    writes = sorted(v for r in replies for v in r["writes"])
    stats = [r["stats"] for r in replies if r["stats"]]
    return {
        "ops": ops,
        "ops_per_s": sum(r["ops"] / (r["elapsed"] / 1e9) for r in replies if r["elapsed"]),
        "p50_ns": weighted_quantile(points, 0.50),
        "p99_ns": weighted_quantile(points, 0.99),
        "write_p50_ns": statistics.median(writes) if writes else None,
        "writes": len(writes),
        "reads": sum(r["reads"] for r in replies),
        "commands_per_op": sum(commands.values()) / ops if ops else 0.0,
        "commands": commands,
        "stale_reads": sum(r["stale"] for r in replies),
        "stale50_reads": sum(r["stale50"] for r in replies),
        "cdf": [weighted_quantile(points, q / 200) for q in range(1, 200)] if points else [],
        "tiercache_stats": _sum_stats(stats) if stats else None,
    }


def _sum_stats(stats: list[dict[str, int]]) -> dict[str, int]:
    keys = (
        "l1_hits",
        "l1_misses",
        "l2_hits",
        "l2_misses",
        "loads",
        "lease_waits",
        "lease_wakeups",
        "lease_timeouts",
        "values_received",
        "l1_flushes",
    )
    return {k: sum(int(s.get(k, 0)) for s in stats) for k in keys if any(k in s for s in stats)}


def analyze_staleness(
    done: list[tuple[int, int]], started: list[int], seen: list[int]
) -> dict[str, Any]:
    """Staleness from the writer's returns and the reader's reads.

    Per write: how long after it returned the reader still saw an older version (the start
    of the last read that began after the return and saw an older version; 0 when none did)
    and, for reference, when the first read saw it or newer (that one also counts any time
    the reader was not running at all). A write never seen before the end counts as stale
    until the last read: a floor. Per read: stale when a newer version had returned before
    it started, and by how long (more than 50 ms is counted apart).
    """
    done_at = dict(done)
    lags: list[int] = []
    fresh: list[int] = []
    unseen = 0
    for version, t_done in done:
        first = _first_at_or_after(started, t_done)
        last_stale = None
        first_fresh = None
        for n in range(first, len(started)):
            if seen[n] < version:
                last_stale = n
            elif first_fresh is None:
                first_fresh = n
        lags.append(0 if last_stale is None else started[last_stale] - t_done)
        if first_fresh is None:
            unseen += 1
        else:
            fresh.append(started[first_fresh] - t_done)
    stale = stale50 = 0
    for t0, s in zip(started, seen, strict=True):
        t_next = done_at.get(s + 1)
        if t_next is not None and t_next < t0:
            stale += 1
            if t0 - t_next > STALE_LIMIT_NS:
                stale50 += 1
    lags.sort()
    fresh.sort()
    gaps = [b - a for a, b in itertools.pairwise(started)]
    return {
        "read_every_ns": statistics.median(gaps) if gaps else None,
        "writes": len(done),
        "unseen": unseen,
        "censored": bool(unseen),
        "lag_p50_ns": _quantile(lags, 0.50),
        "lag_p99_ns": _quantile(lags, 0.99),
        "lag_max_ns": lags[-1] if lags else 0,
        "fresh_p50_ns": _quantile(fresh, 0.50) if fresh else None,
        "fresh_p99_ns": _quantile(fresh, 0.99) if fresh else None,
        "lags_ns": lags,
        "reads": len(started),
        "stale_reads": stale,
        "stale50_reads": stale50,
    }


def _first_at_or_after(ordered: list[int], value: int) -> int:
    lo, hi = 0, len(ordered)
    while lo < hi:
        mid = (lo + hi) // 2
        if ordered[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of sorted values (0 if empty)."""
    if not ordered:
        return 0.0
    return float(ordered[max(0, math.ceil(q * len(ordered)) - 1)])


# -- formatting -------------------------------------------------------------------------------


def fmt_lat(ns: float | None) -> str:
    if ns is None:
        return "-"
    if ns == 0:
        return "0"
    if ns < 1_000_000:
        return f"{ns / 1000:.1f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.2f} s"


def fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def shape_label(procs: int, threads: int) -> str:
    """``1 process x 1 thread``, ``4 processes x 2 threads``."""
    return (
        f"{procs} process{'es' if procs > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"
    )


def fmt_pct(rate: float) -> str:
    return f"{rate * 100:g}%"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


class Tee:
    """Write to stdout and keep a copy (the .txt report)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def getvalue(self) -> str:
        return "".join(self.parts)


def _versions() -> dict[str, str]:
    found = {}
    for dist in DISTRIBUTIONS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[dist] = importlib.metadata.version(dist)
    return found


def _machine() -> str:
    """CPU model and count, and the kernel."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"machine: {os.cpu_count()} x {model}, {platform.system()} {platform.release()}"


def _command() -> str:
    """The command line of this run, as typed (``python -m ...``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = f"python -m {spec.name.removesuffix('.__main__')}" if spec else "python"
    return " ".join([program, *sys.argv[1:]])


def available_peers() -> tuple[list[str], dict[str, str]]:
    """Peers whose modules import here, and why each other one is skipped."""
    ok, skipped = [], {}
    for peer in PEERS:
        missing = []
        for module in REQUIRES[peer]:
            try:
                spec = importlib.util.find_spec(module)
            except ModuleNotFoundError:
                spec = None
            if spec is None:
                missing.append(module)
        if missing:
            skipped[peer] = f"not installed (missing {', '.join(missing)})"
        else:
            ok.append(peer)
    return ok, skipped


def _rotate(items: Sequence[str], by: int) -> list[str]:
    by %= max(1, len(items))
    return [*items[by:], *items[:by]]


# -- the run ----------------------------------------------------------------------------------


def run(
    quick: bool = False, out: Path | str | None = None, set_share: float = 0.5
) -> dict[str, Any]:
    """Run every part, print the tables and targets, write the results folder."""
    out_dir = Path(out) if out is not None else DEFAULT_OUT
    tee = Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        report = _run(quick, out_dir, tee, set_share)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = f"{report['environment']}\n{report['machine']}\ncommand: {report['command']}\n"
    (out_dir / "peers.txt").write_text(header + tee.getvalue())
    print(f"\nwrote {out_dir}/peers.txt, peers.json" + (", *.png" if report["plots"] else ""))
    return report


def _run(quick: bool, out_dir: Path, tee: Tee, set_share: float = 0.5) -> dict[str, Any]:
    from tests.redis_server import RedisServer

    rounds = 1 if quick else 3
    duration = 0.15 if quick else 0.8
    stale_duration = 0.8 if quick else 3.0
    stampede_rounds = 1 if quick else 3
    peers, skipped = available_peers()
    versions = _versions()
    for peer, why in skipped.items():
        print(f"skipped {peer}: {why} (pip install -e '.[peers]', or nox -s peers)")
    print("versions: " + ", ".join(f"{d} {v}" for d, v in versions.items()))
    if CASHEWS in peers:
        print(
            "cashews: client_side=true with protocol=2 forced in its URL: over RESP3 "
            "(redis-py 8's default) its invalidation never fires"
        )
    print(
        f"config: {KEYS} keys, Zipf({ZIPF_S}), ~1 KB values, ttl={TTL} s, l1_ttl={L1_TTL} s "
        f"(tiercache; the hand-written TTLCache too), {rounds} round(s) of {duration:g} s per "
        f"workload and peer, interleaved; {set_share:.0%} of writes are sets, the rest deletes"
    )
    report: dict[str, Any] = {
        "environment": environment(),
        "machine": _machine(),
        "command": _command(),
        "versions": versions,
        "skipped": skipped,
        "quick": quick,
        "config": {
            "keys": KEYS,
            "zipf_s": ZIPF_S,
            "ttl": TTL,
            "l1_ttl": L1_TTL,
            "rounds": rounds,
            "duration_s": duration,
            "stale_duration_s": stale_duration,
            "write_every_s": WRITE_EVERY,
            "read_pause_s": READ_PAUSE,
            "stampede_load_s": STAMPEDE_LOAD,
            "stampede_rounds": stampede_rounds,
            "set_share": set_share,
        },
    }
    failed: dict[str, str] = {}
    with RedisServer() as server:
        with contextlib.closing(server.client()) as client:
            report["redis_server"] = client.info("server")["redis_version"]
        print(f"redis-server {report['redis_server']} on 127.0.0.1:{server.port}")
        clock = time.monotonic()
        pool = Pool(server.url)
        try:
            print(
                f"  {POOL_PROCESSES} worker processes spawned in {time.monotonic() - clock:.1f} s"
            )
            cells = _throughput(pool, peers, rounds, duration, failed, set_share)
            clock = time.monotonic()
            stale = _staleness(pool, peers, stale_duration, failed)
            print(f"  staleness done in {time.monotonic() - clock:.1f} s")
            clock = time.monotonic()
            stampede = _stampede(pool, [*peers, LOADER_ONLY], stampede_rounds, failed)
            print(f"  stampede done in {time.monotonic() - clock:.1f} s")
        finally:
            pool.close()
    for peer, why in failed.items():
        print(f"\nFAILED {peer}: {why}")
    report.update(failed=failed, throughput=cells, staleness=stale, stampede=stampede)
    _print_throughput(cells, peers)
    _print_staleness(stale)
    _print_stampede(stampede)
    report["targets"] = _targets(cells, stale, stampede)
    if quick:
        print("(--quick: one short round per workload; the verdicts above are only indicative)")
    out_dir.mkdir(parents=True, exist_ok=True)
    report["plots"] = _plots(report, out_dir)
    (out_dir / "peers.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def _throughput(
    pool: Pool,
    peers: list[str],
    rounds: int,
    duration: float,
    failed: dict[str, str],
    set_share: float = 0.5,
) -> list[dict[str, Any]]:
    cells: dict[tuple[int, int, float], dict[str, list[dict[str, Any]]]] = {}
    n = 0
    workloads = [(shape, rate) for shape in SHAPES for rate in WRITE_RATES]
    clock = time.monotonic()
    for r in range(rounds):
        for w, ((procs, threads), rate) in enumerate(workloads):
            if True:
                for peer in _rotate(peers, r * len(workloads) + w):
                    if peer in failed:
                        continue
                    n += 1
                    cmd = {
                        "kind": "throughput",
                        "peer": peer,
                        "threads": threads,
                        "write_rate": rate,
                        "set_share": set_share,
                        "duration": duration,
                        "prefix": f"t{n}:",
                    }
                    try:
                        replies, commands = pool.run(cmd, procs)
                    except CellError as exc:
                        failed[peer] = str(exc).strip().splitlines()[-1]
                        print(f"  {peer}: failed ({failed[peer]}); dropped from the run")
                        continue
                    cell = cells.setdefault((procs, threads, rate), {})
                    cell.setdefault(peer, []).append(analyze_throughput(replies, commands))
        print(f"  throughput round {r + 1}/{rounds} done in {time.monotonic() - clock:.1f} s")
        clock = time.monotonic()
    result = []
    for (procs, threads, rate), per_peer in cells.items():
        rows = {}
        for peer, runs in per_peer.items():
            rows[peer] = _median_run(runs)
        result.append({"procs": procs, "threads": threads, "write_rate": rate, "peers": rows})
    return result


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of each number; stale counts summed; the median round's CDF."""
    by_rate = sorted(runs, key=lambda x: x["ops_per_s"])
    mid = by_rate[len(by_rate) // 2]
    row = {
        name: statistics.median(x[name] for x in runs if x[name] is not None)
        if any(x[name] is not None for x in runs)
        else None
        for name in ("ops_per_s", "p50_ns", "p99_ns", "write_p50_ns", "commands_per_op")
    }
    row.update(
        rounds=len(runs),
        ops_per_s_rounds=[x["ops_per_s"] for x in runs],
        stale_reads=sum(x["stale_reads"] for x in runs),
        stale50_reads=sum(x["stale50_reads"] for x in runs),
        reads=sum(x["reads"] for x in runs),
        writes=sum(x["writes"] for x in runs),
        commands=mid["commands"],
        cdf=mid["cdf"],
        tiercache_stats=mid["tiercache_stats"],
    )
    return row


def _staleness(
    pool: Pool, peers: list[str], duration: float, failed: dict[str, str]
) -> dict[str, Any]:
    result = {}
    for n, peer in enumerate(peers):
        if peer in failed:
            continue
        cmd = {
            "kind": "staleness",
            "peer": peer,
            "threads": 1,
            "duration": duration,
            "prefix": f"s{n}:",
        }
        try:
            (writer, reader), _ = pool.run(cmd, 2)
        except CellError as exc:
            failed[peer] = str(exc).strip().splitlines()[-1]
            print(f"  {peer}: staleness failed ({failed[peer]})")
            continue
        result[peer] = analyze_staleness(writer["done"], reader["started"], reader["seen"])
    return result


def _stampede(pool: Pool, peers: list[str], rounds: int, failed: dict[str, str]) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    n = 0
    for r in range(rounds):
        for peer in _rotate(peers, r):
            if peer in failed:
                continue
            n += 1
            cmd = {
                "kind": "stampede",
                "peer": peer,
                "threads": STAMPEDE_THREADS,
                "prefix": f"c{n}:",
            }
            try:
                replies, commands = pool.run(cmd, STAMPEDE_PROCS)
            except CellError as exc:
                failed[peer] = str(exc).strip().splitlines()[-1]
                print(f"  {peer}: stampede failed ({failed[peer]})")
                continue
            latencies = sorted(v for rep in replies for v in rep["latencies"])
            runs.setdefault(peer, []).append(
                {
                    "loader_calls": pool.shared.loads.value,
                    "slowest_ns": latencies[-1],
                    "p50_ns": _quantile(latencies, 0.5),
                    "callers": len(latencies),
                    "commands": sum(commands.values()),
                }
            )
    return {
        peer: {
            "loader_calls": statistics.median(x["loader_calls"] for x in xs),
            "loader_calls_rounds": [x["loader_calls"] for x in xs],
            "slowest_ns": statistics.median(x["slowest_ns"] for x in xs),
            "slowest_ns_rounds": [x["slowest_ns"] for x in xs],
            "p50_ns": statistics.median(x["p50_ns"] for x in xs),
            "callers": xs[0]["callers"],
            "commands": statistics.median(x["commands"] for x in xs),
        }
        for peer, xs in runs.items()
    }


def _print_throughput(cells: list[dict[str, Any]], peers: list[str]) -> None:
    print(
        "\nThroughput: ops/s (median of rounds); 'vs X' = ops/s / X's ops/s (above 1.00x is "
        "faster); p50/p99 over every operation; write p50 over set and delete; cmds/op from "
        "INFO commandstats; stale>50ms = reads that started more than 50 ms after a newer "
        "version had been written"
    )
    for cell in cells:
        rows = []
        hand = cell["peers"].get(HAND, {}).get("ops_per_s")
        cash = cell["peers"].get(CASHEWS, {}).get("ops_per_s")
        for peer in peers:
            row = cell["peers"].get(peer)
            if row is None:
                continue
            rows.append(
                [
                    peer,
                    fmt_rate(row["ops_per_s"]),
                    fmt_ratio(row["ops_per_s"], hand),
                    fmt_ratio(row["ops_per_s"], cash),
                    fmt_lat(row["p50_ns"]),
                    fmt_lat(row["p99_ns"]),
                    fmt_lat(row["write_p50_ns"]),
                    f"{row['commands_per_op']:.3f}",
                    f"{row['stale50_reads']} / {row['reads']}",
                ]
            )
        title = (
            f"{shape_label(cell['procs'], cell['threads'])}, {fmt_pct(cell['write_rate'])} writes"
        )
        header = ["peer", "ops/s", "vs hand", "vs cashews", "p50", "p99", "write p50"]
        print_table(title, [*header, "cmds/op", "stale>50ms"], rows)


def _print_staleness(stale: dict[str, Any]) -> None:
    rows = []
    for peer, s in stale.items():
        floor = "≥" if s["censored"] else ""
        rows.append(
            [
                peer,
                s["writes"],
                f"{floor}{fmt_lat(s['lag_p50_ns'])}",
                f"{floor}{fmt_lat(s['lag_p99_ns'])}",
                fmt_lat(s["fresh_p50_ns"]),
                fmt_lat(s["fresh_p99_ns"]),
                s["unseen"],
                s["reads"],
                fmt_lat(s["read_every_ns"]),
                s["stale_reads"],
                s["stale50_reads"],
            ]
        )
    print_table(
        f"Staleness: one writer process (set / update+delete every {WRITE_EVERY * 1000:g} ms), "
        f"one reader process (a read every ~{READ_PAUSE * 1000:g} ms). 'stale for' = how long "
        "after a write returned a read still saw an older version (0: no read did; '≥': "
        "some writes were never seen before the end); 'first fresh' = when the first read "
        "saw it (includes time the reader was not scheduled at all); both are as fine as "
        "the reader's 'read every' (median gap between two reads)",
        [
            "peer",
            "writes",
            "stale for p50",
            "p99",
            "first fresh p50",
            "p99",
            "never seen",
            "reads",
            "read every",
            "stale",
            "stale>50ms",
        ],
        rows,
    )


def _print_stampede(stampede: dict[str, Any]) -> None:
    rows = [
        [
            peer,
            s["callers"],
            f"{s['loader_calls']:g}",
            fmt_lat(s["p50_ns"]),
            fmt_lat(s["slowest_ns"]),
            f"{s['commands']:g}",
        ]
        for peer, s in stampede.items()
    ]
    print_table(
        f"Stampede: {STAMPEDE_PROCS} processes x {STAMPEDE_THREADS} threads (cashews: tasks) "
        f"read one cold key at once; the loader takes {STAMPEDE_LOAD * 1000:g} ms (medians "
        "of rounds)",
        ["peer", "callers", "loader calls", "p50 caller", "slowest caller", "Redis cmds"],
        rows,
    )


def _targets(
    cells: list[dict[str, Any]], stale: dict[str, Any], stampede: dict[str, Any]
) -> list[dict[str, Any]]:
    """The issue's targets this benchmark can judge, as PASS/FAIL lines."""
    lines: list[dict[str, Any]] = []

    def cell(rate: float) -> dict[str, Any]:
        for c in cells:
            if (c["procs"], c["threads"], c["write_rate"]) == (4, 2, rate):
                return dict(c["peers"])
        return {}

    def target(name: str, value: float | None, ok: Callable[[float], bool], shown: str) -> None:
        if value is None:
            verdict = "n/a (a peer it needs was skipped or failed)"
        else:
            verdict = "PASS" if ok(value) else "FAIL"
        lines.append({"target": name, "value": value, "verdict": verdict})
        print(f"Target {name}: {shown if value is not None else '-'} -> {verdict}")

    # Judged: tiercache as users get it, its defaults (value propagation on).
    judged = TIERCACHE_VALUES

    def ratio(rows: dict[str, Any], peer: str) -> float | None:
        if judged in rows and peer in rows and rows[peer]["ops_per_s"]:
            return float(rows[judged]["ops_per_s"] / rows[peer]["ops_per_s"])
        return None

    print()
    one, tenth = cell(0.01), cell(0.001)
    r = ratio(one, HAND)
    target("4x2 at 1% writes: tiercache >= 1.0x the hand-written two-tier", r, lambda x: x >= 1.0,
           f"{r:.2f}x" if r else "")  # fmt: skip
    s50 = one[judged]["stale50_reads"] if judged in one else None
    target("4x2 at 1% writes: tiercache serves 0 reads stale beyond 50 ms", s50,
           lambda x: x == 0, f"{s50} of {one.get(judged, {}).get('reads')}")  # fmt: skip
    r = ratio(one, CASHEWS)
    target("4x2 at 1% writes: tiercache >= 3x cashews' two-tier", r, lambda x: x >= 3.0,
           f"{r:.2f}x" if r else "")  # fmt: skip
    r = ratio(tenth, HAND)
    target("4x2 at 0.1% writes: tiercache >= 1.5x the hand-written two-tier", r,
           lambda x: x >= 1.5, f"{r:.2f}x" if r else "")  # fmt: skip
    p99 = stale[judged]["lag_p99_ns"] if judged in stale else None
    target("staleness p99 <= 2 ms (stale for, writer/reader)", p99, lambda x: x <= 2e6,
           fmt_lat(p99))  # fmt: skip
    st = stampede.get(judged)
    calls = st["loader_calls"] if st else None
    target(f"stampede: 1 loader call across the {STAMPEDE_PROCS} processes", calls,
           lambda x: x == 1, f"{calls:g}" if calls is not None else "")  # fmt: skip
    slowest = st["slowest_ns"] if st else None
    limit = (STAMPEDE_LOAD + STAMPEDE_SLACK) * 1e9
    target(f"stampede: slowest caller <= loader + 5 ms ({fmt_lat(limit)})", slowest,
           lambda x: x <= limit, fmt_lat(slowest))  # fmt: skip
    floor = stampede.get(LOADER_ONLY)
    if st and floor:
        print(
            f"  (the floor, {STAMPEDE_PROCS * STAMPEDE_THREADS} callers each running the loader "
            f"with no cache: slowest {fmt_lat(floor['slowest_ns'])}; {judged} is "
            f"{(st['slowest_ns'] - floor['slowest_ns']) / 1e6:+.2f} ms over it)"
        )
    print(f"Targets judge '{judged}', tiercache's default configuration.")
    print(
        "Targets on the cost of one set/delete/load against raw redis-py are not judged here "
        "(they are single-operation ratios, not a workload)."
    )
    return lines


# -- plots ------------------------------------------------------------------------------------


def _plots(report: dict[str, Any], out_dir: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install -e '.[peers]')")
        return []
    written = []
    peers = [p for p in PEERS if any(p in c["peers"] for c in report["throughput"])]
    colors = {p: f"C{i}" for i, p in enumerate(PEERS)}

    # Throughput by write rate, one panel per shape.
    fig, axes = plt.subplots(1, len(SHAPES), figsize=(12, 4.5), sharey=True)
    for ax, (procs, threads) in zip(axes, SHAPES, strict=True):
        rates = list(WRITE_RATES)[::-1]
        width = 0.8 / max(1, len(peers))
        for j, peer in enumerate(peers):
            ys = []
            for rate in rates:
                c = next(
                    (
                        c
                        for c in report["throughput"]
                        if (c["procs"], c["threads"], c["write_rate"]) == (procs, threads, rate)
                    ),
                    None,
                )
                row = c["peers"].get(peer) if c else None
                ys.append(row["ops_per_s"] if row else 0)
            xs = [i + (j - (len(peers) - 1) / 2) * width for i in range(len(rates))]
            ax.bar(xs, ys, width, label=peer, color=colors[peer])
        ax.set_xticks(range(len(rates)), [fmt_pct(r) + " writes" for r in rates])
        ax.set_yscale("log")
        ax.set_title(shape_label(procs, threads))
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].set_ylabel("operations / s (log scale)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(peers), fontsize=9)
    fig.suptitle("Throughput by write rate (1,000 keys, Zipf 1.1, ~1 KB values)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path = out_dir / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path.name)

    # Latency CDF, 4x2 at 1% and 0% writes.
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, rate in zip(axes, (0.01, 0.0), strict=True):
        c = next(
            (
                c
                for c in report["throughput"]
                if (c["procs"], c["threads"], c["write_rate"]) == (4, 2, rate)
            ),
            None,
        )
        for peer in peers:
            row = c["peers"].get(peer) if c else None
            if not row or not row["cdf"]:
                continue
            xs = [v / 1000 for v in row["cdf"]]
            ys = [q / 200 for q in range(1, 200)]
            ax.plot(xs, ys, label=peer, color=colors[peer])
        ax.set_xscale("log")
        ax.set_xlabel("latency per operation (µs, log scale)")
        ax.set_title(f"4 processes x 2 threads, {fmt_pct(rate)} writes")
        ax.grid(which="both", alpha=0.3)
    axes[0].set_ylabel("fraction of operations")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(peers), fontsize=9)
    fig.suptitle("Latency CDF (median round)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path = out_dir / "latency_cdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path.name)

    # Staleness: visibility lag p50/p99 per peer, and reads stale > 50 ms.
    stale = report["staleness"]
    if stale:
        names = list(stale)
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        ys = range(len(names))
        # 0 (no stale read at all) is drawn at 1 µs on the log axis.
        p50 = [max(stale[n]["lag_p50_ns"], 1000) / 1e6 for n in names]
        p99 = [max(stale[n]["lag_p99_ns"], 1000) / 1e6 for n in names]
        ax.barh([y + 0.2 for y in ys], p99, 0.4, label="p99", color="C3")
        ax.barh([y - 0.2 for y in ys], p50, 0.4, label="p50", color="C0")
        ax.set_yticks(list(ys), [n + (" (≥)" if stale[n]["censored"] else "") for n in names])
        ax.set_xscale("log")
        ax.axvline(2, color="k", ls="--", lw=0.8)
        ax.set_xlabel("ms after a write returned that a read still saw older (log; 0 at 0.001)")
        ax.set_title("Stale for (dashed: 2 ms target)")
        ax.legend(fontsize=8)
        ax.grid(axis="x", which="both", alpha=0.3)
        share = [100 * stale[n]["stale50_reads"] / max(1, stale[n]["reads"]) for n in names]
        ax2.barh(list(ys), share, 0.6, color=[colors[n] for n in names])
        for y, n in zip(ys, names, strict=True):
            text = f"{share[y]:.1f}% ({stale[n]['stale50_reads']} of {stale[n]['reads']})"
            ax2.text(min(share[y], 60) + 1, y, text, va="center", fontsize=8)
        ax2.set_yticks(list(ys), names)
        ax2.set_xlim(0, 100)
        ax2.set_xlabel("% of reads stale by more than 50 ms")
        ax2.set_title("Reads stale by more than 50 ms")
        ax2.grid(axis="x", alpha=0.3)
        fig.suptitle(f"Staleness: a write every {WRITE_EVERY * 1000:g} ms, a read every ~0.2 ms")
        fig.tight_layout()
        path = out_dir / "staleness.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=TITLE)
    parser.add_argument("--quick", action="store_true", help="one short round (well under 1 min)")
    parser.add_argument("--out", type=Path, default=None, help=f"results folder ({DEFAULT_OUT})")
    parser.add_argument(
        "--set-share",
        type=float,
        default=0.5,
        help="share of the writes that are sets, the rest deletes (default 0.5; 1 = sets only)",
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.set_share <= 1.0:
        parser.error("--set-share must be between 0 and 1")
    print(environment())
    run(quick=args.quick, out=args.out, set_share=args.set_share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
