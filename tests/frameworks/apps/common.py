"""What the two tiny apps share: their routes' behaviour over a cache object with the
Django/cachelib calls ``get``/``set``/``get_or_set`` (or a loader), as JSON.

* ``GET /get?key=K``: the cached value (None if absent);
* ``POST /set?key=K&value=V``: store it;
* ``GET /load?key=K``: the cached value, or one "loaded" by this worker (``pid-<pid>``) and
  cached: the loader answers even while Redis is down.

Every answer holds its worker ``hold`` seconds (<= 0.05) when asked, so that concurrent
requests spread over the workers, and carries the worker's pid.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

MAX_HOLD = 0.05


def answer(
    route: str,
    params: dict[str, str],
    get: Callable[[str], Any],
    set_: Callable[[str, Any], Any],
    load: Callable[[str, Callable[[], Any]], Any],
) -> bytes | None:
    """The JSON body for ``route``; None for an unknown route."""
    key = params.get("key", "k")
    if route == "get":
        value = get(key)
    elif route == "set":
        value = params["value"]
        set_(key, value)
    elif route == "load":
        value = load(key, lambda: f"pid-{os.getpid()}")
    else:
        return None
    hold = min(float(params.get("hold", 0)), MAX_HOLD)
    if hold > 0:
        time.sleep(hold)  # keep this worker busy, so the next request goes elsewhere
    return json.dumps({"value": value, "pid": os.getpid()}).encode()
