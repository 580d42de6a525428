"""Fork safety (guarantee 8 of docs/consistency.md).

Why each case: a redis-py PubSub has no fork check (one inherited through fork splits the
parent's messages with the child); uWSGI with default options does not run at-fork hooks;
Python 3.14 makes ``forkserver`` the default start method on Linux, so the tests ask for
the "fork" context explicitly.

The parent holds a cache with L1 entries and a running, subscribed listener, then forks:
with raw ``os.fork()``, with ``multiprocessing.get_context("fork")``, and with a fork after
which tiercache's at-fork hook did not run (uWSGI with default options). In each, the child
must start from an empty L1, subscribe its own listener under a new identity, and exchange
invalidations with the parent both ways, while the parent keeps every message (a PubSub
inherited through fork would split the parent's messages with the child).

Last, a real gunicorn ``--preload`` server with four workers forked from a master that built
(and used) the cache at import time.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from tests.gunicorn import request_json, serve
from tests.multiprocess.support import (
    FORK,
    PROPAGATION_TIMEOUT,
    reap,
    receive,
    report_error,
    stop_process,
    subscribe,
)
from tests.redis_server import RedisServer
from tests.support import wait_for
from tiercache import TierCache, forking

pytestmark = pytest.mark.redis

NOISE = 50  # messages a third instance publishes while parent and child both listen


@pytest.fixture
def parent_cache(redis_server: RedisServer, namespace: str) -> Iterator[TierCache]:
    """A subscribed cache holding k1 and k2 in L1 (l1_ttl=60: only the bus changes them)."""
    with TierCache.from_url(redis_server.url, namespace=namespace, l1_ttl=60) as cache:
        subscribe(cache)
        assert cache.get_or_set("k1", lambda: "v1") == "v1"
        cache.set("k2", "v2")
        hits = cache.stats()["l1_hits"]
        assert (cache.get("k1"), cache.get("k2")) == ("v1", "v2")
        assert cache.stats()["l1_hits"] == hits + 2
        yield cache


@pytest.fixture
def publisher(redis_server: RedisServer, namespace: str) -> Iterator[TierCache]:
    """A third instance on the same namespace, subscribed before any fork."""
    with TierCache.from_url(redis_server.url, namespace=namespace) as cache:
        subscribe(cache)
        yield cache


# -- the two halves of the exchange ----------------------------------------------------------


def _child_side(cache: TierCache, conn: Connection) -> None:
    """Runs in the child on the parent's cache object; reports facts through ``conn``."""
    # L1's size read without a call: stats() itself notices a fork no hook reported.
    facts: dict[str, Any] = {"pid": os.getpid(), "l1_size_at_start": len(cache._l1)}
    before = cache.stats()
    facts["first_read"] = cache.get("k1")
    after = cache.stats()
    facts["first_read_l1_hits"] = after["l1_hits"] - before["l1_hits"]
    facts["first_read_l2_hits"] = after["l2_hits"] - before["l2_hits"]
    subscribed = subscribe(cache)
    facts["subscriptions"] = subscribed["bus_subscriptions"]
    conn.send(("ready", facts))

    receive(conn, "parent-updated")
    wait_for(lambda: cache.get("k1") == "from-parent", PROPAGATION_TIMEOUT, "parent's set")
    cache.set("k2", "from-child")
    conn.send(("child-updated", None))

    receive(conn, "noise-next")
    base = cache.stats()
    conn.send(("noise-ready", None))
    receive(conn, "noise-sent")
    wait_for(
        lambda: _heard_from_others(cache.stats(), base) >= NOISE,
        PROPAGATION_TIMEOUT,
        "the third instance's messages in the child",
    )
    end = cache.stats()
    facts["noise_received"] = _heard_from_others(end, base)
    facts["noise_gaps"] = end["bus_gaps"] - base["bus_gaps"]
    facts["noise_flushes"] = end["l1_flushes"] - base["l1_flushes"]
    conn.send(("done", facts))


def _parent_side(cache: TierCache, publisher: TierCache, conn: Connection) -> dict[str, Any]:
    """The parent's half; returns the child's facts after checking its own."""
    facts: dict[str, Any] = receive(conn, "ready")
    cache.set("k1", "from-parent")
    conn.send(("parent-updated", None))
    receive(conn, "child-updated")
    wait_for(lambda: cache.get("k2") == "from-child", PROPAGATION_TIMEOUT, "child's set")

    conn.send(("noise-next", None))
    receive(conn, "noise-ready")
    base = cache.stats()
    for i in range(NOISE):
        publisher.delete(f"noise:{i}")
    conn.send(("noise-sent", None))
    wait_for(
        lambda: _heard_from_others(cache.stats(), base) >= NOISE,
        PROPAGATION_TIMEOUT,
        "the third instance's messages in the parent",
    )
    child = receive(conn, "done")
    end = cache.stats()
    # The parent kept its subscription and every message: nothing was stolen by the child.
    assert _heard_from_others(end, base) == NOISE
    assert end["bus_gaps"] == base["bus_gaps"] == 0
    assert end["l1_flushes"] == base["l1_flushes"]
    assert (end["bus_subscriptions"], end["bus_losses"]) == (1, 0)
    return dict(facts, **child)


def _heard_from_others(now: dict[str, int], before: dict[str, int]) -> int:
    """Messages received between two stats snapshots, less the ignored ones: the echo of
    the instance's own last write may come back late, after ``before`` was taken."""
    received = now["bus_received"] - before["bus_received"]
    return received - (now["bus_ignored"] - before["bus_ignored"])


def _check_child(facts: dict[str, Any], parent_pid: int) -> None:
    assert facts["pid"] != parent_pid
    assert facts["first_read"] == "v1"
    assert (facts["first_read_l1_hits"], facts["first_read_l2_hits"]) == (0, 1)
    assert facts["subscriptions"] == 1  # its own listener, subscribed once
    assert facts["noise_received"] == NOISE
    assert (facts["noise_gaps"], facts["noise_flushes"]) == (0, 0)


def _fork_raw(child: Callable[[], None], conn: Connection) -> int:
    """``os.fork()``; the child runs ``child`` and leaves with ``os._exit`` (0 = no error)."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            child()
            code = 0
        except BaseException:
            report_error(conn)
        finally:
            os._exit(code)
    return pid


# -- (a) raw os.fork, (c) a fork whose at-fork hooks did not run ------------------------------


@pytest.mark.parametrize("hooks_run", [True, False], ids=["at-fork-hooks", "no-hooks-uwsgi"])
def test_child_of_os_fork_starts_empty_subscribes_anew_and_steals_nothing(
    parent_cache: TierCache, publisher: TierCache, hooks_run: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After os.fork(): empty L1 and a new listener in the child; invalidations both ways."""
    parent_conn, child_conn = FORK.Pipe()
    parent_l1_size = parent_cache.stats()["l1_size"]
    pid = None
    try:
        with monkeypatch.context() as patch:
            if not hooks_run:
                # uWSGI does not run os.register_at_fork hooks by default: hide the cache
                # from tiercache's hook, so only its pid checks can notice the fork.
                patch.setattr(forking, "_tracked", weakref.WeakSet())
            pid = _fork_raw(lambda: _child_side(parent_cache, child_conn), child_conn)
        facts = _parent_side(parent_cache, publisher, parent_conn)
    finally:
        exit_code = None if pid is None else reap(pid)
        parent_conn.close()
        child_conn.close()
    assert exit_code == 0
    _check_child(facts, os.getpid())
    if hooks_run:
        assert facts["l1_size_at_start"] == 0  # the hook emptied L1 at once
    else:
        # The simulation is faithful: nothing ran at fork, the child began with the parent's
        # L1, and its first call found out by itself.
        assert facts["l1_size_at_start"] == parent_l1_size


# -- (b) multiprocessing's "fork" context -----------------------------------------------------


def _mp_child(cache: TierCache, conn: Connection) -> None:
    try:
        _child_side(cache, conn)
    except BaseException:
        report_error(conn)
        raise


def test_child_of_multiprocessing_fork_starts_empty_subscribes_anew_and_steals_nothing(
    parent_cache: TierCache, publisher: TierCache
) -> None:
    """multiprocessing "fork" child: empty L1, its own listener, invalidations both ways."""
    parent_conn, child_conn = FORK.Pipe()
    process = FORK.Process(target=_mp_child, args=(parent_cache, child_conn))
    try:
        process.start()
        facts = _parent_side(parent_cache, publisher, parent_conn)
    finally:
        exit_code = stop_process(process)
        parent_conn.close()
        child_conn.close()
    assert exit_code == 0
    _check_child(facts, os.getpid())
    assert facts["l1_size_at_start"] == 0


# -- (d) gunicorn --preload ----------------------------------------------------------------

WORKERS = 4
SERVER_TIMEOUT = 20.0  # gunicorn answering, workers warming, the new value reaching all


_request = request_json


@pytest.fixture
def gunicorn_server(redis_server: RedisServer, namespace: str, tmp_path: Path) -> Iterator[int]:
    """gunicorn --preload -w 4 -k sync serving tests/multiprocess/wsgi_app.py; its port."""
    env = dict(os.environ, TIERCACHE_TEST_URL=redis_server.url, TIERCACHE_TEST_NAMESPACE=namespace)
    with serve(
        "tests.multiprocess.wsgi_app:app",
        workers=WORKERS,
        env=env,
        log_path=tmp_path / "gunicorn.log",
        up=lambda port: _request(port, "GET", "/get?key=__up__") is not None,
        timeout=SERVER_TIMEOUT,
    ) as (port, _server):
        yield port


def test_gunicorn_preload_workers_each_get_a_working_cache_of_their_own(
    gunicorn_server: int,
) -> None:
    """Four workers forked from a master that used the cache: all warm, all see a new value."""
    port = gunicorn_server
    assert _request(port, "POST", "/set?key=greeting&value=hello") is not None

    def round_of_gets(hold: float) -> list[dict[str, Any]]:
        # Concurrent requests that each hold their worker a little, so all workers answer.
        with ThreadPoolExecutor(WORKERS * 2) as pool:
            path = f"/get?key=greeting&hold={hold}"
            answers = list(pool.map(lambda _: _request(port, "GET", path), range(WORKERS * 2)))
        return [answer for answer in answers if answer is not None]

    warm: set[int] = set()

    def all_warm() -> bool:
        for answer in round_of_gets(0.02):
            # An L1 hit in a worker whose listener was subscribed before the lookup: the
            # value sits in its L1 past the flush at subscription.
            if answer["value"] == "hello" and answer["l1_hit"] and answer["subscribed_before"]:
                warm.add(answer["pid"])
        return len(warm) == WORKERS

    wait_for(all_warm, SERVER_TIMEOUT, f"{WORKERS} workers with the value in L1")

    changed = _request(port, "POST", "/set?key=greeting&value=world")
    assert changed is not None
    seen: dict[int, Any] = {changed["pid"]: "world"}

    def all_updated() -> bool:
        for answer in round_of_gets(0.02):
            seen[answer["pid"]] = answer["value"]
        return all(seen.get(pid) == "world" for pid in warm)

    wait_for(all_updated, SERVER_TIMEOUT, "every worker to serve the new value")
    assert set(seen) == warm  # the same four workers: none died and was replaced
