"""Telemetry across a fork: a child traces its very first call, and its metrics start at zero.

Each check runs in a fresh interpreter (the global tracer and meter providers can be set only
once per process, and the unit tests have set theirs), which builds caches on the session's
real redis-server and forks children with ``multiprocessing.get_context("fork")``. Children
report through a pipe; every wait is bounded.

1. A cache decides about once a second whether an SDK is installed. Built in a master just
   before the fork (``gunicorn --preload``), its next check may be up to a second away in the
   children: the fork must bring it forward, so that a child traces its first call whether
   the SDK was installed in the master before the fork or in the child (``post_fork``).
2. A child's counters, and so its exported counts, start from zero: neither the parent's
   counts of a cache they share nor the totals the parent kept for a closed cache are the
   child's.
"""

from __future__ import annotations

import json
import os
import textwrap
from typing import Any

import pytest

from tests.redis_server import RedisServer
from tests.support import REPO_ROOT, run_python

pytestmark = pytest.mark.redis

TIMEOUT = 60.0  # seconds the whole child interpreter may take

COMMON = """
import json
import multiprocessing
import time

from tiercache import TierCache

FORK = multiprocessing.get_context("fork")
WAIT = 20.0  # seconds: a child's answer, a child's exit


def in_child(target, *args):
    '''Run target(*args) in a forked child; return what it returned (or raise its error).'''
    parent_end, child_end = FORK.Pipe()

    def main():
        try:
            child_end.send(("ok", target(*args)))
        except BaseException as exc:
            child_end.send(("error", repr(exc)))
        finally:
            child_end.close()

    process = FORK.Process(target=main)
    process.start()
    try:
        if not parent_end.poll(WAIT):
            raise AssertionError("the child did not answer in time")
        status, value = parent_end.recv()
    finally:
        process.join(WAIT)
        if process.is_alive():
            process.kill()
            process.join(WAIT)
    if status != "ok":
        raise AssertionError(f"the child failed: {value}")
    return value
"""

FIRST_CALL = (
    COMMON
    + """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

EXPORTER = []


def install():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    EXPORTER.append(exporter)


def first_call(cache, install_here):
    if install_here:
        install()  # what a gunicorn post_fork hook does
    exporter = EXPORTER[0]
    exporter.clear()
    assert cache.get_or_set("first", lambda: "v") == "v"
    return sorted(span.name for span in exporter.get_finished_spans())


def fork_soon_after_building(cache, install_here):
    telemetry = cache._telemetry
    # What makes the check meaningful: the cache saw no SDK and its next look for one is
    # still ahead; a child that inherited that deadline would not trace its first call.
    assert not telemetry.tracing
    assert telemetry.next_refresh > time.monotonic() + 0.2, "the parent was too slow"
    return in_child(first_call, cache, install_here)


# 1. The SDK is installed in the child, after the fork (post_fork).
post_fork = TierCache.from_url(URL, namespace=NS + "-post-fork")
post_fork.set("warm", 1)  # the master used it: a listener thread, an L2 round trip
result = {"post_fork": fork_soon_after_building(post_fork, True)}
post_fork.close()

# 2. The master installs the SDK after building the cache and forks within the second.
master = TierCache.from_url(URL, namespace=NS + "-master")
master.set("warm", 1)
install()
result["master"] = fork_soon_after_building(master, False)
master.close()
print(json.dumps(result))
"""
)


def _run(code: str, redis_server: RedisServer, namespace: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    header = f"URL = {redis_server.url!r}\nNS = {namespace!r}\n"
    proc = run_python(header + textwrap.dedent(code), env=env, cwd=REPO_ROOT, timeout=TIMEOUT)
    assert proc.returncode == 0, f"child failed:\n{proc.stdout}\n{proc.stderr}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_a_forked_child_traces_its_very_first_call(
    redis_server: RedisServer, namespace: str
) -> None:
    """The cache was built (and used) in the master less than a second before the fork;
    the child's first call has its spans, with the SDK installed in the child after the
    fork or in the master before it."""
    result = _run(FIRST_CALL, redis_server, namespace)
    for case in ("post_fork", "master"):
        names = result[case]
        assert "tiercache.get_or_set" in names, (case, names)
        assert "tiercache.load" in names, (case, names)
        assert "GET" in names, (case, names)


COUNTS = (
    COMMON
    + """
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
GAUGES = {
    "tiercache.l1.entries",
    "tiercache.l1.bytes",
    "tiercache.write_behind.pending",
    "tiercache.breaker.open",
}


def counts():
    '''Every counter point of NS: {metric: {sorted attributes (but the namespace): value}}.'''
    found = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name in GAUGES or not hasattr(metric.data, "is_monotonic"):
                    continue
                for point in metric.data.data_points:
                    attrs = dict(point.attributes)
                    if attrs.pop("tiercache.namespace") != NS:
                        continue
                    key = ",".join(f"{k}={v}" for k, v in sorted(attrs.items()))
                    found.setdefault(metric.name, {})[key] = point.value
    return found


STATS = ("l1_hits", "l1_misses", "l2_hits", "l2_misses", "loads", "read_misses", "bus_sent")


def in_the_child(cache):
    at_start = counts()
    stats_at_start = {name: cache.stats()[name] for name in STATS}
    assert cache.get_or_set("child", lambda: "c") == "c"  # the loader answers
    return {"at_start": at_start, "stats_at_start": stats_at_start, "after_one": counts()}


cache = TierCache.from_url(URL, namespace=NS)
assert cache.get_or_set("k", lambda: 1) == 1
assert cache.get_or_set("k", lambda: 1) == 1
assert cache.get("absent") is None
closed = TierCache.from_url(URL, namespace=NS)
assert closed.get_or_set("j", lambda: 2) == 2
closed.close()  # its counts stay in the parent's totals
parent_before = counts()
child = in_child(in_the_child, cache)
print(json.dumps({"parent_before": parent_before, "parent_after": counts(), **child}))
cache.close()
"""
)


def test_a_forked_childs_metrics_and_stats_start_from_zero(
    redis_server: RedisServer, namespace: str
) -> None:
    """The parent used a cache and closed another one on the namespace; in the forked
    child every counter of the namespace starts at zero (stats() too), then counts the
    child's own reads only; the parent's numbers are untouched."""
    result = _run(COUNTS, redis_server, namespace)
    requests = "tiercache.requests"
    parent = result["parent_before"]
    assert parent[requests]["tiercache.result=miss,tiercache.tier=loader"] == 2
    assert parent[requests]["tiercache.result=hit,tiercache.tier=l1"] == 1
    assert parent["tiercache.loads"][""] == 2
    assert result["parent_after"] == parent

    at_start = result["at_start"]
    assert set(at_start) == set(parent)  # the same instruments and series...
    for name, series in at_start.items():
        assert all(value == 0 for value in series.values()), (name, series)  # ...at zero
    assert all(value == 0 for value in result["stats_at_start"].values())

    after = result["after_one"]
    nonzero = {
        (name, key): value
        for name, series in after.items()
        for key, value in series.items()
        if value
    }
    assert nonzero == {
        (requests, "tiercache.result=miss,tiercache.tier=loader"): 1,
        ("tiercache.loads", ""): 1,
    }
