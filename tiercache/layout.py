"""Where a cache's data lives in Redis: every key name and the channel, in one place.

* ``{namespace}:{key}``: an entry (or, while a process loads it, its lease placeholder);
* ``{namespace}#ver``: the namespace version (`clear` moves it on);
* ``{namespace}#tag:{tag}``: a tag's version (`invalidate_tags` moves it on);
* ``{namespace}#refresh:{key}``: the short lock of a refresh-ahead;
* ``{namespace}#write:{key}``: the lock a write-through holds over its writer call;
* ``{namespace}#writes``: the durable write-behind stream (``write_stream.py``);
* channel ``tiercache:inv:{namespace}`` (``tiercache:inv:{db}:{namespace}`` for a database other
  than 0: pub/sub ignores databases).

A namespace cannot contain ``#`` or ``:``, so the internal keys never collide with entries.
On Redis Cluster each key maps to its own slot; every script touches one key.
"""

from __future__ import annotations

from collections.abc import Callable

from .messages import channel_name

__all__ = ["channel_name", "entry_key", "refresh_lock_key", "version_key", "write_lock_key"]


def entry_key(namespace: str) -> Callable[[str], str]:
    """A function from a cache key to its Redis key, ``{namespace}:{key}`` (a bound
    ``str.__add__``: the cheapest way to build it on the read path).

    Since: 0.2.0
    """
    return (namespace + ":").__add__


def version_key(namespace: str, name: str) -> str:
    """The Redis key of the namespace version (``name == ""``) or of a tag's version.

    Since: 0.2.0
    """
    if not name:  # versions.NAMESPACE
        return f"{namespace}#ver"
    return f"{namespace}#tag:{name}"


def refresh_lock_key(namespace: str, key: str) -> str:
    """The Redis key of the lock one process holds while it refreshes ``key`` ahead.

    Since: 0.2.0
    """
    return f"{namespace}#refresh:{key}"


def write_lock_key(namespace: str, key: str) -> str:
    """The Redis key of the lock a write-through holds on ``key`` over its writer call.

    Since: 0.3.0
    """
    return f"{namespace}#write:{key}"
