"""Django's own cache test suite (``BaseCacheTests`` from the tests/cache folder of Django's
sdist, the suite Django holds its built-in backends to) run against the tiercache backend on
a real redis-server, in a process of its own (tests/frameworks/django_own_suite.py).

The sdist of the installed Django version comes from ``TIERCACHE_DJANGO_SDIST`` (a path to
the ``.tar.gz``) or from ``pip download`` through the configured package index; when neither
is available the test is skipped with the reason. Only ``tests/cache/*.py`` is extracted.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.redis_server import RedisServer
from tests.support import REPO_ROOT

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SUITE_TIMEOUT = 240.0  # Django's suite sleeps ~13 s of real time in its expiry tests
DOWNLOAD_TIMEOUT = 120.0


def _sdist(folder: Path) -> Path:
    given = os.environ.get("TIERCACHE_DJANGO_SDIST")
    if given:
        return Path(given)
    version = importlib.metadata.version("django")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        f"django=={version}",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--quiet",
        "-d",
        str(folder),
    ]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=DOWNLOAD_TIMEOUT)
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"Django's sdist could not be had (set TIERCACHE_DJANGO_SDIST): {exc}")
    found = sorted(folder.glob("*.tar.gz"))
    if not found:
        pytest.skip("pip download gave no Django sdist (set TIERCACHE_DJANGO_SDIST)")
    return found[0]


def _extract_cache_tests(sdist: Path, target: Path) -> Path:
    with tarfile.open(sdist) as archive:
        members = [
            m
            for m in archive.getmembers()
            if m.isfile()
            and m.name.endswith(".py")
            and m.name.split("/")[1:3] == ["tests", "cache"]
            and len(m.name.split("/")) == 4
        ]
        if not members:
            pytest.fail(f"{sdist} has no tests/cache/*.py")
        for member in members:
            member.name = "/".join(member.name.split("/")[2:])  # cache/<file>.py
            archive.extract(member, target, filter="data")
    return target


def test_djangos_base_cache_tests_pass(redis_server: RedisServer, tmp_path: Path) -> None:
    """Every test of Django's BaseCacheTests passes on the tiercache backend."""
    pytest.importorskip("django")
    folder = _extract_cache_tests(_sdist(tmp_path / "sdist"), tmp_path / "django-tests")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "tests/frameworks/django_own_suite.py"),
            str(folder),
            redis_server.url,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT,
        env={k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-8000:]
    assert "failures=0 errors=0" in result.stdout
