"""Redis Cluster: ``get_many(100)`` across 3 primaries, and invalidation delivery.

One 3-primary cluster (no replicas) is started here (``tests/redis_cluster.py``).

* ``get_many(100)``: ``TierCache.get_many`` of 100 keys spread over the three primaries, every
  key an L1 miss and an L2 hit (``l1_maxsize=1`` and two disjoint key sets read alternately,
  as in the ``l2`` benchmark), against the peer: raw redis-py ``RedisCluster.mget_nonatomic``
  (one MGET per hash slot, pipelined per node) + ``msgpack.unpackb`` of each value, with a
  client built by the same ``client_from_url`` (short timeouts, no retries).
* invalidation: the ``invalidation`` benchmark's idle receiver (a ``spawn``ed process whose
  listener thread drops the L1 entry), with writer and receiver on the cluster URL: the time
  from ``set`` returning in the writer to the entry gone in the receiver, once with
  ``pubsub="classic"`` and once with ``pubsub="sharded"``.

Targets: get_many(100) <= 1.3x the raw grouped MGET; invalidation p99 <= 2 ms (idle), both
pub/sub flavours.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgpack

from benchmarks import invalidation
from benchmarks._timing import Variant, compare, print_table, ratio_table
from tests.redis_cluster import RedisClusterProcesses
from tiercache import TierCache
from tiercache.connect import client_from_url

TITLE = "Redis Cluster (3 primaries): get_many(100) vs raw grouped MGET; invalidation p99"
MANY = 100
TTL = 3600.0
TARGET_MANY = 1.3
TARGET_P99_MS = 2.0
VALUE: dict[str, Any] = {"id": 1234567, "sku": "WB-0750-STL", "price": 19.99, "tags": ["a"]}


def _get_many(cluster: RedisClusterProcesses, quick: bool) -> float:
    number, rounds = (8, 9) if quick else (10, 41)
    cache = TierCache.from_url(cluster.url, namespace="clbench", l1_maxsize=1, ttl=TTL, l1_ttl=TTL)
    raw = client_from_url(cluster.url)
    try:
        blob = msgpack.packb(VALUE)
        keys_a = [f"a{i}" for i in range(MANY)]
        keys_b = [f"b{i}" for i in range(MANY)]
        cache.set_many(dict.fromkeys(keys_a + keys_b, VALUE))
        raw_a = [f"raw:a{i}" for i in range(MANY)]
        raw_b = [f"raw:b{i}" for i in range(MANY)]
        raw.mset_nonatomic(dict.fromkeys(raw_a + raw_b, blob))
        nodes = {raw.get_node_from_key(k).port for k in raw_a}
        slots = {raw.keyslot(k) for k in raw_a}
        print(f"{MANY} keys over {len(nodes)} primaries and {len(slots)} slots")
        assert cache.get_many(keys_a) == dict.fromkeys(keys_a, VALUE)
        before = cache.stats()
        samples = compare(
            [
                Variant(
                    "raw",
                    "[u(x) for x in m(ka)]; [u(x) for x in m(kb)]",
                    {"u": msgpack.unpackb, "m": raw.mget_nonatomic, "ka": raw_a, "kb": raw_b},
                    ops=2,
                ),
                Variant(
                    "ours",
                    "gm(ka); gm(kb)",
                    {"gm": cache.get_many, "ka": keys_a, "kb": keys_b},
                    ops=2,
                ),
            ],
            number=number,
            repeat=rounds,
        )
        after = cache.stats()
        l1_hits = after["l1_hits"] - before["l1_hits"]
        l2_hits = after["l2_hits"] - before["l2_hits"]
        print(f"during the timing: {l2_hits} L2 hits, {l1_hits} L1 hits")
        assert l1_hits * 1000 <= l2_hits, "L1 hits would flatter tiercache"
        assert after["l2_misses"] == before["l2_misses"]
        ratio_table(
            f"get_many of {MANY} keys on the cluster, all L2 hits, time per call (median of "
            f"{rounds} interleaved repeats of {2 * number} calls)",
            samples,
            "raw",
            labels={
                "raw": f"RedisCluster.mget_nonatomic({MANY}) (one MGET per slot) + unpackb (peer)",
                "ours": f"TierCache.get_many({MANY}), 2 alternating key sets, l1_maxsize=1",
            },
            cpu=True,
        )
        return samples["ours"].median / samples["raw"].median
    finally:
        raw.close()
        cache.close()


def _invalidation(cluster: RedisClusterProcesses, quick: bool) -> dict[str, float]:
    n = 300 if quick else 1000
    rows: list[list[Any]] = []
    p99s: dict[str, float] = {}
    for seed, (flavour, label) in enumerate(
        (("classic", "classic PUBLISH"), ("sharded", "sharded SPUBLISH")), start=1
    ):
        result = invalidation._measure(
            SimpleNamespace(url=cluster.url),  # type: ignore[arg-type]
            "tiercache",
            "idle",
            n,
            seed=seed,
            options={"pubsub": flavour},
        )
        values = result["latencies"]
        if not values:
            rows.append([label, "-", "-", "-", 0, result["missed"]])
            continue
        p99s[flavour] = invalidation._percentile(values, 0.99)
        rows.append(
            [
                label,
                invalidation._ms(invalidation._percentile(values, 0.5)),
                invalidation._ms(p99s[flavour]),
                invalidation._ms(values[-1]),
                len(values),
                result["missed"],
            ]
        )
    print_table(
        "Invalidation on the cluster: set() returned in the writer -> entry dropped in another "
        "process (idle receiver)",
        ["pub/sub", "p50", "p99", "max", "n", "missed"],
        rows,
    )
    return p99s


def run(quick: bool = False) -> None:
    with RedisClusterProcesses() as cluster:
        ratio = _get_many(cluster, quick)
        p99s = _invalidation(cluster, quick)
    verdicts = [
        f"get_many({MANY}) <= {TARGET_MANY}x: {ratio:.2f}x -> "
        f"{'PASS' if ratio <= TARGET_MANY else 'FAIL'}"
    ]
    for flavour in ("classic", "sharded"):
        p99 = p99s.get(flavour)
        text = "-" if p99 is None else f"{p99 / 1e6:.2f} ms"
        ok = p99 is not None and p99 <= TARGET_P99_MS * 1e6
        verdicts.append(
            f"{flavour} invalidation p99 <= {TARGET_P99_MS:g} ms: {text} -> "
            f"{'PASS' if ok else 'FAIL'}"
        )
    print("Targets: " + "; ".join(verdicts))


if __name__ == "__main__":
    from benchmarks.__main__ import main

    main(["cluster"])
