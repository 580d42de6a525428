"""Stampedes across processes: leases and single-flight (guarantees 3 and 4
of docs/consistency.md).

Children are forked (``multiprocessing.get_context("fork")``); each builds its own cache and
waits for its subscription before taking part. Loads are counted in Redis itself (``INCR`` on
the real server), so a count covers every process.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from multiprocessing.synchronize import Barrier, Event
from typing import Any

import pytest
import redis

from tests.multiprocess.support import (
    CALL_TIMEOUT,
    FORK,
    JOIN_TIMEOUT,
    PROPAGATION_TIMEOUT,
    stop_process,
    subscribe,
)
from tests.redis_server import RedisServer
from tests.support import wait_for
from tiercache import TierCache
from tiercache.connect import client_from_url

pytestmark = pytest.mark.redis

PROCESSES = 4
THREADS = 8
LOAD_SECONDS = 0.05  # how long the stampede's loader takes: the workload, not a wait
KEY = "cold"
COUNTER = "mp:loads"
# Leases and waits far longer than any bounded wait here: a lease that ends early can only
# have been released or revoked, and a waiter that loads can only have seen it go.
LONG = 60.0


def _collect(queue: Any, count: int) -> list[dict[str, Any]]:
    """``count`` reports from children; a child's traceback fails the test with it."""
    reports = []
    for _ in range(count):
        report = queue.get(timeout=CALL_TIMEOUT)
        assert not report.get("errors"), "a child failed:\n" + "\n".join(report["errors"])
        reports.append(report)
    return reports


# -- one load for a cold key ---------------------------------------------------------------


def _stampede_process(url: str, namespace: str, barrier: Barrier, results: Any) -> None:
    errors: list[str] = []
    values: list[Any] = []
    stats: dict[str, int] = {}
    try:
        with (
            TierCache.from_url(url, namespace=namespace, l1_ttl=LONG) as cache,
            client_from_url(url) as db,  # one server or a cluster
        ):
            subscribe(cache)

            def loader() -> str:
                db.incr(COUNTER)
                time.sleep(LOAD_SECONDS)  # a slow load (the workload)
                return f"loaded by pid {os.getpid()} thread {threading.get_ident()}"

            def worker() -> None:
                try:
                    barrier.wait(CALL_TIMEOUT)
                    values.append(cache.get_or_set(KEY, loader))
                except BaseException:
                    errors.append(traceback.format_exc())

            threads = [threading.Thread(target=worker, daemon=True) for _ in range(THREADS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(CALL_TIMEOUT)
            if any(thread.is_alive() for thread in threads):
                errors.append("a get_or_set thread did not return")
            stats = cache.stats()
    except BaseException:
        errors.append(traceback.format_exc())
    results.put({"pid": os.getpid(), "values": values, "stats": stats, "errors": errors})


def test_cold_key_stampede_across_processes_and_threads_loads_exactly_once(
    topology_url: str, topology_redis: redis.Redis, namespace: str
) -> None:
    """4 processes x 8 threads miss one cold key at once: one load in all, one value for all
    (on one server and on a cluster)."""
    barrier = FORK.Barrier(PROCESSES * THREADS)
    results = FORK.Queue()
    processes = [
        FORK.Process(target=_stampede_process, args=(topology_url, namespace, barrier, results))
        for _ in range(PROCESSES)
    ]
    try:
        for process in processes:
            process.start()
        reports = _collect(results, PROCESSES)
    finally:
        for process in processes:
            stop_process(process)
        results.close()
        results.join_thread()

    assert topology_redis.get(COUNTER) == b"1"
    assert sum(report["stats"]["loads"] for report in reports) == 1
    values = [value for report in reports for value in report["values"]]
    assert len(values) == PROCESSES * THREADS
    assert len(set(values)) == 1, set(values)
    # The other processes waited on the lease, and none gave up waiting.
    assert sum(report["stats"]["lease_timeouts"] for report in reports) == 0
    assert sum(report["stats"]["lease_waits"] for report in reports) >= 1


# -- a failed load releases its lease --------------------------------------------------------


def _failing_holder_process(
    url: str, namespace: str, loading: Event, fail: Event, results: Any
) -> None:
    report: dict[str, Any] = {"errors": []}
    try:
        with TierCache.from_url(
            url, namespace=namespace, l1_ttl=LONG, lease_ttl=LONG, lease_wait=LONG
        ) as cache:
            subscribe(cache)

            def loader() -> str:
                loading.set()
                if not fail.wait(CALL_TIMEOUT):
                    raise TimeoutError("never told to fail")
                raise RuntimeError("the database is down")

            try:
                cache.get_or_set(KEY, loader)
            except RuntimeError as exc:
                report["raised"] = str(exc)
            report["stats"] = cache.stats()
    except BaseException:
        report["errors"].append(traceback.format_exc())
    results.put(report)


def _lease_waiter_process(url: str, namespace: str, waiting: Event, results: Any) -> None:
    report: dict[str, Any] = {"errors": []}
    try:
        with TierCache.from_url(
            url, namespace=namespace, l1_ttl=LONG, lease_ttl=LONG, lease_wait=LONG
        ) as cache:
            subscribe(cache)
            outcome: list[Any] = []

            def call() -> None:
                try:
                    outcome.append(cache.get_or_set(KEY, lambda: "loaded by the waiter"))
                except BaseException:
                    report["errors"].append(traceback.format_exc())

            thread = threading.Thread(target=call, daemon=True)
            thread.start()
            # Tell the parent only once this process is really waiting on the lease.
            wait_for(lambda: cache.stats()["lease_waits"] == 1, CALL_TIMEOUT, "a lease wait")
            waiting.set()
            thread.join(CALL_TIMEOUT)
            report["returned"] = outcome
            report["stats"] = cache.stats()
    except BaseException:
        report["errors"].append(traceback.format_exc())
    results.put(report)


def test_failed_loader_releases_its_lease_so_a_waiting_process_loads(
    redis_server: RedisServer, real_redis: redis.Redis, namespace: str
) -> None:
    """A lease holder whose loader raises gives the lease back; a waiter then loads at once."""
    loading, fail, waiting = FORK.Event(), FORK.Event(), FORK.Event()
    holder_results, waiter_results = FORK.Queue(), FORK.Queue()
    holder = FORK.Process(
        target=_failing_holder_process,
        args=(redis_server.url, namespace, loading, fail, holder_results),
    )
    waiter = FORK.Process(
        target=_lease_waiter_process, args=(redis_server.url, namespace, waiting, waiter_results)
    )
    try:
        holder.start()
        assert loading.wait(CALL_TIMEOUT), "the holder never started loading"
        waiter.start()
        assert waiting.wait(CALL_TIMEOUT), "the waiter never waited on the lease"
        fail.set()
        (held,) = _collect(holder_results, 1)
        (waited,) = _collect(waiter_results, 1)
    finally:
        fail.set()
        for process in (holder, waiter):
            stop_process(process)
        for queue in (holder_results, waiter_results):
            queue.close()
            queue.join_thread()

    assert held["raised"] == "the database is down"
    assert waited["returned"] == ["loaded by the waiter"]
    # It loaded because the lease was released: not by giving up (lease_wait is 60 s), and
    # not because it expired (lease_ttl is 60 s too).
    assert waited["stats"]["loads"] == 1
    assert waited["stats"]["lease_timeouts"] == 0
    with TierCache.from_url(redis_server.url, namespace=namespace) as fresh:
        assert fresh.get(KEY) == "loaded by the waiter"


# -- set()/delete() during a load revoke its lease -------------------------------------------

STALE = "loaded before the invalidation"


def _slow_loader_process(
    url: str, namespace: str, loading: Event, finish: Event, results: Any
) -> None:
    report: dict[str, Any] = {"errors": []}
    try:
        with TierCache.from_url(
            url, namespace=namespace, l1_ttl=LONG, lease_ttl=LONG, lease_wait=LONG
        ) as cache:
            heard = subscribe(cache)["bus_received"]

            def loader() -> str:
                loading.set()
                if not finish.wait(CALL_TIMEOUT):
                    raise TimeoutError("never told to finish")
                # The parent's invalidation was published before `finish`; wait until this
                # process heard it, so that the L1 half (the key's generation) is decided,
                # not raced against delivery.
                wait_for(
                    lambda: cache.stats()["bus_received"] > heard,
                    PROPAGATION_TIMEOUT,
                    "the parent's invalidation",
                )
                return STALE

            report["returned"] = cache.get_or_set(KEY, loader)
            report["stats"] = cache.stats()
            report["reread"] = cache.get(KEY)
            report["reread_stats"] = cache.stats()
    except BaseException:
        report["errors"].append(traceback.format_exc())
    results.put(report)


@pytest.mark.parametrize("op", ["set", "delete"])
def test_write_during_a_load_revokes_its_lease_so_the_old_value_never_reaches_redis(
    redis_server: RedisServer, real_redis: redis.Redis, namespace: str, op: str
) -> None:
    """A load overtaken by set()/delete() in another process writes neither L2 nor its L1."""
    expected = "fresh" if op == "set" else None
    loading, finish = FORK.Event(), FORK.Event()
    results = FORK.Queue()
    loader_process = FORK.Process(
        target=_slow_loader_process, args=(redis_server.url, namespace, loading, finish, results)
    )
    try:
        with TierCache.from_url(redis_server.url, namespace=namespace, l1_ttl=LONG) as writer:
            subscribe(writer)
            loader_process.start()
            assert loading.wait(CALL_TIMEOUT), "the loader never started"
            if op == "set":
                writer.set(KEY, "fresh")
            else:
                writer.delete(KEY)
            finish.set()
            (report,) = _collect(results, 1)
    finally:
        finish.set()
        stop_process(loader_process, JOIN_TIMEOUT)
        results.close()
        results.join_thread()

    assert report["returned"] == STALE  # its caller still gets what it loaded
    assert report["stats"]["lease_lost"] == 1  # the write was refused in Redis
    # L2: the old value never landed, for a fresh instance or in raw Redis.
    with TierCache.from_url(redis_server.url, namespace=namespace) as fresh:
        assert fresh.get(KEY) == expected
    if op == "delete":
        assert real_redis.get(f"{namespace}:{KEY}") is None
    # L1 of the loading process: its fill was refused too. After a delete it re-reads from
    # L2; after a set the new value came with the message (value propagation) and is what
    # its L1 holds. Either way the reread is the write's value, never STALE.
    assert report["reread"] == expected
    if op == "delete":
        assert report["reread_stats"]["l1_hits"] == report["stats"]["l1_hits"]
