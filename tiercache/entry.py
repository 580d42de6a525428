"""The L2 entry format: a fixed header, then the (maybe compressed) serialized value.

Header, network byte order (``struct`` format ``!BBQ``, 10 bytes)::

    version   u8   FORMAT_VERSION; an unknown version is a miss, never a crash
    flags     u8   bit 0: payload is zstd-compressed; bit 1: custom serializer;
                   any other bit set: written by a newer tiercache -> a miss
    expires   u64  logical expiry, milliseconds since the Unix epoch (wall clock, because
                   every process reads it); the Redis TTL may be longer (fail-safe window)

An :class:`EntryCodec` owns the serializer, the compressor and the size limits of one cache.
"""

from __future__ import annotations

import logging
import struct
from typing import Any, NamedTuple

from .codec import DECODE_ERRORS, MsgpackSerializer, Serializer, ZstdCompressor
from .errors import CorruptEntryError, SerializationError

__all__ = ["FORMAT_VERSION", "HEADER_SIZE", "Entry", "EntryCodec"]

log = logging.getLogger("tiercache")

FORMAT_VERSION = 1
_HEADER = struct.Struct("!BBQ")
HEADER_SIZE = _HEADER.size
_FLAG_ZSTD = 0x01
_FLAG_CUSTOM = 0x02
_KNOWN_FLAGS = _FLAG_ZSTD | _FLAG_CUSTOM


class Entry(NamedTuple):
    """A decoded L2 entry.

    Since: 0.1.0
    """

    value: Any
    #: Logical expiry, seconds since the Unix epoch.
    expires_at: float


class EntryCodec:
    """Encodes values with their header and decodes bytes from Redis into :class:`Entry`.

    Since: 0.1.0
    """

    __slots__ = ("_compressor", "_flags", "_max_value_bytes", "_serializer", "_threshold")

    def __init__(
        self,
        serializer: Serializer | None = None,
        *,
        compress_threshold: int,
        max_value_bytes: int,
    ) -> None:
        if serializer is not None and not isinstance(serializer, Serializer):
            raise TypeError(
                "serializer must have dumps(value) -> bytes and loads(bytes) methods, "
                f"not {serializer!r}"
            )
        self._serializer: Serializer = serializer or MsgpackSerializer()
        self._flags = 0 if serializer is None else _FLAG_CUSTOM
        self._threshold = compress_threshold
        self._max_value_bytes = max_value_bytes
        self._compressor = ZstdCompressor()

    def encode(self, value: Any, expires_at: float) -> bytes:
        """Serialize ``value`` with its header.

        Raises :class:`~tiercache.SerializationError` (a ``TypeError``) naming an
        unsupported type, and :class:`ValueError` when the serialized value is larger than
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
        expires_ms = max(0, int(expires_at * 1000))
        return _HEADER.pack(FORMAT_VERSION, flags, expires_ms) + payload

    def decode(self, data: bytes) -> Entry:
        """Decode bytes read from Redis; :class:`~tiercache.errors.CorruptEntryError` if they
        are not a valid entry of this cache (any reason: foreign, truncated, a bomb, ...)."""
        if len(data) < HEADER_SIZE:
            raise CorruptEntryError(f"{len(data)} bytes is shorter than the entry header")
        version, flags, expires_ms = _HEADER.unpack_from(data)
        if version != FORMAT_VERSION:
            raise CorruptEntryError(f"unknown entry format version {version}")
        if flags & ~_KNOWN_FLAGS:
            raise CorruptEntryError(f"unknown entry flags 0x{flags:02x}")
        if (flags & _FLAG_CUSTOM) != self._flags:
            raise CorruptEntryError("entry was written with a different serializer")
        payload = data[HEADER_SIZE:]
        if flags & _FLAG_ZSTD:
            payload = self._compressor.decompress(payload, self._max_value_bytes)
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
        return Entry(value, expires_ms / 1000.0)
