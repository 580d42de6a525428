"""Sentinel: ``redis+sentinel://`` construction and a failover under load.

The set (``tests.redis_cluster.SentinelSet``): one primary, one replica, three sentinels with
``down-after-milliseconds 1000``. The failover test kills the primary under 8 threads of load
and is marked ``slow``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from tests.conftest import require_cluster_tools
from tests.redis_cluster import SentinelSet
from tests.support import LoadThreads, subscribed, wait_until
from tiercache import TierCache
from tiercache.connect import client_from_url

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

PROMOTION_TIMEOUT = 15.0  # seconds for the sentinels to agree and promote the replica
RESUME_WITHIN = 5.0  # seconds after the promotion for L2 and invalidation to work again


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    """A Sentinel set of this test's own (its primary may be killed)."""
    require_cluster_tools()
    with SentinelSet() as found:
        yield found


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://127.0.0.1:1",
        "redis+sentinel://127.0.0.1:1/",
        "redis+sentinel://127.0.0.1:1/svc/x",
        "redis+sentinel://127.0.0.1:1/svc/0/more",
        "redis+cluster://127.0.0.1:1/3",
        "redis+cluster://127.0.0.1/",
        "redis+cluster:///",
    ],
)
def test_malformed_cluster_and_sentinel_urls_are_a_value_error(url: str) -> None:
    """A service name is required for Sentinel; a cluster has database 0 only; host:port."""
    with pytest.raises(ValueError, match=r"url|database 0"):
        client_from_url(url)


@pytest.mark.slow
def test_sentinel_failover_under_load_is_invisible_to_callers_and_resumes_quickly(
    sentinels: SentinelSet, namespace: str
) -> None:
    """Kill the primary under 8 threads: no exception reaches a caller, and within 5 s of
    the promotion L2 and invalidation work again, without a restart."""
    url = sentinels.url
    with (
        TierCache.from_url(url, namespace=namespace, l1_ttl=60) as writer,
        TierCache.from_url(url, namespace=namespace, l1_ttl=60) as reader,
    ):
        assert isinstance(writer._l2 and writer._l2.client, redis.Redis)
        subscribed(writer)
        subscribed(reader)

        def call(i: int) -> None:
            key = f"k{i % 100}"
            if i % 2:
                writer.set(key, i)
            else:
                reader.get_or_set(key, lambda: 0)

        with LoadThreads(call) as load:
            assert wait_until(lambda: load.calls > 200)
            old_port = sentinels.primary.port
            sentinels.primary.kill()
            assert wait_until(
                lambda: sentinels.current_primary_port() not in (None, old_port),
                timeout=PROMOTION_TIMEOUT,
            ), "the sentinels did not promote the replica"
            promoted_at = time.monotonic()

            def resumed() -> bool:
                # A write through L2 that the other instance hears on the bus and reads
                # back from L2: both work again.
                stamp = time.monotonic()
                writer.set("probe", stamp)
                return bool(reader.get("probe") == stamp)

            assert wait_until(resumed, timeout=RESUME_WITHIN + 1.0)
            # Now "probe" is in the reader's L1: only a message on the bus can replace it.
            received = reader.stats()["bus_received"]
            writer.set("probe", "after")
            assert wait_until(
                lambda: (
                    reader.get("probe") == "after" and reader.stats()["bus_received"] > received
                ),
                timeout=RESUME_WITHIN,
            )
            resumed_after = time.monotonic() - promoted_at
            print(f"L2 and invalidation resumed {resumed_after:.2f} s after the promotion")
            before = load.calls
            assert wait_until(lambda: load.calls > before + 200)
        assert load.errors == []
        assert resumed_after <= RESUME_WITHIN, f"resumed {resumed_after:.2f} s after promotion"
        assert reader.stats()["bus_subscribed"] == 1
