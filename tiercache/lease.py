"""Cross-process leases: one process loads a missing key, the others wait for its value.

The lease lives in the value's own key, as a placeholder entry (``entry.py``), so it needs
no second key (and works on Redis Cluster, where a script may only touch one slot):

* acquire: compare-and-set the key from "what I just read" (nothing, a stale or corrupt
  entry; compared by SHA-1) to a placeholder holding a random token, with the lease TTL;
* write: a script sets the value only if the key still holds *my* placeholder. ``set()``,
  ``delete()`` and expiry replace or remove the placeholder, so a load that an invalidation
  overtook, or that outlived its lease, loses the right to write (guarantee 3, the L2 half,
  as in the leases of "Scaling Memcache at Facebook");
* release (the loader failed): delete the placeholder if it is still mine; never raises.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from typing import Any

from .entry import LEASE_TOKEN_SIZE, lease_placeholder
from .errors import L2Error
from .l2 import RedisTier

__all__ = ["Leases"]

# ARGV[1] says how ARGV[2] describes the bytes seen: 'n' nothing, 'h' their SHA-1, 'b' the
# bytes themselves (for servers without redis.sha1hex, such as fakeredis).
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
local match
if ARGV[1] == 'n' then
  match = (cur == false)
elseif cur == false then
  match = false
elseif ARGV[1] == 'h' then
  match = (redis.sha1hex(cur) == ARGV[2])
else
  match = (cur == ARGV[2])
end
if match then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  return 1
end
return 0
"""

# A placeholder's flags byte (the 2nd) gets bit 0x10 when processes wait for its value: the
# holder's write and release then return 2, and the holder tells them (a READY message).
_OURS = """
local function ours(cur, placeholder)
  if cur == placeholder then return 1 end
  if cur == false or #cur ~= #placeholder then return 0 end
  local flags = string.byte(cur, 2)
  if flags >= 16 and string.sub(cur, 1, 1) == string.sub(placeholder, 1, 1)
      and string.char(flags - 16) == string.sub(placeholder, 2, 2)
      and string.sub(cur, 3) == string.sub(placeholder, 3) then
    return 2
  end
  return 0
end
"""

# With ARGV[4] (a channel) and ARGV[5] (a READY message), waiters are told in the same
# atomic step: one round trip less, and the READY may carry the value it follows.
_WRITE = (
    _OURS
    + """
local mine = ours(redis.call('GET', KEYS[1]), ARGV[1])
if mine > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  if mine == 2 and ARGV[5] then
    redis.call('PUBLISH', ARGV[4], ARGV[5])
  end
end
return mine
"""
)

# "The value, or the lease": a read that expects a miss takes the lease in the same round
# trip when the key holds nothing (1), else returns what it holds; when that is another
# process's lease placeholder, the caller is registered as its waiter first (as _WAIT
# does), so waiting for it costs no round trip of its own.
_GET_OR_LEASE = """
local cur = redis.call('GET', KEYS[1])
if cur == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
local flags = string.byte(cur, 2) or 0
if #cur >= 2 and flags % 16 >= 8 and flags < 16 then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then
    cur = string.sub(cur, 1, 1) .. string.char(flags + 16) .. string.sub(cur, 3)
    redis.call('SET', KEYS[1], cur, 'PX', ttl)
  end
end
return cur
"""

# A waiter registers: if the key still holds a lease placeholder (flags bit 0x08), set bit
# 0x10 on it (keeping its TTL) and return 1; else return what the key holds now (nil or a
# value), so a value written between the waiter's read and this call is not missed.
_WAIT = """
local cur = redis.call('GET', KEYS[1])
if cur == false then return false end
local flags = string.byte(cur, 2) or 0
if #cur >= 2 and flags % 16 >= 8 then
  if flags < 16 then
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl > 0 then
      redis.call('SET', KEYS[1], string.sub(cur, 1, 1) .. string.char(flags + 16)
        .. string.sub(cur, 3), 'PX', ttl)
    end
  end
  return 1
end
return cur
"""

# Give the lease back: restore the stale entry it kept (ARGV[2], for ARGV[3] ms), or delete.
_RELEASE = (
    _OURS
    + """
local mine = ours(redis.call('GET', KEYS[1]), ARGV[1])
if mine > 0 then
  if ARGV[2] ~= '' then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  else
    redis.call('DEL', KEYS[1])
  end
end
return mine
"""
)


class Leases:
    """Lease scripts bound to one Redis tier.

    Since: 0.1.0
    """

    __slots__ = ("_acquire", "_by_digest", "_get_or_lease", "_l2", "_release", "_wait", "_write")

    def __init__(self, l2: RedisTier) -> None:
        self._l2 = l2
        self._acquire: Any = l2.script(_ACQUIRE)
        self._write: Any = l2.script(_WRITE)
        self._release: Any = l2.script(_RELEASE)
        self._wait: Any = l2.script(_WAIT)
        self._get_or_lease: Any = l2.script(_GET_OR_LEASE)
        self._by_digest = True

    def acquire(
        self, rkey: str, seen: bytes | None, ttl_ms: int, keep: bytes = b""
    ) -> bytes | None:
        """Take the lease if ``rkey`` still holds ``seen``; the placeholder now stored there
        (the proof of ownership for `write`/`release`), or None. ``keep``: an expired entry
        to carry inside the placeholder for fail-safe readers."""
        placeholder = lease_placeholder(os.urandom(LEASE_TOKEN_SIZE), keep)
        return placeholder if self.replace(rkey, seen, placeholder, ttl_ms) else None

    def replace(self, rkey: str, seen: bytes | None, new: bytes, ttl_ms: int) -> bool:
        """Compare-and-set: store ``new`` (for ``ttl_ms``) if ``rkey`` still holds ``seen``
        (None: nothing); whether it did."""
        while True:
            if seen is None:
                mode, described = "n", b""
            elif self._by_digest:
                mode = "h"
                described = hashlib.sha1(seen, usedforsecurity=False).hexdigest().encode()
            else:
                mode, described = "b", seen
            try:
                won = self._l2.run(
                    self._acquire, "compare-and-set", rkey, mode, described, new, max(1, ttl_ms)
                )
            except L2Error as exc:
                if mode == "h" and "sha1hex" in str(exc):
                    self._by_digest = False  # a server without redis.sha1hex: send bytes
                    continue
                raise
            return bool(won == 1)

    def refresh_lock(self, lock_key: str, ttl: float) -> bool:
        """Take the short lock that lets one process refresh a key ahead of expiry."""
        return self._l2.set_nx(lock_key, b"1", max(1, int(ttl * 1000)))

    def refresh_unlock(self, lock_key: str) -> None:
        """Release the refresh lock; errors are swallowed: it expires anyway."""
        with contextlib.suppress(L2Error):
            self._l2.delete([lock_key])

    def write(
        self,
        rkey: str,
        placeholder: bytes,
        blob: bytes,
        ttl_ms: int,
        ready: tuple[str, bytes] | None = None,
    ) -> int:
        """Store ``blob`` if the lease is still ours: 0 if it was not stored, 1 if it was,
        2 if it was and processes registered to wait for it. With ``ready`` (channel,
        message), that message is published to them in the same atomic step; without it,
        tell them yourself (`Bus.publish_ready`)."""
        args: list[bytes | str | int] = [placeholder, blob, max(1, ttl_ms)]
        if ready is not None:
            args += ready
        done = self._l2.run(self._write, "lease write", rkey, *args)
        return int(done or 0)

    def release(self, rkey: str, placeholder: bytes, restore: bytes = b"", ttl_ms: int = 0) -> int:
        """Give the lease back (the load failed), restoring ``restore`` for ``ttl_ms`` if
        given; returns as `write` does (0 on an error, which is swallowed: the lease
        expires anyway)."""
        keep = restore if ttl_ms > 0 else b""
        with contextlib.suppress(L2Error):
            done = self._l2.run(
                self._release, "lease release", rkey, placeholder, keep, max(1, ttl_ms)
            )
            return int(done or 0)
        return 0

    def get_or_lease(self, rkey: str, ttl_ms: int) -> tuple[bytes, bool]:
        """What ``rkey`` holds, or, when it holds nothing, the placeholder of the lease now
        taken on it, and whether it was taken (one round trip: a load after a miss costs
        one less). When it holds another process's lease, the caller is registered as its
        waiter (`wait_for`) in the same round trip."""
        placeholder = lease_placeholder(os.urandom(LEASE_TOKEN_SIZE))
        found = self._l2.run(self._get_or_lease, "get or lease", rkey, placeholder, max(1, ttl_ms))
        if found == 1:
            return placeholder, True
        return bytes(found), False

    def wait_for(self, rkey: str) -> bytes | bool | None:
        """Register as a waiter on ``rkey``'s lease: True if it still holds a placeholder
        (its holder will say when it is done), else what it holds now (None: nothing)."""
        found = self._l2.run(self._wait, "lease wait", rkey)
        if found == 1:
            return True
        return found if isinstance(found, bytes) else None
