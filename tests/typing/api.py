"""Typed usage of tiercache's public API, checked by ``mypy --strict tests/typing`` in CI.

Never run: mypy reads it. Each ``assert_type`` pins an inferred type (and fails if it is
``Any``), so a change that loses a parameter or return type breaks the build.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from typing_extensions import assert_type

import tiercache
from tiercache import (
    Breaker,
    CircuitOpenError,
    ConfigurationError,
    KeyCollisionWarning,
    L2Error,
    LoaderTimeoutError,
    Memoized,
    MsgpackSerializer,
    NotConfiguredError,
    ReentrantLoadError,
    SerializationError,
    TierCache,
    TierCacheError,
    Writer,
)
from tiercache.memoizing import BoundMemoized

# -- construction ------------------------------------------------------------------------------

local = TierCache(None, namespace="shop", ttl=300, l1_ttl=30, l1_maxsize=10_000)
remote = TierCache.from_url("redis://localhost:6379/0", namespace="shop", breaker=Breaker())
assert_type(local, TierCache)
assert_type(remote, TierCache)
assert_type(tiercache.configure(namespace="default"), TierCache)
assert_type(tiercache.get_default(), TierCache)
assert_type(tiercache.__version__, str)
with TierCache(None, serializer=MsgpackSerializer()) as scoped:
    assert_type(scoped, TierCache)

# -- reads and writes --------------------------------------------------------------------------


def load_user() -> dict[str, int]:
    return {"id": 42}


assert_type(local.get_or_set("user:42", load_user, ttl=300, tags=("users",)), dict[str, int])
assert_type(local.get_or_set("answer", lambda: 42), int)
local.set("user:42", {"id": 42}, ttl=300, tags=("users",))
local.set_many({"a": 1, "b": 2})
local.delete("user:42")
local.delete_many(["a", "b"])
local.invalidate_tags("users")
local.clear()
assert_type(local.get_many(["a", "b"]), dict[str, Any])
assert_type(local.get("user:42", default=None), Any)
assert_type(local.add("counter", 0, ttl=60, tags=("users",)), bool)
assert_type(local.incr("counter"), int)
assert_type(local.decr("counter", 2), int)
assert_type(local.touch("counter", 120), bool)
assert_type(local.has_key("counter"), bool)
stats = local.stats()
assert_type(stats["l1_hits"], int)
local.close()

# -- memoize: both forms, on the default cache and on a cache ----------------------------------


@tiercache.memoize
def price(sku: str) -> Decimal:
    return Decimal("9.50")


@tiercache.memoize(ttl=60, tags=("prices",))
def discounted(sku: str, percent: int = 0) -> Decimal:
    return Decimal("9.50") * (100 - percent) / 100


@local.memoize
def stock(sku: str) -> int:
    return 3


@local.memoize(ttl=60, tags=("stock",), ignore=("verbose",), name="stock-levels")
def stock_levels(skus: tuple[str, ...], verbose: bool = False) -> dict[str, int]:
    return dict.fromkeys(skus, 3)


# Assignable to Memoized[[parameter types], return type]; assert_type would also pin names.
price_typed: Memoized[[str], Decimal] = price
discounted_typed: Memoized[[str, int], Decimal] = discounted
assert_type(price("A1"), Decimal)
assert_type(price.invalidate("A1"), None)
assert_type(price.cache_key("A1"), str)
assert_type(discounted("A1", percent=10), Decimal)
assert_type(discounted.invalidate("A1", 10), None)
assert_type(stock("A1"), int)
assert_type(stock.cache_key(sku="A1"), str)
assert_type(stock_levels(("A1", "B2")), dict[str, int])
assert_type(price.__wrapped__("A1"), Decimal)

# -- methods -----------------------------------------------------------------------------------


class Users:
    def __init__(self, repo_id: int) -> None:
        self.repo_id = repo_id

    def __tiercache_key__(self) -> int:
        return self.repo_id

    @local.memoize(ttl=60)
    def name(self, user_id: int) -> str:
        return f"user {user_id}"

    @staticmethod
    @local.memoize
    def normalise(email: str) -> str:
        return email.lower()


users = Users(1)
bound: BoundMemoized[[int], str] = users.name
assert_type(users.name(7), str)
assert_type(users.name.invalidate(7), None)
assert_type(users.name.cache_key(user_id=7), str)
unbound: Memoized[[Users, int], str] = Users.name
assert_type(Users.name(users, 7), str)
assert_type(Users.normalise("A@B"), str)
assert_type(Users.normalise.invalidate("A@B"), None)

# -- exceptions: the tree, usable in except clauses --------------------------------------------

try:
    price("A1")
except (NotConfiguredError, ConfigurationError, SerializationError) as error:
    assert_type(error, NotConfiguredError | ConfigurationError | SerializationError)
except (LoaderTimeoutError, ReentrantLoadError, CircuitOpenError, L2Error) as error:
    assert_type(error, LoaderTimeoutError | ReentrantLoadError | CircuitOpenError | L2Error)
except TierCacheError as error:
    assert_type(error, TierCacheError)

assert issubclass(KeyCollisionWarning, Warning)
assert issubclass(SerializationError, TypeError)

# -- writers: any object with the four methods is a Writer -------------------------------------


class Rows:
    def write(self, key: str, value: Any) -> None: ...
    def write_many(self, items: Mapping[str, Any]) -> None: ...
    def delete(self, key: str) -> None: ...
    def delete_many(self, keys: Sequence[str]) -> None: ...


rows: Writer = Rows()
through = TierCache(None, writer=rows)
through.set("k", 1, writer=rows)
through.set_many({"a": 1}, writer=rows)
through.delete("k", writer=rows)
through.delete_many(["a"], writer=rows)
behind = TierCache(None, writer=rows, write_behind=True, write_behind_delay=0.05)
assert_type(behind.flush(timeout=5.0), bool)
behind.close(timeout=10.0)
TierCache(None, l1_max_bytes=64 * 1024 * 1024, l1_entry_share=0.125, early_expiration=1.0)
