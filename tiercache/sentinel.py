"""`MISSING`: the typed "no value" marker for ``get(key, default=MISSING)``.

A cached ``None`` is a value, so ``get(key)`` returning ``None`` cannot tell a miss from a
stored ``None``; pass ``MISSING`` as the default and compare with ``is``. Being an enum member,
it has a type of its own that type checkers narrow on (``if value is MISSING: ...``), it is
the same object after pickling, and it is falsy.
"""

from __future__ import annotations

import enum
from typing import Final, Literal

__all__ = ["MISSING", "Missing"]


class _MissingType(enum.Enum):
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "tiercache.MISSING"

    def __bool__(self) -> bool:
        return False


#: The type of `MISSING`, for annotations: ``def lookup(...) -> User | Missing``.
Missing = Literal[_MissingType.MISSING]

#: No value: a default for ``get`` that no cached value can be.
MISSING: Final = _MissingType.MISSING
