"""L2 hit: ``TierCache.get_or_set`` / ``get_many`` answered by Redis vs raw redis-py.

Peers: raw redis-py ``GET`` + ``msgpack.unpackb`` of the same ~200-byte dict, and raw
``MGET`` of 100 keys + ``unpackb`` of each. Both sides use one real redis-server started here
and clients with identical options (the raw one is built by the same
``tiercache.connect.client_from_url`` that ``TierCache.from_url`` uses; checked below).

How the L1 miss is forced, with no extra step outside the cache's own code:

* single key: a cache with ``l1_maxsize=1`` and two keys read alternately (``a, b, a, ...``):
  each call misses L1, hits L2, and its fill evicts the other key, as any miss into a full L1
  does; the peer alternates two keys as well.
* ``get_many``: the same cache, two disjoint sets of 100 keys read alternately.
* cross-check for the single key: ``cache._l1.invalidate([key])`` before each call, minus
  that invalidate timed alone (of an absent key: a few dict pops cheaper than of a present
  one, noise against a round trip).

Besides wall time per read, the tables show the calling thread's CPU time per read (it
excludes waiting for Redis): the difference between rows is what tiercache's Python adds.

Targets: L2 hit <= 1.2x the raw GET, get_many(100) <= 1.2x the raw MGET.
"""

from __future__ import annotations

from typing import Any

import msgpack

from benchmarks._timing import Sample, Variant, compare, fmt_ns, ratio_table
from tests.redis_server import RedisServer
from tiercache import TierCache
from tiercache.connect import client_from_url

TITLE = "L2 hit: get_or_set / get_many(100) vs raw redis-py GET / MGET + msgpack"
VALUE: dict[str, Any] = {
    "id": 1234567,
    "sku": "WB-0750-STL",
    "name": "Stainless steel water bottle, 750 ml",
    "price": 19.99,
    "currency": "EUR",
    "stock": 17,
    "active": True,
    "tags": ["outdoor", "kitchen", "gift"],
    "updated_at": "2024-05-01T12:00:00Z",
    "rating": {"avg": 4.6, "count": 312},
    "seller": "Acme Outdoor GmbH",
}
MANY = 100
TTL = 3600.0


def _loader() -> Any:
    raise AssertionError("an L2-hit benchmark must never run its loader")


def _simple_options(client: Any) -> dict[str, Any]:
    """The client's connection options that compare by value (plus the retry count)."""
    kwargs = client.connection_pool.connection_kwargs
    simple = {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))}
    retry = kwargs.get("retry")
    simple["retries"] = getattr(retry, "_retries", None)
    simple["connection_class"] = client.connection_pool.connection_class.__name__
    return simple


def _minus(both: Sample, alone: Sample) -> Sample:
    """Per repeat, ``both`` minus ``alone`` (timed in the same repeat), wall and CPU."""
    return Sample(
        "inv_net",
        [x - y for x, y in zip(both.ns_per_op, alone.ns_per_op, strict=True)],
        [x - y for x, y in zip(both.cpu_ns_per_op, alone.cpu_ns_per_op, strict=True)],
    )


def _report(title: str, samples: dict[str, Sample], peer: str, labels: dict[str, str]) -> None:
    ratio_table(title, samples, peer, labels=labels, cpu=True)


def run(quick: bool = False) -> None:
    number, rounds = (100, 9) if quick else (150, 61)
    many_number, many_rounds = (8, 9) if quick else (10, 61)

    with RedisServer() as server:
        # l1_maxsize=1 + alternating keys: every read misses L1 (see the module docstring).
        cache = TierCache.from_url(
            server.url, namespace="l2bench", l1_maxsize=1, ttl=TTL, l1_ttl=TTL
        )
        inv_cache = TierCache.from_url(server.url, namespace="l2inv", ttl=TTL, l1_ttl=TTL)
        raw = client_from_url(server.url)
        try:
            ours_opts, raw_opts = _simple_options(cache._l2.client), _simple_options(raw)
            assert ours_opts == raw_opts, (ours_opts, raw_opts)
            shown = {k: ours_opts[k] for k in ("socket_timeout", "retries", "connection_class")}
            print(f"Both clients: {shown}; value: {len(msgpack.packb(VALUE))} bytes of msgpack")

            blob = msgpack.packb(VALUE)
            cache.set_many({"a": VALUE, "b": VALUE})
            inv_cache.set("a", VALUE)
            raw.set("raw:a", blob)
            raw.set("raw:b", blob)
            keys_a = [f"a{i}" for i in range(MANY)]
            keys_b = [f"b{i}" for i in range(MANY)]
            cache.set_many(dict.fromkeys(keys_a + keys_b, VALUE))
            inv_cache.set_many(dict.fromkeys(keys_a, VALUE))
            raw_a = [f"raw:a{i}" for i in range(MANY)]
            raw_b = [f"raw:b{i}" for i in range(MANY)]
            raw.mset(dict.fromkeys(raw_a + raw_b, blob))
            stats_before = cache.stats()

            u, g = msgpack.unpackb, raw.get
            single = compare(
                [
                    Variant(
                        "raw",
                        "u(g(ka)); u(g(kb))",
                        {"u": u, "g": g, "ka": "raw:a", "kb": "raw:b"},
                        ops=2,
                    ),
                    Variant(
                        "ours",
                        "f(ka, ld); f(kb, ld)",
                        {"f": cache.get_or_set, "ka": "a", "kb": "b", "ld": _loader},
                        ops=2,
                    ),
                    Variant(
                        "ours_get", "f(ka); f(kb)", {"f": cache.get, "ka": "a", "kb": "b"}, ops=2
                    ),
                    Variant(
                        "inv_ours",
                        "inv(ks); f(k, ld)",
                        {
                            "inv": inv_cache._l1.invalidate,
                            "ks": ("a",),
                            "f": inv_cache.get_or_set,
                            "k": "a",
                            "ld": _loader,
                        },
                    ),
                    Variant("inv", "inv(ks)", {"inv": inv_cache._l1.invalidate, "ks": ("a",)}),
                ],
                number=number,
                repeat=rounds,
            )
            # The cross-check row: (invalidate + get_or_set) - invalidate alone, per repeat.
            inv_net = _minus(single.pop("inv_ours"), single["inv"])
            invalidate_alone = single.pop("inv")
            single["inv_net"] = inv_net
            _report(
                f"L2 hit, one key, time per read (median of {rounds} interleaved repeats of "
                f"{2 * number} reads)",
                single,
                "raw",
                {
                    "raw": "raw redis-py GET + msgpack.unpackb (peer)",
                    "ours": "TierCache.get_or_set, L1 miss -> L2 hit (l1_maxsize=1, 2 keys)",
                    "ours_get": "TierCache.get, L1 miss -> L2 hit (same)",
                    "inv_net": "cross-check: _l1.invalidate + get_or_set, minus invalidate",
                },
            )
            print(
                f"(the invalidate subtracted in the cross-check: {fmt_ns(invalidate_alone.median)})"
            )

            m = raw.mget
            many = compare(
                [
                    Variant(
                        "raw",
                        "[u(x) for x in m(ka)]; [u(x) for x in m(kb)]",
                        {"u": u, "m": m, "ka": raw_a, "kb": raw_b},
                        ops=2,
                    ),
                    Variant(
                        "ours",
                        "gm(ka); gm(kb)",
                        {"gm": cache.get_many, "ka": keys_a, "kb": keys_b},
                        ops=2,
                    ),
                    Variant(
                        "inv_ours",
                        "inv(ka); gm(ka)",
                        {"inv": inv_cache._l1.invalidate, "gm": inv_cache.get_many, "ka": keys_a},
                    ),
                    Variant("inv", "inv(ka)", {"inv": inv_cache._l1.invalidate, "ka": keys_a}),
                ],
                number=many_number,
                repeat=many_rounds,
            )
            many_net = _minus(many.pop("inv_ours"), many["inv"])
            many_invalidate = many.pop("inv")
            many["inv_net"] = many_net
            _report(
                f"get_many of {MANY} keys, all L1 misses -> L2 hits, time per call (median of "
                f"{many_rounds} interleaved repeats of {2 * many_number} calls)",
                many,
                "raw",
                {
                    "raw": f"raw redis-py MGET of {MANY} + unpackb each (peer)",
                    "ours": f"TierCache.get_many({MANY}), 2 alternating key sets, l1_maxsize=1",
                    "inv_net": "cross-check: _l1.invalidate(keys) + get_many, minus invalidate",
                },
            )
            print(
                f"(the invalidate subtracted in the cross-check: {fmt_ns(many_invalidate.median)})"
            )

            added = single["ours"].cpu_median - single["raw"].cpu_median
            per_key = (many["ours"].cpu_median - many["raw"].cpu_median) / MANY
            print(
                f"CPU tiercache adds over raw redis-py (calling thread): get_or_set "
                f"+{fmt_ns(added)} per read, get_many +{fmt_ns(per_key)} per key"
            )

            stats = cache.stats()
            assert stats["l1_hits"] == stats_before["l1_hits"], "an L1 hit slipped in"
            assert stats["loads"] == stats_before["loads"]
            assert stats["l2_misses"] == stats_before["l2_misses"]
            r1 = single["ours"].median / single["raw"].median
            r2 = many["ours"].median / many["raw"].median
            print(
                f"Targets: L2 hit <= 1.2x: {r1:.2f}x -> {'PASS' if r1 <= 1.2 else 'FAIL'}; "
                f"get_many({MANY}) <= 1.2x: {r2:.2f}x -> {'PASS' if r2 <= 1.2 else 'FAIL'}"
            )
        finally:
            raw.close()
            inv_cache.close()
            cache.close()


if __name__ == "__main__":
    from benchmarks.__main__ import main

    main(["l2"])
