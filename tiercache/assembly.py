"""Building one cache's parts from its settings, each given its collaborators explicitly.

The dependency order is the reading order of the package: telemetry first (every part that
reports is given it), then the tiers (L1, L2 behind its breaker), coherence (versions, bus,
leases), then the read/load/write parts that use them. `TierCache` keeps the result and
delegates to it; nothing here calls back into the cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .atomic import Atomic
from .background import Background
from .coherence import Coherence
from .entry import EntryCodec
from .flight import SingleFlight
from .l1 import UNBOUNDED_BYTES, LocalTier
from .l2 import RedisTier, db_of, server_of
from .layout import entry_key
from .lifecycle import Lifecycle
from .lifetimes import Lifetimes
from .loading import Loads
from .options import Breaker, Settings
from .pending import PendingWrites
from .propagation import Propagation
from .reading import L2Reader
from .resilience import CircuitBreaker
from .stats import Counters, RateLimitedLog
from .telemetry import Telemetry
from .write_behind import WriteBehind
from .write_stream import StreamQueue
from .writer import KeyLocks, Persist
from .writing import Invalidations, Writes

__all__ = ["Parts", "assemble"]


@dataclass(slots=True)
class Parts:
    """Everything one `TierCache` is made of."""

    clock: Callable[[], float]
    codec: EntryCodec
    flight: SingleFlight
    l1: LocalTier
    telemetry: Telemetry
    counters: Counters
    breaker: CircuitBreaker | None
    l2: RedisTier | None
    coherence: Coherence | None
    pending: PendingWrites
    background: Background
    lifecycle: Lifecycle
    loads: Loads
    writes: Writes
    l2_log: RateLimitedLog
    atomic: Atomic
    persist: Persist
    write_behind: WriteBehind | StreamQueue | None


def assemble(client: Any, settings: Settings, label: str) -> Parts:
    """The parts of a cache on ``client`` (None: L1 only) with ``settings``."""
    timer = settings.timer
    clock: Callable[[], float] = timer or time.monotonic
    wall: Callable[[], float] = timer or time.time
    codec = EntryCodec(
        settings.serializer,
        compress_threshold=settings.compress_threshold,
        max_value_bytes=settings.max_value_bytes,
        compressor=settings.compressor,
    )
    flight = SingleFlight()
    # An invalidation also detaches the key's load in flight: a get_or_set that starts
    # after it must not join a load that started before it.
    max_bytes = settings.l1_max_bytes or UNBOUNDED_BYTES
    l1 = LocalTier(
        settings.l1_maxsize,
        clock,
        flight.detach,
        max_bytes=max_bytes,
        max_entry_bytes=int(max_bytes * settings.l1_entry_share),
    )
    telemetry = Telemetry(
        settings.namespace,
        enabled=settings.telemetry,
        record_keys=settings.record_keys,  # type: ignore[arg-type]
        trace_l1_hits=settings.trace_l1_hits,
        server=None if client is None else server_of(client),
        database=None if client is None else db_of(client),
    )
    counters = Counters()
    l2_log = RateLimitedLog()
    breaker = l2 = coherence = None
    if client is not None:
        # Without a breaker (breaker=None), an unreachable Redis costs every call a timeout.
        limits = settings.breaker or Breaker(failures=2**31, reset_after=1.0)
        breaker = CircuitBreaker(limits.failures, limits.reset_after, clock)
        l2 = RedisTier(client, breaker, telemetry, sharded=settings.pubsub == "sharded")
    lifetimes = Lifetimes(settings, clock, wall, two_tier=l2 is not None)
    if l2 is not None:
        propagation = Propagation(
            l1, codec, lifetimes, counters, max_value_bytes=settings.propagate_values
        )
        coherence = Coherence(
            l1, l2, settings.namespace, settings.l1_ttl, counters, clock, propagation
        )
    pending = PendingWrites()
    background = Background(settings.background_workers, "tiercache-load")
    lifecycle = Lifecycle(label, None if coherence is None else coherence.bus)
    rkey = entry_key(settings.namespace)
    reader = invalidations = None
    if l2 is not None and coherence is not None:
        reader = L2Reader(
            l2,
            codec,
            coherence,
            counters,
            l2_log,
            namespace=settings.namespace,
            stale_ttl=settings.stale_ttl,
            wall=wall,
            rkey=rkey,
        )
        invalidations = Invalidations(coherence, pending, l2_log, rkey)
    loads = Loads(
        settings=settings,
        l1=l1,
        reader=reader,
        coherence=coherence,
        invalidations=invalidations,
        flight=flight,
        background=background,
        codec=codec,
        counters=counters,
        telemetry=telemetry,
        lifetimes=lifetimes,
        lifecycle=lifecycle,
        l2_log=l2_log,
    )
    writes = Writes(
        codec=codec,
        l1=l1,
        coherence=coherence,
        invalidations=invalidations,
        counters=counters,
        l2_log=l2_log,
        lifetimes=lifetimes,
        lifecycle=lifecycle,
        rkey=rkey,
        raise_on_write_error=settings.raise_on_write_error,
    )
    atomic = Atomic(
        codec=codec,
        l1=l1,
        reader=reader,
        coherence=coherence,
        invalidations=invalidations,
        counters=counters,
        l2_log=l2_log,
        lifetimes=lifetimes,
        lifecycle=lifecycle,
        stale_ttl=settings.stale_ttl,
        raise_on_write_error=settings.raise_on_write_error,
    )
    write_behind: WriteBehind | StreamQueue | None = None
    if settings.write_behind_stream:
        if l2 is None:
            raise ValueError("write_behind_stream needs Redis (a client, not None)")
        write_behind = StreamQueue(
            client=l2.client,
            namespace=settings.namespace,
            writer=settings.writer,
            codec=codec,
            delay=settings.write_behind_delay,
            batch_size=settings.write_behind_batch_size,
            retries=settings.write_behind_retries,
            claim_after=settings.lease_ttl,
            counters=counters,
        )
        lifecycle.on_fork(write_behind.reset_after_fork)
    elif settings.write_behind:
        write_behind = WriteBehind(
            delay=settings.write_behind_delay,
            batch_size=settings.write_behind_batch_size,
            retries=settings.write_behind_retries,
            counters=counters,
        )
        lifecycle.on_fork(write_behind.reset_after_fork)
    locks = KeyLocks(settings.namespace, l2, settings.lease_ttl, l2_log)
    lifecycle.on_fork(locks.reset_after_fork)
    persist = Persist(
        writer=settings.writer,
        queue=write_behind,
        locks=locks,
        codec=codec,
        counters=counters,
        set_many=writes.set_many,
        delete_many=writes.delete_many,
    )
    # In a forked child: single-flight first (resetting L1 detaches its loads, under
    # single-flight's lock), then L1, the pools and locks, and the bus's identity.
    lifecycle.on_fork(counters.reset)  # a child's stats and metrics count from zero
    lifecycle.on_fork(telemetry.after_fork)  # and look for an SDK on its first call
    lifecycle.on_fork(flight.reset_after_fork)
    lifecycle.on_fork(l1.reset_after_fork)
    lifecycle.on_fork(background.reset_after_fork)
    lifecycle.on_fork(pending.reset_after_fork)
    lifecycle.on_fork(l2_log.reset_after_fork)
    if loads.refresher is not None:
        lifecycle.on_fork(loads.refresher.reset_after_fork)
    if breaker is not None:
        lifecycle.on_fork(breaker.reset)
    if coherence is not None:
        lifecycle.on_fork(coherence.after_fork)
    return Parts(
        clock=clock,
        codec=codec,
        flight=flight,
        l1=l1,
        telemetry=telemetry,
        counters=counters,
        breaker=breaker,
        l2=l2,
        coherence=coherence,
        pending=pending,
        background=background,
        lifecycle=lifecycle,
        loads=loads,
        writes=writes,
        l2_log=l2_log,
        atomic=atomic,
        persist=persist,
        write_behind=write_behind,
    )
