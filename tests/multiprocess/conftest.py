"""Fixtures shared by the cross-process tests."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def namespace() -> str:
    """A namespace of its own for each test, so no test hears another one's bus."""
    return "mp" + uuid.uuid4().hex[:12]
