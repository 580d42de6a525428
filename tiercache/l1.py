"""L1: the in-process tier. Lock-free reads, locked writes, LRU + per-entry TTL bookkeeping.

Reads are the product's hot path, so they take no lock: `LocalTier.data` is a plain dict of
``key -> (value, deadline, stale_until)`` that the cache reads with one ``dict.get`` and one clock
comparison, and a hit is recorded by appending the key to `LocalTier.recent` (a bounded
deque, safe to append to from any thread). Everything that changes the map (fills,
invalidations, flushes) takes `LocalTier.lock`; a fill first replays the recorded hits into
a `cachetools.LRUCache` that does the bookkeeping only (LRU order and the size bound) and
whose evictions also drop the dict entry. LRU order is therefore approximate: hits count
once replayed, and at most ``RECENT_HITS`` of them are kept between fills (on Zipf
workloads this gave the same hit ratio as exact LRU, to 4 decimals, with a buffer of 32 or
more).

Per-entry TTL: every read compares the entry's own deadline, so an expired entry is never
served as fresh; until ``stale_until`` (its fail-safe window) it may still be served as
stale when the loader fails (`LocalTier.stale`). Its memory is reclaimed when LRU evicts
it, when it is overwritten, or by a sweep that fills run at most every ``SWEEP_INTERVAL``
seconds. (A ``TLRUCache`` would expire
eagerly, but its heap costs 3 us per fill against 0.7 us here, on the path of every miss.)

Generations keep a slow load from writing back a value that an invalidation has made old
(guarantee 3 within a process): a loader takes a `Ticket` before it reads L2 or runs, every
invalidation of the key (and every flush) moves the generation on, and `LocalTier.fill`
refuses a ticket whose generation has moved. Both halves matter: in a prototype, an
invalidation that dropped the entry without the lock and the generation left a stale value
cached in 718 of 1,500 rounds of a load-vs-invalidation race; with them, in none.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cachetools import LRUCache

__all__ = [
    "RECENT_HITS",
    "RECENT_INVALIDATIONS",
    "SWEEP_INTERVAL",
    "UNBOUNDED_BYTES",
    "LocalTier",
    "Ticket",
    "Tickets",
]

#: How many hits are remembered between two fills for the LRU order.
RECENT_HITS = 1024
#: How many lately invalidated keys L1 remembers (`LocalTier.invalidated`).
RECENT_INVALIDATIONS = 4096
#: Seconds between two sweeps of expired entries (run by a fill, under the lock).
SWEEP_INTERVAL = 5.0
#: The byte bound of an L1 created without one.
UNBOUNDED_BYTES = 2**62


class _Bookkeeper(LRUCache[str, int]):
    """LRU order and byte bound of the keys in the read map and the held map: each key maps
    to its weight (the encoded size of its value), and cachetools evicts, least recently used
    first, while the weights add up to more than ``max_bytes``. An eviction also drops the key
    from both maps. The bound on the number of entries is `LocalTier`'s (`_trim`). Relies on
    LRUCache calling the overridden `popitem` when it is full (pinned by
    tests/unit/test_l1.py). Sizes live here, not in the read map: an L1 hit never sees them.
    """

    def __init__(
        self,
        maxsize: int,
        data: dict[str, Any],
        held: dict[str, Any] | None = None,
        max_bytes: int = UNBOUNDED_BYTES,
    ) -> None:
        super().__init__(max_bytes)
        #: The bound on the number of keys (checked by `LocalTier._trim`).
        self.max_entries = maxsize
        self._read_map = data
        self._held = {} if held is None else held

    @staticmethod
    def getsizeof(value: int) -> int:
        return value

    def popitem(self) -> tuple[str, int]:
        key, size = super().popitem()
        self._read_map.pop(key, None)
        self._held.pop(key, None)
        return key, size


class Ticket:
    """Taken before a load; a fill with it succeeds only if no invalidation came between.
    Give it back when done: ``with tier.ticket(key) as ticket:``, or `release`.

    Since: 0.1.0
    """

    __slots__ = ("_tier", "epoch", "generation", "key", "record")

    def __init__(self, key: str, epoch: int, record: list[int], tier: LocalTier) -> None:
        self.key = key
        self.epoch = epoch
        # record = [tickets outstanding for the key, key generation]
        self.record = record
        self.generation = record[1]
        self._tier = tier

    def release(self) -> None:
        """Give the ticket back (used or not)."""
        self._tier.release(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tier.release(self)


class Tickets(list[Ticket]):
    """Tickets for many keys, given back together when the ``with`` block ends."""

    __slots__ = ("_tier",)

    def __init__(self, tickets: list[Ticket], tier: LocalTier) -> None:
        super().__init__(tickets)
        self._tier = tier

    def __enter__(self) -> Tickets:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tier.release_all(self)


def _ignore(_keys: Iterable[str] | None) -> None:
    pass


class LocalTier:
    """The L1 map with its lock, bookkeeping and generations.

    Since: 0.1.0
    """

    __slots__ = (
        "_book",
        "_epoch",
        "_inflight",
        "_max_entry_bytes",
        "_next_sweep",
        "_on_invalidate",
        "_tag_keys",
        "_tag_refs",
        "changes",
        "data",
        "held",
        "invalidated",
        "lock",
        "recent",
        "timer",
    )

    def __init__(
        self,
        maxsize: int,
        timer: Callable[[], float] = time.monotonic,
        on_invalidate: Callable[[Iterable[str] | None], None] | None = None,
        max_bytes: int = UNBOUNDED_BYTES,
        max_entry_bytes: int | None = None,
    ) -> None:
        #: key -> (value, deadline, stale_until), times on ``timer``; read without the lock.
        self.data: dict[str, tuple[Any, float, float]] = {}
        #: Keys hit since the last fill, replayed into the LRU order by the next fill.
        self.recent: deque[str] = deque(maxlen=RECENT_HITS)
        self.timer = timer
        # Guards data (writes), _book, _epoch, _inflight, _tag_keys and _next_sweep.
        # Never held across I/O or a loader.
        self.lock = threading.Lock()
        #: key -> (stale value, until, tags): values served stale by the fail-safe, held for
        #: ``fail_safe_throttle`` so the loader is not hammered; never served by get(). A key
        #: held counts against ``maxsize`` like an entry (one LRU over both maps).
        self.held: dict[str, tuple[Any, float, tuple[str, ...]]] = {}
        self._book = _Bookkeeper(maxsize, self.data, self.held, max_bytes)
        # A value weighing more than this is not kept (it stays in L2 only).
        self._max_entry_bytes = max_bytes if max_entry_bytes is None else max_entry_bytes
        # Bumped by every flush: tickets taken before it can no longer fill.
        self._epoch = 0
        #: Keys invalidated lately (at most `RECENT_INVALIDATIONS`, oldest dropped first): a
        #: read of one is likely to miss L2 too, so it asks for "the value, or the lease".
        self.invalidated: dict[str, None] = {}
        #: Bumped by every invalidation, write and flush (under the lock); read without it by
        #: batch reads, which fill nothing if it moved while they read L2 (`fill_read`).
        self.changes = 0
        # key -> [outstanding tickets, generation]; only keys with a load in progress, so it
        # stays as small as the number of concurrent loads.
        self._inflight: dict[str, list[int]] = {}
        # tag -> keys filled with it. Keys leave it lazily (see _prune_tags), so it may name
        # keys long gone; invalidating those is harmless.
        self._tag_keys: dict[str, set[str]] = {}
        self._tag_refs = 0
        self._next_sweep = timer() + SWEEP_INTERVAL
        # Told which keys (None: all) an invalidation overtook, e.g. so single-flight stops
        # handing out loads that started before it.
        self._on_invalidate = on_invalidate or _ignore

    def __len__(self) -> int:
        return len(self.data)

    @property
    def maxsize(self) -> int:
        """The bound on the number of entries."""
        return self._book.max_entries

    @property
    def max_bytes(self) -> int:
        """The bound on the summed encoded size of the entries and held values."""
        return int(self._book.maxsize)

    @property
    def max_entry_bytes(self) -> int:
        """The largest encoded size of a value L1 keeps."""
        return self._max_entry_bytes

    @property
    def bytes(self) -> int:
        """The summed encoded size of the entries and held values now (a gauge)."""
        return int(self._book.currsize)

    def get(self, key: str) -> tuple[Any, float, float] | None:
        """The live entry for ``key``, or None. Lock-free; records the hit."""
        entry = self.data.get(key)
        if entry is not None and self.timer() < entry[1]:
            self.recent.append(key)
            return entry
        return None

    def stale(self, key: str) -> tuple[Any, float, float] | None:
        """The entry for ``key`` if it is still inside its fail-safe window, fresh or not."""
        entry = self.data.get(key)
        if entry is not None and self.timer() < entry[2]:
            return entry
        return None

    def ticket(self, key: str) -> Ticket:
        """Take a ticket before reading L2 or running a loader for ``key``."""
        with self.lock:
            return self._ticket(key)

    def tickets(self, keys: Sequence[str]) -> Tickets:
        """`ticket` for many keys under one lock."""
        with self.lock:
            return Tickets([self._ticket(key) for key in keys], self)

    def release(self, ticket: Ticket) -> None:
        """Give back a ticket (always, in a ``finally``), used or not."""
        with self.lock:
            self._release(ticket)

    def release_all(self, tickets: Iterable[Ticket]) -> None:
        """`release` for many tickets under one lock."""
        with self.lock:
            for ticket in tickets:
                self._release(ticket)

    def hold(
        self,
        key: str,
        value: Any,
        seconds: float,
        ticket: Ticket,
        tags: Iterable[str],
        size: int | None = None,
    ) -> None:
        """Keep a value served stale for ``seconds``, unless ``ticket`` was overtaken.
        ``size`` is its encoded size (None: the weight of the entry it replaces)."""
        with self.lock:
            if ticket.epoch == self._epoch and ticket.record[1] == ticket.generation:
                if size is None:
                    size = self._book.get(key, 0)
                if size > self._max_entry_bytes:
                    return
                now = self.timer()
                self._before_fills(now)
                self._book[key] = size  # may evict the least recently used keys
                self._trim()
                self.held[key] = (value, now + seconds, tuple(tags))

    def held_value(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` if a stale value is held for ``key`` right now. Lock-free."""
        held = self.held.get(key)
        if held is not None and self.timer() < held[1]:
            return True, held[0]
        return False, None

    def still_valid(self, ticket: Ticket) -> bool:
        """Whether no invalidation or flush has overtaken ``ticket`` yet."""
        with self.lock:
            return ticket.epoch == self._epoch and ticket.record[1] == ticket.generation

    def fill(
        self,
        key: str,
        value: Any,
        ttl: float,
        ticket: Ticket | None = None,
        tags: Iterable[str] = (),
        stale_for: float = 0.0,
        size: int = 0,
        *,
        write: bool = False,
    ) -> bool:
        """Store ``value`` for ``ttl`` seconds (and keep it as a fail-safe copy for
        ``stale_for`` seconds, if longer) unless ``ticket`` was overtaken by an invalidation
        or flush; returns whether it was stored. ``size`` is the value's encoded size, its
        weight against ``max_bytes``; a value over ``max_entry_bytes`` is not stored (and
        the older value of the key is dropped).

        Without a ticket (a value known to be the newest) the store is unconditional and
        overtakes every load of the key still in flight. ``write``: a ``set`` by this
        instance, with the ticket taken before its Redis write: stored if nothing overtook
        it meanwhile, and then it overtakes the loads in flight; otherwise the key is
        dropped (another instance's write heard while ours was on the wire may be older or
        newer than ours, and L1 may since hold what either replaced: the next read asks
        Redis).
        """
        with self.lock:
            too_big = size > self._max_entry_bytes
            if too_big and ticket is not None and not self._current(ticket):
                return False  # an invalidation overtook the load: leave the newer state
            if ttl <= 0 or too_big:
                # Nothing to store, but the older value must not stay readable.
                self._drop(key)
                return False
            now = self.timer()
            self._before_fills(now)
            deadline, stale_until = now + ttl, now + max(ttl, stale_for)
            return self._fill(key, value, deadline, stale_until, ticket, tags, size, write)

    def fill_many(
        self, items: Iterable[tuple[str, Any, float, Ticket, Iterable[str], float, int]]
    ) -> None:
        """`fill` for many ``(key, value, ttl, ticket, tags, stale_for, size)`` under one
        lock."""
        with self.lock:
            now = self.timer()
            self._before_fills(now)
            for key, value, ttl, ticket, tags, stale_for, size in items:
                if ttl > 0 and size <= self._max_entry_bytes:
                    deadline = now + ttl
                    self._fill(key, value, deadline, now + max(ttl, stale_for), ticket, tags, size)

    def take_invalidated(self, key: str) -> bool:
        """Whether ``key`` was invalidated lately (and forget it). Lock-free."""
        return key in self.invalidated and self.invalidated.pop(key, 0) is None

    def fill_read(
        self, items: Sequence[tuple[str, Any, float, float, Sequence[str], int]], seen: int
    ) -> bool:
        """Keep entries read from L2, ``(key, value, ttl, stale_for, tags, size)``, in one
        pass under one lock, unless anything was invalidated, written or flushed since
        `changes` was ``seen`` (then nothing is kept: one of them may be older than that
        change). Values over the per-entry share of the byte bound stay in L2 only.
        Whether they were kept."""
        with self.lock:
            if self.changes != seen:
                return False
            now = self.timer()
            self._before_fills(now)
            book, data, held, largest = self._book, self.data, self.held, self._max_entry_bytes
            for key, value, ttl, stale_for, tags, size in items:
                if size > largest:
                    continue
                held.pop(key, None)  # a fresh value supersedes a stale one held
                book[key] = size  # may evict the least recently used entries
                self._trim()
                data[key] = (value, now + ttl, now + max(ttl, stale_for))
                for tag in tags:
                    self._tag_keys.setdefault(tag, set()).add(key)
                    self._tag_refs += 1
            if self._tag_refs > 2 * self._book.max_entries + 1024:
                self._prune_tags()
        return True

    def invalidate(self, keys: Iterable[str]) -> None:
        """Drop ``keys`` and overtake their loads in flight."""
        keys = list(keys)
        with self.lock:
            invalidated = self.invalidated
            for key in keys:
                invalidated[key] = None
            for _ in range(len(invalidated) - RECENT_INVALIDATIONS):
                del invalidated[next(iter(invalidated))]
            for key in keys:
                self._drop(key)
            self._on_invalidate(keys)

    def invalidate_tags(self, tags: Iterable[str]) -> None:
        """Drop the entries filled with any of ``tags`` and overtake every load in flight
        (a load does not know its tags' future, so all are refused; they still return)."""
        tags = set(tags)
        with self.lock:
            self._epoch += 1
            self.changes += 1
            for tag in tags:
                for key in self._tag_keys.pop(tag, ()):
                    self.data.pop(key, None)
                    self._book.pop(key, None)
                    self.held.pop(key, None)
            for key in [key for key, held in self.held.items() if tags.intersection(held[2])]:
                del self.held[key]
                if key not in self.data:
                    self._book.pop(key, None)
            self._on_invalidate(None)

    def flush(self, detach: bool = True) -> None:
        """Drop everything and overtake every load in flight (their fills are refused). With
        ``detach`` (an invalidation), later callers also stop joining those loads."""
        with self.lock:
            self._epoch += 1
            self.changes += 1
            self.data.clear()
            self.invalidated.clear()
            self._book.clear()
            self.recent.clear()
            self._tag_keys.clear()
            self._tag_refs = 0
            self.held.clear()
            if detach:
                self._on_invalidate(None)

    def reset_after_fork(self) -> None:
        """Fresh lock and empty state in a forked child (the parent's lock may be held)."""
        self.lock = threading.Lock()
        self._inflight = {}
        self.flush()

    # -- under the lock ------------------------------------------------------------------

    def _ticket(self, key: str) -> Ticket:
        record = self._inflight.get(key)
        if record is None:
            record = self._inflight[key] = [0, 0]
        record[0] += 1
        return Ticket(key, self._epoch, record, self)

    def _release(self, ticket: Ticket) -> None:
        record = ticket.record
        record[0] -= 1
        if record[0] <= 0 and self._inflight.get(ticket.key) is record:
            del self._inflight[ticket.key]

    def _fill(
        self,
        key: str,
        value: Any,
        deadline: float,
        stale_until: float,
        ticket: Ticket | None,
        tags: Iterable[str],
        size: int = 0,
        write: bool = False,
    ) -> bool:
        if ticket is not None and (
            ticket.epoch != self._epoch or ticket.record[1] != ticket.generation
        ):
            if write:
                # What overtook our write may be older than it in Redis (then L1 may since
                # have been refilled from Redis with the value our write replaced) or newer:
                # only Redis knows, so keep neither; the next read asks it.
                self._drop(key)
                self._on_invalidate((key,))
            return False
        if ticket is None or write:
            self._bump(key)
            self._on_invalidate((key,))
        # A fresh value supersedes a stale one held for the fail-safe.
        self.held.pop(key, None)
        self._book[key] = size  # may evict the least recently used entries
        self._trim()
        self.data[key] = (value, deadline, stale_until)
        for tag in tags:
            self._tag_keys.setdefault(tag, set()).add(key)
            self._tag_refs += 1
        if self._tag_refs > 2 * self._book.max_entries + 1024:
            self._prune_tags()
        return True

    def _before_fills(self, now: float) -> None:
        # Replay the recorded hits, oldest first, so LRU order reflects reads; readers
        # append concurrently, so take exactly the hits present now.
        recent = self.recent
        touch = self._book.get
        for _ in range(len(recent)):
            touch(recent.popleft())
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            expired = [key for key, entry in self.data.items() if entry[2] <= now]
            for key in expired:
                del self.data[key]
            ended = [key for key, held in self.held.items() if held[1] <= now]
            for key in ended:
                del self.held[key]
            for key in (*expired, *ended):
                if key not in self.data and key not in self.held:
                    self._book.pop(key, None)

    def _trim(self) -> None:
        # The bound on the number of entries; cachetools keeps the one on bytes.
        book = self._book
        while len(book) > book.max_entries:
            book.popitem()

    def _current(self, ticket: Ticket) -> bool:
        return ticket.epoch == self._epoch and ticket.record[1] == ticket.generation

    def _drop(self, key: str) -> None:
        # The key's entry and held value go, and its loads in flight are overtaken.
        self._bump(key)
        self.data.pop(key, None)
        self._book.pop(key, None)
        self.held.pop(key, None)

    def _bump(self, key: str) -> None:
        self.changes += 1
        record = self._inflight.get(key)
        if record is not None:
            record[1] += 1

    def _prune_tags(self) -> None:
        live = self.data
        for tag in list(self._tag_keys):
            keys = {key for key in self._tag_keys[tag] if key in live}
            if keys:
                self._tag_keys[tag] = keys
            else:
                del self._tag_keys[tag]
        self._tag_refs = sum(len(keys) for keys in self._tag_keys.values())
