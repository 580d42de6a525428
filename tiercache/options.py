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

__all__ = [
    "DEFAULT_BACKGROUND_WORKERS",
    "DEFAULT_COMPRESS_THRESHOLD",
    "DEFAULT_FAIL_SAFE_THROTTLE",
    "DEFAULT_L1_MAXSIZE",
    "DEFAULT_L1_TTL",
    "DEFAULT_LEASE_TTL",
    "DEFAULT_LEASE_WAIT",
    "DEFAULT_MAX_KEY_LENGTH",
    "DEFAULT_MAX_VALUE_BYTES",
    "DEFAULT_NAMESPACE",
    "DEFAULT_TTL",
    "MAX_DURATION",
    "TTL_JITTER",
    "Breaker",
    "Duration",
    "Settings",
    "check_duration",
    "check_optional_ttl",
]

Duration = float | int | timedelta

DEFAULT_NAMESPACE = "tiercache"
#: L2 lifetime of an entry, seconds.
DEFAULT_TTL = 300.0
#: How long a process may serve its L1 copy without hearing from L2, seconds. When ``ttl`` is
#: shorter, ``l1_ttl`` defaults to ``ttl``.
DEFAULT_L1_TTL = 30.0
DEFAULT_L1_MAXSIZE = 10_000
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
class Settings:
    """The validated options of one cache. Build it with `Settings.build`.

    Since: 0.1.0
    """

    namespace: str
    ttl: float
    l1_ttl: float
    l1_maxsize: int
    max_key_length: int
    compress_threshold: int
    max_value_bytes: int
    raise_on_write_error: bool
    lease_ttl: float
    lease_wait: float
    breaker: Breaker | None
    stale_ttl: float
    fail_safe_throttle: float
    soft_timeout: float | None
    hard_timeout: float | None
    refresh_ahead: float | None
    none_ttl: float | None
    background_workers: int
    telemetry: bool
    record_keys: str | None
    trace_l1_hits: bool
    timer: Callable[[], float] | None

    @classmethod
    def build(
        cls,
        *,
        namespace: object = DEFAULT_NAMESPACE,
        ttl: object = DEFAULT_TTL,
        l1_ttl: object = None,
        l1_maxsize: object = DEFAULT_L1_MAXSIZE,
        max_key_length: object = DEFAULT_MAX_KEY_LENGTH,
        compress_threshold: object = DEFAULT_COMPRESS_THRESHOLD,
        max_value_bytes: object = DEFAULT_MAX_VALUE_BYTES,
        raise_on_write_error: object = False,
        lease_ttl: object = DEFAULT_LEASE_TTL,
        lease_wait: object = DEFAULT_LEASE_WAIT,
        breaker: object = Breaker(),
        stale_ttl: object = 0,
        fail_safe_throttle: object = DEFAULT_FAIL_SAFE_THROTTLE,
        soft_timeout: object = None,
        hard_timeout: object = None,
        refresh_ahead: object = None,
        none_ttl: object = None,
        background_workers: object = DEFAULT_BACKGROUND_WORKERS,
        telemetry: object = True,
        record_keys: object = None,
        trace_l1_hits: object = False,
        timer: object = None,
    ) -> Settings:
        """Validate every option; raise `TypeError`/`ValueError` naming it."""
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
        if not _NAMESPACE_RE.fullmatch(namespace):
            raise ValueError(
                "namespace must be 1-128 characters of letters, digits, '_', '.', '-'; "
                f"got {namespace!r}"
            )
        ttl_s = check_duration("ttl", ttl)
        if l1_ttl is None:
            l1_ttl_s = min(DEFAULT_L1_TTL, ttl_s)
        else:
            l1_ttl_s = check_duration("l1_ttl", l1_ttl)
            if l1_ttl_s > ttl_s:
                raise ValueError(
                    f"l1_ttl ({l1_ttl_s:g} s) must not exceed ttl ({ttl_s:g} s): L1 may not "
                    "outlive the L2 copy it mirrors"
                )
        maxsize = _check_int("l1_maxsize", l1_maxsize, 1)
        key_len = _check_int("max_key_length", max_key_length, 1)
        threshold = _check_int("compress_threshold", compress_threshold, 0)
        max_bytes = _check_int("max_value_bytes", max_value_bytes, 1)
        if not isinstance(raise_on_write_error, bool):
            raise TypeError(f"raise_on_write_error must be a bool, not {raise_on_write_error!r}")
        if timer is not None and not callable(timer):
            raise TypeError(f"timer must be a callable returning seconds, not {timer!r}")
        if breaker is not None and not isinstance(breaker, Breaker):
            raise TypeError(f"breaker must be a tiercache.Breaker or None, not {breaker!r}")
        soft = None if soft_timeout is None else check_duration("soft_timeout", soft_timeout)
        hard = None if hard_timeout is None else check_duration("hard_timeout", hard_timeout)
        if soft is not None and hard is not None and soft > hard:
            raise ValueError(f"soft_timeout ({soft:g} s) must not exceed hard_timeout ({hard:g} s)")
        refresh = None
        if refresh_ahead is not None:
            if not isinstance(refresh_ahead, (int, float)) or isinstance(refresh_ahead, bool):
                raise TypeError(f"refresh_ahead must be a fraction of ttl, not {refresh_ahead!r}")
            refresh = float(refresh_ahead)
            if not 0.0 < refresh < 1.0:
                raise ValueError(
                    f"refresh_ahead must be between 0 and 1 (exclusive), got {refresh}"
                )
        for flag_name, flag in (("telemetry", telemetry), ("trace_l1_hits", trace_l1_hits)):
            if not isinstance(flag, bool):
                raise TypeError(f"{flag_name} must be a bool, not {flag!r}")
        if record_keys not in (None, "hash", "raw"):
            raise ValueError(f"record_keys must be None, 'hash' or 'raw', not {record_keys!r}")
        none_ttl_s = None if none_ttl is None else check_duration("none_ttl", none_ttl)
        if none_ttl_s is not None and none_ttl_s > ttl_s:
            raise ValueError(f"none_ttl ({none_ttl_s:g} s) must not exceed ttl ({ttl_s:g} s)")
        return cls(
            namespace=namespace,
            ttl=ttl_s,
            l1_ttl=l1_ttl_s,
            l1_maxsize=maxsize,
            max_key_length=key_len,
            compress_threshold=threshold,
            max_value_bytes=max_bytes,
            raise_on_write_error=raise_on_write_error,
            lease_ttl=check_duration("lease_ttl", lease_ttl),
            lease_wait=check_duration("lease_wait", lease_wait, allow_zero=True),
            breaker=breaker,
            stale_ttl=check_duration("stale_ttl", stale_ttl, allow_zero=True),
            fail_safe_throttle=check_duration("fail_safe_throttle", fail_safe_throttle),
            soft_timeout=soft,
            hard_timeout=hard,
            refresh_ahead=refresh,
            none_ttl=none_ttl_s,
            background_workers=_check_int("background_workers", background_workers, 1),
            telemetry=bool(telemetry),
            record_keys=record_keys,
            trace_l1_hits=bool(trace_l1_hits),
            timer=timer,
        )
