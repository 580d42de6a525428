"""Real apps under ``gunicorn --preload -w 4 -k sync``, driven by HTTP: the tiny Django project
(tests/frameworks/apps/django_*.py) and the tiny Flask app (tests/frameworks/apps/flask_app.py),
their views using the framework's cache API unchanged.

Checked through the workers' answers: a value cached by one worker is served by all; an
update through one worker reaches all; with redis-server killed every worker still answers
(the loader's value, fail-safe), and once Redis is back the workers are coherent again
without a restart of gunicorn.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.gunicorn import request_json, serve
from tests.redis_server import RedisServer
from tests.support import unique_namespace, wait_for, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.slow]

WORKERS = 4
SERVER_TIMEOUT = 20.0  # gunicorn answering; a value reaching every worker
APPS = {
    "django": "tests.frameworks.apps.django_wsgi:application",
    "flask": "tests.frameworks.apps.flask_app:app",
}


_request = request_json


@pytest.fixture(params=sorted(APPS))
def served(
    request: pytest.FixtureRequest, fresh_redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[int, RedisServer]]:
    """gunicorn --preload -w 4 serving one app on a private redis-server; (port, server)."""
    env = dict(
        os.environ,
        TIERCACHE_TEST_URL=fresh_redis_server.url,
        TIERCACHE_TEST_NAMESPACE=unique_namespace(request.param),
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)
    with serve(
        APPS[request.param],
        workers=WORKERS,
        env=env,
        log_path=tmp_path / "gunicorn.log",
        up=lambda port: _request(port, "GET", "/get?key=__up__") is not None,
        timeout=SERVER_TIMEOUT,
    ) as (port, _server):
        yield port, fresh_redis_server


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
