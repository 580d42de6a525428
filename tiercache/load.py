"""One load of one key, run by the single-flight leader (the miss path in ``loading.py``).

A `Load` looks at L1 again (a previous leader may have filled it), serves a value the
fail-safe holds, else loads: with the lease the caller took while reading, or by reading L2
and taking one (`Load._with_lease`: waiting while another process holds it, woken by its
READY message), then the loader (under a timeout when one is set, finishing in the
background past it), then the write with the lease, and the fail-safe when the loader fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from .coherence import Stamp
from .errors import L2Error, LoaderTimeoutError
from .l1 import Ticket
from .reading import Failed, Fallback, Hit, Leased, Read, Stale, Unusable
from .telemetry import ATTR_VALUE_SIZE

if TYPE_CHECKING:  # loading.py builds Loads and imports this module
    from .loading import Loads, Outcome

__all__ = ["LeaseWriter", "Load"]

_LEASE_POLL_FIRST = 0.001
_LEASE_POLL_MAX = 0.025
# Longest wait for a lease holder's READY before reading the key again (a lost message).
_READY_WAIT = 0.05
#: What a load's first L2 read can be besides a `Read`: not read yet.
_NOT_READ: Any = None


class LeaseWriter:
    """The right to write one key: our lease placeholder, and what to restore if we fail."""

    __slots__ = ("key", "placeholder", "restore", "restore_ms", "rkey", "stamp")

    def __init__(
        self,
        key: str,
        rkey: str,
        placeholder: bytes,
        stamp: Stamp,
        restore: bytes,
        restore_ms: int,
    ) -> None:
        self.key = key
        self.rkey = rkey
        self.placeholder = placeholder
        self.stamp = stamp
        self.restore = restore
        self.restore_ms = restore_ms


class Load:
    """One load of one key by the single-flight leader (see the module docstring)."""

    __slots__ = ("_loads", "first", "key", "loader", "registered_at", "tags", "ttl", "writer")

    def __init__(
        self,
        loads: Loads,
        key: str,
        loader: Callable[[], Any],
        ttl: float,
        tags: list[str],
        first: Read | None,
        writer: LeaseWriter | None = None,
        *,
        registered_at: float | None = None,
    ) -> None:
        self._loads = loads
        #: A lease the caller took while reading (`Loads._get_or_lease`), until a load
        #: uses it or `give_back` returns it.
        self.writer = writer
        self.key = key
        self.loader = loader
        self.ttl = ttl
        self.tags = tags
        #: What the caller read from L2 just before single-flight (None: not read).
        self.first = first
        #: When that read registered the caller as a waiter on a lease it found
        #: (`Leases.get_or_lease` does; `time.monotonic`), or None if it did not.
        self.registered_at = registered_at

    def run(self) -> Any:
        """Run under single-flight: L1 again, a held stale value, else a load."""
        loads = self._loads
        with loads.l1.ticket(self.key) as ticket:
            entry = loads.l1.get(self.key)  # a previous leader may have filled it meanwhile
            if entry is not None:
                loads.counters.l1_hits += 1
                loads.telemetry.answered("l1", "hit")
                return entry[0]
            held, value = loads.l1.held_value(self.key)
            if held:  # served stale a moment ago: do not call the failing loader again yet
                loads.counters.stale_serves += 1
                loads.telemetry.answered("stale", "stale")
                return value
            fallback = None
            if loads.settings.stale_ttl > 0:
                old = loads.l1.stale(self.key)
                if old is not None:
                    fallback = Fallback(old[0], [], old[2] - loads.l1.timer())
            if loads.coherence is None:
                return self._load(ticket, fallback, None)
            writer, self.writer = self.writer, None
            if writer is not None:
                return self._load(ticket, fallback, writer)  # the caller's lease: load now
            return self._with_lease(ticket, fallback)

    def give_back(self) -> None:
        """Return the caller's lease if no load used it (an L1 hit, a held stale value, or
        another thread's load in this process that this caller waits for)."""
        writer, self.writer = self.writer, None
        if writer is not None:
            self._loads.abort(writer)

    def _with_lease(self, ticket: Ticket, fallback: Fallback | None) -> Any:
        loads = self._loads
        settings = loads.settings
        reader, coherence, invalidations = loads.reader, loads.coherence, loads.invalidations
        assert reader is not None
        assert coherence is not None
        assert invalidations is not None
        rkey = reader.rkey(self.key)
        started = time.monotonic()
        pause = _LEASE_POLL_FIRST
        waited = False
        registered_at = self.registered_at
        registered = registered_at is not None
        stamp: Stamp | None = None
        first, self.first = self.first, _NOT_READ
        while first is not _NOT_READ or invalidations.usable():
            found = reader.read(self.key) if first is _NOT_READ else first
            first = _NOT_READ
            if isinstance(found, Hit):
                return loads.serve_hit(self.key, self.loader, self.ttl, self.tags, found, ticket)
            if isinstance(found, Failed):
                break
            if isinstance(found, Leased):
                fallback = reader.fallback(found) or fallback
                if not waited:
                    waited = True
                    loads.counters.lease_waits += 1
                elapsed = time.monotonic() - started
                if fallback is not None and elapsed >= (settings.soft_timeout or 0.0):
                    # Someone is loading; a stale value now beats waiting for them.
                    return loads.serve_stale(self.key, fallback, ticket)
                if elapsed >= settings.lease_wait:
                    loads.counters.lease_timeouts += 1
                    break
                if not coherence.bus.subscribed:
                    # No READY can reach us: poll for the holder's value.
                    time.sleep(pause)
                    pause = min(pause * 2, _LEASE_POLL_MAX)
                    continue
                if not registered:
                    registered = True
                    registered_at = time.monotonic()
                    try:
                        state = coherence.leases.wait_for(rkey)
                    except L2Error:
                        state = True  # wait anyway: the next read tells
                    if state is not True:
                        # The holder was done before we registered: read what it left.
                        assert not isinstance(state, bool)
                        first = reader.classify(self.key, state, loads.lifetimes.wall())
                        continue
                # Woken by the holder's READY; the bound covers a lost message.
                remaining = settings.lease_wait - elapsed
                # A READY heard since we registered, before this wait, counts too.
                woken = coherence.lease_waits.wait(
                    self.key, min(remaining, _READY_WAIT), since=registered_at
                )
                if woken:
                    loads.counters.lease_wakeups += 1
                    # The READY may have carried the value, now in L1: no read needed.
                    entry = loads.l1.get(self.key)
                    if entry is not None:
                        loads.counters.l1_hits += 1
                        loads.telemetry.answered("l1", "hit")
                        return entry[0]
                # Read the key again; only a READY heard from now on ends the next wait
                # early (an older one, for an earlier lease, would make this loop spin).
                registered_at = time.monotonic()
                continue
            keep, keep_ms = b"", 0
            seen: bytes | None = None
            if isinstance(found, Stale):
                fallback = reader.fallback(found) or fallback
                seen = found.blob
                if fallback is not None:
                    keep, keep_ms = found.blob, int(fallback.for_seconds * 1000)
            elif isinstance(found, Unusable):
                seen = found.blob  # replace exactly these bytes
            try:
                if stamp is None:
                    # Versions are taken before the load: an invalidation from now on
                    # makes what this load writes stale.
                    stamp = coherence.stamp(self.tags)
            except L2Error as exc:
                reader.failed(exc)
                break
            try:
                lease_ms = int(settings.lease_ttl * 1000)
                placeholder = coherence.leases.acquire(rkey, seen, lease_ms, keep)
            except L2Error as exc:  # a write Redis refused (e.g. OOM): load without a lease
                loads.counters.l2_write_errors += 1
                loads.l2_log.warning("write", "tiercache: L2 write (lease) failed: %s", exc)
                break
            if placeholder is not None:
                writer = LeaseWriter(self.key, rkey, placeholder, stamp, keep, keep_ms)
                return self._load(ticket, fallback, writer)
            # The key changed under us: read what it holds now.
        # No lease: load, keep the value in L1, but never write it to L2.
        return self._load(ticket, fallback, None)

    def _load(self, ticket: Ticket, fallback: Fallback | None, writer: LeaseWriter | None) -> Any:
        loads = self._loads
        settings = loads.settings
        timeout = settings.hard_timeout
        if fallback is not None and settings.soft_timeout is not None:
            timeout = settings.soft_timeout
        try:
            if timeout is None:
                outcome: Outcome | None = loads.call_loader(self.key, self.loader)
            else:
                outcome = self._call_with_timeout(writer, timeout)
        except Exception as exc:
            if writer is not None:
                loads.abort(writer)
            if fallback is not None:
                return self._fail_safe(fallback, ticket, exc)
            raise
        except BaseException:
            if writer is not None:
                loads.abort(writer)
            raise
        if outcome is None:
            # Timed out; the load goes on in the background and fills the cache when done.
            error = LoaderTimeoutError(f"the loader did not finish within {timeout:g} s")
            if fallback is not None:
                return self._fail_safe(fallback, ticket, error)
            raise error
        value, prepared = outcome
        loads.counters.loads_served += 1
        if prepared is None:
            if writer is not None:
                loads.abort(writer)
            loads.telemetry.answered("loader", "miss")
            return value
        loads.store(self.key, value, prepared, self.ttl, self.tags, ticket, writer)
        loads.telemetry.answered("loader", "miss", **{ATTR_VALUE_SIZE: len(prepared.payload)})
        return value

    def _call_with_timeout(self, writer: LeaseWriter | None, timeout: float) -> Outcome | None:
        """The loader's outcome within ``timeout``, or None (it goes on in the background)."""
        loads = self._loads
        key, loader = self.key, self.loader
        late_ticket = loads.l1.ticket(key)  # taken before the load, for a late fill
        future = loads.background.submit(lambda: loads.call_loader(key, loader))
        if future is None:  # every worker busy: run it here, without a timeout
            late_ticket.release()
            return loads.call_loader(key, loader)
        try:
            outcome: Outcome = future.result(timeout)
        except FutureTimeout:
            loads.counters.load_timeouts += 1
            ttl, tags = self.ttl, self.tags

            def finish(done: Future[Outcome]) -> None:
                loads.finish_late(done, key, ttl, tags, late_ticket, writer)

            future.add_done_callback(finish)
            return None
        except BaseException:
            late_ticket.release()
            raise
        late_ticket.release()
        return outcome

    def _fail_safe(self, fallback: Fallback, ticket: Ticket, error: Exception) -> Any:
        """The loader failed with ``error`` and a stale value exists: serve it, unless a
        write overtook the load, which made it older still; then serve what that write
        stored (in L1, or in Redis for another instance's write), or raise ``error`` as if
        there were nothing stale."""
        loads = self._loads
        if loads.l1.still_valid(ticket):
            return loads.serve_stale(self.key, fallback, ticket)
        entry = loads.l1.get(self.key)
        if entry is not None:
            loads.counters.l1_hits += 1
            loads.telemetry.answered("l1", "hit")
            return entry[0]
        reader, invalidations = loads.reader, loads.invalidations
        if reader is not None and invalidations is not None and invalidations.usable():
            found = reader.read(self.key)  # another instance's write: its value is in Redis
            if isinstance(found, Hit):
                loads.answered_hit(found)
                return found.entry.value
        raise error
