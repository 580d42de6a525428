"""Validated, frozen settings shared by every part of a `TierCache`.

Every option is checked once, before any I/O, and a bad one raises `TypeError` or
`ValueError` naming the argument. Durations accept seconds (``int``/``float``) or a
`datetime.timedelta`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

__all__ = [
    "DEFAULTS",
    "DEFAULT_BACKGROUND_WORKERS",
    "DEFAULT_COMPRESS_THRESHOLD",
    "DEFAULT_FAIL_SAFE_THROTTLE",
    "DEFAULT_L1_ENTRY_SHARE",
    "DEFAULT_L1_MAXSIZE",
    "DEFAULT_L1_MAX_BYTES",
    "DEFAULT_L1_TTL",
    "DEFAULT_LEASE_TTL",
    "DEFAULT_LEASE_WAIT",
    "DEFAULT_MAX_KEY_LENGTH",
    "DEFAULT_MAX_VALUE_BYTES",
    "DEFAULT_NAMESPACE",
    "DEFAULT_PROPAGATE_VALUES",
    "DEFAULT_TTL",
    "DEFAULT_WRITE_BEHIND_BATCH_SIZE",
    "DEFAULT_WRITE_BEHIND_DELAY",
    "DEFAULT_WRITE_BEHIND_RETRIES",
    "MAX_DURATION",
    "OPTIONS",
    "TTL_JITTER",
    "Breaker",
    "Duration",
    "Option",
    "Settings",
    "check_duration",
    "check_optional_ttl",
    "check_writer",
    "options_table",
]

Duration = float | int | timedelta

DEFAULT_NAMESPACE = "tiercache"
#: L2 lifetime of an entry, seconds.
DEFAULT_TTL = 300.0
#: How long a process may serve its L1 copy without hearing from L2, seconds. When ``ttl`` is
#: shorter, ``l1_ttl`` defaults to ``ttl``.
DEFAULT_L1_TTL = 30.0
DEFAULT_L1_MAXSIZE = 10_000
#: The default bound on the summed encoded size of L1's values (64 MiB).
DEFAULT_L1_MAX_BYTES = 64 * 1024 * 1024
#: A value whose encoded size is over this share of ``l1_max_bytes`` stays in L2 only.
DEFAULT_L1_ENTRY_SHARE = 0.125
#: Seconds a queued write-behind write waits for others to join its batch.
DEFAULT_WRITE_BEHIND_DELAY = 0.1
DEFAULT_WRITE_BEHIND_BATCH_SIZE = 100
#: How many times a failed write-behind batch is retried (with backoff) before it is dropped.
DEFAULT_WRITE_BEHIND_RETRIES = 5
DEFAULT_MAX_KEY_LENGTH = 1024
#: Serialized values at least this large are zstd-compressed. Measured on these machines
#: (benchmarks/compression.py): below ~8 KiB zstd saves little Redis memory per CPU spent
#: and never saves time on loopback; 8 KiB keeps most of the memory saving.
DEFAULT_COMPRESS_THRESHOLD = 8 * 1024
DEFAULT_MAX_VALUE_BYTES = 32 * 1024 * 1024
#: L2 TTLs are shortened by a random fraction in [0, TTL_JITTER) so that keys written
#: together do not all expire in the same instant.
TTL_JITTER = 0.1
#: How long a cross-process lease on a missing key lasts, seconds: a load that takes longer
#: loses the right to write its value to L2 (it is still returned and kept in L1).
DEFAULT_LEASE_TTL = 5.0
#: How long other processes wait for the lease holder's value before loading themselves.
DEFAULT_LEASE_WAIT = 5.0
#: After serving a stale value because the loader failed, how long to wait before calling
#: the loader for that key again.
DEFAULT_FAIL_SAFE_THROTTLE = 10.0
#: Values up to this many bytes (as stored) travel with their invalidation message.
DEFAULT_PROPAGATE_VALUES = 4 * 1024
#: Threads that run loads in the background (soft/hard timeouts, refresh-ahead).
DEFAULT_BACKGROUND_WORKERS = 4


@dataclass(frozen=True, slots=True)
class Breaker:
    """Circuit breaker settings: open after ``failures`` consecutive Redis connection errors
    or timeouts, skip Redis for ``reset_after`` seconds, then let one probe through.

    Since: 0.1.0
    """

    failures: int = 5
    reset_after: float = 5.0

    def __post_init__(self) -> None:
        _check_int("Breaker.failures", self.failures, 1)
        object.__setattr__(
            self, "reset_after", check_duration("Breaker.reset_after", self.reset_after)
        )


# Redis keys are binary-safe, but a namespace ends up in channel names and log lines;
# keep it to a conservative alphabet so it can never smuggle a ':' segment or spaces.
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


#: Longest duration accepted for any option, seconds (ten years): entries record expiry in
#: milliseconds, and nothing cached should outlive its deployment by decades.
MAX_DURATION = 10 * 365 * 24 * 3600.0


def check_duration(name: str, value: object, *, allow_zero: bool = False) -> float:
    """Return ``value`` as seconds, or raise naming ``name``.

    Since: 0.1.0
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{name} must be a number of seconds or a timedelta, not {value!r}")
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite duration {bound} seconds, got {value!r}")
    if seconds > MAX_DURATION:
        raise ValueError(
            f"{name} must be at most {MAX_DURATION:g} seconds (10 years), got {value!r}"
        )
    return seconds


def check_optional_ttl(name: str, value: object, default: float) -> float:
    """Validate a per-call ``ttl``-like argument; ``None`` means the cache's default.

    Since: 0.1.0
    """
    if value is None:
        return default
    return check_duration(name, value)


def _check_int(name: str, value: object, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Option:
    """One constructor option, defined once: its default, its check, its documentation.

    The constructor's signature defaults, `Settings` and the options table of the docs are
    all derived from `OPTIONS` (tests hold them to it).

    Since: 0.2.0
    """

    name: str
    default: Any
    #: The default as the docs show it.
    shown: str
    #: Returns the validated value or raises ``TypeError``/``ValueError`` naming the option.
    check: Callable[[Any], Any]
    doc: str


def _duration(name: str, *, zero: bool = False) -> Callable[[Any], float]:
    return lambda value: check_duration(name, value, allow_zero=zero)


def _optional_duration(name: str) -> Callable[[Any], float | None]:
    return lambda value: None if value is None else check_duration(name, value)


def _int(name: str, minimum: int) -> Callable[[Any], int]:
    return lambda value: _check_int(name, value, minimum)


def _bool(name: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, not {value!r}")
        return value

    return check


def _namespace(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"namespace must be a str, not {type(value).__name__}")
    if not _NAMESPACE_RE.fullmatch(value):
        raise ValueError(
            f"namespace must be 1-128 characters of letters, digits, '_', '.', '-'; got {value!r}"
        )
    return value


def _refresh_ahead(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"refresh_ahead must be a fraction of ttl, not {value!r}")
    fraction = float(value)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"refresh_ahead must be between 0 and 1 (exclusive), got {fraction}")
    return fraction


def _optional_int(name: str, minimum: int) -> Callable[[Any], int | None]:
    return lambda value: None if value is None else _check_int(name, value, minimum)


def _fraction(name: str) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"{name} must be a number, not {value!r}")
        if not 0.0 < float(value) <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        return float(value)

    return check


def _early_expiration(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"early_expiration must be a number (the XFetch beta), not {value!r}")
    beta = float(value)
    if not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"early_expiration must be a finite number > 0, got {value!r}")
    return beta


def check_writer(value: Any) -> Any:
    """Return ``value`` if it is None or implements `tiercache.Writer`, else raise TypeError.

    Since: 0.3.0
    """
    if value is None:
        return None
    missing = [
        name
        for name in ("write", "write_many", "delete", "delete_many")
        if not callable(getattr(value, name, None))
    ]
    if missing:
        raise TypeError(
            f"writer must implement tiercache.Writer; {value!r} lacks {', '.join(missing)}"
        )
    return value


def _record_keys(value: Any) -> str | None:
    if value not in (None, "hash", "raw"):
        raise ValueError(f"record_keys must be None, 'hash' or 'raw', not {value!r}")
    return value  # type: ignore[no-any-return]


def _pubsub(value: Any) -> str:
    if value not in ("classic", "sharded"):
        raise ValueError(f"pubsub must be 'classic' or 'sharded', not {value!r}")
    return value  # type: ignore[no-any-return]


def _breaker(value: Any) -> Breaker | None:
    if value is not None and not isinstance(value, Breaker):
        raise TypeError(f"breaker must be a tiercache.Breaker or None, not {value!r}")
    return value


def _timer(value: Any) -> Callable[[], float] | None:
    if value is not None and not callable(value):
        raise TypeError(f"timer must be a callable returning seconds, not {value!r}")
    return value  # type: ignore[no-any-return]


def _as_is(value: Any) -> Any:
    return value  # checked where it is used (serializer, compressor: by their codec)


#: Every option of `TierCache`, in the constructor's order.
OPTIONS: tuple[Option, ...] = (
    Option(
        "namespace",
        DEFAULT_NAMESPACE,
        '`"tiercache"`',
        _namespace,
        "prefix of every Redis key (`{namespace}:{key}`) and of the "
        "[channel](invalidation.md); 1-128 letters, digits, `_`, `.`, `-`",
    ),
    Option(
        "ttl",
        DEFAULT_TTL,
        "300 s",
        _duration("ttl"),
        "lifetime of an entry (Redis TTL, shortened by up to 10% jitter, and logical "
        "expiry); per-call `ttl=` overrides it",
    ),
    Option(
        "l1_ttl",
        None,
        "`min(30 s, ttl)`",
        _optional_duration("l1_ttl"),
        "how long this instance serves its L1 copy without asking Redis again: the "
        "staleness bound when an invalidation is lost unnoticed; at most `ttl`; unused in "
        "L1-only mode (entries live `ttl`)",
    ),
    Option(
        "l1_maxsize",
        DEFAULT_L1_MAXSIZE,
        "10,000",
        _int("l1_maxsize", 1),
        "entries kept in L1 (approximate LRU beyond it); keys whose stale value the "
        "fail-safe holds count too",
    ),
    Option(
        "l1_max_bytes",
        DEFAULT_L1_MAX_BYTES,
        "64 MiB",
        _optional_int("l1_max_bytes", 1),
        "bound on the summed encoded size of L1's values (held fail-safe values included), "
        "besides `l1_maxsize`; `None`: entries only. See [Memory](patterns.md#memory)",
    ),
    Option(
        "l1_entry_share",
        DEFAULT_L1_ENTRY_SHARE,
        "1/8",
        _fraction("l1_entry_share"),
        "a value whose encoded size is over this share of `l1_max_bytes` is not kept in L1 "
        "(it is read from Redis each time)",
    ),
    Option(
        "max_key_length",
        DEFAULT_MAX_KEY_LENGTH,
        "1,024",
        _int("max_key_length", 1),
        "longest key accepted, in characters",
    ),
    Option(
        "compress_threshold",
        DEFAULT_COMPRESS_THRESHOLD,
        "8 KiB",
        _int("compress_threshold", 0),
        "serialized values at least this large are compressed (kept only if smaller)",
    ),
    Option(
        "max_value_bytes",
        DEFAULT_MAX_VALUE_BYTES,
        "32 MiB",
        _int("max_value_bytes", 1),
        "largest serialized value accepted by `set` and read back from Redis (also the "
        "cap on decompressed size)",
    ),
    Option(
        "serializer",
        None,
        "`MsgpackSerializer()`",
        _as_is,
        "a [`Serializer`](keys-ttls-codec.md#a-custom-serializer)",
    ),
    Option(
        "compressor",
        None,
        "zstd",
        _as_is,
        "a `Compressor` (`compress(data)`, `decompress(data, max_size)` that never returns "
        "more than `max_size` bytes); zstd by default",
    ),
    Option(
        "propagate_values",
        None,
        "4 KiB (`0` on Redis Cluster)",
        _optional_int("propagate_values", 0),
        "a `set` sends values up to this many bytes (as stored) with its "
        "invalidation, and other instances keep them in L1 instead of reading them back from "
        "Redis; `0`: invalidate only (see [value propagation](consistency.md#value-propagation)); "
        "not allowed on Redis Cluster, where a write and its message cannot be one atomic step",
    ),
    Option(
        "raise_on_write_error",
        False,
        "`False`",
        _bool("raise_on_write_error"),
        "make writes raise `L2Error` when Redis fails, instead of counting and logging it",
    ),
    Option(
        "writer",
        None,
        "`None`",
        check_writer,
        "a [`Writer`](patterns.md#write-through) to the source of truth: `set`/`delete` "
        "write through it (or behind it, with `write_behind`); per-call `writer=` overrides it",
    ),
    Option(
        "write_behind",
        False,
        "`False`",
        _bool("write_behind"),
        "[write-behind](patterns.md#write-behind): `set`/`delete` update the cache at once "
        "and queue the writer's call for a background flusher",
    ),
    Option(
        "write_behind_delay",
        DEFAULT_WRITE_BEHIND_DELAY,
        "0.1 s",
        _duration("write_behind_delay", zero=True),
        "how long a queued write waits for others to join its batch",
    ),
    Option(
        "write_behind_batch_size",
        DEFAULT_WRITE_BEHIND_BATCH_SIZE,
        "100",
        _int("write_behind_batch_size", 1),
        "most writes per writer call; a full batch is flushed without waiting",
    ),
    Option(
        "write_behind_stream",
        False,
        "`False`",
        _bool("write_behind_stream"),
        "keep the write-behind queue in a [Redis stream](patterns.md#the-durable-queue) per "
        "namespace instead of the process's memory, so a killed process loses no write",
    ),
    Option(
        "write_behind_retries",
        DEFAULT_WRITE_BEHIND_RETRIES,
        "5",
        _int("write_behind_retries", 0),
        "retries of a failed batch (backoff from `write_behind_delay`, doubling, at most "
        "5 s) before its writes are dropped, counted and logged",
    ),
    Option(
        "lease_ttl",
        DEFAULT_LEASE_TTL,
        "5 s",
        _duration("lease_ttl"),
        "lifetime of the cross-process lease a loader holds on a missing key; a load that "
        "takes longer does not write Redis",
    ),
    Option(
        "lease_wait",
        DEFAULT_LEASE_WAIT,
        "5 s",
        _duration("lease_wait", zero=True),
        "how long other processes wait for the lease holder's value before loading "
        "themselves (`0`: never wait)",
    ),
    Option(
        "breaker",
        Breaker(),
        "`Breaker(failures=5, reset_after=5)`",
        _breaker,
        "the [circuit breaker](failure-modes.md#redis-down-refused-connections-killed-"
        "restarting); `None`: never skip Redis",
    ),
    Option(
        "pubsub",
        "classic",
        '`"classic"`',
        _pubsub,
        'the invalidation bus on Redis Cluster: `"classic"` (one channel, `PUBLISH`, '
        'broadcast to every node) or `"sharded"` (a channel per slot group, `SPUBLISH`, '
        "Redis 7; a cluster client only); see [Scaling](scaling.md#pubsub-classic-or-sharded)",
    ),
    Option(
        "stale_ttl",
        0.0,
        "`0` (off)",
        _duration("stale_ttl", zero=True),
        "fail-safe: keep every entry (loaded or `set`) this long past its `ttl`, in L1 and "
        "Redis, to be served, marked stale, when its loader raises or times out",
    ),
    Option(
        "fail_safe_throttle",
        DEFAULT_FAIL_SAFE_THROTTLE,
        "10 s",
        _duration("fail_safe_throttle"),
        "after a stale value was served, the key's loader is not called again for this long",
    ),
    Option(
        "soft_timeout",
        None,
        "`None`",
        _optional_duration("soft_timeout"),
        "with a stale value at hand, serve it when the loader takes longer than this (the "
        "load finishes in the background)",
    ),
    Option(
        "hard_timeout",
        None,
        "`None`",
        _optional_duration("hard_timeout"),
        "stop waiting for the loader after this long: serve a stale value, else raise "
        "`LoaderTimeoutError` (the load finishes in the background); at least `soft_timeout`",
    ),
    Option(
        "refresh_ahead",
        None,
        "`None`",
        _refresh_ahead,
        "a fraction of `ttl` in (0, 1): a value read from Redis after that part of its life "
        "is returned and reloaded in the background (needs Redis; in L1-only mode the value "
        "is reloaded by the caller once that fraction has passed)",
    ),
    Option(
        "early_expiration",
        None,
        "`None`",
        _early_expiration,
        "[probabilistic early expiration](patterns.md#probabilistic-early-expiration) "
        "(XFetch) with this beta (`1.0` is the usual choice): a read from Redis reloads a "
        "value in the background before its expiry, the sooner the longer its last load took",
    ),
    Option(
        "none_ttl",
        None,
        "`None` (`ttl`)",
        _optional_duration("none_ttl"),
        'a shorter `ttl` for loaded `None` values ("not found"); at most `ttl`',
    ),
    Option(
        "background_workers",
        DEFAULT_BACKGROUND_WORKERS,
        "4",
        _int("background_workers", 1),
        "daemon threads for background loads (timeouts, refresh-ahead); when they and their "
        "short queue are busy, the caller runs the load itself",
    ),
    Option(
        "telemetry",
        True,
        "`True`",
        _bool("telemetry"),
        "OpenTelemetry spans and metrics through `opentelemetry-api` (next to free while no "
        "SDK is installed); `False` turns both off. See [Telemetry](telemetry.md)",
    ),
    Option(
        "record_keys",
        None,
        "`None`",
        _record_keys,
        'keys in spans: never (`None`), a BLAKE2b digest (`"hash"`) or the key itself (`"raw"`)',
    ),
    Option(
        "trace_l1_hits",
        False,
        "`False`",
        _bool("trace_l1_hits"),
        "open spans for L1 hits too (memoized ones included); by default they are kept out "
        "of traces, not out of the metrics (changed: the default was `True`; see [the "
        "trade-off](telemetry.md#l1-hits-in-traces-the-trade-off))",
    ),
    Option(
        "timer",
        None,
        "real clocks",
        _timer,
        "a clock in seconds for [tests](testing.md#a-fake-clock); replaces the monotonic "
        "clock of L1 (and of the breaker and fail-safe throttle) and the wall clock of "
        "logical expiry",
    ),
)

#: The default of each option, by name.
DEFAULTS: dict[str, Any] = {option.name: option.default for option in OPTIONS}


def options_table() -> str:
    """The options table of the docs (docs/api.md), rendered from `OPTIONS`.

    Since: 0.2.0
    """
    rows = ["| option | default | meaning |", "|---|---|---|"]
    rows.append(
        "| `client` | (positional) | a redis-py client (`redis.Redis`, a Sentinel master, "
        "`redis.cluster.RedisCluster`) with `decode_responses=False`, or `None` for an "
        "L1-only cache |"
    )
    rows += [f"| `{o.name}` | {o.shown} | {o.doc} |" for o in OPTIONS]
    return "\n".join(rows) + "\n"


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated options of one cache. Build it with `Settings.build`; its fields are
    `OPTIONS` (a test holds them to it), ``l1_ttl`` resolved.

    Since: 0.1.0
    """

    namespace: str
    ttl: float
    l1_ttl: float
    l1_maxsize: int
    l1_max_bytes: int | None
    l1_entry_share: float
    max_key_length: int
    compress_threshold: int
    max_value_bytes: int
    serializer: Any
    compressor: Any
    propagate_values: int
    raise_on_write_error: bool
    writer: Any
    write_behind: bool
    write_behind_delay: float
    write_behind_batch_size: int
    write_behind_stream: bool
    write_behind_retries: int
    lease_ttl: float
    lease_wait: float
    breaker: Breaker | None
    pubsub: str
    stale_ttl: float
    fail_safe_throttle: float
    soft_timeout: float | None
    hard_timeout: float | None
    refresh_ahead: float | None
    early_expiration: float | None
    none_ttl: float | None
    background_workers: int
    telemetry: bool
    record_keys: str | None
    trace_l1_hits: bool
    timer: Callable[[], float] | None

    @classmethod
    def build(cls, *, cluster: bool = False, **options: Any) -> Settings:
        """Validate every option (missing ones take their default); raise
        `TypeError`/`ValueError` naming the first bad one. ``cluster``: the client is a
        Redis Cluster client (some options resolve differently there)."""
        unknown = options.keys() - DEFAULTS.keys()
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
        values = {o.name: o.check(options.get(o.name, o.default)) for o in OPTIONS}
        ttl = values["ttl"]
        if values["l1_ttl"] is None:
            values["l1_ttl"] = min(DEFAULT_L1_TTL, ttl)
        elif values["l1_ttl"] > ttl:
            raise ValueError(
                f"l1_ttl ({values['l1_ttl']:g} s) must not exceed ttl ({ttl:g} s): L1 may not "
                "outlive the L2 copy it mirrors"
            )
        soft, hard = values["soft_timeout"], values["hard_timeout"]
        if soft is not None and hard is not None and soft > hard:
            raise ValueError(f"soft_timeout ({soft:g} s) must not exceed hard_timeout ({hard:g} s)")
        sharded = values["pubsub"] == "sharded"
        if values["propagate_values"] is None:
            values["propagate_values"] = 0 if sharded or cluster else DEFAULT_PROPAGATE_VALUES
        elif sharded and values["propagate_values"]:
            raise ValueError(
                "propagate_values needs pubsub='classic': with sharded pub/sub each channel "
                "numbers its own messages, and a receiver could not order a value it is sent "
                "against its own writes (leave propagate_values unset: sharded invalidates only)"
            )
        elif cluster and values["propagate_values"]:
            raise ValueError(
                "propagate_values needs a single Redis server (or Sentinel): a value sent "
                "with its invalidation must be written and published in one atomic step, "
                "which Redis Cluster cannot do when the key and the bus live on different "
                "nodes (leave propagate_values unset: a cluster invalidates only)"
            )
        none_ttl = values["none_ttl"]
        if none_ttl is not None and none_ttl > ttl:
            raise ValueError(f"none_ttl ({none_ttl:g} s) must not exceed ttl ({ttl:g} s)")
        if values["write_behind"] and values["writer"] is None:
            raise ValueError("write_behind needs a writer (writer=...)")
        if values["write_behind_stream"] and not values["write_behind"]:
            raise ValueError("write_behind_stream needs write_behind=True")
        return cls(**values)


if __name__ == "__main__":  # pragma: no cover - a docs helper: print the table for docs/api.md
    print(options_table(), end="")
