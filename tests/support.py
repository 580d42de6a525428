"""Helpers shared by the test modules: bounded waits, a fake clock, counting loaders, a
cache factory for fixtures, thread and subprocess runners.

Nothing here sleeps to let something happen: :func:`wait_until` polls a condition and gives
up after a bound. Fixtures built on these (``namespace``, ``clock``) are in ``conftest.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: conftest imports this module, not tiercache
    from tiercache import TierCache

WAIT = 10.0  # seconds: upper bound of every wait on an Event, a Barrier, a join or a poll
START = 1_700_000_000.0  # a fake clock's default start: a realistic epoch (wall and monotonic)
POLL_INTERVAL = 0.002  # seconds between two checks of a bounded poll
REPO_ROOT = Path(__file__).resolve().parents[1]

#: A default no cache value can equal: ``cache.get(key, MISSING) is MISSING`` is a miss.
MISSING: Any = object()


class BoomError(Exception):
    """A loader's own exception type."""


def unique_namespace(prefix: str = "t") -> str:
    """A namespace no other test uses, so that no test reads another's keys or hears its bus."""
    return prefix + uuid.uuid4().hex[:12]


# -- bounded waits ---------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], object], timeout: float = WAIT, interval: float = POLL_INTERVAL
) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)  # poll interval of a bounded loop
    return bool(predicate())


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """:func:`wait_until`, raising AssertionError naming ``what`` on a timeout: for code that
    cannot assert on the result itself (a child process, a helper)."""
    if not wait_until(predicate, timeout):
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def subscribed(cache: TierCache, *, probe: bool = False, timeout: float = WAIT) -> dict[str, int]:
    """Use ``cache`` once (which starts its bus listener) and wait until the listener is
    subscribed, so that the L1 flush at subscription is behind us; with ``probe``, until it
    also heard its own self-probe. Return the cache's stats."""

    def ready() -> bool:
        stats = cache.stats()
        return stats["bus_subscribed"] == 1 and (not probe or stats["bus_probe_ok"] == 1)

    cache.get("__first_use__")
    wait_for(ready, timeout, f"{cache!r} to subscribe{' and hear its probe' if probe else ''}")
    return cache.stats()


def run_threads(targets: Iterable[Callable[[], object]], timeout: float = WAIT) -> None:
    """Run each target in a daemon thread of its own, all at once; fail if one is stuck."""
    threads = [threading.Thread(target=target, daemon=True) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread is stuck"


class LoadThreads:
    """Background load for fault tests: ``call(i)`` in ``threads`` daemon threads until the
    ``with`` block ends (thread *n* calls with n, n + threads, ...). Every exception a call
    raised lands in ``errors`` and every call's wall time in ``durations``, so a test can
    assert that a fault reached no caller and stalled none."""

    def __init__(self, call: Callable[[int], object], threads: int = 8) -> None:
        self.errors: list[BaseException] = []
        self.durations: list[float] = []
        self._call = call
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(n, threads), daemon=True)
            for n in range(threads)
        ]

    @property
    def calls(self) -> int:
        """Calls finished so far, raised or not."""
        return len(self.durations)

    def _run(self, i: int, step: int) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._call(i)
            except BaseException as exc:
                with self._lock:
                    self.errors.append(exc)
            with self._lock:
                self.durations.append(time.monotonic() - started)
            i += step

    def __enter__(self) -> LoadThreads:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT)
        assert not any(t.is_alive() for t in self._threads), "a load thread is stuck"


# -- fakes -----------------------------------------------------------------------------------


class FakeClock:
    """A settable clock for ``timer=`` (L1 deadlines and logical L2 expiry both follow it) or
    for a breaker's ``clock=``: call it for the time; move it with ``advance`` or ``now``."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Loader:
    """A loader that counts its calls; returns ``value``, or raises ``error`` (the same
    object every time) when one is given."""

    def __init__(self, value: Any = "loaded", error: BaseException | None = None) -> None:
        self.value = value
        self.error = error
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.value


# -- building caches in fixtures -------------------------------------------------------------


class CacheFactory:
    """``factory(**options)`` builds a TierCache with this factory's default options (the
    call's own options win); leaving the ``with`` block closes every cache it built.

    The cache's client is the call's ``client=`` option if given, else a new client from
    ``connect()`` (closed with the caches) if ``connect`` is given, else ``client``: a Redis
    client (left open), a URL (``TierCache.from_url``) or None (L1 only). With ``settle``,
    each new cache is used once and awaited until its bus listener is subscribed."""

    def __init__(
        self,
        client: Any = None,
        *,
        connect: Callable[[], Any] | None = None,
        settle: bool = False,
        **defaults: Any,
    ) -> None:
        self.client = client
        self.connect = connect
        self.settle = settle
        self.defaults = defaults
        self.caches: list[TierCache] = []
        self.clients: list[Any] = []  # those made by ``connect``

    def __call__(self, **options: Any) -> TierCache:
        from tiercache import TierCache

        options = {**self.defaults, **options}
        if "client" in options:
            client = options.pop("client")
        elif self.connect is not None:
            client = self.connect()
            self.clients.append(client)
        else:
            client = self.client
        if isinstance(client, str):
            cache = TierCache.from_url(client, **options)
        else:
            cache = TierCache(client, **options)
        self.caches.append(cache)
        if self.settle:
            subscribed(cache)
        return cache

    def __enter__(self) -> CacheFactory:
        return self

    def __exit__(self, *exc: object) -> None:
        for cache in self.caches:
            cache.close()
        for client in self.clients:
            client.close()


# -- subprocesses ----------------------------------------------------------------------------


def run_python(
    code: str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports this checkout's tiercache (the repo
    root goes first on PYTHONPATH; ``env`` defaults to this process's environment). Output
    is captured as text; the return code is the caller's to check."""
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH")])
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
