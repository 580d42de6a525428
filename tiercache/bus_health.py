"""The health record of one invalidation bus: the counters behind ``stats()``'s ``bus_*`` keys.

A silent bus is the classic failure of two-tier caches ("configured it, nothing is
invalidated"), so everything the bus does is counted here and reported: subscribed or not,
messages sent, received, ignored (own echo, duplicates) and undecodable, sequence gaps,
subscriptions and their losses, the start-up self-probe, and the age of the last message.

The publisher and the listener bump the counters without a lock, like the cache's own
counters: on CPython an attribute ``+= 1`` does not lose increments in practice, and a lock
would cost more than the events it counts.
"""

from __future__ import annotations

import time

__all__ = ["BusHealth"]

# bus_probe_ok: -1 not yet known, 0 failed (or the subscription was refused), 1 came back.
_PROBE_STATES = {None: -1, False: 0, True: 1}


class BusHealth:
    """Counters and flags of one bus, since it was created (or since a fork).

    Since: 0.2.0
    """

    __slots__ = (
        "gaps",
        "ignored",
        "last_message_at",
        "losses",
        "probe_ok",
        "probes_heard",
        "probes_sent",
        "publish_errors",
        "received",
        "sent",
        "subscribed",
        "subscriptions",
        "undecodable",
    )

    def __init__(self) -> None:
        #: Whether the listener is subscribed right now.
        self.subscribed = False
        #: Messages published, the self-probes included, and of those the self-probes.
        self.sent = 0
        self.probes_sent = 0
        #: Other instances' start-up probes heard (not invalidations).
        self.probes_heard = 0
        #: PUBLISHes that failed.
        self.publish_errors = 0
        #: Messages received on the channel, of which own echoes and old or repeated
        #: sequence numbers (ignored) and payloads that could not be decoded.
        self.received = 0
        self.ignored = 0
        self.undecodable = 0
        #: Sequence gaps detected (each flushed L1).
        self.gaps = 0
        #: Subscription confirmations, and subscriptions lost (not counting close()).
        self.subscriptions = 0
        self.losses = 0
        #: Whether the self-probe came back: None not yet known, False failed or refused.
        self.probe_ok: bool | None = None
        #: When the last message arrived (``time.monotonic()``), None before the first.
        self.last_message_at: float | None = None

    def snapshot(self) -> dict[str, int]:
        """The ``bus_*`` entries of ``stats()``, as plain integers."""
        last = self.last_message_at
        age_ms = -1 if last is None else int((time.monotonic() - last) * 1000)
        return {
            "bus_subscribed": int(self.subscribed),
            "bus_subscriptions": self.subscriptions,
            "bus_losses": self.losses,
            "bus_sent": self.sent,
            "bus_probes_sent": self.probes_sent,
            "bus_probes_heard": self.probes_heard,
            "bus_publish_errors": self.publish_errors,
            "bus_received": self.received,
            "bus_ignored": self.ignored,
            "bus_undecodable": self.undecodable,
            "bus_gaps": self.gaps,
            "bus_probe_ok": _PROBE_STATES[self.probe_ok],
            "bus_last_message_age_ms": age_ms,
        }
