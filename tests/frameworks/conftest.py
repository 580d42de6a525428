"""Fixtures of the framework adapters' tests: Django configured once per test process."""

from __future__ import annotations

import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402

SECRET_KEY = "tiercache-tests-secret-key-0123456789"

if not settings.configured:
    settings.configure(
        SECRET_KEY=SECRET_KEY,
        USE_TZ=True,
        INSTALLED_APPS=[],
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
    )
    django.setup()
