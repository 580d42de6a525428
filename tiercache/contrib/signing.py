"""Pickle signed with HMAC-SHA256: a `Serializer` for frameworks whose contract is "any
picklable object" (Django, Flask-Caching).

Unpickling runs code, so bytes are unpickled only after their signature checks out: bytes
written without the key (by another application, by hand, or tampered with in Redis) fail
the check and are a miss (the cache counts and logs them as corrupt), never unpickled.
Stored form: a 32-byte HMAC-SHA256 tag of the pickle, then the pickle.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from typing import Any

from ..errors import CorruptEntryError, SerializationError

__all__ = ["SignedPickleSerializer", "derive_key"]

_TAG_SIZE = 32


def derive_key(secret: str | bytes, purpose: str) -> bytes:
    """A signing key for ``purpose`` derived from an application secret (HMAC-SHA256 of the
    purpose under the secret), so the raw secret is never the key of another scheme.

    Since: 0.2.0
    """
    raw = secret.encode() if isinstance(secret, str) else secret
    if not raw:
        raise ValueError("the secret to derive a signing key from must not be empty")
    return hmac.new(raw, b"tiercache.signed-pickle:" + purpose.encode(), hashlib.sha256).digest()


class SignedPickleSerializer:
    """``dumps``/``loads`` through pickle, each payload signed with HMAC-SHA256 under ``key``.

    Args:
        key: the signing key (at least 16 bytes); see `derive_key`.
        protocol: the pickle protocol (default: the highest).

    Since: 0.2.0
    """

    __slots__ = ("_key", "_protocol")

    def __init__(self, key: bytes, *, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        if not isinstance(key, bytes) or len(key) < 16:
            raise ValueError("key must be at least 16 bytes")
        self._key = key
        self._protocol = protocol

    def dumps(self, value: Any) -> bytes:
        """The signed pickle of ``value``; `SerializationError` if it cannot be pickled."""
        try:
            payload = pickle.dumps(value, protocol=self._protocol)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as exc:
            raise SerializationError(
                f"cannot pickle a value of type {type(value).__qualname__}: {exc}"
            ) from exc
        return hmac.new(self._key, payload, hashlib.sha256).digest() + payload

    def loads(self, data: bytes) -> Any:
        """The value of signed bytes; `CorruptEntryError` (a miss) if the signature is
        missing or wrong: such bytes are never unpickled."""
        tag, payload = data[:_TAG_SIZE], data[_TAG_SIZE:]
        expected = hmac.new(self._key, payload, hashlib.sha256).digest()
        if len(tag) != _TAG_SIZE or not hmac.compare_digest(tag, expected):
            raise CorruptEntryError("bad or missing signature: not unpickled")
        return pickle.loads(payload)  # signed by us, checked above

    def __repr__(self) -> str:
        return f"SignedPickleSerializer(protocol={self._protocol})"
