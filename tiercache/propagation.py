"""Values that travel with their invalidation: a ``set`` hands other instances the new value
instead of making each of them miss and read it back from Redis.

A ``set`` of a small value (at most ``propagate_values`` bytes as stored) sends, in its
invalidation message, the exact bytes it wrote to Redis. A receiver decodes them, checks
their namespace and tag versions like any entry read from Redis, and puts the value in L1
with the lifetime an L2 hit would get, as a write: the key's loads in flight are overtaken
(their older value can no longer be filled, guarantee 3). Redis delivers a channel's
messages to every subscriber in the order it ran the PUBLISHes, and each write and its
PUBLISH run in one round trip, so message order is write order.

One case breaks that order from a receiver's point of view: its own write. If this instance
wrote the key after another one did, the other's message (older in Redis's order) may be
heard after this instance already keeps its own newer value. So a key this instance wrote
is "ours" until the echo of its own message comes back: messages from others heard before
that echo are older, and only invalidate (a miss, never an older value).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .entry import Entry, EntryCodec
from .errors import CorruptEntryError, L2Error
from .l1 import LocalTier
from .lifetimes import Lifetimes
from .stats import Counters

__all__ = ["MAX_MESSAGE_VALUES", "Propagation"]

#: At most this many value bytes in one message; further keys go as plain invalidations.
MAX_MESSAGE_VALUES = 64 * 1024


class Propagation:
    """The sending and receiving side of value propagation for one cache.

    Since: 0.2.0
    """

    def __init__(
        self,
        l1: LocalTier,
        codec: EntryCodec,
        lifetimes: Lifetimes,
        counters: Counters,
        *,
        max_value_bytes: int,
    ) -> None:
        self._l1 = l1
        self._codec = codec
        self._lifetimes = lifetimes
        self._counters = counters
        #: Largest entry sent with its message (0: values are never sent).
        self.max_value_bytes = max_value_bytes
        self._reset()

    def _reset(self) -> None:
        # Guards _ours and _echoed: keys this instance wrote whose own message has not come
        # back yet (key -> that message's number), and the last own number heard.
        self._lock = threading.Lock()
        self._ours: dict[str, int] = {}
        self._echoed = 0

    def reset_after_fork(self) -> None:
        """A forked child has written nothing yet (and a parent thread may hold the lock)."""
        self._reset()

    def message(self, keys: list[str], rows: list[tuple[str, bytes, int]]) -> list[list[Any]]:
        """The ``[key, entry or None]`` pairs a ``set`` of ``rows`` sends."""
        budget = MAX_MESSAGE_VALUES
        pairs: list[list[Any]] = []
        for key, (_rkey, blob, _px) in zip(keys, rows, strict=True):
            if len(blob) <= self.max_value_bytes and len(blob) <= budget:
                budget -= len(blob)
                pairs.append([key, blob])
            else:
                pairs.append([key, None])
        return pairs

    def written(self, keys: list[str], seq: int) -> None:
        """This instance is writing ``keys``, announced by its message ``seq`` (told before
        the write is sent: others' messages heard from then on, until our echo, are older)."""
        with self._lock:
            if seq <= self._echoed:
                return  # its echo was heard already (a reader drained it meanwhile)
            for key in keys:
                self._ours[key] = seq

    def echoed(self, seq: int) -> None:
        """Our own message ``seq`` came back: whatever others sent before it was heard."""
        with self._lock:
            if seq <= self._echoed:
                return
            self._echoed = seq
            if self._ours:
                self._ours = {key: s for key, s in self._ours.items() if s > seq}

    def apply(self, pairs: list[list[Any]], validate: Callable[[Entry], float | None]) -> None:
        """Another instance wrote these keys: keep each value it sent in L1, if it is
        current and this instance did not write the key since; drop the others."""
        dropped: list[str] = []
        for key, blob in pairs:
            if blob is None or key in self._ours:
                dropped.append(key)
                continue
            try:
                entry = self._codec.decode(blob)
                learned_at = validate(entry) if isinstance(entry, Entry) else None
            except (CorruptEntryError, L2Error):
                learned_at = None
            if learned_at is None:
                dropped.append(key)
                continue
            assert isinstance(entry, Entry)
            life = self._lifetimes.hit(entry.expires_at, learned_at)
            if life.l1_ttl <= 0:
                dropped.append(key)
                continue
            tags = [tag for tag, _ in entry.tags]
            # No ticket: a write, which overtakes the key's loads in flight in this process.
            self._l1.fill(key, entry.value, life.l1_ttl, None, tags, life.stale_for, len(blob))
            self._counters.values_received += 1
        if dropped:
            self._l1.invalidate(dropped)
