"""Invalidation messages: every op round-trips; anything else is a MessageError, never a crash."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiercache.entry import MAX_VERSION
from tiercache.messages import (
    MESSAGE_VERSION,
    OP_CLEAR,
    OP_KEYS,
    OP_PROBE,
    OP_READY,
    OP_TAGS,
    OP_VALUES,
    Message,
    MessageError,
    channel_name,
    decode_message,
    encode_message,
)

ORIGIN = bytes(range(16))


def packed(*fields: Any) -> bytes:
    """msgpack of ``fields`` as one array, the way a (possibly foreign) publisher would."""
    return msgpack.packb(list(fields), use_bin_type=True)


def message(op: int, data: Any, *, seq: int = 1, version: Any = MESSAGE_VERSION) -> bytes:
    """A message with every field valid except, possibly, the ones passed in."""
    return packed(version, ORIGIN, seq, op, data)


@pytest.mark.parametrize(
    ("op", "data"),
    [
        pytest.param(OP_KEYS, ["user:42", "", "ключ", "a" * 1024], id="keys"),
        pytest.param(OP_KEYS, [], id="keys-empty"),
        pytest.param(OP_CLEAR, 7, id="clear"),
        pytest.param(OP_CLEAR, 5_000_000_000, id="clear-over-32-bits"),
        pytest.param(OP_CLEAR, MAX_VERSION, id="clear-max-version"),
        pytest.param(OP_TAGS, {"users": MAX_VERSION}, id="tags-max-version"),
        pytest.param(OP_TAGS, {"users": 3, "prices": 1}, id="tags"),
        pytest.param(OP_TAGS, {}, id="tags-empty"),
        pytest.param(OP_PROBE, bytes(range(100, 116)), id="probe"),
        pytest.param(OP_READY, [["user:42", None], ["k", b"entry"]], id="ready"),
    ],
)
@pytest.mark.parametrize("seq", [1, 2**64 - 1])
def test_encode_decode_round_trips_every_op(op: int, data: Any, seq: int) -> None:
    """decode(encode(m)) gives back the same origin, seq, op and data, types included."""
    decoded = decode_message(encode_message(ORIGIN, seq, op, data))

    assert decoded == Message(ORIGIN, seq, op, data)
    assert type(decoded.data) is type(data)


def test_channel_name_is_per_namespace() -> None:
    """Each namespace has its own channel under the tiercache:inv: prefix (ACL pattern)."""
    assert channel_name("shop") == "tiercache:inv:shop"
    assert channel_name("shop") != channel_name("shop2")


@pytest.mark.parametrize(
    "raw",
    [None, "a str", 42, bytearray(message(OP_CLEAR, 1)), memoryview(message(OP_CLEAR, 1))],
    ids=["none", "str", "int", "bytearray", "memoryview"],
)
def test_non_bytes_payload_is_a_message_error(raw: object) -> None:
    """Only bytes are messages (redis-py hands bytes to a decode_responses=False client)."""
    with pytest.raises(MessageError, match="not bytes"):
        decode_message(raw)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="reserved-byte"),
        pytest.param(message(OP_KEYS, ["k"])[:-1], id="truncated"),
        pytest.param(message(OP_CLEAR, 1) + b"\x00", id="trailing-bytes"),
        pytest.param(b"\x91" * 100_000 + b"\x90", id="deeply-nested"),
        pytest.param(b"\xdd\xff\xff\xff\xff", id="array-length-lies"),
        pytest.param(b"\xa2\xff\xfe", id="invalid-utf8-str"),
        pytest.param(b"\x95\x01\xc4\x01x\x01\x03\x81\x91\x01\x02", id="array-as-map-key"),
        pytest.param(b"\x95\x01\xc4\x01x\x01\x03\x81\x81\x01\x02\x02", id="map-as-map-key"),
    ],
)
def test_bytes_that_are_not_valid_msgpack_are_a_message_error(raw: bytes) -> None:
    """Undecodable, truncated, trailing, too deep or lying bytes are a MessageError."""
    with pytest.raises(MessageError):
        decode_message(raw)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(msgpack.packb(1), id="int"),
        pytest.param(msgpack.packb({"v": 1}), id="map"),
        pytest.param(packed(), id="0-fields"),
        pytest.param(packed(MESSAGE_VERSION, ORIGIN, 1, OP_CLEAR), id="4-fields"),
        pytest.param(packed(MESSAGE_VERSION, ORIGIN, 1, OP_CLEAR, 1, 0), id="6-fields"),
    ],
)
def test_wrong_shape_or_arity_is_a_message_error(raw: bytes) -> None:
    """Only a 5-element array is a message."""
    with pytest.raises(MessageError, match="5-field"):
        decode_message(raw)


@pytest.mark.parametrize("version", [0, 2, 255, -1, "1", b"\x01", None, [1]])
def test_unknown_version_is_a_message_error(version: Any) -> None:
    """A version this code does not know is refused, so newer publishers never crash us."""
    with pytest.raises(MessageError, match="version"):
        decode_message(message(OP_CLEAR, 1, version=version))


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param((ORIGIN.hex(), 1, OP_CLEAR), id="origin-str"),
        pytest.param((None, 1, OP_CLEAR), id="origin-nil"),
        pytest.param((7, 1, OP_CLEAR), id="origin-int"),
        pytest.param((ORIGIN, 0, OP_CLEAR), id="seq-0"),
        pytest.param((ORIGIN, -1, OP_CLEAR), id="seq-negative"),
        pytest.param((ORIGIN, True, OP_CLEAR), id="seq-bool"),
        pytest.param((ORIGIN, 1.0, OP_CLEAR), id="seq-float"),
        pytest.param((ORIGIN, "1", OP_CLEAR), id="seq-str"),
        pytest.param((ORIGIN, None, OP_CLEAR), id="seq-nil"),
        pytest.param((ORIGIN, 1, 0), id="op-0"),
        pytest.param((ORIGIN, 1, 7), id="op-7"),
        pytest.param((ORIGIN, 1, -1), id="op-negative"),
        pytest.param((ORIGIN, 1, "1"), id="op-str"),
        pytest.param((ORIGIN, 1, None), id="op-nil"),
    ],
)
def test_bad_origin_seq_or_op_is_a_message_error(fields: tuple[Any, Any, Any]) -> None:
    """origin must be bytes, seq an int >= 1, op a known code."""
    origin, seq, op = fields
    with pytest.raises(MessageError, match="origin, seq or op"):
        decode_message(packed(MESSAGE_VERSION, origin, seq, op, 1))


@pytest.mark.parametrize("op", [[1], {}], ids=["op-array", "op-map"])
def test_unhashable_op_is_a_message_error(op: Any) -> None:
    """An array or map where the op belongs is a MessageError, not a TypeError."""
    with pytest.raises(MessageError):
        decode_message(packed(MESSAGE_VERSION, ORIGIN, 1, op, ["k"]))


@pytest.mark.parametrize(
    ("version", "op"),
    [(True, OP_KEYS), (1.0, OP_KEYS), (MESSAGE_VERSION, True), (MESSAGE_VERSION, 1.0)],
    ids=["version-true", "version-float", "op-true", "op-float"],
)
def test_bool_or_float_version_or_op_is_a_message_error(version: Any, op: Any) -> None:
    """Version and op are msgpack ints; a bool or a float in their place is refused."""
    with pytest.raises(MessageError):
        decode_message(packed(version, ORIGIN, 1, op, ["k"]))


@pytest.mark.parametrize(
    ("op", "data"),
    [
        pytest.param(OP_KEYS, "user:42", id="keys-str"),
        pytest.param(OP_KEYS, None, id="keys-nil"),
        pytest.param(OP_KEYS, {"k": 1}, id="keys-map"),
        pytest.param(OP_KEYS, ["k", b"bytes-key"], id="keys-bytes-item"),
        pytest.param(OP_KEYS, ["k", 1], id="keys-int-item"),
        pytest.param(OP_KEYS, [["nested"]], id="keys-nested"),
        pytest.param(OP_CLEAR, "7", id="clear-str"),
        pytest.param(OP_CLEAR, 7.0, id="clear-float"),
        pytest.param(OP_CLEAR, True, id="clear-bool"),
        pytest.param(OP_CLEAR, None, id="clear-nil"),
        pytest.param(OP_CLEAR, [7], id="clear-array"),
        pytest.param(OP_CLEAR, MAX_VERSION + 1, id="clear-2**53"),
        pytest.param(OP_CLEAR, 2**64 - 1, id="clear-2**64-1"),
        pytest.param(OP_CLEAR, -1, id="clear-negative"),
        pytest.param(OP_TAGS, {"users": MAX_VERSION + 1}, id="tags-2**53"),
        pytest.param(OP_TAGS, {"users": -(2**63)}, id="tags-negative"),
        pytest.param(OP_TAGS, ["users"], id="tags-array"),
        pytest.param(OP_TAGS, None, id="tags-nil"),
        pytest.param(OP_TAGS, {"users": "3"}, id="tags-str-version"),
        pytest.param(OP_TAGS, {"users": True}, id="tags-bool-version"),
        pytest.param(OP_TAGS, {"users": 3.0}, id="tags-float-version"),
        pytest.param(OP_TAGS, {1: 3}, id="tags-int-tag"),
        pytest.param(OP_TAGS, {b"users": 3}, id="tags-bytes-tag"),
    ],
)
def test_wrong_data_shape_for_the_op_is_a_message_error(op: int, data: Any) -> None:
    """Keys are a list of str, a clear carries a version, tags map str to versions; a
    version is an int from 0 to 2**53 - 1 (regression: a forged clear carrying 2**63 was
    learned and made every entry stale)."""
    with pytest.raises(MessageError, match="data must"):
        decode_message(message(op, data))


def _decodes_or_message_error(raw: object) -> None:
    try:
        decoded = decode_message(raw)
    except MessageError:
        return
    assert isinstance(decoded, Message)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_decode_or_raise_message_error_only(raw: bytes) -> None:
    """Arbitrary bytes either decode to a Message or raise MessageError, nothing else."""
    _decodes_or_message_error(raw)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([OP_KEYS, OP_CLEAR, OP_TAGS, OP_PROBE]), st.binary(max_size=64))
def test_random_data_bytes_after_a_valid_header_decode_or_raise_message_error_only(
    op: int, tail: bytes
) -> None:
    """A valid header then arbitrary data bytes: a Message or a MessageError, nothing else."""
    # The op is always valid here: an arbitrary op is the known bug pinned above.
    header = b"\x95" + msgpack.packb(MESSAGE_VERSION) + msgpack.packb(ORIGIN)
    _decodes_or_message_error(header + msgpack.packb(1) + msgpack.packb(op) + tail)


_MSGPACK_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=20)
)
_MSGPACK_VALUES = st.recursive(
    _MSGPACK_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(
    version=st.one_of(st.just(MESSAGE_VERSION), _MSGPACK_SCALARS),
    origin=st.one_of(st.just(ORIGIN), _MSGPACK_SCALARS),
    seq=st.one_of(st.integers(min_value=-2, max_value=3), _MSGPACK_SCALARS),
    # Hashable ops only: arrays and maps there are the known bug pinned above.
    op=st.one_of(st.sampled_from([OP_KEYS, OP_CLEAR, OP_TAGS, OP_PROBE]), _MSGPACK_SCALARS),
    data=_MSGPACK_VALUES,
)
def test_random_five_field_arrays_decode_or_raise_message_error_only(
    version: Any, origin: Any, seq: Any, op: Any, data: Any
) -> None:
    """Well-formed msgpack arrays with arbitrary field values decode or raise MessageError."""
    _decodes_or_message_error(packed(version, origin, seq, op, data))


def test_ready_alone_may_be_unnumbered() -> None:
    """A READY is a wake-up, not an invalidation: it may carry number 0 (outside its
    publisher's numbering); any other op with 0 is refused."""
    decoded = decode_message(encode_message(ORIGIN, 0, OP_READY, [["k", b"entry"]]))
    assert decoded == Message(ORIGIN, 0, OP_READY, [["k", b"entry"]])
    for op, data in ((OP_KEYS, ["k"]), (OP_VALUES, [["k", None]]), (OP_CLEAR, 1)):
        with pytest.raises(MessageError, match=r"seq must be >= 1 \(>= 0 on OP_READY\)"):
            decode_message(encode_message(ORIGIN, 0, op, data))
    with pytest.raises(MessageError, match="data must"):
        decode_message(encode_message(ORIGIN, 0, OP_READY, ["k"]))  # the old key-list form
