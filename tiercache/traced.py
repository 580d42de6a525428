"""The traced versions of the two hot reads, installed on a cache instance only while an
OpenTelemetry SDK records spans (see ``telemetry.py``): untraced hits never pay for them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from .options import Duration
from .telemetry import ATTR_RESULT, ATTR_TIER, SPAN_GET, SPAN_GET_OR_SET, Telemetry

__all__ = ["TracedReads"]

T = TypeVar("T")
_L1_HIT = {ATTR_TIER: "l1", ATTR_RESULT: "hit"}


class TracedReads:
    """``get_or_set``/``get`` with a span for L1 hits too (a mixin of `TierCache`)."""

    _telemetry: Telemetry
    _clock: Callable[[], float]
    _next_tick: float
    _l1_lookup: Callable[[str], Any]
    _l1_touch: Callable[[str], None]
    _l1_hits: int

    if TYPE_CHECKING:

        def _tick(self, now: float) -> None: ...
        def _get_or_set_miss(
            self, key: Any, loader: Callable[[], T], ttl: Duration | None, tags: Iterable[str]
        ) -> T: ...
        def _get_miss(self, key: Any, default: Any) -> Any: ...

    def _l1_hit(self, key: Any) -> tuple[bool, Any]:
        now = self._clock()
        if now >= self._next_tick:
            self._tick(now)
        try:
            entry = self._l1_lookup(key)
        except TypeError:
            return False, None
        if entry is not None and now < entry[1]:
            self._l1_touch(key)
            self._l1_hits += 1
            return True, entry[0]
        return False, None

    def _traced_get_or_set(
        self,
        key: str,
        loader: Callable[[], T],
        ttl: Duration | None = None,
        *,
        tags: Iterable[str] = (),
    ) -> T:
        hit, value = self._l1_hit(key)
        if hit:
            with self._telemetry.span(SPAN_GET_OR_SET, key, _L1_HIT):
                return value  # type: ignore[no-any-return]
        return self._get_or_set_miss(key, loader, ttl, tags)

    def _traced_get(self, key: str, default: Any = None) -> Any:
        hit, value = self._l1_hit(key)
        if hit:
            with self._telemetry.span(SPAN_GET, key, _L1_HIT):
                return value
        return self._get_miss(key, default)
