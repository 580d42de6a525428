"""The tiny Flask app, Flask-Caching on tiercache, for ``gunicorn --preload``."""

from __future__ import annotations

import os

from flask import Flask, Response, request
from flask_caching import Cache

from tiercache import Breaker

from .common import answer

app = Flask(__name__)
app.config.update(
    SECRET_KEY="tiercache-flask-app-secret",
    CACHE_TYPE="tiercache.contrib.flask.TierCache",
    CACHE_REDIS_URL=os.environ["TIERCACHE_TEST_URL"],
    CACHE_DEFAULT_TIMEOUT=300,
    CACHE_OPTIONS={
        "namespace": os.environ.get("TIERCACHE_TEST_NAMESPACE", "flapp"),
        "l1_ttl": 60,
        "breaker": Breaker(failures=2, reset_after=0.2),
    },
)
cache = Cache(app)


def _load(key: str, loader: object) -> object:
    value = cache.get(key)
    if value is None:
        value = loader()  # type: ignore[operator]
        cache.add(key, value)
        value = cache.get(key) or value
    return value


@app.route("/<route>", methods=["GET", "POST"])
def view(route: str) -> Response:
    body = answer(route, dict(request.args), cache.get, cache.set, _load)
    if body is None:
        return Response("not found", status=404)
    return Response(body, content_type="application/json")


with app.app_context():
    cache.set("master", os.getpid())
