"""Runnable benchmarks of tiercache against hand-written and raw peers.

Run ``python -m benchmarks [--quick] [names...]`` from the repository root; see README.md.
"""

#: Benchmark modules in the order ``python -m benchmarks`` runs them.
BENCHMARKS = (
    "hot_path",
    "memoize",
    "l2",
    "writes",
    "compression",
    "invalidation",
    "listener",
    "telemetry",
    "refresh",
    "writers",
    "cluster",
    "soak",
    "peers",
    "frameworks",
)
