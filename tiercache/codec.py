"""Value serialization: the `Serializer` protocol, the default msgpack serializer with
extension types, and zstd compression with a hard cap on decompressed size.

The default serializer never runs code from the bytes it reads (no pickle): an unknown
extension type, a lying length or deep nesting is an error, which the cache turns into a miss.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
import zoneinfo
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

import msgpack
import zstandard

from .errors import CorruptEntryError, SerializationError

__all__ = [
    "DECODE_ERRORS",
    "MAX_EXT_DEPTH",
    "MsgpackSerializer",
    "Serializer",
    "ZstdCompressor",
]


@runtime_checkable
class Serializer(Protocol):
    """Turns values into bytes and back. Implement it to store types msgpack cannot.

    ``dumps`` raises `TypeError` (or `SerializationError`) for a
    value it cannot encode; ``loads`` raises any `Exception` for bytes it cannot
    decode, and the cache treats that as a miss.

    Since: 0.1.0
    """

    def dumps(self, value: Any) -> bytes:
        """Encode ``value``."""
        ...

    def loads(self, data: bytes) -> Any:
        """Decode bytes produced by `dumps`."""
        ...


# Extension type codes. Never renumber: they are stored in Redis.
_EXT_DATETIME = 1
_EXT_DATE = 2
_EXT_TIME = 3
_EXT_TIMEDELTA = 4
_EXT_DECIMAL = 5
_EXT_UUID = 6
_EXT_SET = 7
_EXT_FROZENSET = 8
_EXT_TUPLE = 9
#: Deepest nesting of extension types (tuples in sets in tuples...) accepted on decode.
MAX_EXT_DEPTH = 64


def _tz_spec(tz: dt.tzinfo | None, when: dt.datetime | None) -> Any:
    if tz is None:
        return None
    key = getattr(tz, "key", None)
    if isinstance(tz, zoneinfo.ZoneInfo) and isinstance(key, str):
        return key
    # Fixed offsets (datetime.timezone) and foreign tzinfo types keep their UTC offset, which
    # preserves the instant; only zoneinfo zones keep their name and DST rules.
    offset = tz.utcoffset(when)
    if offset is None:
        return None
    return [offset.days, offset.seconds, offset.microseconds]


def _tz_from_spec(spec: Any) -> dt.tzinfo | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        return zoneinfo.ZoneInfo(spec)
    days, seconds, micros = spec
    return dt.timezone(dt.timedelta(days=days, seconds=seconds, microseconds=micros))


class MsgpackSerializer:
    """The default serializer: msgpack plus extension types for datetime (time zone kept),
    date, time, timedelta, Decimal, UUID, set, frozenset and tuple; ``bytes`` is native.

    Subclasses of ``str``/``int``/``float``/``list``/``dict`` are stored as their base type.
    Thread-safe: each thread gets its own `msgpack.Packer`.

    Since: 0.1.0
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def _packer(self) -> msgpack.Packer:
        packer: msgpack.Packer | None = getattr(self._local, "packer", None)
        if packer is None:
            # strict_types: tuples and subclasses reach _default instead of silently
            # becoming lists/base types, so they round-trip exactly.
            packer = msgpack.Packer(default=self._default, use_bin_type=True, strict_types=True)
            self._local.packer = packer
        return packer

    def dumps(self, value: Any) -> bytes:
        """Encode ``value``; `SerializationError` names an unsupported type."""
        try:
            data: bytes = self._packer().pack(value)
        except SerializationError:
            raise
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            # The packer's buffer is reset on error, but be safe: drop it.
            self._local.packer = None
            raise SerializationError(f"cannot serialize value: {exc}") from exc
        return data

    def loads(self, data: bytes) -> Any:
        """Decode bytes from `dumps`; any error means the bytes are not ours."""
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, ext_hook=self._ext_hook, use_list=True
        )

    def _default(self, obj: Any) -> Any:
        pack = self._packer_for_ext
        if isinstance(obj, dt.datetime):
            parts = [obj.year, obj.month, obj.day, obj.hour, obj.minute, obj.second]
            parts += [obj.microsecond, _tz_spec(obj.tzinfo, obj), obj.fold]
            return msgpack.ExtType(_EXT_DATETIME, pack(parts))
        if isinstance(obj, dt.date):
            return msgpack.ExtType(_EXT_DATE, pack([obj.year, obj.month, obj.day]))
        if isinstance(obj, dt.time):
            parts = [obj.hour, obj.minute, obj.second, obj.microsecond]
            parts += [_tz_spec(obj.tzinfo, None), obj.fold]
            return msgpack.ExtType(_EXT_TIME, pack(parts))
        if isinstance(obj, dt.timedelta):
            return msgpack.ExtType(_EXT_TIMEDELTA, pack([obj.days, obj.seconds, obj.microseconds]))
        if isinstance(obj, Decimal):
            return msgpack.ExtType(_EXT_DECIMAL, str(obj).encode())
        if isinstance(obj, uuid.UUID):
            return msgpack.ExtType(_EXT_UUID, obj.bytes)
        if isinstance(obj, frozenset):
            return msgpack.ExtType(_EXT_FROZENSET, pack(list(obj)))
        if isinstance(obj, set):
            return msgpack.ExtType(_EXT_SET, pack(list(obj)))
        if isinstance(obj, tuple):
            return msgpack.ExtType(_EXT_TUPLE, pack(list(obj)))
        # strict_types sends subclasses of the native types here; store them as the base.
        if isinstance(obj, bool):
            return bool(obj)
        for base in (str, int, float, bytes, list, dict):
            if isinstance(obj, base):
                return base(obj)  # type: ignore[arg-type]
        raise SerializationError(
            f"cannot serialize a value of type {type(obj).__module__}.{type(obj).__qualname__}; "
            "store it as builtin types or pass serializer= a Serializer that supports it"
        )

    def _packer_for_ext(self, obj: Any) -> bytes:
        # A nested packer: the thread's main packer is in the middle of a pack() call.
        data: bytes = msgpack.packb(
            obj, default=self._default, use_bin_type=True, strict_types=True
        )
        return data

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == _EXT_DECIMAL:
            return Decimal(data.decode())
        if code == _EXT_UUID:
            return uuid.UUID(bytes=data)
        # Extension payloads are unpacked by a nested unpackb, which recurses in C with no
        # limit of its own: a few KB of nested tuples would crash the process.
        depth: int = getattr(self._local, "ext_depth", 0)
        if depth >= MAX_EXT_DEPTH:
            raise ValueError(f"extension types nested deeper than {MAX_EXT_DEPTH}")
        self._local.ext_depth = depth + 1
        try:
            parts = self.loads(data)
        finally:
            self._local.ext_depth = depth
        return self._from_parts(code, parts)

    @staticmethod
    def _from_parts(code: int, parts: Any) -> Any:
        if code == _EXT_DATETIME:
            y, mo, d, h, mi, s, us, tz, fold = parts
            return dt.datetime(y, mo, d, h, mi, s, us, tzinfo=_tz_from_spec(tz), fold=fold)
        if code == _EXT_DATE:
            return dt.date(*parts)
        if code == _EXT_TIME:
            h, mi, s, us, tz, fold = parts
            return dt.time(h, mi, s, us, tzinfo=_tz_from_spec(tz), fold=fold)
        if code == _EXT_TIMEDELTA:
            return dt.timedelta(days=parts[0], seconds=parts[1], microseconds=parts[2])
        if code == _EXT_SET:
            return set(parts)
        if code == _EXT_FROZENSET:
            return frozenset(parts)
        if code == _EXT_TUPLE:
            return tuple(parts)
        raise ValueError(f"unknown msgpack extension type {code}")


class ZstdCompressor:
    """zstd with a hard cap on decompressed size.

    python-zstandard ignores ``max_output_size`` when a frame declares its content size
    (field-notes 10: 8 KB expanded to 256 MiB past a 1 MiB cap), so the declared size is
    checked first; frames that do not declare it are refused (tiercache never writes them).
    Thread-safe: zstd contexts are per thread.

    Since: 0.1.0
    """

    def __init__(self, level: int = 3) -> None:
        self._level = level
        self._local = threading.local()

    def compress(self, data: bytes) -> bytes:
        """Compress ``data`` into one frame that records its content size."""
        compressor: zstandard.ZstdCompressor | None = getattr(self._local, "c", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(level=self._level, write_content_size=True)
            self._local.c = compressor
        compressed: bytes = compressor.compress(data)
        return compressed

    def decompress(self, data: bytes, max_size: int) -> bytes:
        """Decompress one frame; `CorruptEntryError` if it is bad or over ``max_size``."""
        decompressor: zstandard.ZstdDecompressor | None = getattr(self._local, "d", None)
        if decompressor is None:
            decompressor = zstandard.ZstdDecompressor()
            self._local.d = decompressor
        try:
            declared = zstandard.frame_content_size(data)
            if declared > max_size:
                raise CorruptEntryError(
                    f"zstd frame declares {declared} bytes, over the {max_size}-byte cap"
                )
            if declared < 0:
                # tiercache always writes the content size; a frame without one is foreign
                # (and could only be bounded by streaming, which cannot tell truncation).
                raise CorruptEntryError("zstd frame does not declare its content size")
            out: bytes = decompressor.decompress(data, max_output_size=max_size)
        except zstandard.ZstdError as exc:
            raise CorruptEntryError(f"bad zstd frame: {exc}") from exc
        if len(out) > max_size:
            raise CorruptEntryError(f"zstd frame expands past the {max_size}-byte cap")
        return out


#: What a decoder may raise on foreign bytes (field-notes 11), besides our own errors.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
    UnicodeDecodeError,
    msgpack.UnpackException,
    zstandard.ZstdError,
    zoneinfo.ZoneInfoNotFoundError,
)
