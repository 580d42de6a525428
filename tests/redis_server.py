"""A real ``redis-server`` process for tests and benchmarks.

:class:`RedisServer` starts ``redis-server`` from ``PATH`` on a free loopback port with its own
temporary directory, no persistence and ``DEBUG`` enabled for local clients, waits until it
answers ``PING``, and gives fault tests the levers they need: :meth:`RedisServer.kill`
(SIGKILL), :meth:`RedisServer.restart` (same port), :meth:`RedisServer.pause` /
:meth:`RedisServer.resume` (SIGSTOP / SIGCONT).

It never touches a system Redis: it refuses port 6379 and only ever signals the PID it started.
Every wait is bounded; a server that does not come up raises with the tail of its log::

    with RedisServer() as server:
        client = server.client()
        client.ping()

Benchmarks import it as ``from tests.redis_server import RedisServer`` (repo root on sys.path).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["RedisServer", "RedisServerError", "find_redis_server"]

SYSTEM_REDIS_PORT = 6379
START_TIMEOUT = 10.0  # seconds for a fresh server to answer PING
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
PROBE_TIMEOUT = 0.1  # socket timeouts of the readiness probe
LOG_TAIL_LINES = 30
READY_LINE = "Ready to accept connections"


class RedisServerError(RuntimeError):
    """The redis-server binary is missing, or the server failed to start."""


def find_redis_server() -> str | None:
    """Return the path of the ``redis-server`` binary on ``PATH``, or ``None``."""
    return shutil.which("redis-server")


def _free_port() -> int:
    """Return a loopback TCP port that was free a moment ago (never 6379)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port != SYSTEM_REDIS_PORT:
            return port


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, owned by the caller.

    Args:
        extra_args: more command-line arguments, e.g. ``["--requirepass", "s3cret"]``.
        port: a fixed port; by default a free one is picked at the first :meth:`start` and kept
            for every :meth:`restart`. Port 6379 (the system Redis) is refused.
        binary: path of ``redis-server``; by default the one on ``PATH``.
    """

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        *,
        port: int | None = None,
        binary: str | None = None,
    ) -> None:
        if port == SYSTEM_REDIS_PORT:
            raise ValueError("port 6379 belongs to the system Redis; tests must not use it")
        self._extra_args = list(extra_args)
        self._fixed_port = port is not None
        self._port = port
        self._binary = binary
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    # -- properties -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """Always ``"127.0.0.1"``."""
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """The TCP port; stable across :meth:`restart`. Only known once started."""
        if self._port is None:
            raise RedisServerError("the server has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        """PID of the running process (changes on :meth:`restart`)."""
        if self._proc is None:
            raise RedisServerError("the server is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True while the process started here is alive (paused counts as alive)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return self._paused and self.running

    @property
    def log_path(self) -> Path | None:
        """The server's log file (appended to across restarts), once started."""
        return None if self._dir is None else self._dir / "redis-server.log"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> RedisServer:
        """Start the process and wait (at most 10 s) until it answers PING; return self.

        Raises:
            RedisServerError: no binary, or the server exited / did not answer in time
                (the message holds the tail of its log).
        """
        if self.running:
            raise RedisServerError(f"already running (pid {self.pid})")
        binary = self._binary or find_redis_server()
        if binary is None:
            raise RedisServerError("redis-server is not on PATH")
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="tiercache-redis-"))
        # A port picked by _free_port() can be taken before redis binds it: try another one,
        # but only while the port is ours to choose (never on restart, which keeps it).
        attempts = 1 if (self._fixed_port or self._port is not None) else 3
        for attempt in range(attempts):
            if self._port is None:
                self._port = _free_port()
            self._spawn(binary)
            try:
                self._wait_ready()
            except RedisServerError:
                address_in_use = "Address already in use" in self._log_tail()
                self._terminate()
                if address_in_use and attempt + 1 < attempts:
                    self._port = None
                    continue
                raise
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Terminate the process (SIGTERM, SIGKILL after 5 s), reap it, remove the temp dir.

        Safe to call twice, after :meth:`kill`, or while paused.
        """
        self._terminate()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def kill(self) -> None:
        """SIGKILL the process and reap it (a crash, for fault tests). Keeps port and dir."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._proc = None
        self._paused = False

    def restart(self) -> RedisServer:
        """Stop the process if it runs, then start a new one on the same port; return self.

        The data set is empty afterwards (no persistence).
        """
        self._terminate()
        return self.start()

    def pause(self) -> None:
        """Freeze the process with SIGSTOP: connections hang, nothing is refused."""
        self._require_running().send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Thaw a paused process with SIGCONT."""
        self._require_running().send_signal(signal.SIGCONT)
        self._paused = False

    def client(self, **kwargs: Any) -> redis.Redis:
        """Return a new ``redis.Redis`` connected to this server; ``kwargs`` go to redis-py.

        The caller closes it.
        """
        kwargs.setdefault("host", self.host)
        kwargs.setdefault("port", self.port)
        return redis.Redis(**kwargs)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<RedisServer 127.0.0.1:{self._port} {state}>"

    # -- internals --------------------------------------------------------------------------

    def _spawn(self, binary: str) -> None:
        assert self._dir is not None
        assert self._port is not None
        args = [
            binary,
            "--port",
            str(self._port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self._dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--enable-debug-command",
            "local",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            *self._extra_args,
        ]
        log_path = self.log_path
        assert log_path is not None
        # The child keeps its own copy of the descriptor; ours is closed right away.
        with log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self._paused = False

    def _wait_ready(self) -> None:
        """Poll PING until this very process answers, for at most START_TIMEOUT seconds."""
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        last_error: BaseException | None = None
        while True:
            if proc.poll() is not None:
                raise RedisServerError(
                    f"redis-server exited with code {proc.returncode} during startup\n"
                    + self._log_tail()
                )
            try:
                if self._probe(proc.pid):
                    return
            except redis.RedisError as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                raise RedisServerError(
                    f"redis-server on port {self._port} did not answer PING within "
                    f"{START_TIMEOUT:g} s (last error: {last_error!r})\n" + self._log_tail()
                )
            time.sleep(0.02)  # poll interval of a bounded loop

    def _probe(self, pid: int) -> bool:
        """True when the server on our port answers and, where it lets us ask, is ``pid``."""
        probe = redis.Redis(
            host=self.host,
            port=self.port,
            socket_timeout=PROBE_TIMEOUT,
            socket_connect_timeout=PROBE_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            try:
                probe.ping()
            except (redis.AuthenticationError, redis.ResponseError):
                # --requirepass or an ACL file: something answers but will not say its pid;
                # it is ours once our own log says so (not someone else's on a taken port).
                return READY_LINE in self._log_tail()
            try:
                info = probe.info("server")
            except redis.ResponseError:  # INFO forbidden by an ACL; PING was enough
                return True
            return int(info.get("process_id", -1)) == pid
        finally:
            probe.close()

    def _terminate(self) -> None:
        """SIGTERM (+SIGCONT if paused), bounded wait, then SIGKILL; always reap."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            # A stopped process only acts on SIGTERM once continued.
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()
        self._proc = None
        self._paused = False

    def _require_running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise RedisServerError("the server is not running")
        return self._proc

    def _log_tail(self) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return "(no log)"
        lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        return "--- redis-server log (tail) ---\n" + "\n".join(lines)
