"""Entry format: header + (maybe compressed) payload; anything undecodable is CorruptEntryError."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import run_python
from tiercache import SerializationError
from tiercache.entry import (
    FORMAT_VERSION,
    HEADER_SIZE,
    LEASE_TOKEN_SIZE,
    MAX_VERSION,
    Entry,
    EntryCodec,
    Lease,
    lease_placeholder,
)
from tiercache.errors import CorruptEntryError

HEADER = struct.Struct("!BBQQI")  # version, flags, expiry ms, namespace version, delta ms
FLAG_ZSTD = 0x01
FLAG_CUSTOM = 0x02
FLAG_TAGS = 0x04
FLAG_LEASE = 0x08


def hdr(version: int = FORMAT_VERSION, flags: int = 0, expires_ms: int = 0, ns: int = 0) -> bytes:
    return HEADER.pack(version, flags, expires_ms, ns, 0)


def make_codec(
    serializer: Any = None, threshold: int = 256, max_bytes: int = 1 << 20
) -> EntryCodec:
    return EntryCodec(serializer, compress_threshold=threshold, max_value_bytes=max_bytes)


class BytesSerializer:
    """A custom Serializer by shape only (no base class): bytes pass through unchanged."""

    def dumps(self, value: Any) -> bytes:
        if not isinstance(value, bytes):
            raise TypeError(f"BytesSerializer stores bytes, not {type(value).__name__}")
        return value

    def loads(self, data: bytes) -> Any:
        return data


def flags_of(blob: bytes) -> int:
    return blob[1]


# -- round trip ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [None, 0, "x", [1, (2, 3)], {"a": {1, 2}}, b"\x00" * 10_000, "big" * 5000]
)
def test_encode_decode_round_trips_value_and_expiry(value: Any) -> None:
    """decode(encode(v, t)) gives back v and t (to the millisecond)."""
    codec = make_codec()
    entry = codec.decode(codec.encode(value, expires_at=1_700_000_000.25))
    assert entry == Entry(value, 1_700_000_000.25)


def test_expiry_is_stored_in_whole_milliseconds() -> None:
    """Sub-millisecond parts of the expiry are truncated; negative expiries clamp to 0."""
    codec = make_codec()
    assert codec.decode(codec.encode(1, expires_at=12.3456789)).expires_at == 12.345
    assert codec.decode(codec.encode(1, expires_at=-5.0)).expires_at == 0.0


def test_header_layout_is_pinned() -> None:
    """Version u8 (3), flags u8, expiry u64 ms, namespace version u64, load duration u32 ms,
    then the payload."""
    codec = make_codec()
    blob = codec.frame(codec.prepare({"a": 1})._replace(delta=0.25), 2.5, 7)
    assert FORMAT_VERSION == 3
    assert HEADER_SIZE == HEADER.size == 22
    assert HEADER.unpack_from(blob) == (FORMAT_VERSION, 0, 2500, 7, 250)
    assert blob[HEADER_SIZE:] == msgpack.packb({"a": 1})
    assert codec.decode(blob) == Entry({"a": 1}, 2.5, 7, (), 0.25)


def test_a_format_2_entry_is_a_miss() -> None:
    """The 18-byte header of format 2 (no load duration) is an unknown version: a miss."""
    old = struct.pack("!BBQQ", 2, 0, 2500, 7) + msgpack.packb({"a": 1}) + b"padding"
    with pytest.raises(CorruptEntryError, match="unknown entry format version 2"):
        make_codec().decode(old)


def test_a_load_duration_is_capped_not_wrapped() -> None:
    """A load longer than the u32 of milliseconds holds is stored as the largest value."""
    codec = make_codec()
    blob = codec.frame(codec.prepare(1)._replace(delta=10.0**9), 2.5)
    assert HEADER.unpack_from(blob)[4] == 2**32 - 1


@pytest.mark.parametrize("version", [2**32 - 1, 2**32, 5_000_000_000, MAX_VERSION])
def test_versions_above_32_bits_round_trip_unmasked(version: int) -> None:
    """Namespace and tag versions up to 2**53 - 1 come back exactly (regression: the
    namespace version was masked to 32 bits, so a counter past 2**32 made every entry stale)."""
    codec = make_codec()
    blob = codec.encode("v", expires_at=5, ns_version=version, tags=[("t", version)])
    assert codec.decode(blob) == Entry("v", 5.0, version, (("t", version),))


@pytest.mark.parametrize(
    ("ns", "tags"),
    [
        (MAX_VERSION + 1, ()),
        (2**64 - 1, ()),
        (-1, ()),
        (0, (("t", MAX_VERSION + 1),)),
        (0, (("t", -1),)),
    ],
    ids=["ns-2**53", "ns-2**64-1", "ns-negative", "tag-2**53", "tag-negative"],
)
def test_versions_outside_the_supported_range_are_refused_at_frame(
    ns: int, tags: tuple[tuple[str, int], ...]
) -> None:
    """A version no Lua bump can reach exactly is a ValueError, never silently changed."""
    with pytest.raises(ValueError, match="versions must be integers from 0 to"):
        make_codec().encode("v", expires_at=5, ns_version=ns, tags=tags)


def test_entries_carrying_versions_over_the_range_are_corrupt() -> None:
    """An entry whose namespace or tag version is past 2**53 - 1 is a miss, not learned."""
    with pytest.raises(CorruptEntryError, match="namespace version"):
        make_codec().decode(hdr(ns=MAX_VERSION + 1) + msgpack.packb(1))
    packed = msgpack.packb([["t", MAX_VERSION + 1]])
    tag_block = struct.pack("!I", len(packed)) + packed
    with pytest.raises(CorruptEntryError, match="tag versions"):
        make_codec().decode(hdr(flags=FLAG_TAGS) + tag_block + msgpack.packb(1))


def test_an_entry_in_the_old_14_byte_format_is_a_miss() -> None:
    """Format version 1 (u32 namespace version) is an unknown version: CorruptEntryError."""
    old = struct.pack("!BBQI", 1, 0, 2500, 7) + msgpack.packb({"a": 1})
    with pytest.raises(CorruptEntryError, match=r"unknown entry format version 1|shorter than"):
        make_codec().decode(old)


def test_namespace_version_and_tags_round_trip() -> None:
    """The namespace version and the tag versions written with a value come back with it."""
    codec = make_codec()
    blob = codec.encode("v", expires_at=5, ns_version=3, tags=[("users", 2), ("eu", 0)])
    assert flags_of(blob) & FLAG_TAGS
    assert codec.decode(blob) == Entry("v", 5.0, 3, (("users", 2), ("eu", 0)))


def test_lease_placeholder_decodes_as_a_lease() -> None:
    """A lease placeholder is recognised (not corrupt) and carries its token."""
    token = bytes(range(LEASE_TOKEN_SIZE))
    assert make_codec().decode(lease_placeholder(token)) == Lease(token)
    assert make_codec(BytesSerializer()).decode(lease_placeholder(token)) == Lease(token)


def test_lease_placeholder_requires_a_full_token() -> None:
    """Building a placeholder from a short token is a ValueError."""
    with pytest.raises(ValueError, match="lease token"):
        lease_placeholder(b"short")


def test_payload_below_threshold_is_stored_raw() -> None:
    """A small value is not compressed (flag clear, payload is plain msgpack)."""
    blob = make_codec(threshold=256).encode("a" * 100, expires_at=1)
    assert flags_of(blob) & FLAG_ZSTD == 0
    assert blob[HEADER_SIZE:] == msgpack.packb("a" * 100)


def test_compressible_payload_above_threshold_is_compressed() -> None:
    """A large, compressible value gets the zstd flag and a smaller body."""
    value = "abc" * 10_000
    blob = make_codec(threshold=256).encode(value, expires_at=1)
    assert flags_of(blob) & FLAG_ZSTD
    assert len(blob) < len(msgpack.packb(value)) // 10
    assert make_codec(threshold=256).decode(blob).value == value


def test_threshold_is_inclusive() -> None:
    """A payload of exactly compress_threshold bytes is compressed; one byte less is not."""
    codec = make_codec(BytesSerializer(), threshold=1000)
    assert flags_of(codec.encode(b"z" * 1000, expires_at=1)) & FLAG_ZSTD
    assert not flags_of(codec.encode(b"z" * 999, expires_at=1)) & FLAG_ZSTD


def test_incompressible_payload_is_stored_raw() -> None:
    """Random bytes do not shrink under zstd, so they are stored uncompressed."""
    value = os.urandom(50_000)
    codec = make_codec(threshold=256)
    blob = codec.encode(value, expires_at=1)
    assert flags_of(blob) & FLAG_ZSTD == 0
    assert blob[HEADER_SIZE:] == msgpack.packb(value)
    assert codec.decode(blob).value == value


def test_value_over_max_value_bytes_is_refused_at_encode() -> None:
    """A serialized value larger than max_value_bytes is a ValueError; exactly the max is fine."""
    codec = make_codec(BytesSerializer(), max_bytes=1000)
    assert codec.decode(codec.encode(b"q" * 1000, expires_at=1)).value == b"q" * 1000
    with pytest.raises(ValueError, match="1001 bytes, over max_value_bytes=1000"):
        codec.encode(b"q" * 1001, expires_at=1)


def test_unsupported_value_is_a_serialization_error_at_encode() -> None:
    """encode raises SerializationError (a TypeError) for values msgpack cannot store."""
    with pytest.raises(SerializationError, match="object"):
        make_codec().encode(object(), expires_at=1)


# -- custom serializer -----------------------------------------------------------------------


def test_custom_serializer_by_protocol_round_trips_and_sets_its_flag() -> None:
    """Any object with dumps/loads works as a Serializer and marks the entry as custom."""
    codec = make_codec(BytesSerializer())
    blob = codec.encode(b"raw", expires_at=3)
    assert flags_of(blob) == FLAG_CUSTOM
    assert blob[HEADER_SIZE:] == b"raw"
    assert codec.decode(blob) == Entry(b"raw", 3.0)


def test_custom_serializer_type_error_becomes_serialization_error() -> None:
    """A custom dumps raising TypeError surfaces as SerializationError naming the type."""
    with pytest.raises(SerializationError, match="int"):
        make_codec(BytesSerializer()).encode(5, expires_at=1)


def test_custom_serializer_returning_non_bytes_is_a_serialization_error() -> None:
    """dumps must return bytes."""

    class Stringly:
        def dumps(self, value: Any) -> Any:
            return str(value)

        def loads(self, data: bytes) -> Any:
            return data

    with pytest.raises(SerializationError, match="returned str, expected bytes"):
        make_codec(Stringly()).encode(1, expires_at=1)


def test_custom_loads_raising_anything_is_corrupt() -> None:
    """Whatever a custom loads raises on foreign bytes becomes CorruptEntryError."""

    class Picky(BytesSerializer):
        def loads(self, data: bytes) -> Any:
            raise RuntimeError("not mine")

    codec = make_codec(Picky())
    blob = codec.encode(b"x", expires_at=1)
    with pytest.raises(CorruptEntryError, match="not mine"):
        codec.decode(blob)


class OnlyDumps:
    def dumps(self, value: Any) -> bytes:
        return b""


@pytest.mark.parametrize("bad", [object(), "json", OnlyDumps()])
def test_non_conforming_serializer_is_a_type_error(bad: object) -> None:
    """Something without both dumps and loads is refused at construction."""
    with pytest.raises(TypeError, match="serializer must have dumps"):
        make_codec(bad)


def test_serializer_mismatch_is_corrupt_both_ways() -> None:
    """An entry written by a custom serializer is not decoded by the default one, and back."""
    default, custom = make_codec(), make_codec(BytesSerializer())
    with pytest.raises(CorruptEntryError, match="different serializer"):
        default.decode(custom.encode(b"x", expires_at=1))
    with pytest.raises(CorruptEntryError, match="different serializer"):
        custom.decode(default.encode(b"x", expires_at=1))


# -- decode: anything that is not one of our entries -------------------------------------------


def _valid_blobs() -> dict[str, bytes]:
    codec = make_codec(threshold=64)
    return {
        "raw": codec.encode({"k": [1, 2, 3], "s": "text"}, expires_at=99),
        "zstd": codec.encode("compressible " * 200, expires_at=99),
    }


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (b"", "shorter than the entry header"),
        (b"\x01\x00\x00", "shorter than the entry header"),
        (hdr()[:-1], "shorter than the entry header"),
        (hdr(version=0) + msgpack.packb(1), "unknown entry format version 0"),
        (hdr(version=1) + msgpack.packb(1), "unknown entry format version 1"),
        (hdr(version=255) + msgpack.packb(1), "unknown entry format version 255"),
        (hdr(flags=0x10) + msgpack.packb(1), "unknown entry flags 0x10"),
        (hdr(flags=0x80) + msgpack.packb(1), "unknown entry flags 0x80"),
        (hdr(flags=FLAG_ZSTD) + msgpack.packb(1), "bad zstd frame"),
        (hdr(), "undecodable payload"),
        (hdr() + msgpack.packb(1) + b"\x00", "undecodable payload"),
        (hdr() + msgpack.packb(msgpack.ExtType(77, b"?")), "undecodable"),
        (hdr() + b"\xc1", "undecodable payload"),
        (hdr(flags=FLAG_TAGS) + b"\x00\x00", "truncated tag block"),
        (hdr(flags=FLAG_TAGS) + b"\x00\x00\x00\xff" + b"\x90", "truncated tag block"),
        (hdr(flags=FLAG_TAGS) + b"\x00\x00\x00\x01\x05" + msgpack.packb(1), "bad tag block"),
        (hdr(flags=FLAG_TAGS) + b"\x00\x00\x00\x04\x91\x92\x01\x02" + b"\x01", "bad tag"),
        (hdr(flags=FLAG_LEASE) + b"short token", "malformed lease placeholder"),
        (hdr(flags=FLAG_LEASE | FLAG_ZSTD) + bytes(LEASE_TOKEN_SIZE), "malformed lease"),
        (json.dumps({"user": 42, "name": "alice"}).encode(), "unknown entry format version 123"),
        (pickle.dumps({"a": 1}), "unknown entry format version|shorter than"),
        (bytes([FORMAT_VERSION]) + pickle.dumps({"a": 1}), "undecodable payload|shorter|flags"),
    ],
    ids=[
        "empty",
        "three-bytes",
        "nine-bytes",
        "version-0",
        "version-1",
        "version-255",
        "flag-0x10",
        "flag-0x80",
        "zstd-flag-on-raw-payload",
        "empty-payload",
        "trailing-byte",
        "unknown-ext",
        "reserved-msgpack-byte",
        "tag-length-cut",
        "tag-block-cut",
        "tag-block-not-a-list",
        "tag-name-not-str",
        "lease-short-token",
        "lease-with-other-flags",
        "json",
        "pickle",
        "pickle-behind-version-byte",
    ],
)
def test_foreign_or_damaged_bytes_are_corrupt(blob: bytes, match: str) -> None:
    """Bytes that are not a valid entry raise CorruptEntryError with the reason."""
    with pytest.raises(CorruptEntryError, match=match):
        make_codec().decode(blob)


def test_pickle_payload_behind_a_valid_header_is_never_unpickled() -> None:
    """A pickle that would run code is just undecodable bytes to the msgpack serializer."""

    class Boom:
        def __reduce__(self) -> Any:
            return (pytest.fail, ("pickle was executed",))

    with pytest.raises(CorruptEntryError):
        make_codec().decode(hdr() + pickle.dumps(Boom()))


@pytest.mark.parametrize("kind", ["raw", "zstd"])
def test_every_truncation_of_a_valid_entry_is_corrupt(kind: str) -> None:
    """Each strict prefix of a valid entry (raw or compressed) is CorruptEntryError."""
    blob = _valid_blobs()[kind]
    codec = make_codec(threshold=64)
    assert codec.decode(blob).expires_at == 99
    for cut in range(len(blob)):
        with pytest.raises(CorruptEntryError):
            codec.decode(blob[:cut])


def test_raw_payload_over_max_value_bytes_is_corrupt() -> None:
    """An uncompressed payload larger than the cap is refused before deserializing."""
    big = make_codec(max_bytes=1 << 20).encode(os.urandom(5000), expires_at=1)
    with pytest.raises(CorruptEntryError, match="over max_value_bytes"):
        make_codec(max_bytes=1000).decode(big)


def _frame_declaring(size: int) -> bytes:
    # zstd frame: magic, descriptor 0xC0 (8-byte content size, no single-segment), window
    # descriptor, content size, then one last, empty raw block.
    return b"\x28\xb5\x2f\xfd" + b"\xc0" + b"\x00" + struct.pack("<Q", size) + b"\x01\x00\x00"


def test_zstd_frame_declaring_10_gb_behind_valid_header_is_corrupt() -> None:
    """A decompression bomb's declared size is refused before any allocation."""
    import zstandard

    frame = _frame_declaring(10 * 1024**3)
    assert zstandard.frame_content_size(frame) == 10 * 1024**3
    with pytest.raises(CorruptEntryError, match="declares 10737418240 bytes"):
        make_codec().decode(hdr(flags=FLAG_ZSTD) + frame)


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_corrupt_never_anything_else(blob: bytes) -> None:
    """Property: decode of arbitrary bytes returns an Entry or raises CorruptEntryError."""
    try:
        result = make_codec().decode(blob)
    except CorruptEntryError:
        return
    assert isinstance(result, Entry)


@settings(max_examples=300, deadline=None, database=None)
@given(st.integers(0, 15), st.integers(0, 2**64 - 1), st.binary(max_size=200))
def test_random_payload_behind_a_valid_header_never_escapes(
    flags: int, expires_ms: int, payload: bytes
) -> None:
    """Property: with a plausible header, any payload decodes or is CorruptEntryError."""
    blob = hdr(flags=flags, expires_ms=expires_ms) + payload
    for codec in (make_codec(), make_codec(BytesSerializer())):
        with contextlib.suppress(CorruptEntryError):
            codec.decode(blob)


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(min_size=1, max_size=64).filter(lambda b: b[0] != FORMAT_VERSION))
def test_bytes_with_another_version_byte_are_always_corrupt(blob: bytes) -> None:
    """Property: anything not starting with our version byte is CorruptEntryError."""
    with pytest.raises(CorruptEntryError):
        make_codec().decode(blob)


_DEEP_EXT_CODE = """
import msgpack
from tiercache.entry import EntryCodec
from tiercache.errors import CorruptEntryError
data = msgpack.packb(1)
for _ in range(1000):
    # extension type 9 (tuple) whose body is a one-element array holding the next level
    data = msgpack.packb(msgpack.ExtType(9, b"\\x91" + data))
codec = EntryCodec(compress_threshold=1 << 20, max_value_bytes=1 << 20)
blob = codec.encode(None, 0.0)[:-1] + data  # a valid header, then the nest
try:
    codec.decode(blob)
except CorruptEntryError:
    print("corrupt")
else:
    print("decoded")
"""


def test_deeply_nested_extension_types_are_corrupt_not_a_crash() -> None:
    """A 1000-level nest of tuple extensions (about 5 KB) is a miss, not a dead process.

    Regression: extension payloads recursed through C unpackb with no limit; about 200
    levels segfaulted the reader. Run in a subprocess so a regression cannot kill pytest.
    """
    proc = run_python(_DEEP_EXT_CODE, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert proc.returncode == 0, f"reader died with {proc.returncode}: {proc.stderr[-500:]}"
    assert proc.stdout.strip() == "corrupt"
