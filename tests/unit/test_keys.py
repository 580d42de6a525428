"""Keys: validation of cache keys and the canonical, type-tagged memoize argument encoding."""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
import uuid
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import fakeredis
import pytest

from tests.support import run_python
from tiercache import TierCache
from tiercache.keys import (
    MAX_ARGUMENT_DEPTH,
    MEMO_PREFIX,
    ArgumentKeyer,
    check_key,
    check_keys,
    check_tags,
    encode_argument,
)

# -- check_key ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", [b"user:1", 42, None, ("a",), ["a"]])
def test_check_key_rejects_non_str_with_type_error_naming_key(key: object) -> None:
    """A key that is not a str is a TypeError whose message names the argument."""
    with pytest.raises(TypeError, match=r"^key must be a str"):
        check_key(key, 1024)


def test_check_key_uses_the_given_argument_name_in_messages() -> None:
    """The ``name`` parameter is the one the error message names."""
    with pytest.raises(TypeError, match=r"^mapping keys\[3\] must be a str"):
        check_key(3, 1024, "mapping keys[3]")


def test_check_key_rejects_empty_key_with_value_error() -> None:
    """The empty string is not a valid key."""
    with pytest.raises(ValueError, match=r"^key must not be empty"):
        check_key("", 1024)


def test_check_key_accepts_max_length_and_rejects_one_more() -> None:
    """A key of exactly ``max_length`` characters passes; one character more is a ValueError."""
    assert check_key("k" * 16, 16) == "k" * 16
    with pytest.raises(ValueError, match=r"key is 17 characters long; max_key_length is 16"):
        check_key("k" * 17, 16)


def test_check_key_counts_characters_not_bytes() -> None:
    """The length limit is in characters, so multi-byte characters are not penalised."""
    assert check_key("é" * 16, 16) == "é" * 16


def test_check_key_normalises_str_subclass_to_plain_str() -> None:
    """A str subclass (which may override __eq__/__hash__) comes back as a plain str."""

    class Sneaky(str):
        def __hash__(self) -> int:
            return 0

    result = check_key(Sneaky("user:1"), 1024)
    assert type(result) is str
    assert result == "user:1"


def test_check_key_validates_str_subclass_content() -> None:
    """An empty str subclass is still rejected after normalisation."""

    class Name(str):
        pass

    with pytest.raises(ValueError, match="must not be empty"):
        check_key(Name(""), 1024)


@pytest.mark.parametrize("keys", ["abc", b"abc", 5, None])
def test_check_keys_rejects_a_bare_string_or_non_iterable(keys: object) -> None:
    """``check_keys`` wants an iterable of keys, not a str/bytes (a classic footgun)."""
    with pytest.raises(TypeError, match=r"^keys must be an iterable of str keys"):
        check_keys(keys, 1024)


def test_check_keys_names_the_index_of_a_bad_key() -> None:
    """A bad element is reported with its position."""
    with pytest.raises(TypeError, match=r"^keys\[1\] must be a str, not int"):
        check_keys(["a", 1], 1024)
    assert check_keys(iter(["a", "b"]), 1024) == ["a", "b"]


class _Color(str, enum.Enum):
    RED = "red"


def test_check_key_keeps_the_base_value_of_a_str_enum_member() -> None:
    """A ``(str, Enum)`` member (whose ``__str__`` says ``_Color.RED``) is keyed by its value."""
    assert check_key(_Color.RED, 1024) == "red"
    assert check_keys([_Color.RED], 1024) == ["red"]


def test_check_tags_keeps_the_plain_base_value_of_str_subclass_tags() -> None:
    """Tags that are ``str`` subclass instances become their plain ``str`` value."""
    tags = check_tags([_Color.RED, "red"])
    assert tags == ["red"]
    assert type(tags[0]) is str


def test_l1_only_get_after_set_with_a_str_enum_key_finds_the_value() -> None:
    """In L1-only mode, ``get(Color.RED)`` right after ``set(Color.RED, v)`` returns ``v``."""
    with TierCache(None, namespace="keys") as cache:
        cache.set(_Color.RED, 1)
        assert cache.get(_Color.RED) == 1
        assert cache.get("red") == 1


@pytest.mark.parametrize("bad", ["\ud800", "user:\udfff", "é\ud83d"])
def test_keys_and_tags_with_lone_surrogates_are_a_value_error_naming_the_argument(
    bad: str,
) -> None:
    """Text that is not valid UTF-8 (a lone surrogate, as json.loads makes from user input)
    is refused before any I/O, with a ValueError naming the argument."""
    with pytest.raises(ValueError, match=r"^key is not valid UTF-8"):
        check_key(bad, 1024)
    with pytest.raises(ValueError, match=r"^keys\[1\] is not valid UTF-8"):
        check_keys(["ok", bad], 1024)
    with pytest.raises(ValueError, match=r"^tags is not valid UTF-8"):
        check_tags(["ok", bad])


def test_lone_surrogate_key_never_reaches_redis_or_the_breaker(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    """Many requests with a lone-surrogate key raise ValueError and leave Redis usable:
    no L2 error is counted, so the circuit breaker stays closed for every other key."""
    with TierCache(fake_redis, namespace="keys") as cache:
        for _ in range(10):
            with pytest.raises(ValueError, match="not valid UTF-8"):
                cache.get("\ud800")
            with pytest.raises(ValueError, match="not valid UTF-8"):
                cache.set("k", 1, tags=("\ud800",))
        cache.set("k", 2)
        assert fake_redis.exists("keys:k")
        assert cache.get("k") == 2


# -- encode_argument: distinctness --------------------------------------------------------


def _enc(value: object) -> bytes:
    return encode_argument(value)


def test_type_tags_distinguish_int_str_float_bool_none_and_decimal() -> None:
    """1, "1", 1.0, True, Decimal(1) and None all encode differently."""
    values = [1, "1", 1.0, True, Decimal(1), None, b"1", 0, False, "", 0.0, -0.0]
    encodings = [_enc(v) for v in values]
    assert len(set(encodings)) == len(values)


def test_splitting_a_string_into_two_arguments_changes_the_key() -> None:
    """f("a b") and f("a", "b") do not share a key (unlike str()/repr()-based keys)."""

    def f(*args: Any) -> None: ...

    keyer = ArgumentKeyer(f)
    assert keyer(("a b",), {}) != keyer(("a", "b"), {})
    assert keyer(("ab",), {}) != keyer(("a", "b"), {})
    assert keyer(("a,b",), {}) != keyer(("a", "b"), {})


def test_length_prefixes_prevent_concatenation_collisions() -> None:
    """Adjacent strings cannot be re-split: ("ab", "c") differs from ("a", "bc")."""
    assert _enc(("ab", "c")) != _enc(("a", "bc"))
    assert _enc(["", "x"]) != _enc(["x", ""])


def test_tuple_and_list_with_same_items_differ() -> None:
    """A tuple and a list of the same items are different arguments."""
    assert _enc((1, 2)) != _enc([1, 2])


def test_set_and_frozenset_differ() -> None:
    """set and frozenset carry different tags."""
    assert _enc({1, 2}) != _enc(frozenset({1, 2}))


def test_dict_key_order_does_not_matter() -> None:
    """Dicts with the same items in a different insertion order encode the same."""
    a = {"x": 1, "y": [1, 2], 3: None}
    b = {3: None, "y": [1, 2], "x": 1}
    assert list(a) != list(b)
    assert _enc(a) == _enc(b)


def test_dict_keys_keep_their_types() -> None:
    """{1: "v"} and {"1": "v"} differ."""
    assert _enc({1: "v"}) != _enc({"1": "v"})


def test_set_order_does_not_matter() -> None:
    """Sets built in different orders (different internal layout) encode the same."""
    words = [f"word{i}" for i in range(200)]
    small = set(words)
    grown = set(words + [f"extra{i}" for i in range(5000)])  # a bigger table...
    grown -= {f"extra{i}" for i in range(5000)}  # ...same members, other iteration order
    assert small == grown
    assert list(small) != list(grown)
    assert _enc(small) == _enc(grown)
    assert _enc(frozenset(small)) == _enc(frozenset(grown))


def test_nested_structures_keep_inner_types() -> None:
    """Inner types matter: [(1,)] vs [[1]] vs [("1",)] all differ; equal nests are equal."""
    assert _enc([(1,)]) != _enc([[1]])
    assert _enc([(1,)]) != _enc([("1",)])
    assert _enc({"a": [1, {"b": (2.0,)}]}) == _enc({"a": [1, {"b": (2.0,)}]})
    assert _enc({"a": [1, {"b": (2.0,)}]}) != _enc({"a": [1, {"b": (2,)}]})


def test_bytes_like_values_encode_as_bytes_and_differ_from_str() -> None:
    """bytes, bytearray and memoryview of the same data are one key; str is another."""
    assert _enc(b"ab") == _enc(bytearray(b"ab")) == _enc(memoryview(b"ab"))
    assert _enc(b"ab") != _enc("ab")


def test_naive_and_aware_datetimes_differ() -> None:
    """A naive datetime and the same wall time with a time zone are different keys."""
    naive = dt.datetime(2024, 3, 1, 12, 0)
    aware = naive.replace(tzinfo=dt.timezone.utc)
    assert _enc(naive) != _enc(aware)


def test_named_zone_and_fixed_offset_differ_even_at_the_same_offset() -> None:
    """Europe/Paris in winter is +01:00, but the zone name (DST rules) is part of the key."""
    paris = dt.datetime(2024, 1, 15, 12, 0, tzinfo=ZoneInfo("Europe/Paris"))
    fixed = dt.datetime(2024, 1, 15, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert paris.utcoffset() == fixed.utcoffset()
    assert _enc(paris) != _enc(fixed)


def test_datetime_fold_in_a_named_zone_changes_the_key() -> None:
    """The two 01:30 of a DST fall-back night are different instants and different keys."""
    ny = ZoneInfo("America/New_York")
    first = dt.datetime(2021, 11, 7, 1, 30, tzinfo=ny, fold=0)
    second = first.replace(fold=1)
    assert _enc(first) != _enc(second)


def test_date_time_timedelta_and_datetime_are_distinct() -> None:
    """Temporal types carry their own tags."""
    values = [
        dt.datetime(2024, 1, 1),
        dt.date(2024, 1, 1),
        dt.time(0, 0),
        dt.time(0, 0, tzinfo=dt.timezone.utc),
        dt.time(0, 0, tzinfo=ZoneInfo("UTC")),
        dt.timedelta(0),
        dt.timedelta(days=1),
        dt.timedelta(seconds=86400 - 1, microseconds=999_999),
    ]
    assert len({_enc(v) for v in values}) == len(values)


def test_uuid_encodes_by_value() -> None:
    """Equal UUIDs share a key; a UUID and its string form do not."""
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert _enc(u) == _enc(uuid.UUID(str(u)))
    assert _enc(u) != _enc(str(u))


class Color(enum.Enum):
    RED = 1


class Shade(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    LOW = 1


def test_enum_members_are_keyed_by_class_and_value() -> None:
    """An Enum member differs from its value and from a same-valued member of another Enum."""
    assert _enc(Color.RED) == _enc(Color(1))
    assert _enc(Color.RED) != _enc(1)
    assert _enc(Color.RED) != _enc(Shade.RED)


def test_int_enum_member_differs_from_its_int() -> None:
    """An IntEnum member is checked as an Enum before as an int."""
    assert _enc(Level.LOW) != _enc(1)


class UserRef:
    def __init__(self, user_id: int) -> None:
        self.user_id = user_id

    def __tiercache_key__(self) -> object:
        return self.user_id


class OrderRef(UserRef):
    pass


def test_tiercache_key_hook_decides_the_key() -> None:
    """Objects with __tiercache_key__ are keyed by its result (and their type's name)."""
    assert _enc(UserRef(1)) == _enc(UserRef(1))
    assert _enc(UserRef(1)) != _enc(UserRef(2))
    assert _enc(UserRef(1)) != _enc(1)
    assert _enc(UserRef(1)) != _enc(OrderRef(1))


def test_tiercache_key_returning_unsupported_value_is_a_type_error() -> None:
    """The hook's result must itself be encodable."""

    class Bad:
        def __tiercache_key__(self) -> object:
            return object()

    with pytest.raises(TypeError, match="of type object"):
        _enc(Bad())


def test_type_objects_are_keyed_by_their_qualified_name() -> None:
    """Classes (e.g. ``cls`` of a classmethod) encode by module and qualified name: stable,
    and distinct per class."""
    assert _enc(int) == _enc(int)
    assert _enc(int) != _enc(str)
    assert _enc(UserRef) != _enc(int)
    assert _enc(int) != _enc("builtins.int")


@pytest.mark.parametrize(
    ("value", "path"),
    [
        (object(), "argument "),
        ([1, object()], r"argument\[1\] "),
        ((1, [2, {"a": object()}]), r"argument\[1\]\[1\]\['a'\] "),
        ({"a": {object()}}, r"argument\['a'\] item "),
        ({(1, object()): 1}, r"argument key\[1\] "),
        (1 + 2j, "argument "),
    ],
)
def test_unsupported_type_is_a_type_error_naming_the_path(value: object, path: str) -> None:
    """The error names where in the argument the bad value sits, and its type."""
    with pytest.raises(TypeError, match=rf"^cannot build a cache key from {path}of type"):
        _enc(value)


class _Loud(str):
    def __str__(self) -> str:
        return "loud"

    def __repr__(self) -> str:
        return "loud"

    def __hash__(self) -> int:
        return 0

    def encode(self, *args: Any, **kwargs: Any) -> bytes:  # type: ignore[override]
        return b"loud"


class _Big(int):
    def __repr__(self) -> str:
        return "big"

    def __int__(self) -> int:
        return 0


class _Heavy(float):
    def __float__(self) -> float:
        return 0.0


class _Raw(bytes):
    def __bytes__(self) -> bytes:
        return b"raw"


class _Exact(Decimal):
    def __str__(self) -> str:
        return "0"


def test_subclasses_of_value_types_encode_as_their_base_value() -> None:
    """Overridden __str__/__repr__/__hash__/encode/__int__/__float__/__bytes__ do not enter
    the encoding: a subclass instance encodes exactly like its base value."""
    assert _enc(_Loud("a")) == _enc("a")
    assert _enc(_Big(7)) == _enc(7)
    assert _enc(_Heavy(1.5)) == _enc(1.5)
    assert _enc(_Raw(b"x")) == _enc(b"x")
    assert _enc(_Exact("1.10")) == _enc(Decimal("1.10"))


def test_str_enum_members_stay_type_tagged() -> None:
    """A ``(str, Enum)`` member is keyed by its class and value, not as the plain str."""
    assert _enc(_Color.RED) != _enc("red")
    assert _enc(_Color.RED) == _enc(_Color("red"))


def test_self_referencing_argument_is_a_type_error_naming_the_argument() -> None:
    """A list that contains itself is a TypeError naming the path, not a RecursionError."""
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(TypeError, match=r"^cannot build a cache key from argument\[0\]"):
        _enc(looped)

    def f(items: object) -> None: ...

    with pytest.raises(TypeError, match=r"argument 'items'.*nested deeper than 100"):
        ArgumentKeyer(f)((looped,), {})


def test_very_deep_argument_is_a_type_error_and_the_depth_limit_holds() -> None:
    """5,000 nested lists are a TypeError; exactly MAX_ARGUMENT_DEPTH levels still encode."""
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(TypeError, match=r"nested deeper than"):
        _enc(deep)
    ok: Any = 1.5  # a leaf of any scalar type is not a level
    for _ in range(MAX_ARGUMENT_DEPTH):
        ok = [ok]
    assert _enc(ok).startswith(b"l")
    with pytest.raises(TypeError, match=r"nested deeper than"):
        _enc([ok])


def test_encoding_format_is_pinned() -> None:
    """The byte layout (tag, u32 length, payload) is stable: changing it orphans every key."""
    assert _enc(("a", 1)) == b"t\x00\x00\x00\x0cs\x00\x00\x00\x01ai\x00\x00\x00\x011"
    assert _enc(None) == b"N"
    assert _enc(True) == b"T"
    assert _enc(1.5) == b"f\x00\x00\x00\x140x1.8000000000000p+0"


# -- ArgumentKeyer --------------------------------------------------------------------------


def _golden(a: Any, b: Any = 2, *args: Any, c: Any = 3, **kw: Any) -> None: ...


_golden.__module__ = "golden"
_golden.__qualname__ = "f"


def test_keys_start_with_memo_prefix_and_qualified_name() -> None:
    """A key is ``memo:{module}.{qualname}:{32 hex digits}``."""
    keyer = ArgumentKeyer(_golden)
    key = keyer((1,), {})
    assert keyer.prefix == f"{MEMO_PREFIX}:golden.f:"
    assert key.startswith(keyer.prefix)
    digest = key[len(keyer.prefix) :]
    assert len(digest) == 32
    int(digest, 16)


def test_golden_keys_are_pinned() -> None:
    """Hard-coded keys: any change to the encoding or hashing is caught here."""
    keyer = ArgumentKeyer(_golden)
    assert keyer((1,), {}) == "memo:golden.f:6eeaed52f46ac5b8c39315a64102109d"
    assert (
        keyer(("x", [1, 2.5], {"z": None}), {"c": b"\x00", "q": {1, 2}})
        == "memo:golden.f:20214c7140af7e68f4b1e0b9443590c0"
    )


def test_defaults_are_applied_and_keywords_are_order_insensitive() -> None:
    """Positional, keyword and defaulted spellings of one call share a key."""

    def f(a: int, b: int = 2, *, c: int = 3) -> None: ...

    keyer = ArgumentKeyer(f)
    expected = keyer((1,), {})
    assert keyer((1, 2), {}) == expected
    assert keyer((), {"a": 1, "b": 2, "c": 3}) == expected
    assert keyer((), {"c": 3, "b": 2, "a": 1}) == expected
    assert keyer((1,), {"c": 4}) != expected


def test_var_keyword_order_does_not_matter() -> None:
    """**kwargs passed in different orders share a key."""

    def f(**kw: Any) -> None: ...

    keyer = ArgumentKeyer(f)
    assert keyer((), {"x": 1, "y": 2}) == keyer((), {"y": 2, "x": 1})
    assert keyer((), {"x": 1}) != keyer((), {"x": 1, "y": 2})


def test_parameter_names_are_part_of_the_key() -> None:
    """f(a=1) and g(b=1) in the same namespace differ even if qualnames matched."""

    def f(a: int) -> None: ...

    def g(b: int) -> None: ...

    g.__qualname__ = f.__qualname__
    assert ArgumentKeyer(f)((1,), {}) != ArgumentKeyer(g)((1,), {})


def test_ignored_parameters_do_not_affect_the_key() -> None:
    """Parameters named in ``ignore`` are left out of the hash."""

    def f(conn: object, user_id: int) -> None: ...

    keyer = ArgumentKeyer(f, ignore=("conn",))
    assert keyer((object(), 1), {}) == keyer((object(), 1), {})
    assert keyer((object(), 1), {}) != keyer((object(), 2), {})


def test_ignore_of_an_unknown_parameter_is_a_value_error() -> None:
    """A typo in ``ignore`` is caught when the keyer is built."""

    def f(a: int) -> None: ...

    with pytest.raises(ValueError, match=r"ignore names parameters \['b'\]"):
        ArgumentKeyer(f, ignore=("b",))


def test_arguments_that_do_not_bind_are_a_type_error() -> None:
    """Calling with arguments the signature rejects raises TypeError (as the call would)."""

    def f(a: int) -> None: ...

    with pytest.raises(TypeError):
        ArgumentKeyer(f)((1, 2), {})


def test_unencodable_argument_error_names_the_parameter() -> None:
    """The TypeError names the parameter that could not be encoded."""

    def f(user: object) -> None: ...

    with pytest.raises(TypeError, match=r"argument 'user'\[0\] of type object"):
        ArgumentKeyer(f)(([object()],), {})


_SUBPROCESS_CODE = """
import json
from decimal import Decimal
from tiercache.keys import ArgumentKeyer

def f(a, b=2, *args, c=3, **kw):
    pass

f.__module__ = "golden"
f.__qualname__ = "f"
k = ArgumentKeyer(f)
words = [f"w{i}" for i in range(50)]
calls = [
    ((1,), {}),
    ((set(words), frozenset(words)), {}),
    (({w: i for i, w in enumerate(words)},), {"zz": 1, "aa": {"x", "y", "z"}}),
    (("a b", Decimal("1.10"), (1.5, None, True)), {"c": b"\\x00"}),
]
print(json.dumps([k(args, kw) for args, kw in calls]))
"""


def _keys_in_subprocess(hash_seed: str) -> list[str]:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONDONTWRITEBYTECODE="1")
    proc = run_python(_SUBPROCESS_CODE, env=env)
    assert proc.returncode == 0, proc.stderr
    keys: list[str] = json.loads(proc.stdout)
    return keys


def test_keys_are_stable_across_processes_with_different_hash_seeds() -> None:
    """Keys of set/dict arguments do not depend on PYTHONHASHSEED (i.e. on hash())."""
    namespace: dict[str, Any] = {}
    exec(_SUBPROCESS_CODE.replace("print(", "result = ("), namespace)
    here = json.loads(namespace["result"])
    assert here[0] == "memo:golden.f:6eeaed52f46ac5b8c39315a64102109d"
    assert _keys_in_subprocess("0") == here
    assert _keys_in_subprocess("4242") == here
