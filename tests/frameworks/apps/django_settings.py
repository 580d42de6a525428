"""Settings of the tiny Django project served by gunicorn in tests/frameworks/test_apps.py."""

from __future__ import annotations

import os

from tiercache import Breaker

SECRET_KEY = "tiercache-django-app-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "tests.frameworks.apps.django_views"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
USE_TZ = True
CACHES = {
    "default": {
        "BACKEND": "tiercache.contrib.django.TierCacheBackend",
        "LOCATION": os.environ["TIERCACHE_TEST_URL"],
        "TIMEOUT": 300,
        "OPTIONS": {
            "namespace": os.environ.get("TIERCACHE_TEST_NAMESPACE", "djapp"),
            "l1_ttl": 60,
            # Redis comes back within a second of a restart in the test.
            "breaker": Breaker(failures=2, reset_after=0.2),
        },
    }
}
