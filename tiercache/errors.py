"""Exceptions raised by tiercache.

The tree::

    TierCacheError(Exception)                   base for tiercache's own failures
    ├── NotConfiguredError(..., RuntimeError)   the default cache could not be built
    ├── SerializationError(..., TypeError)      a value cannot be encoded at ``set`` time
    ├── LoaderTimeoutError(..., TimeoutError)   the loader overran ``hard_timeout`` and
    │                                           there was no stale value to serve
    ├── ReentrantLoadError(..., RuntimeError)   a loader asked for the key it is loading
    │                                           (directly or through other keys)
    ├── ConfigurationError                      Redis answers but cannot serve the cache
    │                                           as configured (no Lua scripting, a database
    │                                           index out of range, a TLS mismatch)
    └── L2Error                                 Redis trouble; raised in ``l2.py`` and
        ├── CorruptEntryError                   caught in ``cache.py``: counted, logged,
        │                                       turned into a miss (never reaches a reader)
        └── CircuitOpenError                    Redis skipped: the circuit breaker is open

Warnings: ``KeyCollisionWarning(UserWarning)``, two live memoized functions would share keys.

Bad arguments are plain `TypeError` / `ValueError` naming the argument, and
exceptions raised by a loader propagate unchanged. Misconfiguration raises at the first
operation that meets it: `ConfigurationError`, or redis-py's own ``AuthenticationError`` /
``NoPermissionError`` for credentials and ACLs (also when an ACL refuses a command inside
one of tiercache's Lua scripts).
"""

from __future__ import annotations

__all__ = [
    "CircuitOpenError",
    "ConfigurationError",
    "CorruptEntryError",
    "KeyCollisionWarning",
    "L2Error",
    "LoaderTimeoutError",
    "NotConfiguredError",
    "ReentrantLoadError",
    "SerializationError",
    "TierCacheError",
]


class TierCacheError(Exception):
    """Base class of every exception tiercache raises itself.

    Since: 0.1.0
    """


class NotConfiguredError(TierCacheError, RuntimeError):
    """The default cache was asked for but cannot be built (e.g. a bad ``TIERCACHE_URL``).

    Since: 0.1.0
    """


class SerializationError(TierCacheError, TypeError):
    """A value cannot be encoded by the cache's serializer; raised by ``set`` and friends.

    It is a `TypeError` too, since the caller handed over a value of a type the
    serializer does not support; the message names that type.

    Since: 0.1.0
    """


class LoaderTimeoutError(TierCacheError, TimeoutError):
    """``get_or_set`` stopped waiting for the loader after ``hard_timeout`` and had no stale
    value to serve. The load goes on in the background and fills the cache when it ends.

    Since: 0.1.0
    """


class ReentrantLoadError(TierCacheError, RuntimeError):
    """A loader asked, directly or through other keys' loaders, for the key it is loading.

    Waiting would deadlock (the load waits for itself), so the inner call raises at once.
    The message names the key's digest, never the key itself.

    Since: 0.2.0
    """


class ConfigurationError(TierCacheError):
    """Redis answers, but cannot serve this cache as configured: scripting (``EVALSHA``)
    unavailable, a database index the server does not have, a TLS mismatch.

    Misconfiguration is not trouble: instead of degrading silently to L1 + loader forever,
    the operation that meets it raises this, with the cause and the fix in the message.

    Since: 0.2.0
    """


class L2Error(TierCacheError):
    """The Redis tier failed (connection, timeout, server error).

    Internal: reads turn it into a miss and writes log and count it, so callers of the
    public API do not see it unless they opt in to raising writes.

    Since: 0.1.0
    """


class CorruptEntryError(L2Error):
    """Bytes found in Redis cannot be decoded as a tiercache entry.

    Internal: counted in ``stats()["l2_corrupt"]``, logged once per key, served as a miss.

    Since: 0.1.0
    """


class CircuitOpenError(L2Error):
    """Redis was not asked: the circuit breaker is open after repeated failures.

    Internal, like `L2Error`: reads treat it as a miss; writes count it (and raise it only
    with ``raise_on_write_error=True``).

    Since: 0.1.0
    """


class KeyCollisionWarning(UserWarning):
    """Two live memoized functions would use the same keys in one process.

    Raised (as a warning) when a function is memoized while another live one has the same
    key prefix but other code or other captured objects that are not plain data (e.g. two
    closures of one factory over different clients). Each would be served the other's
    results; give them distinct ``name=`` values. Make it an error with
    ``warnings.simplefilter("error", KeyCollisionWarning)``.

    Since: 0.2.0
    """
