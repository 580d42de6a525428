"""Cache keys: validation, the Redis key layout, and stable memoize keys.

A memoize key must be the same in every process and after restarts, and two different calls
must not share one. ``str()``/``repr()`` collide (``f("a b")`` vs ``f("a", "b")``) and
``hash()`` is salted per process, so arguments are encoded canonically, with a type tag
before every value, and hashed with BLAKE2b.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import inspect
import struct
import uuid
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

__all__ = [
    "MAX_ARGUMENT_DEPTH",
    "MAX_TAG_LENGTH",
    "MEMO_PREFIX",
    "ArgumentKeyer",
    "check_key",
    "check_keys",
    "check_tags",
    "encode_argument",
]

#: Longest tag accepted, in characters.
MAX_TAG_LENGTH = 256

#: Memoize keys start with this segment, then the function's module and qualified name.
MEMO_PREFIX = "memo"


def _check_text(text: str, name: str) -> None:
    # Redis (redis-py) encodes keys and tags as UTF-8; a lone surrogate (which json.loads
    # makes from "\ud800") would fail there as a Redis error and count against the circuit
    # breaker. ASCII, by far the common case, is checked at C speed and cannot fail.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{name} is not valid UTF-8 text (it holds a lone surrogate such as '\\ud800')"
            ) from None


def check_key(key: object, max_length: int, name: str = "key") -> str:
    """Return ``key`` if it is a valid cache key, else raise naming ``name``.

    A key is a non-empty ``str`` of at most ``max_length`` characters that encodes as UTF-8
    (no lone surrogates). An instance of a ``str`` subclass is replaced by its plain ``str``
    value (``str.__str__(key)``: a ``(str, Enum)`` member is its value, whatever its
    ``__str__`` says).

    Since: 0.1.0
    """
    if type(key) is not str:
        if not isinstance(key, str):
            raise TypeError(f"{name} must be a str, not {type(key).__name__}")
        # A str subclass could override __eq__/__hash__ (and collide in L1) or __str__ (a
        # (str, Enum) member says "Color.RED"): keep its base value, as Redis stores it.
        key = str.__str__(key)
    if not key:
        raise ValueError(f"{name} must not be empty")
    if len(key) > max_length:
        raise ValueError(f"{name} is {len(key)} characters long; max_key_length is {max_length}")
    _check_text(key, name)
    return key


def check_keys(keys: object, max_length: int, name: str = "keys") -> list[str]:
    """Validate an iterable of keys (not a bare ``str``); return them as a list.

    Since: 0.1.0
    """
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
        raise TypeError(f"{name} must be an iterable of str keys, not {type(keys).__name__}")
    return [check_key(k, max_length, f"{name}[{i}]") for i, k in enumerate(keys)]


def check_tags(tags: object, name: str = "tags") -> list[str]:
    """Validate tags: an iterable (not a bare ``str``) of non-empty ``str`` that encode as
    UTF-8; deduplicated. Instances of ``str`` subclasses become their plain ``str`` value.

    Since: 0.1.0
    """
    if tags == ():  # the default of every call that takes tags
        return []
    if isinstance(tags, (str, bytes)) or not isinstance(tags, Iterable):
        raise TypeError(
            f"{name} must be an iterable of str (e.g. a tuple), not {type(tags).__name__}"
        )
    result: list[str] = []
    for tag in tags:
        if not isinstance(tag, str):
            raise TypeError(f"{name} must hold str tags, not {type(tag).__name__}")
        if type(tag) is not str:
            tag = str.__str__(tag)  # as in check_key: the base value, not an override's
        if not tag or len(tag) > MAX_TAG_LENGTH:
            raise ValueError(f"{name}: each tag must be 1-{MAX_TAG_LENGTH} characters")
        _check_text(tag, name)
        if tag not in result:
            result.append(tag)
    return result


# One tag byte per type. Never renumber: keys persist in Redis across releases.
_T_NONE, _T_TRUE, _T_FALSE, _T_INT, _T_FLOAT, _T_STR, _T_BYTES = b"NTFifsb"
_T_TUPLE, _T_LIST, _T_DICT, _T_SET, _T_FROZENSET = b"tlDSZ"
_T_DECIMAL, _T_DATETIME, _T_DATE, _T_TIME, _T_TIMEDELTA, _T_UUID, _T_ENUM, _T_CUSTOM = b"dWYHRUEC"
_T_TYPE = ord("K")

_pack_len = struct.Struct("!I").pack


def _frame(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _pack_len(len(payload)) + payload


#: Deepest nesting of containers (and ``__tiercache_key__`` results) in one argument.
MAX_ARGUMENT_DEPTH = 100


def encode_argument(value: object, path: str = "argument") -> bytes:
    """Encode ``value`` canonically; raise `TypeError` naming ``path`` if unsupported.

    Supported: None, bool, int, float, str, bytes, tuple, list, dict, set, frozenset, Decimal,
    datetime/date/time/timedelta, UUID, Enum members, classes (by qualified name), and any
    object with a ``__tiercache_key__()`` method returning a supported value. Instances of
    subclasses of the value types encode as their base value (overrides of ``__str__``,
    ``__repr__``, ``encode`` and the like are not consulted); Enum members keep their class
    in the encoding. Containers nested deeper than `MAX_ARGUMENT_DEPTH` (a self-referencing
    list, say) are a `TypeError` too.

    Since: 0.1.0
    """
    return _encode(value, path, 0)


def _encode(value: object, path: str, depth: int) -> bytes:
    # Order matters: bool before int, datetime before date, Enum before its mixin type.
    # Subclass instances go through the base type's own methods (int.__repr__, str.encode,
    # ...): an override must not change, or make process-dependent, the key.
    if value is None:
        return bytes((_T_NONE,))
    if value is True:
        return bytes((_T_TRUE,))
    if value is False:
        return bytes((_T_FALSE,))
    if isinstance(value, type):
        # Classes (e.g. ``cls`` of a classmethod) are keyed by their qualified name.
        return _frame(_T_TYPE, f"{value.__module__}.{value.__qualname__}".encode())
    if depth > MAX_ARGUMENT_DEPTH:
        raise TypeError(
            f"cannot build a cache key from {path}: nested deeper than {MAX_ARGUMENT_DEPTH} "
            "levels (or it contains itself)"
        )
    depth += 1
    custom = getattr(type(value), "__tiercache_key__", None)
    if custom is not None:
        qual = f"{type(value).__module__}.{type(value).__qualname__}".encode()
        return _frame(_T_CUSTOM, _frame(_T_STR, qual) + _encode(custom(value), path, depth))
    if isinstance(value, enum.Enum):
        qual = f"{type(value).__module__}.{type(value).__qualname__}".encode()
        return _frame(_T_ENUM, _frame(_T_STR, qual) + _encode(value.value, path, depth))
    if isinstance(value, int):
        return _frame(_T_INT, int.__repr__(value).encode())
    if isinstance(value, float):
        return _frame(_T_FLOAT, float.hex(value).encode())
    if isinstance(value, str):
        return _frame(_T_STR, str.encode(value, "utf-8", "surrogatepass"))
    if isinstance(value, (bytes, bytearray, memoryview)):
        # bytes(x) would call a subclass's __bytes__; the buffer is the base value.
        return _frame(_T_BYTES, value if type(value) is bytes else bytes(memoryview(value)))
    if isinstance(value, tuple):
        return _frame(_T_TUPLE, _join(value, path, depth))
    if isinstance(value, list):
        return _frame(_T_LIST, _join(value, path, depth))
    if isinstance(value, dict):
        items = sorted(
            _encode(k, f"{path} key", depth) + _encode(v, f"{path}[{k!r}]", depth)
            for k, v in value.items()
        )
        return _frame(_T_DICT, b"".join(items))
    if isinstance(value, (set, frozenset)):
        tag = _T_FROZENSET if isinstance(value, frozenset) else _T_SET
        return _frame(tag, b"".join(sorted(_encode(v, f"{path} item", depth) for v in value)))
    if isinstance(value, Decimal):
        return _frame(_T_DECIMAL, Decimal.__str__(value).encode())
    if isinstance(value, dt.datetime):
        raw = dt.datetime.isoformat(value).encode() + _tzname(value.tzinfo)
        return _frame(_T_DATETIME, raw)
    if isinstance(value, dt.date):
        return _frame(_T_DATE, dt.date.isoformat(value).encode())
    if isinstance(value, dt.time):
        return _frame(_T_TIME, dt.time.isoformat(value).encode() + _tzname(value.tzinfo))
    if isinstance(value, dt.timedelta):
        raw = f"{value.days}:{value.seconds}:{value.microseconds}"
        return _frame(_T_TIMEDELTA, raw.encode())
    if isinstance(value, uuid.UUID):
        return _frame(_T_UUID, value.bytes)
    raise TypeError(
        f"cannot build a cache key from {path} of type {type(value).__qualname__}: use "
        "str/int/float/bool/None/bytes, tuples, lists, dicts, sets, Decimal, datetime types, "
        "UUID or Enum, or define __tiercache_key__() on the type"
    )


def _join(values: Iterable[object], path: str, depth: int) -> bytes:
    return b"".join(_encode(v, f"{path}[{i}]", depth) for i, v in enumerate(values))


def _tzname(tz: dt.tzinfo | None) -> bytes:
    # isoformat() keeps the offset; a named zone additionally distinguishes DST rules.
    key = getattr(tz, "key", None)
    return b"@" + key.encode() if isinstance(key, str) else b""


class ArgumentKeyer:
    """Turns the arguments of calls to one function into stable cache keys.

    Since: 0.1.0
    """

    __slots__ = (
        "_defaults",
        "_ignore",
        "_name_frames",
        "_positional",
        "_prefix",
        "_required",
        "_signature",
    )

    def __init__(
        self, func: Callable[..., Any], ignore: Iterable[str] = (), name: str | None = None
    ) -> None:
        self._signature = inspect.signature(func)
        ignored = frozenset(ignore)
        unknown = ignored - self._signature.parameters.keys()
        if unknown:
            raise ValueError(f"ignore names parameters {sorted(unknown)} that {func!r} lacks")
        self._ignore = ignored
        if name is None:
            name = f"{func.__module__}.{func.__qualname__}"
            if "<lambda>" in name or "<locals>" in name:
                # Closures and lambdas share a qualified name but not their captured state:
                # two closures from one factory must not answer for each other. Without an
                # explicit name= their keys are private to this function object (and process).
                name += f"#{id(func):x}"
        self._prefix = f"{MEMO_PREFIX}:{name}:"
        params = self._signature.parameters
        self._name_frames = {param: _frame(_T_STR, param.encode()) for param in params}
        # A call passing every parameter positionally needs no Signature.bind (which costs
        # more than the rest of the key): the names are the parameters, in order.
        simple = all(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params.values()
        )
        self._positional: tuple[str, ...] | None = tuple(params) if simple else None
        # Defaults of the trailing parameters (Python puts them last), for the same shortcut.
        self._defaults = tuple(p.default for p in params.values() if p.default is not p.empty)
        self._required = len(params) - len(self._defaults)

    @property
    def prefix(self) -> str:
        """The part every key of this function starts with."""
        return self._prefix

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The key for one call; `TypeError` if the arguments do not fit or encode."""
        positional = self._positional
        if positional is not None and not kwargs and self._required <= len(args) <= len(positional):
            values = args + self._defaults[len(args) - self._required :]
            arguments: Iterable[tuple[str, Any]] = zip(positional, values, strict=True)
        else:
            bound = self._signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments.items()
        digest = hashlib.blake2b(digest_size=16)
        frames = self._name_frames
        for name, value in arguments:
            if name in self._ignore:
                continue
            digest.update(frames[name])
            digest.update(_encode(value, f"argument {name!r}", 0))
        return self._prefix + digest.hexdigest()
