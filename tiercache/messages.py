"""The invalidation message format, one msgpack array per message::

    [MESSAGE_VERSION, origin, seq, op, data]

    origin  16 bytes   the publishing TierCache instance (a new id after a fork)
    seq     int >= 1   per-origin sequence number, assigned in publish order; a receiver
                       that sees a gap knows it lost a message and flushes its L1;
                       0 on OP_READY, which is not numbered (a wake-up, not an
                       invalidation: losing one delays waiters, never misleads them)
    op      int        OP_KEYS: data = [key, ...]          drop those L1 entries
                       OP_CLEAR: data = namespace version   drop all L1 entries
                       OP_TAGS: data = {tag: version}       drop L1 entries with those tags
                       OP_PROBE: data = 16 random bytes     the start-up self-check
                       OP_VALUES: data = [[key, entry], ...]  keys written by ``set``:
                                  ``entry`` is the bytes stored in Redis (header and
                                  payload) for a small value, which receivers put in
                                  L1 in message order; nil for a value sent as a
                                  plain invalidation
                       OP_READY: data = [[key, entry], ...]  a lease holder is done with
                                  these keys (written or given back): wake the
                                  callers waiting for them; ``entry`` is the bytes
                                  it wrote, for a small value written in the same
                                  atomic step as this message (nil otherwise)

Versions are integers from 0 to ``MAX_VERSION`` (2**53 - 1, see ``entry.py``); a message
carrying any other is undecodable: learning it would make every entry look stale.

Receivers ignore messages whose ``MESSAGE_VERSION`` they do not know (counted as
undecodable), so a newer publisher never crashes an older listener.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from .codec import DECODE_ERRORS
from .entry import MAX_VERSION

__all__ = [
    "MESSAGE_VERSION",
    "OP_CLEAR",
    "OP_KEYS",
    "OP_PROBE",
    "OP_READY",
    "OP_TAGS",
    "OP_VALUES",
    "ORIGIN_SIZE",
    "Message",
    "MessageError",
    "channel_name",
    "decode_message",
    "encode_message",
]

MESSAGE_VERSION = 1
OP_KEYS = 1
OP_CLEAR = 2
OP_TAGS = 3
OP_PROBE = 4
OP_VALUES = 5
OP_READY = 6
_OPS = {OP_KEYS, OP_CLEAR, OP_TAGS, OP_PROBE, OP_VALUES, OP_READY}
#: Bytes in a publisher's instance id.
ORIGIN_SIZE = 16


def channel_name(namespace: str, db: int = 0) -> str:
    """The pub/sub channel of a namespace in database ``db``. Pub/sub ignores databases, so
    the channel names one: the same namespace in two databases is two different caches.

    Since: 0.1.0
    """
    if db:
        return f"tiercache:inv:{db}:{namespace}"
    return f"tiercache:inv:{namespace}"


class MessageError(ValueError):
    """Bytes on the channel that are not a message this version understands."""


class Message(NamedTuple):
    """A decoded invalidation message.

    Since: 0.1.0
    """

    origin: bytes
    seq: int
    op: int
    data: Any


def encode_message(origin: bytes, seq: int, op: int, data: Any) -> bytes:
    """Encode one message.

    Since: 0.1.0
    """
    packed: bytes = msgpack.packb([MESSAGE_VERSION, origin, seq, op, data], use_bin_type=True)
    return packed


def decode_message(raw: object) -> Message:
    """Decode and validate one message; `MessageError` for anything else.

    Since: 0.1.0
    """
    if not isinstance(raw, bytes):
        raise MessageError(f"payload is {type(raw).__name__}, not bytes")
    try:
        fields = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except DECODE_ERRORS as exc:
        raise MessageError(f"not msgpack: {exc}") from exc
    if not isinstance(fields, list) or len(fields) != 5:
        raise MessageError("not a 5-field message")
    version, origin, seq, op, data = fields
    # Exact int checks: True and 1.0 compare equal to 1, and an array op is unhashable.
    if type(version) is not int or version != MESSAGE_VERSION:
        raise MessageError(f"unknown message version {version!r}")
    if not isinstance(origin, bytes) or len(origin) != ORIGIN_SIZE:
        raise MessageError(f"bad origin, seq or op: origin must be {ORIGIN_SIZE} bytes")
    if type(op) is not int or op not in _OPS or type(seq) is not int:
        raise MessageError("bad origin, seq or op: seq must be an int, op a known int")
    if seq < (0 if op == OP_READY else 1):
        raise MessageError("bad origin, seq or op: seq must be >= 1 (>= 0 on OP_READY)")
    if op == OP_KEYS and not (isinstance(data, list) and all(type(k) is str for k in data)):
        raise MessageError("OP_KEYS data must be a list of str")
    if op in (OP_VALUES, OP_READY) and not (
        isinstance(data, list)
        and all(
            isinstance(pair, list)
            and len(pair) == 2
            and type(pair[0]) is str
            and (pair[1] is None or type(pair[1]) is bytes)
            for pair in data
        )
    ):
        raise MessageError("OP_VALUES and OP_READY data must be a list of [str, bytes or nil]")
    if op == OP_CLEAR and not _is_version(data):
        raise MessageError(f"OP_CLEAR data must be an int from 0 to {MAX_VERSION}")
    if op == OP_TAGS and not (
        isinstance(data, dict) and all(type(k) is str and _is_version(v) for k, v in data.items())
    ):
        raise MessageError(f"OP_TAGS data must map str to an int from 0 to {MAX_VERSION}")
    return Message(origin, seq, op, data)


def _is_version(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_VERSION
