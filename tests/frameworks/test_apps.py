"""Real apps under ``gunicorn --preload -w 4 -k sync``, driven by HTTP: the tiny Django project
(tests/frameworks/apps/django_*.py) and the tiny Flask app (tests/frameworks/apps/flask_app.py),
their views using the framework's cache API unchanged.

Checked through the workers' answers: a value cached by one worker is served by all; an
update through one worker reaches all; with redis-server killed every worker still answers
(the loader's value, fail-safe), and once Redis is back the workers are coherent again
without a restart of gunicorn.
"""

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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.redis_server import RedisServer
from tests.support import REPO_ROOT, unique_namespace, wait_for, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.slow]

WORKERS = 4
SERVER_TIMEOUT = 20.0  # gunicorn answering; a value reaching every worker
STOP_TIMEOUT = 10.0
APPS = {
    "django": "tests.frameworks.apps.django_wsgi:application",
    "flask": "tests.frameworks.apps.flask_app:app",
}


def _gunicorn() -> str:
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _request(port: int, method: str, path: str) -> dict[str, Any] | None:
    """One request on a new connection; its JSON answer, or None if refused."""
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


@pytest.fixture(params=sorted(APPS))
def served(
    request: pytest.FixtureRequest, fresh_redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[int, RedisServer]]:
    """gunicorn --preload -w 4 serving one app on a private redis-server; (port, server)."""
    binary = _gunicorn()
    port = _free_port()
    env = dict(
        os.environ,
        TIERCACHE_TEST_URL=fresh_redis_server.url,
        TIERCACHE_TEST_NAMESPACE=unique_namespace(request.param),
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)
    log_path = tmp_path / "gunicorn.log"
    command = [
        binary,
        "--preload",
        "-w",
        str(WORKERS),
        "-k",
        "sync",
        "-b",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "5",
        APPS[request.param],
    ]
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # its own process group: a SIGKILL reaches the workers
        )
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT
        while _request(port, "GET", "/get?key=__up__") is None:
            assert server.poll() is None, "gunicorn exited:\n" + log_path.read_text()
            assert time.monotonic() < deadline, "gunicorn never answered:\n" + log_path.read_text()
            time.sleep(0.05)  # poll interval of a bounded loop
        yield port, fresh_redis_server
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.kill()
            server.wait()


def _round(port: int, path: str) -> list[dict[str, Any]]:
    """Concurrent requests that each hold their worker a little, so all workers answer."""
    sep = "&" if "?" in path else "?"
    with ThreadPoolExecutor(WORKERS * 2) as pool:
        answers = pool.map(
            lambda _: _request(port, "GET", f"{path}{sep}hold=0.03"), range(WORKERS * 2)
        )
        return [answer for answer in answers if answer is not None]


def _every_worker_answers(port: int, path: str, expected: Any) -> set[int]:
    """Wait until all four workers answered ``expected`` at ``path``; their pids."""
    seen: dict[int, Any] = {}

    def done() -> bool:
        for answer in _round(port, path):
            seen[answer["pid"]] = answer["value"]
        return len(seen) == WORKERS and all(value == expected for value in seen.values())

    if not wait_until(done, SERVER_TIMEOUT):
        raise AssertionError(
            f"timed out after {SERVER_TIMEOUT:g} s waiting for {WORKERS} workers answering "
            f"{expected!r} at {path}; last answers by pid: {seen}"
        )
    return set(seen)


def test_workers_share_values_and_survive_a_redis_outage(served: tuple[int, RedisServer]) -> None:
    """Cached by one worker, served by all; updated through one, seen by all; Redis killed:
    every worker still answers; Redis back: coherent again, without restarting gunicorn."""
    port, redis_server = served

    # A value one worker loads is the one every worker serves (no worker loads its own).
    first = _request(port, "GET", "/load?key=page")
    assert first is not None
    assert first["value"] == f"pid-{first['pid']}"
    pids = _every_worker_answers(port, "/load?key=page", first["value"])

    # An update through one worker reaches the L1 of all.
    assert _request(port, "POST", "/set?key=greeting&value=hello") is not None
    _every_worker_answers(port, "/get?key=greeting", "hello")
    assert _request(port, "POST", "/set?key=greeting&value=world") is not None
    _every_worker_answers(port, "/get?key=greeting", "world")

    # Redis down: every view still answers, with the loader's value (each worker its own).
    redis_server.kill()
    seen: dict[int, Any] = {}

    def all_answer_while_down() -> bool:
        for answer in _round(port, "/load?key=during-outage"):
            seen[answer["pid"]] = answer["value"]
        return len(seen) == WORKERS

    wait_for(all_answer_while_down, SERVER_TIMEOUT, "every worker answering with Redis down")
    assert all(value == f"pid-{pid}" for pid, value in seen.items())

    # Redis back (empty): writes through one worker reach all again.
    redis_server.restart()
    assert _request(port, "POST", "/set?key=greeting&value=again") is not None

    def recovered() -> bool:
        # Re-send the write until it lands in Redis (the writer's breaker may still be open).
        _request(port, "POST", "/set?key=greeting&value=again")
        answers = _round(port, "/get?key=greeting")
        return len(answers) > 0 and all(a["value"] == "again" for a in answers)

    wait_for(recovered, SERVER_TIMEOUT, "the workers to use Redis again")
    assert _every_worker_answers(port, "/get?key=greeting", "again") == pids  # no restart
