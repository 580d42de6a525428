"""The Django project's WSGI application, for ``gunicorn --preload``: the cache is used once
in the master, so the workers are forked from a process with a live cache."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.frameworks.apps.django_settings")

from django.core.cache import cache
from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
cache.get_or_set("master", os.getpid())
