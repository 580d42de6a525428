"""Writes and loads-after-writes: what coherence costs per write, against raw redis-py.

* ``set`` (L2 write + invalidation message, one round trip) vs a raw ``SET`` +
  ``msgpack.packb`` of the same ~200-byte dict;
* ``delete`` (UNLINK + message, one round trip) vs a raw ``DEL``;
* a read that loads after a delete (``delete`` untimed in the setup of each read: the
  read asks "the value, or the lease", loads, writes with the lease: two round trips) vs a
  raw ``GET`` + ``SET`` + ``packb`` (the loader is a constant: excluded on both sides).

Both sides use one real redis-server started here and clients with the same options.
Targets (issue 10): set <= 1.2x, delete <= 1.2x, load after delete <= 1.3x.

Two floors show what announcing a write costs whoever does it: a raw pipeline of ``SET`` +
``PUBLISH`` to a channel that one other process subscribes to (Redis writes the message to
that subscriber before it answers the writer), and the same channel subscribed by a thread of
this process too (as a cache's own listener is: the message wakes that thread, which then
competes with the writer for the GIL).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
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
            floor = _Subscribers(server.url, raw)
            pipeline = raw.pipeline

            def set_pub(channel: str) -> Any:
                def run() -> None:
                    pipeline(transaction=False).set("r:k", packb(VALUE), ex=300).publish(
                        channel, b"x" * 64
                    ).execute()

                return run

            def del_pub() -> None:
                pipeline(transaction=False).unlink("r:d").publish("floor:2", b"x" * 64).execute()

            writes = compare(
                [
                    Variant(
                        "raw_set",
                        "s(k, p(v), ex=300)",
                        {"s": rset, "p": packb, "k": "r:k", "v": VALUE},
                    ),
                    Variant("set", "s(k, v)", {"s": cache.set, "k": "k", "v": VALUE}),
                    Variant("pub_other", "f()", {"f": set_pub("floor:1")}),
                    Variant("pub_both", "f()", {"f": set_pub("floor:2")}),
                    Variant("raw_del", "d(k)", {"d": rdel, "k": "r:d"}),
                    Variant("del_pub", "f()", {"f": del_pub}),
                    Variant("delete", "d(k)", {"d": cache.delete, "k": "d"}),
                ],
                number=number,
                repeat=rounds,
            )
            ratio_table(
                f"set and delete, time per call (median of {rounds} interleaved repeats)",
                {k: writes[k] for k in ("raw_set", "pub_other", "pub_both", "set")},
                "raw_set",
                labels={
                    "raw_set": "raw redis-py SET + msgpack.packb (peer)",
                    "pub_other": "floor: raw SET + PUBLISH, 1 subscriber in another process",
                    "pub_both": "floor: the same + 1 subscriber thread in this process",
                    "set": "TierCache.set (SET + PUBLISH, one round trip)",
                },
            )
            ratio_table(
                "",
                {k: writes[k] for k in ("raw_del", "del_pub", "delete")},
                "raw_del",
                labels={
                    "raw_del": "raw redis-py DEL (peer)",
                    "del_pub": "floor: raw UNLINK + PUBLISH, subscribers here and elsewhere",
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
            f_set = writes["set"].median / writes["pub_both"].median
            f_del = writes["delete"].median / writes["del_pub"].median
            print(
                f"Over the floors (a write that announces itself to a subscribed channel): "
                f"set {f_set:.2f}x SET + PUBLISH with subscribers here and elsewhere; "
                f"delete {f_del:.2f}x UNLINK + PUBLISH with the same subscribers"
            )
        finally:
            floor.close()
            raw.close()
            cache.close()


class _Subscribers:
    """One subscriber process on ``floor:1`` and ``floor:2``, and a subscriber thread of this
    process on ``floor:2``: the listeners the floors' PUBLISHes are delivered to."""

    def __init__(self, url: str, raw: Any) -> None:
        code = (
            "import redis, sys\n"
            "p = redis.Redis.from_url(sys.argv[1]).pubsub()\n"
            "p.subscribe('floor:1', 'floor:2')\n"
            "for _ in p.listen(): pass\n"
        )
        self._process = subprocess.Popen([sys.executable, "-c", code, url])
        self._pubsub = client_from_url(url).pubsub()
        self._pubsub.subscribe("floor:2")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while dict(raw.pubsub_numsub("floor:1", "floor:2")) != {b"floor:1": 1, b"floor:2": 2}:
            if time.monotonic() > deadline or self._process.poll() is not None:
                self.close()
                raise RuntimeError("the floor's subscribers did not subscribe within 30 s")
            time.sleep(0.01)

    def _listen(self) -> None:
        while not self._stop.is_set():
            self._pubsub.get_message(timeout=0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self._process.kill()
        self._process.wait(5)


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
