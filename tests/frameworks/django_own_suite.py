"""Run Django's own ``BaseCacheTests`` (tests/cache/tests.py of Django's sdist) against the
tiercache backend, as Django runs them against its built-in backends: in this process of
its own (Django settings are per process), with a test database for the tests that use a
model. Invoked by tests/frameworks/test_django_own_suite.py with two arguments: the folder
holding the extracted ``cache`` test package, and the Redis URL. Exit status 0: all passed.

No test is skipped or changed here: the only skips are Django's own (culling, which
Django's RedisCache does not implement either).
"""

from __future__ import annotations

import os
import sys
import unittest


def main(folder: str, url: str) -> int:
    sys.path.insert(0, folder)
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY="django-own-suite",
        USE_TZ=True,
        INSTALLED_APPS=["cache"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        MIDDLEWARE=[],
        ROOT_URLCONF=[],
    )
    django.setup()
    from cache import tests as django_tests  # type: ignore[import-not-found]
    from django.test import TestCase
    from django.test.runner import DiscoverRunner
    from django.test.utils import override_settings

    params = {
        "BACKEND": "tiercache.contrib.django.TierCacheBackend",
        "LOCATION": url,
        "OPTIONS": {"namespace": f"django-own-{os.getpid()}"},
    }

    @override_settings(
        CACHES=django_tests.caches_setting_for_tests(
            base=params,
            exclude={"cull", "zero_cull"},  # LocMem/DB-only options
        )
    )
    class TierCacheBackendTests(django_tests.BaseCacheTests, TestCase):  # type: ignore[misc]
        pass

    runner = DiscoverRunner(verbosity=1, interactive=False)
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(TierCacheBackendTests)
    runner.setup_test_environment()  # ALLOWED_HOSTS for the test client, locmem e-mail, ...
    old = runner.setup_databases()
    try:
        result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    finally:
        runner.teardown_databases(old)
        runner.teardown_test_environment()
    print(
        f"ran={result.testsRun} failures={len(result.failures)} errors={len(result.errors)} "
        f"skipped={len(result.skipped)}"
    )
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
