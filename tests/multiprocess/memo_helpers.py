"""Module-level memoized functions for the cross-process tests (spawn children import them)."""

from __future__ import annotations

import tiercache


@tiercache.memoize(ttl=60)
def square(x: int) -> int:
    """``x * x``, memoized in the default cache of whichever process calls it."""
    return x * x
