"""Helpers for the cross-process tests: bounded waits, reaping children, and :class:`Peer`.

A :class:`Peer` is a child process that owns :class:`~tiercache.TierCache` instances and runs
calls on them when asked through a :func:`multiprocessing.Pipe`. A call returns only after it
returned in the child, so the answer is the child's "done" signal; every wait is bounded.

Nothing here sleeps to let something happen: :func:`tests.support.wait_for` polls a condition
(the delivery of a pub/sub message is asynchronous by nature) and gives up after a timeout.
The basics (bounded waits, fakes) are in ``tests/support.py``; this module adds what only the
cross-process tests need.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
import traceback
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

import redis

from tests.support import subscribed
from tiercache import TierCache
from tiercache.connect import client_from_url

# Bounds of the waits below, in seconds. Delivery normally takes milliseconds; the bounds
# only decide how long a broken build takes to fail.
PROPAGATION_TIMEOUT = 2.0  # a pub/sub invalidation reaching another instance
SUBSCRIBE_TIMEOUT = 5.0  # a listener's first subscription and its self-probe
CALL_TIMEOUT = 20.0  # one request to a child process, one message from it
JOIN_TIMEOUT = 10.0  # a child exiting once told to
PEER_IDLE_TIMEOUT = 300.0  # a peer whose parent went silent exits by itself

#: The shared "database" the memoized function reads: a Redis hash on the real server.
PRICES = "mp:db:prices"


#: The multiprocessing context of the forked children.
FORK = multiprocessing.get_context("fork")


def subscribe(cache: TierCache) -> dict[str, int]:
    """Use ``cache`` once and wait until its listener is subscribed and its self-probe came
    back (the flush at subscription is then behind us); return its stats."""
    return subscribed(cache, probe=True, timeout=SUBSCRIBE_TIMEOUT)


def stop_process(process: BaseProcess, timeout: float = JOIN_TIMEOUT) -> int | None:
    """Join ``process`` (bounded), terminate then kill it if it is still alive, close it;
    return its exit code."""
    process.join(timeout)
    if process.is_alive():
        process.terminate()
        process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
    code = process.exitcode
    process.close()
    return code


def reap(pid: int, timeout: float = JOIN_TIMEOUT) -> int | None:
    """Wait (bounded) for a child made by ``os.fork()``; SIGKILL it if it does not exit.
    Return its exit code, or None if it had to be killed."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.01)  # poll interval of a bounded loop


def receive(conn: Connection, expected: str, timeout: float = CALL_TIMEOUT) -> Any:
    """Receive ``(expected, payload)`` from a child and return the payload; a child's
    ``("error", traceback)`` or a silent child fails the test."""
    if not conn.poll(timeout):
        raise AssertionError(f"no {expected!r} from the child within {timeout:g} s")
    kind, payload = conn.recv()
    if kind == "error":
        raise AssertionError(f"the child failed before {expected!r}:\n{payload}")
    assert kind == expected, f"expected {expected!r} from the child, got {kind!r}: {payload!r}"
    return payload


def report_error(conn: Connection) -> None:
    """From a child's ``except`` block: send the traceback to the parent, best effort."""
    with contextlib.suppress(OSError):
        conn.send(("error", traceback.format_exc()))


# -- the peer process ------------------------------------------------------------------------


class PeerError(AssertionError):
    """A call raised in the peer process; the message holds the peer's traceback."""


class Peer:
    """A child process owning named TierCache instances; see the module docstring."""

    def __init__(self, context: BaseContext, url: str, name: str) -> None:
        self.name = name
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(  # type: ignore[attr-defined]
            target=serve_peer, args=(child_conn, url), name=name, daemon=True
        )
        self._process.start()
        child_conn.close()

    @property
    def pid(self) -> int:
        return int(self._process.pid)

    def call(self, cache: str, op: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``op`` on the peer's cache named ``cache`` and return its result."""
        self._conn.send((cache, op, args, kwargs))
        if not self._conn.poll(CALL_TIMEOUT):
            raise AssertionError(f"{self.name} did not answer {op}{args!r} in {CALL_TIMEOUT} s")
        status, payload = self._conn.recv()
        if status != "ok":
            raise PeerError(f"{op}{args!r} raised in {self.name}:\n{payload}")
        return payload

    def stats(self, cache: str) -> dict[str, int]:
        stats: dict[str, int] = self.call(cache, "stats")
        return stats

    def close(self) -> None:
        """Ask the peer to close its caches and exit; bounded, then terminate/kill."""
        with contextlib.suppress(OSError):  # already gone: stop_process reaps it
            self._conn.send(None)
        try:
            stop_process(self._process)
        finally:
            self._conn.close()


_db: redis.Redis | None = None


def price(sku: str) -> int:
    """Read a price from the shared "database" (the function peers memoize)."""
    assert _db is not None
    raw = _db.hget(PRICES, sku)
    return int(raw) if raw is not None else 0


def serve_peer(conn: Connection, url: str) -> None:
    """The peer's main loop: ``(cache, op, args, kwargs)`` in, ``("ok"|"error", ...)`` out;
    ``None`` or the parent's end of the pipe closing stops it."""
    global _db
    _db = client_from_url(url)  # a standalone server or a cluster
    caches: dict[str, TierCache] = {}
    try:
        while conn.poll(PEER_IDLE_TIMEOUT):
            try:
                request = conn.recv()
            except EOFError:
                break
            if request is None:
                break
            name, op, args, kwargs = request
            try:
                result = _serve_one(caches, url, name, op, args, kwargs)
            except BaseException:
                conn.send(("error", traceback.format_exc()))
            else:
                conn.send(("ok", result))
    finally:
        for cache in caches.values():
            cache.close()
        _db.close()
        conn.close()


_PLAIN_OPS = frozenset(
    {"get", "get_many", "set", "set_many", "delete", "delete_many", "invalidate_tags", "clear"}
)


def _serve_one(
    caches: dict[str, TierCache],
    url: str,
    name: str,
    op: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    if op == "open":
        (namespace,) = args
        caches[name] = TierCache.from_url(url, namespace=namespace, **kwargs)
        return None
    if op == "close_all":
        for cache in caches.values():
            cache.close()
        caches.clear()
        return None
    cache = caches[name]
    if op == "subscribe":
        return subscribe(cache)
    if op == "stats":
        return cache.stats()
    if op == "get_or_set":
        key, value = args

        def loader() -> Any:
            return value

        return cache.get_or_set(key, loader, **kwargs)
    if op in ("memo", "memo_invalidate", "memo_key"):
        memoized = cache.memoize()(price)
        method = {"memo": memoized, "memo_invalidate": memoized.invalidate}.get(
            op, memoized.cache_key
        )
        return method(*args)
    if op in _PLAIN_OPS:
        return getattr(cache, op)(*args, **kwargs)
    raise ValueError(f"unknown peer op {op!r}")
