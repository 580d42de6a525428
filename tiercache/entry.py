"""The L2 entry format: a fixed header, optional tag versions, then the serialized value.

Header, network byte order (``struct`` format ``!BBQQI``, 22 bytes)::

    version     u8   FORMAT_VERSION; an unknown version is a miss, never a crash
    flags       u8   bit 0: payload is zstd-compressed; bit 1: custom serializer;
                     bit 2: a tag block follows; bit 3: this is a lease placeholder;
                     any other bit set: written by a newer tiercache -> a miss
    expires     u64  logical expiry, milliseconds since the Unix epoch (wall clock, because
                     every process reads it); the Redis TTL may be longer (fail-safe window)
    ns_version  u64  the namespace version when the value was computed; ``clear()`` bumps
                     the namespace version, so older entries read as misses everywhere
    delta       u32  how long the load that computed the value took, milliseconds (0: not
                     loaded, e.g. ``set``); probabilistic early expiration scales with it

Tag block (flag bit 2): ``u32`` length, then msgpack ``[[tag, version], ...]``: the version
of each tag when the value was computed; ``invalidate_tags`` bumps tag versions.

Versions are integers from 0 to `MAX_VERSION` (2**53 - 1): the counters are bumped by a
Lua script, and Lua numbers are doubles, exact only below 2**53. An entry carrying a version
outside that range is corrupt (a miss). Format version 1 had a u32 ``ns_version`` (14-byte
header) and version 2 no ``delta`` (18-byte header); their entries are unknown versions, so
misses: after an upgrade every key is loaded once more.

A lease placeholder (flag bit 3) marks "a process is loading this key" (see ``lease.py``):
after the header come a 16-byte token and, when the key held an expired entry still inside
its fail-safe window, that entry's bytes, so processes waiting for the load can still
serve it as stale.

An `EntryCodec` owns the serializer, the compressor and the size limits of one cache.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgpack

from .codec import DECODE_ERRORS, Compressor, MsgpackSerializer, Serializer, ZstdCompressor
from .errors import CorruptEntryError, SerializationError

__all__ = [
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "LEASE_TOKEN_SIZE",
    "MAX_VERSION",
    "Entry",
    "EntryCodec",
    "Lease",
    "Prepared",
    "TagVersions",
    "lease_placeholder",
]

FORMAT_VERSION = 3
_HEADER = struct.Struct("!BBQQI")
#: The largest ``delta`` stored, milliseconds (u32).
_MAX_DELTA_MS = 2**32 - 1
_TAG_LEN = struct.Struct("!I")
HEADER_SIZE = _HEADER.size
LEASE_TOKEN_SIZE = 16
_FLAG_ZSTD = 0x01
_FLAG_CUSTOM = 0x02
_FLAG_TAGS = 0x04
_FLAG_LEASE = 0x08
# On a lease placeholder: processes wait for its value (set by the waiters' script, so the
# holder's write knows to wake them).
_FLAG_WAITERS = 0x10
_KNOWN_FLAGS = _FLAG_ZSTD | _FLAG_CUSTOM | _FLAG_TAGS | _FLAG_LEASE | _FLAG_WAITERS
#: The largest namespace or tag version: Lua (the version bump) is exact only below 2**53.
MAX_VERSION = 2**53 - 1

#: ``((tag, version), ...)`` as carried in an entry.
TagVersions = tuple[tuple[str, int], ...]


class Entry(NamedTuple):
    """A decoded L2 entry.

    Since: 0.1.0
    """

    value: Any
    #: Logical expiry, seconds since the Unix epoch.
    expires_at: float
    #: Namespace version the value was computed under.
    ns_version: int = 0
    #: Version of each tag when the value was computed.
    tags: TagVersions = ()
    #: How long the load that computed the value took, seconds (0.0: not loaded).
    delta: float = 0.0


class Prepared(NamedTuple):
    """A serialized (maybe compressed) value, ready to be framed with a header.

    Since: 0.1.0
    """

    flags: int
    payload: bytes
    #: How long the load that produced the value took, seconds (0.0: not loaded).
    delta: float = 0.0


class Lease(NamedTuple):
    """A decoded lease placeholder: some process is loading the key.

    Since: 0.1.0
    """

    token: bytes
    #: The expired entry the key held when the lease was taken (fail-safe), or ``b""``.
    stale: bytes = b""


def lease_placeholder(token: bytes, stale: bytes = b"") -> bytes:
    """The bytes stored at a key while a process holds its lease.

    Since: 0.1.0
    """
    if len(token) != LEASE_TOKEN_SIZE:
        raise ValueError(f"lease token must be {LEASE_TOKEN_SIZE} bytes")
    return _HEADER.pack(FORMAT_VERSION, _FLAG_LEASE, 0, 0, 0) + token + stale


class EntryCodec:
    """Encodes values with their header and decodes bytes from Redis.

    Since: 0.1.0
    """

    __slots__ = ("_compressor", "_flags", "_max_value_bytes", "_serializer", "_threshold")

    def __init__(
        self,
        serializer: Serializer | None = None,
        *,
        compress_threshold: int,
        max_value_bytes: int,
        compressor: Compressor | None = None,
    ) -> None:
        if serializer is not None and not isinstance(serializer, Serializer):
            raise TypeError(
                "serializer must have dumps(value) -> bytes and loads(bytes) methods, "
                f"not {serializer!r}"
            )
        if compressor is not None and not isinstance(compressor, Compressor):
            raise TypeError(
                "compressor must have compress(data) -> bytes and decompress(data, max_size) "
                f"methods, not {compressor!r}"
            )
        self._serializer: Serializer = serializer or MsgpackSerializer()
        self._flags = 0 if serializer is None else _FLAG_CUSTOM
        self._threshold = compress_threshold
        self._max_value_bytes = max_value_bytes
        self._compressor: Compressor = compressor or ZstdCompressor()

    def prepare(self, value: Any) -> Prepared:
        """Serialize (and maybe compress) ``value``: the part of an entry that does not
        depend on when or under which versions it is written.

        Raises `SerializationError` (a ``TypeError``) naming an
        unsupported type, and `ValueError` when the serialized value is larger than
        ``max_value_bytes``.
        """
        try:
            payload = self._serializer.dumps(value)
        except SerializationError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(
                f"cannot serialize a value of type {type(value).__qualname__}: {exc}"
            ) from exc
        if not isinstance(payload, bytes):
            raise SerializationError(
                f"serializer.dumps returned {type(payload).__name__}, expected bytes"
            )
        if len(payload) > self._max_value_bytes:
            raise ValueError(
                f"value serializes to {len(payload)} bytes, over max_value_bytes="
                f"{self._max_value_bytes}"
            )
        flags = self._flags
        if len(payload) >= self._threshold:
            compressed = self._compressor.compress(payload)
            # Incompressible data (already compressed media, random tokens) stays raw.
            if len(compressed) < len(payload):
                payload = compressed
                flags |= _FLAG_ZSTD
        return Prepared(flags, payload)

    @staticmethod
    def frame(
        prepared: Prepared,
        expires_at: float,
        ns_version: int = 0,
        tags: Sequence[tuple[str, int]] = (),
    ) -> bytes:
        """The bytes stored in Redis: header, tag block, prepared payload."""
        flags, payload, delta = prepared
        if not 0 <= ns_version <= MAX_VERSION or any(
            not 0 <= version <= MAX_VERSION for _, version in tags
        ):
            raise ValueError(f"versions must be integers from 0 to {MAX_VERSION}")
        tag_block = b""
        if tags:
            flags |= _FLAG_TAGS
            packed = msgpack.packb([list(pair) for pair in tags], use_bin_type=True)
            tag_block = _TAG_LEN.pack(len(packed)) + packed
        expires_ms = max(0, int(expires_at * 1000))
        delta_ms = min(_MAX_DELTA_MS, max(0, int(delta * 1000)))
        header = _HEADER.pack(FORMAT_VERSION, flags, expires_ms, ns_version, delta_ms)
        return header + tag_block + payload

    def encode(
        self,
        value: Any,
        expires_at: float,
        ns_version: int = 0,
        tags: Sequence[tuple[str, int]] = (),
    ) -> bytes:
        """`prepare` then `frame`."""
        return self.frame(self.prepare(value), expires_at, ns_version, tags)

    def decode(self, data: bytes) -> Entry | Lease:
        """Decode bytes read from Redis into an `Entry` or a `Lease`;
        `CorruptEntryError` if they are not valid (any reason:
        foreign, truncated, a decompression bomb, written with another serializer, ...)."""
        if len(data) < HEADER_SIZE:
            raise CorruptEntryError(f"{len(data)} bytes is shorter than the entry header")
        version, flags, expires_ms, ns_version, delta_ms = _HEADER.unpack_from(data)
        if version != FORMAT_VERSION:
            raise CorruptEntryError(f"unknown entry format version {version}")
        # The waiters bit only means something on a lease placeholder.
        if flags & ~_KNOWN_FLAGS or (flags & _FLAG_WAITERS and not flags & _FLAG_LEASE):
            raise CorruptEntryError(f"unknown entry flags 0x{flags:02x}")
        if flags & _FLAG_LEASE:
            token = data[HEADER_SIZE : HEADER_SIZE + LEASE_TOKEN_SIZE]
            if flags & ~(_FLAG_LEASE | _FLAG_WAITERS) or len(token) != LEASE_TOKEN_SIZE:
                raise CorruptEntryError("malformed lease placeholder")
            return Lease(token, data[HEADER_SIZE + LEASE_TOKEN_SIZE :])
        if (flags & _FLAG_CUSTOM) != self._flags:
            raise CorruptEntryError("entry was written with a different serializer")
        if ns_version > MAX_VERSION:
            raise CorruptEntryError(f"namespace version {ns_version} is over {MAX_VERSION}")
        offset = HEADER_SIZE
        tags: TagVersions = ()
        if flags & _FLAG_TAGS:
            tags, offset = self._decode_tags(data, offset)
        payload = data[offset:]
        if flags & _FLAG_ZSTD:
            try:
                payload = self._compressor.decompress(payload, self._max_value_bytes)
            except CorruptEntryError:
                raise
            except Exception as exc:  # a custom compressor may raise anything on bad bytes
                raise CorruptEntryError(f"decompression failed: {exc!r}") from exc
            if len(payload) > self._max_value_bytes:
                raise CorruptEntryError("decompressed payload is over max_value_bytes")
        elif len(payload) > self._max_value_bytes:
            raise CorruptEntryError(f"{len(payload)}-byte payload is over max_value_bytes")
        try:
            value = self._serializer.loads(payload)
        except CorruptEntryError:
            raise
        except DECODE_ERRORS as exc:
            raise CorruptEntryError(f"undecodable payload: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            # A custom serializer may raise anything on foreign bytes.
            raise CorruptEntryError(f"serializer.loads failed: {exc!r}") from exc
        return Entry(value, expires_ms / 1000.0, ns_version, tags, delta_ms / 1000.0)

    @staticmethod
    def _decode_tags(data: bytes, offset: int) -> tuple[TagVersions, int]:
        if len(data) < offset + _TAG_LEN.size:
            raise CorruptEntryError("truncated tag block")
        (length,) = _TAG_LEN.unpack_from(data, offset)
        start = offset + _TAG_LEN.size
        end = start + length
        if len(data) < end:
            raise CorruptEntryError("truncated tag block")
        try:
            pairs = msgpack.unpackb(data[start:end], raw=False, use_list=False)
            tags = tuple((str(tag), int(ver)) for tag, ver in pairs)
            if not all(type(tag) is str for tag, _ in pairs):
                raise ValueError("tag names must be str")
            if not all(type(ver) is int and 0 <= ver <= MAX_VERSION for _, ver in pairs):
                raise ValueError(f"tag versions must be integers from 0 to {MAX_VERSION}")
        except DECODE_ERRORS as exc:
            raise CorruptEntryError(f"bad tag block: {exc}") from exc
        return tags, end
