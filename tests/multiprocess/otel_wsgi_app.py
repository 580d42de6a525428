"""The WSGI app of the gunicorn end-to-end telemetry test (``test_telemetry_e2e.py``).

Built at import time, so with ``--preload`` in the master, which uses the cache once before
forking (its counts must not show up in the workers'). Each request runs in a ``SERVER``
span of its own (what a WSGI instrumentation would open), through a tracer that resolves to
the provider ``otel_gunicorn_conf.post_fork`` installs in each worker.

* ``GET /up``: answers without touching the cache (the test's readiness probe);
* ``GET /user?key=K[&hold=S]``: ``cache.get_or_set(K, load)``, where ``load`` opens a
  ``db.query`` span; the worker is then held ``S`` seconds (<= 0.2) so that concurrent
  requests spread over the workers;
* ``GET /fail?key=K``: a loader raising ``KeyError(K)``: a 500.

Each answer is JSON: the worker's pid, whether the read was an L1 hit, whether it loaded,
and the cache's stats.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tiercache import TierCache

MAX_HOLD = 0.2

cache = TierCache.from_url(
    os.environ["TIERCACHE_TEST_URL"],
    namespace=os.environ["TIERCACHE_TEST_NAMESPACE"],
    l1_ttl=60,
)
# The master loads a value before forking: a count that is the master's, not a worker's.
cache.get_or_set("user:master@example.com", lambda: "master")
tracer = trace.get_tracer("e2e.app")


def _load_user(key: str) -> dict[str, Any]:
    with tracer.start_as_current_span("db.query"):
        return {"name-length": len(key)}


def _fail(key: str) -> Any:
    raise KeyError(key)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI entry point."""
    params = {name: values[0] for name, values in parse_qs(environ["QUERY_STRING"]).items()}
    path = environ["PATH_INFO"]
    if path == "/up":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"up"]
    status = "200 OK"
    with tracer.start_as_current_span(f"GET {path}", kind=SpanKind.SERVER) as span:
        key = params["key"]
        before = cache.stats()
        value: Any = None
        try:
            if path == "/user":
                value = cache.get_or_set(key, lambda: _load_user(key))
            else:
                cache.get_or_set(key, lambda: _fail(key))
        except KeyError:
            status = "500 Internal Server Error"
            span.set_status(Status(StatusCode.ERROR))
        after = cache.stats()
        l1_hit = after["l1_hits"] > before["l1_hits"]
        span.set_attribute("app.l1_hit", l1_hit)
        hold = min(float(params.get("hold", 0)), MAX_HOLD)
        if hold > 0:
            time.sleep(hold)  # keep this worker busy, so the next request goes elsewhere
    body = json.dumps(
        {
            "pid": os.getpid(),
            "path": path,
            "value": value,
            "l1_hit": l1_hit,
            "loaded": after["loads"] > before["loads"],
            "stats": after,
        }
    ).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
