"""A module-level memoized function crosses process boundaries by reference, as an
``functools.lru_cache`` function does: ``multiprocessing`` pools can map it."""

from __future__ import annotations

import multiprocessing

import pytest

from tests.multiprocess import memo_helpers
from tests.multiprocess.support import CALL_TIMEOUT


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_maps_a_module_level_memoized_function(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Pool.map(memoized_fn, ...)`` works with fork and spawn workers (spawn children import
    the helper module and find the memoized object by its qualified name)."""
    # The workers' default cache is L1-only: this test is about pickling, not Redis.
    monkeypatch.delenv("TIERCACHE_URL", raising=False)
    context = multiprocessing.get_context(method)
    pool = context.Pool(2)
    try:
        result = pool.map_async(memo_helpers.square, [1, 2, 3, 2]).get(CALL_TIMEOUT)
        assert result == [1, 4, 9, 4]
    finally:
        pool.terminate()  # kills the workers at once: join() then returns promptly
        pool.join()
