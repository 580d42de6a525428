"""Writes and loads-after-writes: what coherence costs per write, against raw redis-py.

* ``set`` (L2 write + invalidation message, one round trip) vs a raw ``SET`` +
  ``msgpack.packb`` of the same ~200-byte dict;
* ``delete`` (UNLINK + message, one round trip) vs a raw ``DEL``;
* a read that loads after a delete (``delete`` untimed in the setup of each read: the
  read asks "the value, or the lease", loads, writes with the lease: two round trips) vs a
  raw ``GET`` + ``SET`` + ``packb`` (the loader is a constant: excluded on both sides).

Both sides use one real redis-server started here and clients with the same options.
Targets (issue 10): set <= 1.2x, delete <= 1.2x, load after delete <= 1.3x.
"""

from __future__ import annotations

from typing import Any

import msgpack

from benchmarks._timing import Variant, compare, ratio_table
from benchmarks.l2 import VALUE  # the same ~200-byte dict as the L2 benchmark
from tests.redis_server import RedisServer
from tiercache import TierCache
from tiercache.connect import client_from_url

TITLE = "Writes: set / delete / load after delete vs raw redis-py SET / DEL / GET+SET"


def _value() -> dict[str, Any]:
    return VALUE


def run(quick: bool = False) -> None:
    number, rounds = (100, 9) if quick else (200, 31)
    with RedisServer() as server:
        cache = TierCache.from_url(server.url, namespace="wbench", ttl=300)
        raw = client_from_url(server.url)
        try:
            cache.get("warm-up")  # subscribe before timing
            packb, rset, rget, rdel = msgpack.packb, raw.set, raw.get, raw.delete
            for key in ("k", "d"):
                cache.set(key, VALUE)
            writes = compare(
                [
                    Variant(
                        "raw_set",
                        "s(k, p(v), ex=300)",
                        {"s": rset, "p": packb, "k": "r:k", "v": VALUE},
                    ),
                    Variant("set", "s(k, v)", {"s": cache.set, "k": "k", "v": VALUE}),
                    Variant("raw_del", "d(k)", {"d": rdel, "k": "r:d"}),
                    Variant("delete", "d(k)", {"d": cache.delete, "k": "d"}),
                ],
                number=number,
                repeat=rounds,
            )
            ratio_table(
                f"set and delete, time per call (median of {rounds} interleaved repeats)",
                {"raw_set": writes["raw_set"], "set": writes["set"]},
                "raw_set",
                labels={
                    "raw_set": "raw redis-py SET + msgpack.packb (peer)",
                    "set": "TierCache.set (SET + PUBLISH, one round trip)",
                },
            )
            ratio_table(
                "",
                {"raw_del": writes["raw_del"], "delete": writes["delete"]},
                "raw_del",
                labels={
                    "raw_del": "raw redis-py DEL (peer)",
                    "delete": "TierCache.delete (UNLINK + PUBLISH, one round trip)",
                },
            )

            def raw_load() -> None:
                if rget("r:l") is None:
                    rset("r:l", packb(_value()), ex=300)

            loads = compare(
                [
                    Variant(
                        "raw_load",
                        "d(k); f()",
                        {"d": rdel, "k": "r:l", "f": raw_load},
                    ),
                    Variant(
                        "raw_del_alone",
                        "d(k)",
                        {"d": rdel, "k": "r:x"},
                    ),
                    Variant(
                        "load",
                        "d(k); g(k, ld)",
                        {"d": cache.delete, "g": cache.get_or_set, "k": "l", "ld": _value},
                    ),
                    Variant("delete_alone", "d(k)", {"d": cache.delete, "k": "x"}),
                ],
                number=number,
                repeat=rounds,
            )
            raw_net = _minus(loads["raw_load"], loads["raw_del_alone"], "raw")
            ours_net = _minus(loads["load"], loads["delete_alone"], "ours")
            ratio_table(
                "A read that loads after a delete, the delete subtracted (same repeats)",
                {"raw": raw_net, "ours": ours_net},
                "raw",
                labels={
                    "raw": "raw redis-py GET (miss) + SET + packb (peer)",
                    "ours": "TierCache.get_or_set after delete (get-or-lease, lease write)",
                },
            )
            r_set = writes["set"].median / writes["raw_set"].median
            r_del = writes["delete"].median / writes["raw_del"].median
            r_load = ours_net.median / raw_net.median
            verdict = "PASS" if r_set <= 1.2 and r_del <= 1.2 and r_load <= 1.3 else "FAIL"
            print(
                f"Targets: set <= 1.2x: {r_set:.2f}x; delete <= 1.2x: {r_del:.2f}x; "
                f"load after delete <= 1.3x: {r_load:.2f}x -> {verdict}"
            )
        finally:
            raw.close()
            cache.close()


def _minus(both: Any, alone: Any, name: str) -> Any:
    from benchmarks._timing import Sample

    return Sample(
        name,
        [x - y for x, y in zip(both.ns_per_op, alone.ns_per_op, strict=True)],
        [x - y for x, y in zip(both.cpu_ns_per_op, alone.cpu_ns_per_op, strict=True)],
    )


if __name__ == "__main__":
    from benchmarks.__main__ import main

    main(["writes"])
