"""Frameworks: Django's ``cache.get`` on the tiercache backend (an L1 hit, an L2 hit) against
Django's built-in ``RedisCache`` and django-redis, in one run on one redis-server.

Every variant reads the same ~1 KB value through Django's cache API: the backend object of
``django.core.cache.caches[alias]`` (what ``django.core.cache.cache`` forwards to; the proxy
adds the same small cost to every backend). The tiercache L2-hit row reads two keys in turn
from a backend whose L1 holds one entry, so every read is an L1 miss answered by Redis.
``TierCache.get`` on the same (already prefixed) key is the reference the backend's own
overhead is measured against.

django-redis comes from the ``peers`` extra: without it its row is skipped with a line.

Target: the backend's overhead over ``TierCache.get`` <= 1.5 µs per call on an L1 hit.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from benchmarks._timing import Variant, compare, fmt_ns, ratio_table
from tests.redis_server import RedisServer

TITLE = "Django cache.get: tiercache backend vs RedisCache and django-redis"
VALUE = {"id": 42, "version": 7, "body": "x" * 1000}
#: The backend's own cost over TierCache.get on an L1 hit, in ns.
OVERHEAD_TARGET_NS = 1500.0


def _configure(url: str) -> dict[str, Any]:
    import django
    from django.conf import settings

    if settings.configured:
        raise RuntimeError("the frameworks benchmark configures Django itself: run it alone")
    caches: dict[str, Any] = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "tier": {
            "BACKEND": "tiercache.contrib.django.TierCacheBackend",
            "LOCATION": url,
            "TIMEOUT": 3600,
            "OPTIONS": {"namespace": "bench-l1", "l1_ttl": 3600},
        },
        "tier_l2": {
            "BACKEND": "tiercache.contrib.django.TierCacheBackend",
            "LOCATION": url,
            "TIMEOUT": 3600,
            "OPTIONS": {"namespace": "bench-l2", "l1_ttl": 3600, "l1_maxsize": 1},
        },
        "redis": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": url,
            "TIMEOUT": 3600,
        },
    }
    if importlib.util.find_spec("django_redis") is not None:
        caches["django_redis"] = {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": url,
            "TIMEOUT": 3600,
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
        }
    settings.configure(SECRET_KEY="benchmark-secret", CACHES=caches, USE_TZ=True)
    django.setup()
    return caches


def run(quick: bool = False) -> None:
    number, rounds = (2_000, 7) if quick else (5_000, 21)
    with RedisServer() as server:
        configured = _configure(server.url)
        from django.core.cache import caches

        tier, tier_l2, redis_cache = caches["tier"], caches["tier_l2"], caches["redis"]
        for backend in (tier, redis_cache):
            backend.set("k", VALUE)
        tier_l2.set("a", VALUE)
        tier_l2.set("b", VALUE)
        assert tier.get("k") == VALUE
        assert tier_l2.get("a") == VALUE
        core = tier.tier
        full_key = tier.make_and_validate_key("k")
        variants = [
            Variant("core_l1", "f(k)", {"f": core.get, "k": full_key}, number=number * 20),
            Variant("tier_l1", "f(k)", {"f": tier.get, "k": "k"}, number=number * 20),
            Variant("tier_l2", "f(a); f(b)", {"f": tier_l2.get, "a": "a", "b": "b"}, ops=2),
            Variant("redis", "f(k)", {"f": redis_cache.get, "k": "k"}),
        ]
        labels = {
            "core_l1": "TierCache.get, L1 hit (reference)",
            "tier_l1": "Django get, tiercache backend, L1 hit",
            "tier_l2": "Django get, tiercache backend, L2 hit",
            "redis": "Django get, built-in RedisCache",
            "django_redis": "Django get, django-redis",
        }
        if "django_redis" in configured:
            dj_redis = caches["django_redis"]
            dj_redis.set("k", VALUE)
            variants.append(Variant("django_redis", "f(k)", {"f": dj_redis.get, "k": "k"}))
        else:
            print("django-redis is not installed (pip install '.[peers]'): its row is skipped")
        samples = compare(variants, repeat=rounds, number=number)
        ratio_table(
            f"ns per cache.get (median of {rounds} interleaved repeats; ratio < 1: faster "
            "than the built-in RedisCache)",
            samples,
            "redis",
            labels=labels,
        )
        for backend in (tier, tier_l2):
            backend.tier.close()  # before the server stops: no "listener lost" lines
        overhead = samples["tier_l1"].median - samples["core_l1"].median
        verdict = "met" if overhead <= OVERHEAD_TARGET_NS else "MISSED"
        print(
            f"\nbackend overhead over TierCache.get on an L1 hit: {fmt_ns(overhead)} "
            f"(target <= {fmt_ns(OVERHEAD_TARGET_NS)}: {verdict})"
        )
