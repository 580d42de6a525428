"""Listener: the CPU a receiving process spends per invalidation message.

Every instance's listener thread handles every message of its namespace, so this is what
each write costs every other process (and the writer itself: its echo). A writer process
sends ``set``s of a ~1 KB value at 1,000 per second; a receiver process, doing nothing
else, runs one reader thread; the thread's own on-CPU time (``/proc/self/task/<tid>/
schedstat``, nanoseconds, kernel included) divided by the messages it handled. Rows:

* tiercache, values sent (the default) and invalidating only (``propagate_values=0``): the
  cache's listener thread, its socket read, decode, order checks and L1 update;
* redis-py ``PubSub.get_message`` in a loop after ``poll()`` (peer): the read path
  tiercache used before reading the socket itself, with nothing done per message;
* ``poll()`` + ``recv()`` (floor): a Python thread woken per message that reads its bytes.

Linux only (``schedstat``). Interleaved rounds; medians. No target: the figure to watch.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import select
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._timing import print_table

TITLE = "CPU per received invalidation message: tiercache's listener vs redis-py vs poll+recv"
VALUE = {"id": 1, "name": "x" * 900, "v": 0}
RATE = 1000.0  # messages per second
NAMESPACE = "listener-bench"
TIMEOUT = 60.0
MODES = ("tiercache", "tiercache (invalidate only)", "redis-py get_message", "poll + recv")


def _on_cpu(tid: int) -> int:
    """Nanoseconds thread ``tid`` of this process has run, kernel time included."""
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        return int(f.read().split()[0])


def _receiver(url: str, mode: str, count: int, ready: Any, results: Any) -> None:
    """One receiving process: the reader thread of ``mode``; reports ns of CPU per message."""
    if mode.startswith("tiercache"):
        _tiercache_receiver(url, mode, count, ready, results)
    else:
        _raw_receiver(url, mode, count, ready, results)


def _tiercache_receiver(url: str, mode: str, count: int, ready: Any, results: Any) -> None:
    from tiercache import TierCache

    values = 0 if "invalidate" in mode else 4096
    with TierCache.from_url(url, namespace=NAMESPACE, ttl=300, propagate_values=values) as c:
        c.get("warm-up")
        deadline = time.monotonic() + TIMEOUT
        while not c.stats()["bus_probe_ok"] and time.monotonic() < deadline:
            time.sleep(0.01)  # bounded: until the listener is subscribed
        tid = c._coherence.bus.listener._thread.native_id  # benchmark-only instrumentation
        base, cpu = c.stats()["bus_received"], _on_cpu(tid)
        ready.set()
        while c.stats()["bus_received"] - base < count and time.monotonic() < deadline:
            time.sleep(0.05)  # the main thread waits; only the listener works
        handled = c.stats()["bus_received"] - base
        results.put((mode, (_on_cpu(tid) - cpu) / max(1, handled), handled))


def _raw_receiver(url: str, mode: str, count: int, ready: Any, results: Any) -> None:
    import redis

    from tiercache.messages import channel_name

    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    pubsub.subscribe(channel_name(NAMESPACE))
    pubsub.get_message(timeout=5)  # the confirmation
    sock = pubsub.connection._sock  # benchmark-only: the floor reads the socket itself
    handled, tid = [0], [0]
    started, stop = threading.Event(), threading.Event()

    def loop() -> None:
        tid[0] = threading.get_native_id()
        started.set()
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        if mode == "poll + recv":
            sock.setblocking(False)
        while not stop.is_set():
            if not poller.poll(50):
                continue
            if mode == "poll + recv":
                with contextlib.suppress(BlockingIOError):
                    handled[0] += sock.recv(65536).count(b"message")
            else:
                while pubsub.get_message(timeout=0) is not None:
                    handled[0] += 1

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    started.wait(TIMEOUT)
    cpu = _on_cpu(tid[0])
    ready.set()
    deadline = time.monotonic() + TIMEOUT
    while handled[0] < count and time.monotonic() < deadline:
        time.sleep(0.05)
    results.put((mode, (_on_cpu(tid[0]) - cpu) / max(1, handled[0]), handled[0]))
    stop.set()
    thread.join(TIMEOUT)
    pubsub.close()
    client.close()


def _one(url: str, mode: str, count: int) -> tuple[float, int]:
    from tiercache import TierCache

    ctx = mp.get_context("spawn")
    ready, results = ctx.Event(), ctx.Queue()
    process = ctx.Process(target=_receiver, args=(url, mode, count, ready, results))
    process.start()
    try:
        if not ready.wait(TIMEOUT):
            raise RuntimeError(f"the {mode} receiver never got ready")
        values = 0 if "invalidate" in mode else 4096
        with TierCache.from_url(url, namespace=NAMESPACE, ttl=300, propagate_values=values) as w:
            due = time.monotonic()
            for i in range(count + 20):  # a few more: the receiver counts from its start
                w.set(f"k{i % 100}", {**VALUE, "v": i})
                due += 1 / RATE
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)  # paces the writer at RATE
        _mode, ns, handled = results.get(timeout=TIMEOUT)
        return ns, handled
    finally:
        process.join(TIMEOUT)
        if process.is_alive():
            process.kill()


def run(quick: bool = False) -> None:
    """Interleaved rounds of every mode; print the medians."""
    from tests.redis_server import RedisServer

    if not Path("/proc/self/task").is_dir():
        print("skipped: needs Linux's /proc/self/task/<tid>/schedstat")
        return
    count, rounds = (500, 1) if quick else (2000, 3)
    found: dict[str, list[float]] = {mode: [] for mode in MODES}
    with RedisServer() as server:
        for _ in range(rounds):
            for mode in MODES:
                ns, handled = _one(server.url, mode, count)
                if handled < count:
                    print(f"  {mode}: only {handled} of {count} messages handled", file=sys.stderr)
                found[mode].append(ns)
    floor = statistics.median(found["poll + recv"])
    print_table(
        f"CPU of the reading thread per message ({count} messages at {RATE:g}/s, ~1 KB values; "
        f"median of {rounds} interleaved round(s))",
        ["reader", "µs per message", "vs poll + recv", "rounds (µs)"],
        [
            [
                mode,
                f"{statistics.median(xs) / 1e3:.1f}",
                f"{statistics.median(xs) / floor:.2f}x",
                ", ".join(f"{x / 1e3:.0f}" for x in xs),
            ]
            for mode, xs in found.items()
        ],
    )


if __name__ == "__main__":
    from benchmarks.__main__ import main

    main(["listener"])
