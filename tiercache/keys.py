"""Cache keys: validation, the Redis key layout, and stable memoize keys.

A memoize key must be the same in every process and after restarts, and two different calls
must not share one. ``str()``/``repr()`` collide (``f("a b")`` vs ``f("a", "b")``) and
``hash()`` is salted per process, so arguments are encoded canonically, with a type tag
before every value, and hashed with BLAKE2b.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import gc
import hashlib
import inspect
import struct
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

__all__ = [
    "KEY_MAP_SIZE",
    "MAX_ARGUMENT_DEPTH",
    "MAX_MAPPED_LENGTH",
    "MAX_TAG_LENGTH",
    "MEMO_PREFIX",
    "ArgumentKeyer",
    "check_key",
    "check_keys",
    "check_tags",
    "encode_argument",
    "mappable",
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
    # The commonest arguments first: an exact str or int has no hook and no subclass.
    if type(value) is str:
        return _frame(_T_STR, value.encode("utf-8", "surrogatepass"))
    if type(value) is int:
        return _frame(_T_INT, int.__repr__(value).encode())
    if value is None:
        return bytes((_T_NONE,))
    if value is True:
        return bytes((_T_TRUE,))
    if value is False:
        return bytes((_T_FALSE,))
    if isinstance(value, type):
        # Classes (e.g. ``cls`` of a classmethod) are keyed by their qualified name.
        return _frame(_T_TYPE, f"{value.__module__}.{value.__qualname__}".encode())
    custom = getattr(type(value), "__tiercache_key__", None)
    if custom is not None:
        qual = f"{type(value).__module__}.{type(value).__qualname__}".encode()
        return _frame(
            _T_CUSTOM, _frame(_T_STR, qual) + _encode(custom(value), path, _deeper(depth, path))
        )
    if isinstance(value, enum.Enum):
        qual = f"{type(value).__module__}.{type(value).__qualname__}".encode()
        return _frame(
            _T_ENUM, _frame(_T_STR, qual) + _encode(value.value, path, _deeper(depth, path))
        )
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
        depth = _deeper(depth, path)
        items = sorted(
            _encode(k, f"{path} key", depth) + _encode(v, f"{path}[{k!r}]", depth)
            for k, v in value.items()
        )
        return _frame(_T_DICT, b"".join(items))
    if isinstance(value, (set, frozenset)):
        tag = _T_FROZENSET if isinstance(value, frozenset) else _T_SET
        depth = _deeper(depth, path)
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
        delta = f"{value.days}:{value.seconds}:{value.microseconds}"
        return _frame(_T_TIMEDELTA, delta.encode())
    if isinstance(value, uuid.UUID):
        return _frame(_T_UUID, value.bytes)
    raise TypeError(
        f"cannot build a cache key from {path} of type {type(value).__qualname__}: use "
        "str/int/float/bool/None/bytes, tuples, lists, dicts, sets, Decimal, datetime types, "
        "UUID or Enum, or define __tiercache_key__() on the type"
    )


def _deeper(depth: int, path: str) -> int:
    # Only values that contain values go deeper: a self-referencing list, or 5,000 nested
    # ones, must be a TypeError naming the argument, not a RecursionError.
    if depth >= MAX_ARGUMENT_DEPTH:
        raise TypeError(
            f"cannot build a cache key from {path}: nested deeper than {MAX_ARGUMENT_DEPTH} "
            "levels (or it contains itself)"
        )
    return depth + 1


def _join(values: Iterable[object], path: str, depth: int) -> bytes:
    depth = _deeper(depth, path)
    return b"".join(_encode(v, f"{path}[{i}]", depth) for i, v in enumerate(values))


def _tzname(tz: dt.tzinfo | None) -> bytes:
    # isoformat() keeps the offset; a named zone additionally distinguishes DST rules.
    key = getattr(tz, "key", None)
    return b"@" + key.encode() if isinstance(key, str) else b""


#: A closure cell that holds nothing yet (its variable is assigned after the decoration).
_EMPTY: Any = object()

# What a closure variable holds, as far as keys go. Plain data is what the key includes.
_OTHER, _PLAIN = 0, 1
# bool is an int and datetime a date; Enum members are checked apart (their value decides).
_PLAIN_SCALARS = (str, int, float, bytes, Decimal, uuid.UUID, dt.date, dt.time, dt.timedelta)


def _is_plain(value: object, depth: int = 0) -> bool:
    """Whether ``value`` is plain data: scalars, Enum members, and tuples, frozensets, sets,
    lists and dicts of plain data (not clients, apps, functions or ``__tiercache_key__``
    objects)."""
    if value is None:
        return True
    if getattr(type(value), "__tiercache_key__", None) is not None:
        return False
    if isinstance(value, enum.Enum):
        return _is_plain(value.value, depth + 1)
    if isinstance(value, _PLAIN_SCALARS):
        return True
    if depth >= MAX_ARGUMENT_DEPTH:
        return False
    if isinstance(value, (tuple, list, set, frozenset)):
        return all(_is_plain(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(_is_plain(k, depth + 1) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


#: Most argument tuples one memoized function remembers the key of (least recently used
#: first out), so a hit skips encoding and hashing. A tuple with a longer str/bytes argument
#: than `MAX_MAPPED_LENGTH` is never remembered (the map would keep it alive).
KEY_MAP_SIZE = 4096
MAX_MAPPED_LENGTH = 256

# Exact types whose equal values (same type, ==) always encode alike, so a map from an
# argument tuple, with each argument's type, to its key never serves another tuple's key.
# Left out: subclasses (may override __eq__/__hash__), Decimal (Decimal("1.0") ==
# Decimal("1.00")), datetimes (equal instants in other zones), containers (may hold those),
# objects with __tiercache_key__ (the key may change while the hash does not), and float
# zero, checked apart (0.0 == -0.0, encoded apart).
_MAPPABLE_TYPES = frozenset({str, int, bool, type(None), float, bytes, type})
_SIZED = (str, bytes)


def mappable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether the key of a call with these arguments may be remembered by the arguments
    and their exact types (see `KEY_MAP_SIZE`).

    Since: 0.2.0
    """
    for value in (*args, *kwargs.values()):
        kind = type(value)
        if kind not in _MAPPABLE_TYPES:
            return False
        if kind is float and value == 0.0:
            return False
        if kind in _SIZED and len(value) > MAX_MAPPED_LENGTH:
            return False
    return True


def _cell_contents(cells: tuple[Any, ...]) -> tuple[Any, ...]:
    contents = []
    for cell in cells:
        try:
            contents.append(cell.cell_contents)
        except ValueError:  # not assigned yet
            contents.append(_EMPTY)
    return tuple(contents)


def _unwrap(func: Callable[..., Any]) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """``func`` without its ``functools.partial`` layers, and the arguments they bind."""
    args: tuple[Any, ...] = ()
    keywords: dict[str, Any] = {}
    while isinstance(func, functools.partial):
        # partial(partial(f, 1), 2) calls f(1, 2): inner arguments come first, outer
        # keywords win. (Python flattens plain partials itself, not subclasses.)
        args = func.args + args
        keywords = {**func.keywords, **keywords}
        func = func.func
    return func, args, keywords


def _base_name(target: Any) -> tuple[str, Any]:
    """The default key name of ``target`` (a function, or a callable instance keyed by its
    type), and the function whose code and closure it runs."""
    qualname = getattr(target, "__qualname__", None)
    if isinstance(qualname, str):
        name, code_owner = f"{target.__module__}.{qualname}", target
    else:
        cls = type(target)
        # The type's __call__ (a function) holds the code and closure an instance runs.
        name, code_owner = f"{cls.__module__}.{cls.__qualname__}", cls.__call__
    code = getattr(code_owner, "__code__", None)
    if ("<lambda>" in name or "<locals>" in name) and code is not None:
        # Two lambdas of one scope (or two nested defs of one name) share a qualified name;
        # the line their code starts on tells them apart, and is the same in every process.
        name += f"@{code.co_firstlineno}"
    return name, code_owner


class ArgumentKeyer:
    """Turns the arguments of calls to one function into stable cache keys.

    Keys are ``memo:{name}:{hash of the arguments}``, where ``name`` is ``name=``, else
    ``{module}.{qualname}``; a lambda or nested function adds ``@{first line of its code}``.
    When the function has closure variables holding plain data (see `encode_argument`; not
    clients, apps or other functions), ``~{hash of them}`` follows the name, so closures made
    by one factory over different values never share keys. A closure variable is read when
    the keyer is built and read again when its binding changes (``nonlocal``), which each
    call checks by identity; a captured list or dict mutated in place is not re-read.

    A ``functools.partial`` is keyed as its function called with the partial's arguments
    added (``partial(f, 1)(2)`` shares ``f(1, 2)``'s key). A callable instance is keyed by its
    type's qualified name; the instance takes part (like ``self`` of a method) only if its
    type defines ``__tiercache_key__()``.

    Since: 0.1.0
    """

    __slots__ = (
        "__weakref__",
        "_base",
        "_cells",
        "_defaults",
        "_fixed_args",
        "_fixed_kwargs",
        "_freevars",
        "_ignore",
        "_instance",
        "_name_frames",
        "_origin",
        "_positional",
        "_prefix",
        "_required",
        "_signature",
        "_special",
        "_state",
    )

    def __init__(
        self, func: Callable[..., Any], ignore: Iterable[str] = (), name: str | None = None
    ) -> None:
        target, self._fixed_args, self._fixed_kwargs = _unwrap(func)
        self._signature = inspect.signature(target)
        ignored = frozenset(ignore)
        unknown = ignored - self._signature.parameters.keys()
        if unknown:
            raise ValueError(f"ignore names parameters {sorted(unknown)} that {func!r} lacks")
        self._ignore = ignored
        default_name, code_owner = _base_name(target)
        if name is None:
            name = default_name
        self._base = f"{MEMO_PREFIX}:{name}"
        # A callable instance with __tiercache_key__ is part of every key (read per call,
        # like self); one without is not, like any non-data captured object.
        self._instance = None
        if code_owner is not target and getattr(type(target), "__tiercache_key__", None):
            self._instance = target
        closure = getattr(code_owner, "__closure__", None)
        code = getattr(code_owner, "__code__", None)
        self._cells: tuple[Any, ...] = closure or ()
        self._freevars: tuple[str, ...] = code.co_freevars if closure and code else ()
        contents = _cell_contents(self._cells)
        frames = self._frames(contents, (), ())
        self._prefix = self._prefix_for(frames)
        self._state: tuple[tuple[Any, ...], tuple[bytes, ...], str] = (
            contents,
            frames,
            self._prefix,
        )
        self._special = bool(
            self._cells or self._instance is not None or self._fixed_args or self._fixed_kwargs
        )
        # What sets this function apart beyond its prefix, for collision checks: its code
        # and the captured objects that are not plain data (compared by identity).
        others = [value for value in contents if value is not _EMPTY and not _is_plain(value)]
        if code_owner is not target and self._instance is None:
            others.append(target)
        self._origin: tuple[Any, ...] = (code if code is not None else target, *others)
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

    def _frames(
        self, contents: tuple[Any, ...], old: tuple[Any, ...], frames: tuple[bytes, ...]
    ) -> tuple[bytes, ...]:
        # Only a variable whose binding changed is encoded again: a list the function
        # appends to in place keeps the encoding it had when it was bound.
        result = []
        for i, (var, value) in enumerate(zip(self._freevars, contents, strict=True)):
            if i < len(frames) and value is old[i]:
                result.append(frames[i])
            elif value is _EMPTY or not _is_plain(value):
                result.append(b"")
            else:
                code = _encode(value, f"closure variable {var!r}", 0)
                result.append(_frame(_T_STR, var.encode()) + code)
        return tuple(result)

    def _prefix_for(self, frames: tuple[bytes, ...]) -> str:
        digest = hashlib.blake2b(digest_size=16)
        captured = False
        for frame in frames:
            if frame:
                digest.update(frame)
                captured = True
        if self._instance is not None:
            digest.update(_encode(self._instance, "the memoized instance", 0))
            captured = True
        if not captured:
            return self._base + ":"
        return f"{self._base}~{digest.hexdigest()}:"

    def _current_prefix(self) -> str:
        contents, frames, prefix = self._state
        if self._instance is None:
            for cell, seen in zip(self._cells, contents, strict=True):
                try:
                    if cell.cell_contents is not seen:
                        break
                except ValueError:
                    if seen is not _EMPTY:
                        break
            else:
                return prefix
        # A closure variable was rebound (or the instance's key may have changed).
        new_contents = _cell_contents(self._cells)
        frames = self._frames(new_contents, contents, frames)
        prefix = self._prefix_for(frames)
        self._state = (new_contents, frames, prefix)  # one assignment: all or nothing
        return prefix

    @property
    def prefix(self) -> str:
        """The part every key of this function starts with (as of now, for a closure whose
        variables may be rebound)."""
        return self._current_prefix() if self._special else self._prefix

    @property
    def origin(self) -> tuple[Any, ...]:
        """What tells this function apart from another with the same prefix: its code and the
        captured objects that are not plain data (compare by identity)."""
        return self._origin

    @property
    def closure(self) -> bool:
        """Whether the function has closure variables (its prefix may change when one is
        rebound)."""
        return bool(self._cells)

    @property
    def varying(self) -> bool:
        """Whether a key may change while the arguments stay equal beyond what the prefix
        tells: a callable instance's ``__tiercache_key__``, or a partial's bound arguments
        that are not immutable scalars."""
        if self._instance is not None:
            return True
        fixed = (*self._fixed_args, *self._fixed_kwargs.values())
        return bool(fixed) and not mappable(fixed, {})

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The key for one call; `TypeError` if the arguments do not fit or encode."""
        return self.key_with(self.prefix, args, kwargs)

    def key_with(self, prefix: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The key for one call under ``prefix`` (`prefix` read by the caller, so a caller
        that remembers keys by prefix and arguments stores the key it computed under it)."""
        if self._special:
            if self._fixed_args:
                args = self._fixed_args + args
            if self._fixed_kwargs:
                kwargs = {**self._fixed_kwargs, **kwargs}
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
        return prefix + digest.hexdigest()


# Live memoized functions by key prefix, to detect two that would share keys. Weak, so a
# function that is gone does not count; empty sets are swept when the map has doubled.
_live: dict[str, weakref.WeakSet[ArgumentKeyer]] = {}
_live_lock = threading.Lock()
_live_sweep_at = 64


def _rivals(keyer: ArgumentKeyer, prefix: str) -> list[ArgumentKeyer]:
    origin = keyer.origin
    return [
        other
        for other in list(_live.get(prefix, ()))
        if other is not keyer
        and (
            len(other.origin) != len(origin)
            or any(a is not b for a, b in zip(other.origin, origin, strict=False))
        )
    ]


def claim_prefix(keyer: ArgumentKeyer) -> bool:
    """Register ``keyer`` as live; return False if another live function, not the same code
    over the same captured objects, already has its key prefix (so both would read each
    other's entries).

    Since: 0.2.0
    """
    global _live_sweep_at
    prefix = keyer.prefix
    with _live_lock:
        rivals = _rivals(keyer, prefix)
    if rivals:
        # A dead closure may linger in a reference cycle (a recursive closure refers to its
        # own wrapper): collect before accusing it. Rare, so the cost does not matter.
        del rivals
        gc.collect()
    with _live_lock:
        clash = bool(_rivals(keyer, prefix))
        _live.setdefault(prefix, weakref.WeakSet()).add(keyer)
        if len(_live) >= _live_sweep_at:
            for key in [key for key, live in _live.items() if not live]:
                del _live[key]
            _live_sweep_at = max(64, 2 * len(_live))
    return not clash
