"""Serving a test WSGI app with gunicorn (``--preload``, sync workers) for the tests that
drive real worker processes over HTTP: finding the binary, a free port, one JSON request,
and a context manager that starts the server, waits (bounded) until it answers and stops
its whole process group afterwards."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO_ROOT

__all__ = ["free_port", "gunicorn_binary", "request_json", "serve"]

STOP_TIMEOUT = 10.0


def gunicorn_binary() -> str:
    """The gunicorn next to this interpreter (or on PATH); skip, or fail on CI, without it."""
    path = Path(sys.executable).parent / "gunicorn"
    if path.exists():
        return str(path)
    found = shutil.which("gunicorn")
    if found is None:
        reason = "gunicorn is not installed (pip install gunicorn)"
        if os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}:
            pytest.fail(f"{reason}; required because CI=true")
        pytest.skip(reason)
    return found


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def request_json(port: int, method: str, path: str) -> dict[str, Any] | None:
    """One request on a new connection (``Connection: close``); its JSON answer (status
    200 asserted), or None if the connection was refused."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
        answer: dict[str, Any] = json.loads(body)
        return answer
    except ConnectionRefusedError:
        return None
    finally:
        conn.close()


@contextlib.contextmanager
def serve(
    app: str,
    *,
    workers: int,
    env: Mapping[str, str],
    log_path: Path,
    up: Callable[[int], bool],
    timeout: float,
    extra: Sequence[str] = (),
    graceful: float = 5.0,
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``gunicorn --preload -w workers -k sync`` serving ``app`` on a free port; yields
    ``(port, process)`` once ``up(port)`` is true (within ``timeout``), and stops the whole
    process group afterwards (SIGTERM, then SIGKILL after a bound)."""
    port = free_port()
    command = [gunicorn_binary(), "--preload", "-w", str(workers), "-k", "sync"]
    command += ["-b", f"127.0.0.1:{port}", *extra, "--graceful-timeout", f"{graceful:g}", app]
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # its own process group: a SIGKILL reaches the workers
        )
    try:
        deadline = time.monotonic() + timeout
        while not up(port):
            assert server.poll() is None, "gunicorn exited:\n" + log_path.read_text()
            assert time.monotonic() < deadline, "gunicorn never answered:\n" + log_path.read_text()
            time.sleep(0.05)  # poll interval of a bounded loop
        yield port, server
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.pid, signal.SIGKILL)
                server.wait()
