"""Memoized L1 hit: a ``@cache.memoize`` call answered from L1 vs ``cachetools.cached``.

The peer is the usual in-process memoizer: ``cachetools.cached(TTLCache(maxsize, ttl),
lock=threading.Lock())`` on the same function. Both are called with positional arguments and
with keyword arguments (cachetools builds its key from them too); a plain call of the
undecorated function is the floor. The memoized function's cache is built with
``TierCache.from_url`` on a real redis-server, as in ``hot_path``; every timed call is an L1
hit (asserted: no load happens while timing).

Target: a memoized L1 hit <= 0.5x the ``cachetools.cached`` call, positional and keyword.
"""

from __future__ import annotations

import threading

from cachetools import TTLCache, cached

from benchmarks._timing import Variant, compare, ratio_table
from tests.redis_server import RedisServer
from tiercache import TierCache

TITLE = "memoized L1 hit vs cachetools.cached(TTLCache, lock)"
TARGET = 0.5


def price(sku: str, qty: int = 1) -> float:
    """The function both memoizers wrap: cheap, so the table shows their own cost."""
    return 9.5 * qty


def run(quick: bool = False) -> None:
    number, rounds = (20_000, 15) if quick else (100_000, 41)

    with RedisServer() as server:
        cache = TierCache.from_url(server.url, namespace="bench", ttl=3600, l1_ttl=3600)
        try:
            ours = cache.memoize(ttl=3600)(price)
            peer = cached(TTLCache(10_000, 3600), lock=threading.Lock())(price)
            for f in (ours, peer):  # load once: every timed call is a hit
                f("A1", 2)
                f(sku="A1", qty=2)
            loads_before = cache.stats()["loads"]

            variants = [
                Variant("plain", "f('A1', 2)", {"f": price}),
                Variant("peer_pos", "f('A1', 2)", {"f": peer}),
                Variant("ours_pos", "f('A1', 2)", {"f": ours}),
                Variant("peer_kw", "f(sku='A1', qty=2)", {"f": peer}),
                Variant("ours_kw", "f(sku='A1', qty=2)", {"f": ours}),
            ]
            samples = compare(variants, number=number, repeat=rounds)
            assert cache.stats()["loads"] == loads_before, "an L1 hit benchmark must not load"

            labels = {
                "plain": "plain call, not memoized (floor)",
                "peer_pos": "cachetools.cached(TTLCache, lock) (peer)",
                "ours_pos": "@cache.memoize, L1 hit (Redis L2 attached)",
                "peer_kw": "cachetools.cached(TTLCache, lock) (peer)",
                "ours_kw": "@cache.memoize, L1 hit (Redis L2 attached)",
            }
            ratios = {}
            for form, args in (("pos", "f('A1', 2)"), ("kw", "f(sku='A1', qty=2)")):
                subset = {"plain": samples["plain"]} if form == "pos" else {}
                subset |= {name: samples[f"{name}_{form}"] for name in ("peer", "ours")}
                ratio_table(
                    f"{args}: ns per call (median of {rounds} interleaved repeats of "
                    f"{number:,} calls, timing-loop cost subtracted; all rows one run)",
                    {
                        f"{name}_{form}" if name != "plain" else name: s
                        for name, s in subset.items()
                    },
                    f"peer_{form}",
                    labels=labels,
                )
                ratios[form] = samples[f"ours_{form}"].median / samples[f"peer_{form}"].median
            verdict = "PASS" if max(ratios.values()) <= TARGET else "FAIL"
            print(
                f"Target memoize hit <= {TARGET}x cachetools.cached: positional "
                f"{ratios['pos']:.2f}x, keyword {ratios['kw']:.2f}x -> {verdict}"
            )
        finally:
            cache.close()


if __name__ == "__main__":
    from benchmarks.__main__ import main

    main(["memoize"])
