"""The miss path: the cross-process lease, the loader, the write-back, and the fail-safe.

A mixin of `TierCache`, kept apart so that ``cache.py`` holds the public API and this module
the one flow that decides where a missing value comes from:

1. a ticket from L1 (an invalidation from now on refuses our fill),
2. L2 (``reading.py``): a fresh, current entry is served; a lease placeholder means another
   process is loading, so we wait for its value (bounded by ``lease_wait``); anything else
   (nothing, expired, stale, corrupt) is replaced by our own lease, compare-and-set on the
   bytes seen,
3. the versions to stamp on what we write, taken before the load (an invalidation from then
   on makes it stale), then the loader, then a write that succeeds only while our lease
   stands (``lease.py``).

Without a lease (Redis away, waited too long) the loader still runs and L1 keeps its value,
but L2 is not written: we could not know whether an invalidation overtook the load there.

Fail-safe (``stale_ttl`` > 0): an expired entry still inside its window (in L1, in L2, or
carried by a lease placeholder) is served, marked stale, when the loader raises or overruns
``soft_timeout``/``hard_timeout``; then the key is not retried for ``fail_safe_throttle``.
A load that overran its timeout finishes on a background worker and still fills the cache.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any, TypeVar

from .background import Background
from .coherence import Stamp
from .entry import Lease, Prepared
from .errors import L2Error, LoaderTimeoutError
from .flight import SingleFlight
from .keys import check_key, check_tags
from .l1 import Ticket
from .options import Duration, check_optional_ttl
from .reading import Fallback, L2Hit, L2Stale, ReadL2
from .stats import RateLimitedLog
from .telemetry import ATTR_COALESCED, ATTR_VALUE_SIZE, SPAN_GET, SPAN_GET_OR_SET, Telemetry

__all__ = ["ReadPath"]

T = TypeVar("T")
# L2 cannot be read now (a failed write waits to be replayed): load without a lease.
_UNUSABLE: Any = object()
# The caller has not read L2 for this load yet.
_NOT_READ: Any = object()
_LEASE_POLL_FIRST = 0.001
_LEASE_POLL_MAX = 0.025


class _LeaseWriter:
    """The right to write one key: our lease placeholder, and what to restore if we fail."""

    __slots__ = ("placeholder", "restore", "restore_ms", "rkey", "stamp")

    def __init__(
        self, rkey: str, placeholder: bytes, stamp: Stamp, restore: bytes, restore_ms: int
    ) -> None:
        self.rkey = rkey
        self.placeholder = placeholder
        self.stamp = stamp
        self.restore = restore
        self.restore_ms = restore_ms


class ReadPath(ReadL2):
    """The miss path of `TierCache` (a mixin; see the module docstring)."""

    _flight: SingleFlight
    _background: Background
    _l2_log: RateLimitedLog
    _refreshing: set[str]
    _refreshing_lock: threading.Lock
    _telemetry: Telemetry

    if TYPE_CHECKING:

        def _check_open(self) -> None: ...
        def _start_listener(self) -> None: ...
        def _jittered(self, ttl_s: float) -> float: ...
        def _l2_usable(self) -> bool: ...

    # -- entry ---------------------------------------------------------------------------

    def _get_or_set_miss(
        self, key: Any, loader: Callable[[], T], ttl: Duration | None, tags: Iterable[str]
    ) -> T:
        key = check_key(key, self._settings.max_key_length)
        if not callable(loader):
            raise TypeError(f"loader must be a callable taking no arguments, not {loader!r}")
        ttl_s = check_optional_ttl("ttl", ttl, self._settings.ttl)
        tag_list = check_tags(tags)
        self._check_open()
        with self._telemetry.span(SPAN_GET_OR_SET, key):
            self._start_listener()
            self._counters.l1_misses += 1
            # Most misses are L2 hits: read L2 before single-flight, which only has to
            # guard loads (and concurrent misses of one key each cost a GET, not a load).
            first: Any = _NOT_READ
            if self._coherence is not None and not self._l1.held_value(key)[0]:
                if not self._l2_usable():
                    first = _UNUSABLE
                else:
                    ticket = self._l1.ticket(key)
                    try:
                        first = self._read_l2(key)
                        if isinstance(first, L2Hit):
                            hit: T = self._serve_l2_hit(key, loader, ttl_s, tag_list, first, ticket)
                            return hit
                    finally:
                        self._l1.release(ticket)
            try:
                value, leader = self._flight.run(
                    key, lambda: self._load_through(key, loader, ttl_s, tag_list, first)
                )
            except Exception:
                self._counters.read_errors += 1  # the load failed and nothing could answer
                raise
            if not leader:
                self._counters.load_waits += 1
                self._telemetry.answered("loader", "miss", **{ATTR_COALESCED: True})
            return value  # type: ignore[no-any-return]

    def _get_miss(self, key: Any, default: Any) -> Any:
        key = check_key(key, self._settings.max_key_length)
        self._check_open()
        with self._telemetry.span(SPAN_GET, key):
            self._counters.l1_misses += 1
            if self._l2 is None:
                self._counters.read_misses += 1
                self._telemetry.answered("l1", "miss")
                return default
            self._start_listener()
            if not self._l2_usable():
                self._counters.read_misses += 1
                return default
            ticket = self._l1.ticket(key)
            try:
                found = self._read_l2(key)
                if isinstance(found, L2Hit):
                    self._fill_from_l2(key, found, ticket)
                    self._answered_l2(found)
                    return found.entry.value
                self._counters.read_misses += 1
                self._telemetry.answered("l2", "miss")
                return default
            finally:
                self._l1.release(ticket)

    def _serve_l2_hit(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl_s: float,
        tags: list[str],
        hit: L2Hit,
        ticket: Ticket,
    ) -> Any:
        self._fill_from_l2(key, hit, ticket)
        self._answered_l2(hit)
        if self._settings.refresh_ahead is not None:
            self._maybe_refresh(key, loader, ttl_s, tags, hit)
        return hit.entry.value

    def _answered_l2(self, hit: L2Hit) -> None:
        self._telemetry.answered("l2", "hit", **{ATTR_VALUE_SIZE: len(hit.blob)})

    def _load_through(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl_s: float,
        tags: list[str],
        first: Any = _NOT_READ,
    ) -> Any:
        ticket = self._l1.ticket(key)
        try:
            entry = self._l1.get(key)  # a previous leader may have filled it meanwhile
            if entry is not None:
                self._counters.l1_hits += 1
                self._telemetry.answered("l1", "hit")
                return entry[0]
            held, value = self._l1.held_value(key)
            if held:  # served stale a moment ago: do not call the failing loader again yet
                self._counters.stale_serves += 1
                self._telemetry.answered("stale", "stale")
                return value
            fallback = None
            if self._settings.stale_ttl > 0:
                old = self._l1.stale(key)
                if old is not None:
                    fallback = Fallback(old[0], [], old[2] - self._clock())
            if self._coherence is None:
                return self._load(key, loader, ttl_s, tags, ticket, fallback, None)
            return self._load_with_lease(key, loader, ttl_s, tags, ticket, fallback, first)
        finally:
            self._l1.release(ticket)

    # -- the lease -----------------------------------------------------------------------

    def _load_with_lease(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl_s: float,
        tags: list[str],
        ticket: Ticket,
        fallback: Fallback | None,
        first: Any = _NOT_READ,
    ) -> Any:
        """``first``: what the caller read from L2 just before, or ``_NOT_READ``."""
        assert self._coherence is not None
        settings = self._settings
        leases = self._coherence.leases
        rkey = self._prefix + key
        started = time.monotonic()
        pause = _LEASE_POLL_FIRST
        waited = False
        stamp: Stamp | None = None
        if first is _UNUSABLE:
            first = L2Error("L2 unusable: a failed write is waiting to be replayed")
        while first is not _NOT_READ or self._l2_usable():
            if first is _NOT_READ:
                found = self._read_l2(key)
            else:
                found, first = first, _NOT_READ
            if isinstance(found, L2Hit):
                return self._serve_l2_hit(key, loader, ttl_s, tags, found, ticket)
            if isinstance(found, L2Error):
                break
            if isinstance(found, Lease):
                fallback = self._fallback_from(found) or fallback
                if not waited:
                    waited = True
                    self._counters.lease_waits += 1
                elapsed = time.monotonic() - started
                if fallback is not None and elapsed >= (settings.soft_timeout or 0.0):
                    # Someone is loading; a stale value now beats waiting for them.
                    return self._serve_stale(key, fallback, ticket)
                if elapsed >= settings.lease_wait:
                    self._counters.lease_timeouts += 1
                    break
                time.sleep(pause)  # another process is loading this key: wait for its value
                pause = min(pause * 2, _LEASE_POLL_MAX)
                continue
            keep, keep_ms = b"", 0
            if isinstance(found, L2Stale):
                fallback = self._fallback_from(found) or fallback
                seen: bytes | None = found.blob
                if fallback is not None:
                    keep, keep_ms = found.blob, int(fallback.for_seconds * 1000)
            else:
                seen = found
            try:
                if stamp is None:
                    # Versions are taken before the load: an invalidation from now on
                    # makes what this load writes stale.
                    stamp = self._coherence.stamp(tags)
            except L2Error as exc:
                self._read_failed(exc)
                break
            try:
                lease_ms = int(settings.lease_ttl * 1000)
                placeholder = leases.acquire(rkey, seen, lease_ms, keep)
            except L2Error as exc:  # a write Redis refused (e.g. OOM): load without a lease
                self._counters.l2_write_errors += 1
                self._l2_log.warning("write", "tiercache: L2 write (lease) failed: %s", exc)
                break
            if placeholder is not None:
                writer = _LeaseWriter(rkey, placeholder, stamp, keep, keep_ms)
                return self._load(key, loader, ttl_s, tags, ticket, fallback, writer)
            # The key changed under us: read what it holds now.
        # No lease: load, keep the value in L1, but never write it to L2.
        return self._load(key, loader, ttl_s, tags, ticket, fallback, None)

    # -- the load ------------------------------------------------------------------------

    def _load(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl_s: float,
        tags: list[str],
        ticket: Ticket,
        fallback: Fallback | None,
        writer: _LeaseWriter | None,
    ) -> Any:
        settings = self._settings
        timeout = settings.hard_timeout
        if fallback is not None and settings.soft_timeout is not None:
            timeout = settings.soft_timeout
        try:
            if timeout is None:
                outcome: tuple[Any, Prepared] | None = self._call_loader(loader)
            else:
                outcome = self._call_with_timeout(key, loader, ttl_s, tags, writer, timeout)
        except Exception as exc:
            if writer is not None:
                self._abort(writer)
            if fallback is not None:
                return self._fail_safe(key, fallback, ticket, exc)
            raise
        except BaseException:
            if writer is not None:
                self._abort(writer)
            raise
        if outcome is None:
            # Timed out; the load goes on in the background and fills the cache when done.
            error = LoaderTimeoutError(f"the loader did not finish within {timeout:g} s")
            if fallback is not None:
                return self._fail_safe(key, fallback, ticket, error)
            raise error
        value, prepared = outcome
        self._store(key, value, prepared, ttl_s, tags, ticket, writer)
        self._counters.loads_served += 1
        self._telemetry.answered("loader", "miss", **{ATTR_VALUE_SIZE: len(prepared.payload)})
        return value

    def _call_loader(self, loader: Callable[[], Any]) -> tuple[Any, Prepared]:
        self._counters.loads += 1
        try:
            if self._telemetry.enabled:
                with self._telemetry.load_span():
                    value = loader()
            else:
                value = loader()
        except BaseException:
            self._counters.load_errors += 1
            raise
        # Every load path encodes, so an unstorable value fails the same way with or
        # without Redis (a SerializationError naming its type).
        return value, self._codec.prepare(value)

    def _call_with_timeout(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl_s: float,
        tags: list[str],
        writer: _LeaseWriter | None,
        timeout: float,
    ) -> tuple[Any, Prepared] | None:
        """The loader's outcome within ``timeout``, or None (it goes on in the background)."""
        late_ticket = self._l1.ticket(key)  # taken before the load, for a late fill
        future = self._background.submit(lambda: self._call_loader(loader))
        if future is None:  # every worker busy: run it here, without a timeout
            self._l1.release(late_ticket)
            return self._call_loader(loader)
        try:
            outcome: tuple[Any, Prepared] = future.result(timeout)
        except FutureTimeout:
            self._counters.load_timeouts += 1

            def finish(done: Future[tuple[Any, Prepared]]) -> None:
                self._finish_late(done, key, ttl_s, tags, late_ticket, writer)

            future.add_done_callback(finish)
            return None
        except BaseException:
            self._l1.release(late_ticket)
            raise
        self._l1.release(late_ticket)
        return outcome

    def _finish_late(
        self,
        done: Future[tuple[Any, Prepared]],
        key: str,
        ttl_s: float,
        tags: list[str],
        ticket: Ticket,
        writer: _LeaseWriter | None,
    ) -> None:
        try:
            if done.cancelled() or done.exception() is not None:
                if writer is not None:
                    self._abort(writer)
                return
            value, prepared = done.result()
            self._store(key, value, prepared, ttl_s, tags, ticket, writer)
        finally:
            self._l1.release(ticket)

    # -- storing and falling back ----------------------------------------------------------

    def _store(
        self,
        key: str,
        value: Any,
        prepared: Prepared,
        ttl_s: float,
        tags: list[str],
        ticket: Ticket,
        writer: _LeaseWriter | None,
    ) -> None:
        settings = self._settings
        if value is None and settings.none_ttl is not None:
            ttl_s = settings.none_ttl  # "not found" is cached, but not for as long
        if self._coherence is None:
            # L1-only: L1 is the only copy, so it lives the whole ttl (jitter is for L2).
            life = l1_ttl = ttl_s
        else:
            life = self._jittered(ttl_s)
            l1_ttl = min(settings.l1_ttl, life)
        stale_for = life + settings.stale_ttl
        if writer is not None:
            stamp = writer.stamp
            blob = self._codec.frame(prepared, self._wall() + life, stamp.ns_version, stamp.tags)
            self._write_with_lease(writer, blob, int(stale_for * 1000))
            l1_ttl = min(l1_ttl, stamp.learned_at + settings.l1_ttl - self._clock())
        if settings.refresh_ahead is not None:
            # Come back to L2 once the value is due for refresh, so a hot key is reloaded in
            # the background instead of expiring under its callers.
            l1_ttl = min(l1_ttl, life * settings.refresh_ahead)
        self._l1.fill(key, value, l1_ttl, ticket, tags, stale_for)

    def _write_with_lease(self, writer: _LeaseWriter, blob: bytes, ttl_ms: int) -> None:
        assert self._coherence is not None
        try:
            if not self._coherence.leases.write(writer.rkey, writer.placeholder, blob, ttl_ms):
                # set()/delete() revoked the lease, or the load outlived it.
                self._counters.lease_lost += 1
        except L2Error as exc:
            self._counters.l2_write_errors += 1
            self._l2_log.warning("write", "tiercache: L2 write failed: %s", exc)

    def _abort(self, writer: _LeaseWriter) -> None:
        assert self._coherence is not None
        self._coherence.leases.release(
            writer.rkey, writer.placeholder, writer.restore, writer.restore_ms
        )

    def _fail_safe(self, key: str, fallback: Fallback, ticket: Ticket, error: Exception) -> Any:
        """The loader failed with ``error`` and a stale value exists: serve it, unless a
        write overtook the load, which made it older still; then serve what that write
        stored (in L1, or in Redis for another instance's write), or raise ``error`` as if
        there were nothing stale."""
        if self._l1.still_valid(ticket):
            return self._serve_stale(key, fallback, ticket)
        entry = self._l1.get(key)
        if entry is not None:
            self._counters.l1_hits += 1
            self._telemetry.answered("l1", "hit")
            return entry[0]
        if self._coherence is not None and self._l2_usable():
            found = self._read_l2(key)  # another instance's write: its value is in Redis
            if isinstance(found, L2Hit):
                self._answered_l2(found)
                return found.entry.value
        raise error

    def _serve_stale(self, key: str, fallback: Fallback, ticket: Ticket) -> Any:
        """Serve ``fallback`` and keep it in L1 for ``fail_safe_throttle``: the loader is
        not called again for this key meanwhile."""
        self._counters.stale_serves += 1
        self._telemetry.answered("stale", "stale")
        hold = min(self._settings.fail_safe_throttle, fallback.for_seconds)
        # Held apart from L1's fresh entries: get() must never return a value past its ttl.
        self._l1.hold(key, fallback.value, hold, ticket, fallback.tags)
        return fallback.value

    # -- refresh-ahead -------------------------------------------------------------------

    def _maybe_refresh(
        self, key: str, loader: Callable[[], Any], ttl_s: float, tags: list[str], hit: L2Hit
    ) -> None:
        assert self._settings.refresh_ahead is not None
        due_at = hit.entry.expires_at - ttl_s * (1.0 - self._settings.refresh_ahead)
        if self._wall() < due_at:
            return
        with self._refreshing_lock:
            if key in self._refreshing:
                return
            self._refreshing.add(key)
        ticket = self._l1.ticket(key)  # before the reload starts

        def done() -> None:
            self._l1.release(ticket)
            with self._refreshing_lock:
                self._refreshing.discard(key)

        def refresh() -> None:
            try:
                self._refresh(key, loader, ttl_s, tags, hit.blob, ticket)
            except Exception as exc:
                self._counters.refresh_errors += 1
                self._l2_log.warning("refresh", "tiercache: background refresh failed: %s", exc)
            finally:
                done()

        if self._background.submit(refresh) is None:
            done()  # every worker busy: skip this refresh; a later read will try again

    def _refresh(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl_s: float,
        tags: list[str],
        seen: bytes,
        ticket: Ticket,
    ) -> None:
        assert self._coherence is not None
        coherence = self._coherence
        lock_key = f"{self._settings.namespace}#refresh:{key}"
        # The lock ends with the refresh (finally below); its TTL only covers a crash, and is
        # kept under the refresh window so a lost lock cannot skip the next refresh.
        assert self._settings.refresh_ahead is not None
        window = ttl_s * (1.0 - self._settings.refresh_ahead)
        if not coherence.leases.refresh_lock(lock_key, min(self._settings.lease_ttl, window)):
            return  # another process is refreshing it
        try:
            stamp = coherence.stamp(tags)
            value, prepared = self._call_loader(loader)
            life = self._jittered(ttl_s)
            stale_for = life + self._settings.stale_ttl
            blob = self._codec.frame(prepared, self._wall() + life, stamp.ns_version, stamp.tags)
            # Replace only the exact bytes we saw: a set/delete meanwhile wins (guarantee 3).
            if coherence.leases.replace(self._prefix + key, seen, blob, int(stale_for * 1000)):
                self._counters.refreshes += 1
                l1_ttl = min(self._settings.l1_ttl, life * self._settings.refresh_ahead)
                self._l1.fill(key, value, l1_ttl, ticket, tags, stale_for)
        finally:
            coherence.leases.refresh_unlock(lock_key)
