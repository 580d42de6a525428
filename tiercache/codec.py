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
    "MAX_BIGINT_BYTES",
    "MAX_DEPTH",
    "MAX_EXT_DEPTH",
    "Compressor",
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
_EXT_BIGINT = 10
#: Deepest nesting of extension values (tuples in sets in tuples..., and datetimes, dates,
#: times, timedeltas inside them) that `MsgpackSerializer` writes and reads. Each level is
#: decoded by a nested ``unpackb`` call, so the limit bounds that recursion.
MAX_EXT_DEPTH = 64
#: Deepest nesting of lists and dicts in one msgpack document: msgpack's own limit, the same
#: in its packer (``ValueError``) and its unpacker (``StackError``). The containers inside
#: extension values (a tuple's items and below) share one budget of this many levels, so
#: encoding never recurses deeper than twice this in C.
MAX_DEPTH = 1024
#: Largest integer outside the 64-bit msgpack range, in bytes of its two's-complement form
#: (8,192 bits, about 2,466 decimal digits, under Python's default 4,300-digit str limit).
MAX_BIGINT_BYTES = 1024
_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1
# Exact types packed as an extension holding their items.
_ITEMS_EXT: dict[type, int] = {tuple: _EXT_TUPLE, set: _EXT_SET, frozenset: _EXT_FROZENSET}
# What msgpack's packer raises past MAX_DEPTH lists/dicts.
_PACKER_DEPTH_ERROR = "recursion limit exceeded"


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


def _nesting(items: list[Any], budget: int) -> int:
    """How deep lists and dicts nest below ``items`` (0: none); stops counting past
    ``budget``. Extension values below are not entered: they count their own levels."""
    for item in items:
        if isinstance(item, (list, dict)):
            break
    else:
        return 0  # the common case, a tuple or set of scalars: no allocation
    deepest = 0
    stack: list[tuple[Any, int]] = [(item, 1) for item in items if isinstance(item, (list, dict))]
    while stack:
        node, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if deepest > budget:
                break
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (list, dict)))
    return deepest


def _signed_size(number: int) -> int:
    """Bytes of the shortest two's-complement form of ``number``, sign bit included."""
    return ((number if number >= 0 else ~number).bit_length() + 8) // 8


def _bigint_from(data: bytes) -> int:
    """Decode an integer written by `MsgpackSerializer._bigint`; ValueError unless the bytes
    are exactly what it writes (the fewest bytes, outside the 64-bit range)."""
    if not data or len(data) > MAX_BIGINT_BYTES:
        raise ValueError(f"big integer payload of {len(data)} bytes")
    number = int.from_bytes(data, "big", signed=True)
    if _INT64_MIN <= number <= _UINT64_MAX or len(data) != _signed_size(number):
        raise ValueError("big integer payload is not in canonical form")
    return number


@runtime_checkable
class Compressor(Protocol):
    """Compresses serialized values above ``compress_threshold``. Implement it to use another
    algorithm than zstd (both sides of a namespace must use the same one).

    ``decompress`` must never return more than ``max_size`` bytes (raise instead: the bytes
    come from Redis and may be a decompression bomb); anything it raises makes the entry a
    miss.

    Since: 0.2.0
    """

    def compress(self, data: bytes) -> bytes:
        """Compress ``data``."""
        ...

    def decompress(self, data: bytes, max_size: int) -> bytes:
        """Decompress ``data`` into at most ``max_size`` bytes, or raise."""
        ...


class MsgpackSerializer:
    """The default serializer: msgpack plus extension types for datetime (time zone kept),
    date, time, timedelta, Decimal, UUID, set, frozenset, tuple and integers outside the
    64-bit range; ``bytes`` is native.

    Instances of subclasses of ``str``/``int``/``float``/``bytes`` (a ``(str, Enum)`` member,
    an ``IntEnum``/``IntFlag`` member) are stored as their base value, taken without calling
    methods the subclass may override: ``str.__str__(x)``, not ``str(x)``. Subclasses of
    ``list``/``dict`` are stored as a plain list/dict. Values nested deeper than
    `MAX_DEPTH` lists/dicts or `MAX_EXT_DEPTH` extension values are refused by `dumps`,
    exactly as `loads` would refuse them.
    Thread-safe: each thread gets its own `msgpack.Packer`.

    Since: 0.1.0
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def _packer(self) -> msgpack.Packer:
        packer: msgpack.Packer | None = getattr(self._local, "packer", None)
        if packer is None:
            # strict_types: tuples and subclasses reach _default instead of silently
            # becoming lists/base types, so they round-trip exactly; values of exact
            # builtin types never pay for the subclass conversion.
            packer = msgpack.Packer(default=self._default, use_bin_type=True, strict_types=True)
            self._local.packer = packer
        return packer

    def dumps(self, value: Any) -> bytes:
        """Encode ``value``; `SerializationError` names an unsupported type or the nesting
        limit a value exceeds."""
        try:
            data: bytes = self._packer().pack(value)
        except SerializationError:
            self._reset_encoder()
            raise
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            self._reset_encoder()
            if isinstance(exc, ValueError) and _PACKER_DEPTH_ERROR in str(exc):
                raise SerializationError(
                    f"cannot serialize value: lists/dicts nested deeper than {MAX_DEPTH} levels"
                ) from exc
            raise SerializationError(f"cannot serialize value: {exc}") from exc
        return data

    def _reset_encoder(self) -> None:
        # The packer's buffer is reset on error, but be safe: drop it. An error raised inside
        # nested extension values leaves their depth counters behind: start from zero.
        self._local.packer = None
        self._local.enc = None

    def loads(self, data: bytes) -> Any:
        """Decode bytes from `dumps`; any error means the bytes are not ours."""
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, ext_hook=self._ext_hook, use_list=True
        )

    def _default(self, obj: Any) -> Any:
        kind = type(obj)
        # The common extension types by exact type first: one dict lookup, no isinstance chain.
        code = _ITEMS_EXT.get(kind)
        if code is not None:
            return msgpack.ExtType(code, self._packer_for_ext(list(obj), items=True))
        if kind is int:
            return self._bigint(obj)  # an exact int reaches here only outside 64 bits
        # Subclasses of the native scalars: the unbound base-class methods return an
        # instance of exactly the base type and ignore the subclass's overrides (a
        # `(str, Enum)` member's __str__ gives "Color.RED", str.__str__ gives its value).
        if isinstance(obj, str):
            return str.__str__(obj)
        if isinstance(obj, int):
            # bool cannot be subclassed and packs natively: this is an int subclass.
            number = int.__int__(obj)
            if _INT64_MIN <= number <= _UINT64_MAX:
                return number
            return self._bigint(number)
        if isinstance(obj, float):
            return float.__float__(obj)
        if isinstance(obj, bytes):
            # bytes.__bytes__ only exists from Python 3.11; a full slice is an exact copy.
            return bytes.__getitem__(obj, slice(None))
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
            return msgpack.ExtType(_EXT_FROZENSET, pack(list(obj), items=True))
        if isinstance(obj, set):
            return msgpack.ExtType(_EXT_SET, pack(list(obj), items=True))
        if isinstance(obj, tuple):
            return msgpack.ExtType(_EXT_TUPLE, pack(list(obj), items=True))
        if isinstance(obj, list):
            return list(obj)
        if isinstance(obj, dict):
            return dict(obj)
        raise SerializationError(
            f"cannot serialize a value of type {type(obj).__module__}.{type(obj).__qualname__}; "
            "store it as builtin types or pass serializer= a Serializer that supports it"
        )

    @staticmethod
    def _bigint(number: int) -> msgpack.ExtType:
        # Two's complement, big-endian, the fewest bytes that hold the sign: linear to encode
        # and decode (a decimal string is quadratic to parse).
        size = _signed_size(number)
        if size > MAX_BIGINT_BYTES:
            raise SerializationError(
                f"cannot serialize an int of {size} bytes: integers are "
                f"limited to {MAX_BIGINT_BYTES} bytes ({MAX_BIGINT_BYTES * 8} bits)"
            )
        return msgpack.ExtType(_EXT_BIGINT, number.to_bytes(size, "big", signed=True))

    def _packer_for_ext(self, obj: list[Any], *, items: bool = False) -> bytes:
        # A nested packer: the thread's main packer is in the middle of a pack() call. Count
        # the levels the decoder will count (one nested unpackb per extension value) and,
        # for containers' items, the lists/dicts below, which C recursion packs: unbounded,
        # 20 tuples each holding 1,000-deep lists overflow the C stack.
        state: list[int] | None = getattr(self._local, "enc", None)
        if state is None:
            state = self._local.enc = [0, 0]
        depth, nest = state
        if depth >= MAX_EXT_DEPTH:
            raise SerializationError(
                f"cannot serialize value: tuples/sets/frozensets and other extension values "
                f"nested deeper than {MAX_EXT_DEPTH} levels"
            )
        below = nest + 1
        if items:
            below += _nesting(obj, MAX_DEPTH - below)
            if below > MAX_DEPTH:
                raise SerializationError(
                    f"cannot serialize value: containers inside tuples/sets/frozensets nested "
                    f"deeper than {MAX_DEPTH} levels"
                )
        state[0] = depth + 1
        state[1] = below
        try:
            data: bytes = msgpack.packb(
                obj, default=self._default, use_bin_type=True, strict_types=True
            )
        finally:
            state[0] = depth
            state[1] = nest
        return data

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == _EXT_DECIMAL:
            return Decimal(data.decode())
        if code == _EXT_UUID:
            return uuid.UUID(bytes=data)
        if code == _EXT_BIGINT:
            return _bigint_from(data)
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
    """The default `Compressor`: zstd with a hard cap on decompressed size.

    python-zstandard ignores ``max_output_size`` when a frame declares its content size
    (zstandard 0.25 expanded 8 KB to 256 MiB past a 1 MiB cap), so the declared size is
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


#: What a decoder may raise on foreign bytes (msgpack: ValueError subclasses, StackError for
#: deep nesting, UnpackException; zstd: ZstdError), besides our own errors.
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
