"""A tiny WSGI app for the gunicorn ``--preload`` test (tests/multiprocess/test_fork.py).

The cache is built at import time from ``TIERCACHE_TEST_URL`` (so ``--preload`` builds it in
the master) and used once there, so the master has a listener thread and an L1 entry when
gunicorn forks its workers.

* ``GET /get?key=K[&hold=S]``: ``cache.get(K)``, holding the worker ``S`` seconds (<= 0.2)
  afterwards so that concurrent requests spread over the workers;
* ``POST /set?key=K&value=V``: ``cache.set(K, V)``.

Each answer is JSON: the value, the worker's pid, whether the read was an L1 hit, whether the
listener was subscribed before the read, and the cache's stats.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from tiercache import TierCache

MAX_HOLD = 0.2

cache = TierCache.from_url(
    os.environ["TIERCACHE_TEST_URL"],
    namespace=os.environ.get("TIERCACHE_TEST_NAMESPACE", "wsgi"),
    l1_ttl=60,
)
MASTER_PID = os.getpid()
cache.get_or_set("master", lambda: MASTER_PID)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI entry point."""
    params = {name: values[0] for name, values in parse_qs(environ["QUERY_STRING"]).items()}
    route = (environ["REQUEST_METHOD"], environ["PATH_INFO"])
    before = cache.stats()
    if route == ("GET", "/get"):
        value = cache.get(params["key"])
        hold = min(float(params.get("hold", 0)), MAX_HOLD)
        if hold > 0:
            time.sleep(hold)  # keep this worker busy, so the next request goes elsewhere
    elif route == ("POST", "/set"):
        value = params["value"]
        cache.set(params["key"], value)
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    after = cache.stats()
    body = json.dumps(
        {
            "value": value,
            "pid": os.getpid(),
            "l1_hit": after["l1_hits"] > before["l1_hits"],
            "subscribed_before": before["bus_subscribed"] == 1,
            "stats": after,
        }
    ).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
