"""Refresh-ahead: what callers of a hot key pay when it expires, with and without it.

One hot key (``ttl=2`` s, a loader that sleeps 50 ms like a slow query) is read in a loop
(0.2 ms pause between reads, like request threads doing I/O) by 4 threads for 8 s
(``--quick``: 3 s) on a cache built with ``TierCache.from_url`` on a private redis-server,
twice: ``refresh_ahead=None`` and ``refresh_ahead=0.8``. Reported: p50/p99/max per call, the
number of calls slower than 10 ms, how many separate slow episodes they form (slow calls
less than 0.2 s apart are one episode), loader calls and background refreshes
(``stats()["refreshes"]``).

Expected: without refresh-ahead, every expiry (about every 1.8-2 s: the TTL jitter only
shortens) blocks every reader for the 50 ms load (single-flight: one load, everyone waits);
with ``refresh_ahead=0.8`` a read after 80% of the ttl returns the current value and the
reload runs in the background, so no call waits for the loader.
Target: with ``refresh_ahead=0.8``, no call slower than 10 ms.

Then probabilistic early expiration (``early_expiration=1.0``, XFetch) against the same cache
without it, both with ``l1_ttl=0.05`` (XFetch decides on reads from Redis, so a process gets
one chance per ``l1_ttl``): loader calls and slow calls around each expiry. Expected: most
expiries are reloaded ahead in the background (fewer slow episodes), at the price of a few
more loader calls; how many depends on how many Redis reads fall in the last few load
durations before the expiry (no target: it is probabilistic by design).
"""

from __future__ import annotations

import threading
import time
from array import array
from typing import Any

from benchmarks._timing import fmt_ns, print_table
from benchmarks.soak import percentile
from tests.redis_server import RedisServer
from tiercache import TierCache

TITLE = "hot-key latency around its expiry, refresh_ahead=None vs 0.8"
TTL = 2.0
LOADER_SLEEP = 0.05
READERS = 4
#: Seconds each reader sleeps between two reads, as a request thread does I/O between cache
#: calls. Without it, 4 threads spinning on the GIL make calls of 10-20 ms out of thread
#: switches alone (the 5 ms switch interval), which drowns the signal.
PAUSE = 0.0002
SLOW_NS = 10_000_000  # a call slower than 10 ms waited for the loader
EPISODE_GAP_NS = 200_000_000  # slow calls closer than 0.2 s belong to one expiry
JOIN_TIMEOUT = 30.0
XFETCH_L1_TTL = 0.05

_perf_ns = time.perf_counter_ns


def _measure(
    server: RedisServer,
    refresh_ahead: float | None,
    seconds: float,
    early_expiration: float | None = None,
    l1_ttl: float | None = None,
) -> dict[str, Any]:
    label = "none" if refresh_ahead is None else f"{refresh_ahead:g}"
    label += "" if early_expiration is None else f"-xfetch{early_expiration:g}"
    label += "" if l1_ttl is None else f"-l1{l1_ttl:g}"
    calls = [0]

    def loader() -> dict[str, Any]:
        calls[0] += 1
        time.sleep(LOADER_SLEEP)
        return {"sku": "A1", "price": "19.99", "stock": 17}

    cache = TierCache.from_url(
        server.url,
        namespace=f"refresh-{label}",
        ttl=TTL,
        refresh_ahead=refresh_ahead,
        early_expiration=early_expiration,
        l1_ttl=l1_ttl,
    )
    try:
        cache.get_or_set("hot", loader)  # warm: the first load is not part of the run
        calls[0] = 0
        stop = threading.Event()
        start = threading.Barrier(READERS + 1)
        latencies = [array("d") for _ in range(READERS)]
        slow_at: list[list[int]] = [[] for _ in range(READERS)]

        def read(index: int) -> None:
            mine, slow = latencies[index], slow_at[index]
            get_or_set = cache.get_or_set
            start.wait()
            while not stop.is_set():
                began = _perf_ns()
                get_or_set("hot", loader)
                took = _perf_ns() - began
                mine.append(took)
                if took > SLOW_NS:
                    slow.append(began)
                time.sleep(PAUSE)

        threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(READERS)]
        for thread in threads:
            thread.start()
        start.wait()
        time.sleep(seconds)  # the length of the run
        stop.set()
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
        stats = cache.stats()
    finally:
        cache.close()

    values = sorted(v for arr in latencies for v in arr)
    starts = sorted(t for per in slow_at for t in per)
    episodes = sum(1 for i, t in enumerate(starts) if i == 0 or t - starts[i - 1] > EPISODE_GAP_NS)
    return {
        "label": "None" if refresh_ahead is None else f"{refresh_ahead:g}",
        "calls": len(values),
        "p50": percentile(values, 0.50),
        "p99": percentile(values, 0.99),
        "max": values[-1] if values else 0.0,
        "slow": len(starts),
        "episodes": episodes,
        "loader_calls": calls[0],
        "refreshes": stats["refreshes"],
        "refresh_errors": stats["refresh_errors"],
        "early": stats["early_refreshes"],
        "early_label": "None" if early_expiration is None else f"{early_expiration:g}",
    }


def run(quick: bool = False) -> None:
    seconds = 3.0 if quick else 8.0
    print(
        f"One hot key, ttl={TTL:g} s, loader sleeps {LOADER_SLEEP * 1000:g} ms; {READERS} "
        f"threads call get_or_set in a loop ({PAUSE * 1e6:g} µs pause between calls) for "
        f"{seconds:g} s per variant."
    )
    with RedisServer() as server:
        results = [_measure(server, refresh_ahead, seconds) for refresh_ahead in (None, 0.8)]
        xfetch = [
            _measure(server, None, seconds, early_expiration=beta, l1_ttl=XFETCH_L1_TTL)
            for beta in (None, 1.0)
        ]
    print_table(
        "get_or_set on the hot key, every call of every reader",
        [
            "refresh_ahead",
            "calls",
            "p50",
            "p99",
            "max",
            f"> {SLOW_NS // 1_000_000} ms",
            "slow episodes",
            "loader calls",
            "refreshes",
            "refresh errors",
        ],
        [
            [
                r["label"],
                r["calls"],
                fmt_ns(r["p50"]),
                fmt_ns(r["p99"]),
                fmt_ns(r["max"]),
                r["slow"],
                r["episodes"],
                r["loader_calls"],
                r["refreshes"],
                r["refresh_errors"],
            ]
            for r in results
        ],
    )
    print(
        "loader calls: all of them, in the callers' threads or in the background; "
        "refreshes: background reloads that replaced the value."
    )
    without, with_refresh = results[:2]
    ok = with_refresh["slow"] == 0
    print(
        f"Target: with refresh_ahead=0.8, no call slower than {SLOW_NS // 1_000_000} ms: "
        f"{with_refresh['slow']} slow calls in {with_refresh['episodes']} episodes "
        f"(without: {without['slow']} in {without['episodes']}) -> {'PASS' if ok else 'FAIL'}"
    )
    _print_xfetch(xfetch)


def _print_xfetch(results: list[dict[str, Any]]) -> None:
    print_table(
        f"early expiration (XFetch), l1_ttl={XFETCH_L1_TTL:g} s, every call of every reader",
        [
            "early_expiration",
            "calls",
            "p50",
            "p99",
            "max",
            f"> {SLOW_NS // 1_000_000} ms",
            "slow episodes",
            "loader calls",
            "early reloads",
            "refreshes",
        ],
        [
            [
                r["early_label"],
                r["calls"],
                fmt_ns(r["p50"]),
                fmt_ns(r["p99"]),
                fmt_ns(r["max"]),
                r["slow"],
                r["episodes"],
                r["loader_calls"],
                r["early"],
                r["refreshes"],
            ]
            for r in results
        ],
    )
    off, on = results
    print(
        f"Slow episodes (callers waiting for the loader at an expiry): {off['episodes']} without, "
        f"{on['episodes']} with early_expiration=1.0; loader calls {off['loader_calls']} vs "
        f"{on['loader_calls']}."
    )


if __name__ == "__main__":
    from benchmarks.__main__ import main

    main(["refresh"])
