"""Codec: the msgpack serializer's extension types and the size-capped zstd compressor."""

from __future__ import annotations

import datetime as dt
import enum
import math
import threading
import tracemalloc
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import run_python
from tiercache import MsgpackSerializer, SerializationError, Serializer
from tiercache.codec import (
    DECODE_ERRORS,
    MAX_BIGINT_BYTES,
    MAX_DEPTH,
    MAX_EXT_DEPTH,
    ZstdCompressor,
)
from tiercache.errors import CorruptEntryError

MIB = 1 << 20


def same(a: Any, b: Any) -> bool:
    """Deep equality that also checks types, time zones, fold, float signs, Decimal digits."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, (dt.datetime, dt.time)):
        return a == b and a.fold == b.fold and same_tz(a.tzinfo, b.tzinfo)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    return bool(a == b)


def same_tz(a: dt.tzinfo | None, b: dt.tzinfo | None) -> bool:
    if isinstance(a, ZoneInfo) or isinstance(b, ZoneInfo):
        return isinstance(a, ZoneInfo) and isinstance(b, ZoneInfo) and a.key == b.key
    return a == b


NY = ZoneInfo("America/New_York")
PARIS = ZoneInfo("Europe/Paris")
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
WEST = dt.timezone(dt.timedelta(hours=-3, minutes=-15))

ROUND_TRIP_VALUES = {
    "none": None,
    "bools": [True, False],
    "int_extremes": [-(2**63), 2**64 - 1, 0],
    "floats": [1.5, -0.0, math.inf, -math.inf, 1e-300],
    "str": "héllo \u2603 \U0001f600",
    "bytes": b"\x00\xff binary",
    "empty_bytes": b"",
    "naive_datetime": dt.datetime(2024, 2, 29, 23, 59, 59, 999_999),
    "utc_datetime": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    "fixed_offset_datetime": dt.datetime(2024, 1, 1, 8, 30, 1, 5, tzinfo=IST),
    "negative_offset_datetime": dt.datetime(1999, 12, 31, 23, tzinfo=WEST),
    "zoneinfo_datetime": dt.datetime(2024, 7, 14, 12, tzinfo=PARIS),
    "fold0_datetime": dt.datetime(2021, 11, 7, 1, 30, tzinfo=NY, fold=0),
    "fold1_datetime": dt.datetime(2021, 11, 7, 1, 30, tzinfo=NY, fold=1),
    "naive_fold1_datetime": dt.datetime(2021, 11, 7, 1, 30, fold=1),
    "date": dt.date(1970, 1, 1),
    "naive_time": dt.time(23, 59, 59, 123_456),
    "fixed_offset_time": dt.time(8, 30, tzinfo=IST),
    "zoneinfo_time": dt.time(8, 30, tzinfo=PARIS),
    "fold1_time": dt.time(1, 30, fold=1),
    "timedeltas": [dt.timedelta(0), dt.timedelta(days=-1, microseconds=1), dt.timedelta.max],
    "decimals": [Decimal("1.10"), Decimal("-0"), Decimal("1E+3"), Decimal("Infinity")],
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "set": {1, "a", (2, 3)},
    "empty_set": set(),
    "frozenset": frozenset({1.5, b"x"}),
    "tuple": (1, "a", None),
    "empty_tuple": (),
    "nested_tuples": ((1, (2, (3,))), [4, (5,)]),
    "int_keyed_dict": {1: "a", -2: "b"},
    "tuple_keyed_dict": {(1, "a"): 1, (2, (3, 4)): [5]},
    "frozenset_keyed_dict": {frozenset({1, 2}): "x"},
    "nested": {"users": [{"id": uuid.uuid4(), "at": dt.datetime.now(PARIS), "tags": {"a"}}]},
}


@pytest.fixture
def serializer() -> MsgpackSerializer:
    return MsgpackSerializer()


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES.values(), ids=ROUND_TRIP_VALUES.keys())
def test_supported_values_round_trip_exactly(serializer: MsgpackSerializer, value: Any) -> None:
    """Every supported type comes back with the same type, value, zone and fold."""
    data = serializer.dumps(value)
    assert isinstance(data, bytes)
    assert same(serializer.loads(data), value)


def test_zoneinfo_datetime_keeps_the_zone_not_just_the_offset(
    serializer: MsgpackSerializer,
) -> None:
    """A Paris datetime comes back in Europe/Paris, so adding a summer month moves its offset."""
    winter = dt.datetime(2024, 1, 15, 12, tzinfo=PARIS)
    back = serializer.loads(serializer.dumps(winter))
    assert isinstance(back.tzinfo, ZoneInfo)
    assert back.tzinfo.key == "Europe/Paris"
    assert (back + dt.timedelta(days=180)).utcoffset() == dt.timedelta(hours=2)


def test_fold_selects_the_second_ambiguous_instant(serializer: MsgpackSerializer) -> None:
    """After a round trip, fold=1 still means the later of the two 01:30s (EST, not EDT)."""
    second = dt.datetime(2021, 11, 7, 1, 30, tzinfo=NY, fold=1)
    back = serializer.loads(serializer.dumps(second))
    assert back.fold == 1
    assert back.utcoffset() == dt.timedelta(hours=-5)


def test_native_subclasses_are_stored_as_their_base_type(serializer: MsgpackSerializer) -> None:
    """str/int/dict subclasses and IntEnum members come back as the plain base type."""

    class Name(str):
        pass

    class Level(enum.IntEnum):
        HIGH = 3

    back = serializer.loads(serializer.dumps([Name("x"), Level.HIGH, {"a": 1}]))
    assert back == ["x", 3, {"a": 1}]
    assert [type(v) for v in back] == [str, int, dict]


class Color(str, enum.Enum):
    """The pre-StrEnum idiom: str(Color.RED) is "Color.RED", its value is "red"."""

    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Perm(enum.IntFlag):
    R = 4
    W = 2


class Ratio(float, enum.Enum):
    HALF = 0.5


class Shouty(str):
    def __str__(self) -> str:
        return "SHOUTED"


class Lying(int):
    def __int__(self) -> int:
        return 99

    def __index__(self) -> int:
        return 98


class Floaty(float):
    def __float__(self) -> float:
        return 9.0


class Blob(bytes):
    def __bytes__(self) -> bytes:
        return b"other"


SUBCLASS_CASES = {
    "str-enum": (Color.RED, "red"),
    "str-override": (Shouty("quiet"), "quiet"),
    "int-enum": (Level.HIGH, 3),
    "int-flag": (Perm.R | Perm.W, 6),
    "int-override": (Lying(5), 5),
    "big-int-subclass": (Lying(2**70), 2**70),
    "float-enum": (Ratio.HALF, 0.5),
    "float-override": (Floaty(2.5), 2.5),
    "bytes-override": (Blob(b"ab"), b"ab"),
}


@pytest.mark.parametrize(("value", "base"), SUBCLASS_CASES.values(), ids=SUBCLASS_CASES.keys())
def test_subclass_instances_are_stored_as_their_base_value_not_their_str(
    serializer: MsgpackSerializer, value: Any, base: Any
) -> None:
    """A str/int/float/bytes subclass decodes to its base value, of exactly the base type,
    alone, nested in lists, tuples, sets and dicts, and as a dict key (overrides ignored)."""
    wrapped = [value, [value], (value,), {value}, {"k": value}, {value: 1}]
    expected = [base, [base], (base,), {base}, {"k": base}, {base: 1}]
    back = serializer.loads(serializer.dumps(wrapped))
    assert back == expected
    assert type(back[0]) is type(base)
    assert type(back[1][0]) is type(base)
    assert type(back[2][0]) is type(base)
    assert type(next(iter(back[3]))) is type(base)
    assert type(back[4]["k"]) is type(base)
    assert type(next(iter(back[5]))) is type(base)


def test_bool_stays_bool(serializer: MsgpackSerializer) -> None:
    """bool is an int subclass msgpack packs natively: True comes back True, not 1."""
    back = serializer.loads(serializer.dumps([True, (False,)]))
    assert back == [True, (False,)]
    assert type(back[0]) is bool
    assert type(back[1][0]) is bool


BIG_INTS = [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, -(2**64), 2**200]
BIG_INTS += [-(2**200) + 1, 10**2000, -(10**2000), 2 ** (MAX_BIGINT_BYTES * 8 - 1) - 1]
BIG_INTS += [-(2 ** (MAX_BIGINT_BYTES * 8 - 1))]


@pytest.mark.parametrize("number", BIG_INTS, ids=[str(n)[:24] for n in BIG_INTS])
def test_integers_of_any_sign_and_size_up_to_the_cap_round_trip(
    serializer: MsgpackSerializer, number: int
) -> None:
    """Integers outside 64 bits round-trip (an extension type); those inside stay native."""
    back = serializer.loads(serializer.dumps([number, {number: (number,)}]))
    assert back == [number, {number: (number,)}]
    assert type(back[0]) is int
    if -(2**63) <= number < 2**64:
        assert serializer.dumps(number) == msgpack.packb(number)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x01",
        b"\x00" + (2**64).to_bytes(9, "big"),
        (2**64).to_bytes(9, "big")[:-1],
        b"\x01" + bytes(MAX_BIGINT_BYTES),
    ],
    ids=["empty", "fits-in-64-bits", "leading-zero-byte", "wrong-length", "over-the-cap"],
)
def test_malformed_big_int_payload_is_corrupt_not_a_crash(payload: bytes) -> None:
    """A big-int extension that is empty, non-canonical or too long is a miss."""
    from tiercache.entry import EntryCodec

    codec = EntryCodec(compress_threshold=1 << 20, max_value_bytes=1 << 20)
    blob = codec.encode(None, 0.0)[:-1] + msgpack.packb(msgpack.ExtType(10, payload))
    with pytest.raises(CorruptEntryError, match="big integer"):
        codec.decode(blob)


def _nest(wrap: Any, levels: int, inner: Any = 1) -> Any:
    value = inner
    for _ in range(levels):
        value = wrap(value)
    return value


def _unnest(value: Any) -> tuple[list[type], Any]:
    """The container types from the outside in, and the innermost value (deep values
    cannot be compared with ==, which recurses in Python)."""
    kinds: list[type] = []
    while isinstance(value, (list, tuple, frozenset, dict)):
        kinds.append(type(value))
        (value,) = value.values() if isinstance(value, dict) else value
    return kinds, value


def tuple_of(value: Any) -> tuple[Any, ...]:
    return (value,)


def list_of(value: Any) -> list[Any]:
    return [value]


def dict_of(value: Any) -> dict[str, Any]:
    return {"k": value}


NESTERS = {
    "tuples": (tuple_of, MAX_EXT_DEPTH),
    "frozensets": (lambda v: frozenset({v}), MAX_EXT_DEPTH),
    "dates-in-tuples": (tuple_of, MAX_EXT_DEPTH - 1),
    "lists": (list_of, MAX_DEPTH),
    "dicts": (dict_of, MAX_DEPTH),
}


@pytest.mark.parametrize(("kind", "limit"), [(k, v[1]) for k, v in NESTERS.items()], ids=NESTERS)
def test_nesting_up_to_the_limit_round_trips_and_one_more_is_refused_at_encode(
    serializer: MsgpackSerializer, kind: str, limit: int
) -> None:
    """Depth N (the documented limit) round-trips; N+1 is a SerializationError naming it,
    so nothing set() accepts is unreadable elsewhere."""
    wrap = NESTERS[kind][0]
    inner: Any = dt.date(2024, 1, 1) if kind == "dates-in-tuples" else 1
    deepest = _nest(wrap, limit, inner)
    assert _unnest(serializer.loads(serializer.dumps(deepest))) == _unnest(deepest)
    with pytest.raises(
        SerializationError, match=f"deeper than {MAX_EXT_DEPTH if limit < 100 else MAX_DEPTH}"
    ):
        serializer.dumps(_nest(wrap, limit + 1, inner))


def test_the_decoder_refuses_exactly_what_the_encoder_refuses() -> None:
    """Hand-made bytes one level past each limit are undecodable: the limits agree."""
    too_many_lists = b"\x91" * (MAX_DEPTH + 1) + b"\x01"
    with pytest.raises(DECODE_ERRORS):
        MsgpackSerializer().loads(too_many_lists)
    assert _unnest(MsgpackSerializer().loads(too_many_lists[1:])) == ([list] * MAX_DEPTH, 1)
    data = msgpack.packb(1)
    for _ in range(MAX_EXT_DEPTH + 1):
        data = msgpack.packb(msgpack.ExtType(9, b"\x91" + data))
    with pytest.raises(ValueError, match="nested deeper than"):
        MsgpackSerializer().loads(data)


_DEEP_LISTS_IN_TUPLES = """
from tiercache import MsgpackSerializer, SerializationError
value = 1
for _ in range(64):
    for _ in range(1000):
        value = [value]
    value = (value,)
try:
    MsgpackSerializer().dumps(value)
except SerializationError as exc:
    print("refused:", exc)
else:
    print("encoded")
"""


def test_deep_lists_inside_many_tuples_are_refused_not_a_crash() -> None:
    """64 tuples each wrapping 1,000-deep lists: a SerializationError, not a C stack overflow
    (regression: the nested packers recursed 64,000 levels in C and killed the process)."""
    proc = run_python(_DEEP_LISTS_IN_TUPLES)
    assert proc.returncode == 0, f"encoder died with {proc.returncode}: {proc.stderr[-500:]}"
    assert proc.stdout.startswith("refused:"), proc.stdout
    assert f"deeper than {MAX_DEPTH}" in proc.stdout


class Opaque:
    pass


class Mood(enum.Enum):
    HAPPY = "happy"


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (Opaque(), "Opaque"),
        ((1, Opaque()), "Opaque"),
        ({"k": [Opaque()]}, "Opaque"),
        ({frozenset({1}): {Opaque()}}, "Opaque"),
        (1 + 2j, "complex"),
        (Mood.HAPPY, "Mood"),
        (object(), "builtins.object"),
    ],
)
def test_unsupported_type_raises_serialization_error_naming_it(
    serializer: MsgpackSerializer, value: Any, type_name: str
) -> None:
    """An unsupported value is a SerializationError (also a TypeError) naming its type."""
    with pytest.raises(SerializationError, match=type_name) as info:
        serializer.dumps(value)
    assert isinstance(info.value, TypeError)


def test_int_over_the_big_int_cap_raises_serialization_error_naming_it(
    serializer: MsgpackSerializer,
) -> None:
    """An integer wider than MAX_BIGINT_BYTES is a SerializationError naming the limit."""
    with pytest.raises(SerializationError, match=f"limited to {MAX_BIGINT_BYTES} bytes"):
        serializer.dumps(2 ** (MAX_BIGINT_BYTES * 8))
    with pytest.raises(SerializationError, match="limited to"):
        serializer.dumps([-(2 ** (MAX_BIGINT_BYTES * 8))])


def test_a_failed_dumps_leaves_no_garbage_for_the_next_one(serializer: MsgpackSerializer) -> None:
    """After an error, the thread's packer starts clean: the next value packs as usual."""
    for bad in (Opaque(), 2**9000, (1, Opaque()), _nest(tuple_of, MAX_EXT_DEPTH + 1)):
        with pytest.raises(SerializationError):
            serializer.dumps(["prefix", bad])
        assert serializer.dumps([1, 2]) == msgpack.packb([1, 2])


def test_deeply_nested_tuples_are_a_serialization_error(serializer: MsgpackSerializer) -> None:
    """A value too deep to encode is the documented SerializationError, like deep lists are
    (regression: nested tuples, encoded through extension types, raised RecursionError)."""
    deep_list: Any = 1
    deep_tuple: Any = 1
    for _ in range(2000):
        deep_list = [deep_list]
        deep_tuple = (deep_tuple,)
    with pytest.raises(SerializationError):
        serializer.dumps(deep_list)
    with pytest.raises(SerializationError):
        serializer.dumps(deep_tuple)


def test_unknown_extension_type_is_rejected_on_loads(serializer: MsgpackSerializer) -> None:
    """Bytes with an extension code we never wrote are an error, not a silent ExtType."""
    with pytest.raises(ValueError, match="unknown msgpack extension type 42"):
        serializer.loads(msgpack.packb(msgpack.ExtType(42, b"x")))


def test_msgpack_serializer_satisfies_the_serializer_protocol() -> None:
    """The default serializer is a runtime-checkable Serializer."""
    assert isinstance(MsgpackSerializer(), Serializer)


def test_serializer_is_safe_to_share_between_threads(serializer: MsgpackSerializer) -> None:
    """Threads packing concurrently through one serializer each get their own correct bytes."""
    threads_n = 8
    barrier = threading.Barrier(threads_n, timeout=10)
    results: dict[int, bool] = {}

    def work(n: int) -> None:
        value = {"n": n, "items": [(n, i, dt.date(2024, 1, 1 + i % 28)) for i in range(200)]}
        expected = MsgpackSerializer().dumps(value)
        barrier.wait()
        results[n] = all(serializer.dumps(value) == expected for _ in range(50))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert results == dict.fromkeys(range(threads_n), True)


# -- Hypothesis round trip ------------------------------------------------------------------


def _no_equal_mixups(items: Any) -> bool:
    # {1, True} or {0.0, -0.0} collapse on construction; exclude sets whose members compare
    # equal across types so `same()` can compare sets with plain ==.
    return len({(type(x), repr(x)) for x in items}) == len(items)


_tz = st.one_of(
    st.none(),
    st.timezones(),
    st.builds(
        dt.timezone,
        st.timedeltas(min_value=dt.timedelta(hours=-23), max_value=dt.timedelta(hours=23)),
    ),
)
_hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.datetimes(timezones=_tz),
    st.dates(),
    st.times(timezones=_tz),
    st.timedeltas(),
    st.decimals(allow_nan=False),
    st.uuids(),
)
_hashables = st.recursive(
    _hashable_scalars,
    lambda inner: st.one_of(
        st.tuples(inner, inner), st.frozensets(inner, max_size=4).filter(_no_equal_mixups)
    ),
    max_leaves=8,
)
_values = st.recursive(
    _hashables,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-100, 100)), inner, max_size=4),
        st.dictionaries(st.tuples(st.integers(0, 9), st.text(max_size=3)), inner, max_size=3),
        st.sets(_hashables, max_size=4).filter(_no_equal_mixups),
    ),
    max_leaves=20,
)


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(_values)
def test_any_supported_value_round_trips(value: Any) -> None:
    """Property: dumps then loads gives back an equal value of the same types."""
    serializer = MsgpackSerializer()
    assert same(serializer.loads(serializer.dumps(value)), value)


# -- ZstdCompressor ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb_frames() -> dict[str, bytes]:
    """64 MiB of zeros compressed with and without a declared content size."""
    zeros = bytes(64 * MIB)
    return {
        "sized": zstandard.ZstdCompressor(write_content_size=True).compress(zeros),
        "unsized": zstandard.ZstdCompressor(write_content_size=False).compress(zeros),
    }


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def _peak_while(fn: Any) -> int:
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
    return peak - base


def test_compress_round_trips_and_declares_content_size() -> None:
    """A frame we write records its size and decompresses back to the input."""
    comp = ZstdCompressor()
    data = b"tiercache " * 1000
    frame = comp.compress(data)
    assert len(frame) < len(data)
    assert zstandard.frame_content_size(frame) == len(data)
    assert comp.decompress(frame, max_size=len(data)) == data


def test_output_of_exactly_the_cap_is_accepted() -> None:
    """The cap is inclusive."""
    data = b"x" * 4096
    comp = ZstdCompressor()
    assert comp.decompress(comp.compress(data), max_size=4096) == data
    with pytest.raises(CorruptEntryError):
        comp.decompress(comp.compress(data + b"x"), max_size=4096)


def test_declared_size_over_cap_is_refused_without_allocating(
    bomb_frames: dict[str, bytes], traced: None
) -> None:
    """A 2 KB frame declaring 64 MiB, with a 1 MiB cap: CorruptEntryError, no big buffer."""
    frame = bomb_frames["sized"]
    assert len(frame) < 8 * 1024
    assert zstandard.frame_content_size(frame) == 64 * MIB

    def attempt() -> None:
        with pytest.raises(CorruptEntryError, match="declares 67108864 bytes"):
            ZstdCompressor().decompress(frame, max_size=MIB)

    assert _peak_while(attempt) < 2 * MIB


def test_undeclared_size_over_cap_is_refused_with_bounded_memory(
    bomb_frames: dict[str, bytes], traced: None
) -> None:
    """A 2 KB frame with no content size that would expand to 64 MiB: refused, no big buffer."""
    frame = bomb_frames["unsized"]
    assert zstandard.frame_content_size(frame) == -1
    assert len(frame) < 8 * 1024

    def attempt() -> None:
        with pytest.raises(CorruptEntryError):
            ZstdCompressor().decompress(frame, max_size=MIB)

    assert _peak_while(attempt) < 8 * MIB


def test_frame_without_declared_size_is_refused_even_under_the_cap() -> None:
    """tiercache always declares the size, so a frame without one is foreign: corrupt."""
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"y" * 100)
    with pytest.raises(CorruptEntryError, match="does not declare its content size"):
        ZstdCompressor().decompress(frame, max_size=MIB)


def test_truncated_sized_frame_is_corrupt() -> None:
    """Every strict prefix of a frame we wrote is a CorruptEntryError."""
    comp = ZstdCompressor()
    frame = comp.compress(bytes(range(256)) * 64)
    for cut in range(len(frame)):
        with pytest.raises(CorruptEntryError):
            comp.decompress(frame[:cut], max_size=MIB)


_UNSIZED = zstandard.ZstdCompressor(write_content_size=False).compress(b"hello world" * 1000)


@pytest.mark.parametrize(
    "data",
    [_UNSIZED[:-1], _UNSIZED[: len(_UNSIZED) // 2], b"\x28\xb5\x2f\xfd" + bytes(20)],
    ids=["cut-last-byte", "cut-half", "magic-then-zeros"],
)
def test_incomplete_unsized_frame_is_corrupt(data: bytes) -> None:
    """A frame without a declared size that ends early is an error, not empty output
    (regression: the bounded stream reader returned b"" for these)."""
    assert zstandard.frame_content_size(data) == -1
    with pytest.raises(CorruptEntryError):
        ZstdCompressor().decompress(data, max_size=MIB)


@pytest.mark.parametrize(
    "data",
    [b"", b"not zstd at all", b"\x28\xb5\x2f\xfd", b"\x28\xb5\x2f\xfd\xff" + bytes(20)],
    ids=["empty", "text", "magic-only", "magic-then-reserved-bit"],
)
def test_foreign_bytes_are_corrupt(data: bytes) -> None:
    """Bytes that are not a zstd frame raise CorruptEntryError, never ZstdError."""
    with pytest.raises(CorruptEntryError):
        ZstdCompressor().decompress(data, max_size=MIB)
