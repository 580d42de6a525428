"""Keeping many L1s honest: the version checks, the bus receiver and the leases of one cache.

``TierCache`` owns one `Coherence` when it has an L2. It answers three questions:

* may this L2 entry be served? (`Coherence.validate`: not if its namespace or tag
  versions are older than the current ones; a *newer* version means we missed a message, so
  the local view is corrected and the affected L1 entries dropped);
* which versions does a value about to be written carry? (`Coherence.stamp`, taken
  before the load starts, so a ``clear``/``invalidate_tags`` during the load makes the
  written entry stale at once);
* what happens to L1 when the bus delivers or loses messages? (the ``Receiver`` methods).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from .bus import Bus
from .entry import Entry, TagVersions
from .l1 import LocalTier
from .l2 import RedisTier
from .lease import Leases
from .lease_waits import LeaseWaits
from .propagation import Propagation
from .stats import Counters
from .versions import NAMESPACE, Versions

__all__ = ["Coherence", "Stamp"]


class Stamp(NamedTuple):
    """The versions a value is computed under.

    Since: 0.1.0
    """

    ns_version: int
    tags: TagVersions
    #: When the oldest of these versions was learned (on the cache's monotonic clock).
    learned_at: float


class Coherence:
    """Versions, bus and leases of one cache with an L2.

    Since: 0.1.0
    """

    def __init__(
        self,
        l1: LocalTier,
        l2: RedisTier,
        namespace: str,
        l1_ttl: float,
        counters: Counters,
        clock: Callable[[], float],
        propagation: Propagation | None = None,
    ) -> None:
        self._l1 = l1
        self._counters = counters
        #: Values sent with invalidations (``propagate_values``), or None.
        self.propagation = propagation
        #: The Redis tier this coherence works through.
        self.l2 = l2
        self.l1_ttl = l1_ttl
        self.versions = Versions(l2, namespace, refresh_after=l1_ttl / 2, clock=clock)
        self.leases = Leases(l2)
        #: This instance's callers waiting for other processes' leases.
        self.lease_waits = LeaseWaits()
        self.bus = Bus(l2, namespace, receiver=self)

    # -- versions ------------------------------------------------------------------------

    def stamp(self, tags: Iterable[str]) -> Stamp:
        """Current versions for a value with ``tags``; raises L2Error if Redis is away."""
        tag_list = list(dict.fromkeys(tags))
        current, learned_at = self.versions.current([NAMESPACE, *tag_list])
        pairs = tuple((tag, current[tag]) for tag in tag_list)
        return Stamp(current[NAMESPACE], pairs, learned_at)

    def namespace_version(self) -> tuple[int, float] | None:
        """``(version, learned at)`` of the namespace, if known and young enough to trust
        (lock-free; a batch read checks untagged entries against it once)."""
        return self.versions.fresh(NAMESPACE)

    def validate(self, entry: Entry) -> float | None:
        """None if ``entry`` is older than a current version; else when the versions it was
        checked against were learned (L1 may keep it at most ``l1_ttl`` past that).
        Raises L2Error if Redis is away."""
        if not entry.tags:
            # The common case, lock-free: no tags and a current namespace version known.
            known = self.versions.fresh(NAMESPACE)
            if known is not None:
                if entry.ns_version < known[0]:
                    return None
                if entry.ns_version == known[0]:
                    return known[1]
        names = [NAMESPACE, *(tag for tag, _ in entry.tags)]
        current, learned_at = self.versions.current(names)
        if entry.ns_version < current[NAMESPACE]:
            return None
        if any(version < current[tag] for tag, version in entry.tags):
            return None
        if entry.ns_version > current[NAMESPACE]:
            # A clear() we never heard of: everything in L1 may predate it.
            self.apply_clear(entry.ns_version)
        newer = {tag: v for tag, v in entry.tags if v > current[tag]}
        if newer:
            self.apply_tags(newer)
        return learned_at

    # -- publishing ----------------------------------------------------------------------

    def publish_keys(self, keys: list[str]) -> None:
        """Tell the other instances these keys changed (raises L2Error)."""
        self.bus.publish_keys(keys)

    def set_and_publish(self, keys: list[str], rows: list[tuple[str, bytes, int]]) -> None:
        """``SET ... PX`` every row, then tell the other instances that ``keys`` changed: one
        round trip (a pipeline whose PUBLISH follows the writes, so a receiver that drops
        its copy can only re-read the new value). A message that carries values is sent
        with its writes atomically instead (`RedisTier.set_many_and_publish`): a receiver
        keeps what it is sent, so another write of the key must not run between the two.
        Raises L2Error."""
        l2 = self.l2
        propagation = self.propagation
        if l2.cluster:  # keys span nodes: a pipeline would not order the PUBLISH after them
            l2.set_many(rows)
            self.bus.publish_keys(keys)
            return
        if propagation is None or not propagation.max_value_bytes:
            send = lambda channel, raw: l2.set_many(rows, (channel, raw))  # noqa: E731
            self.bus.publish_keys(keys, send, self._ours(keys))
            return
        self.bus.publish_values(
            propagation.message(keys, rows),
            lambda channel, raw: l2.set_many_and_publish(rows, (channel, raw)),
            self._ours(keys),
        )

    def _ours(self, keys: list[str]) -> Callable[[int], None] | None:
        """What tells `Propagation` that our message ``seq`` will write ``keys``, before it
        is sent: a value another instance sent for them, heard before our own echo comes
        back, is older than our write and must only drop them (`propagation.py`). Also
        when this instance sends no values: it may still receive some."""
        propagation = self.propagation
        if propagation is None:
            return None
        return lambda seq: propagation.written(keys, seq)

    def delete_and_publish(self, keys: list[str], rkeys: list[str]) -> None:
        """``UNLINK`` ``rkeys`` and tell the other instances that ``keys`` changed, in one
        round trip as `set_and_publish` does. Raises L2Error."""
        l2 = self.l2
        if l2.cluster:
            l2.delete(rkeys)
            self.bus.publish_keys(keys)
            return
        send = lambda channel, raw: l2.delete(rkeys, (channel, raw))  # noqa: E731
        self.bus.publish_keys(keys, send, self._ours(keys))

    def publish_clear(self, ns_version: int) -> None:
        """Tell the other instances the namespace was cleared (raises L2Error)."""
        self.bus.publish_clear(ns_version)

    def publish_tags(self, tags: dict[str, int]) -> None:
        """Tell the other instances these tags were invalidated (raises L2Error)."""
        self.bus.publish_tags(tags)

    # -- the bus receiver ----------------------------------------------------------------

    def apply_keys(self, keys: list[str]) -> None:
        """Another instance changed these keys."""
        self._l1.invalidate(keys)

    def apply_values(self, pairs: list[list[object]]) -> None:
        """Another instance wrote these keys, with the values it sent (`propagation.py`)."""
        if self.propagation is None:
            self._l1.invalidate([str(key) for key, _ in pairs])
            return
        self.propagation.apply(pairs, self.validate)

    def apply_ready(self, pairs: list[list[object]]) -> None:
        """A lease holder is done with these keys: wake this instance's waiters, after
        keeping in L1 the value it sent for a key someone here waits for (it wrote those
        bytes in the same atomic step as the message, so they are the key's value at this
        point of the channel's order, as a set's are; a waiter then needs no Redis read)."""
        waits = self.lease_waits
        keys = [str(key) for key, _ in pairs]
        propagation = self.propagation
        if propagation is not None and propagation.max_value_bytes:
            sent = [pair for pair in pairs if pair[1] is not None and waits.waiting(str(pair[0]))]
            if sent:
                propagation.apply(sent, self.validate)
        waits.wake(keys)

    def own_echo(self, seq: int) -> None:
        """Our own message ``seq`` came back."""
        if self.propagation is not None:
            self.propagation.echoed(seq)

    def apply_clear(self, ns_version: int) -> None:
        """Another instance cleared the namespace."""
        self.versions.observe(NAMESPACE, ns_version)
        self.flush_l1("clear")

    def apply_tags(self, tags: dict[str, int]) -> None:
        """Another instance invalidated these tags."""
        for tag, version in tags.items():
            self.versions.observe(tag, version)
        self._l1.invalidate_tags(tags)

    def flush_l1(self, reason: str) -> None:
        """Drop all of L1; what we know of versions may be as old, so forget it too."""
        self._counters.l1_flushes += 1
        # Subscribing (every process start) is no invalidation: callers may still join a
        # load already running (one load per key, guarantee 4); its fill is refused anyway.
        self._l1.flush(detach=reason != "subscribed")
        if reason != "clear":
            self.versions.forget()

    # -- lifecycle -----------------------------------------------------------------------

    def after_fork(self) -> None:
        """Reset process-local state in a forked child."""
        self.bus.reset_after_fork()
        self.versions.reset_after_fork()
        self.lease_waits.reset_after_fork()
        if self.propagation is not None:
            self.propagation.reset_after_fork()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the listener (waiting at most ``timeout`` seconds for it)."""
        self.bus.close(timeout)
