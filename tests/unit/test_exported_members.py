"""The exported surface is deliberate: this test changes whenever the public API does."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import tiercache

EXPECTED_ALL = [
    "Breaker",
    "CircuitOpenError",
    "Compressor",
    "ConfigurationError",
    "CorruptEntryError",
    "KeyCollisionWarning",
    "L2Error",
    "LoaderTimeoutError",
    "MISSING",
    "Memoized",
    "Missing",
    "MsgpackSerializer",
    "NotConfiguredError",
    "ReentrantLoadError",
    "SerializationError",
    "Serializer",
    "TierCache",
    "TierCacheError",
    "Writer",
    "__version__",
    "configure",
    "get_default",
    "memoize",
]

MODULES = sorted(
    info.name
    for info in pkgutil.iter_modules(tiercache.__path__)
    # Private modules (e.g. _version.py, a single constant) are not part of the surface.
    if not info.name.startswith("_")
)


def test_all_is_exactly_the_expected_public_names() -> None:
    """tiercache.__all__ lists exactly the public API, without duplicates (in ruff's order:
    constants first, then the rest sorted)."""
    assert sorted(tiercache.__all__) == sorted(EXPECTED_ALL)
    assert len(set(tiercache.__all__)) == len(tiercache.__all__)


@pytest.mark.parametrize(
    "name", [n for n in EXPECTED_ALL if n not in ("__version__", "MISSING", "Missing")]
)
def test_every_exported_name_exists_and_is_documented(name: str) -> None:
    """Each public name is importable and has its own docstring."""
    member = getattr(tiercache, name)
    doc = inspect.getdoc(member)
    assert doc, f"tiercache.{name} has no docstring"
    if inspect.isclass(member) or inspect.isfunction(member):
        assert member.__doc__, f"tiercache.{name} only inherits its docstring"


def test_version_is_a_version_string() -> None:
    """__version__ is a dotted version string."""
    assert isinstance(tiercache.__version__, str)
    assert tiercache.__version__.split(".")[0].isdigit()


def test_exported_exceptions_form_the_documented_tree() -> None:
    """The exception tree drawn in errors.py holds, including the builtin dual bases."""
    assert issubclass(tiercache.TierCacheError, Exception)
    assert issubclass(tiercache.NotConfiguredError, (tiercache.TierCacheError, RuntimeError))
    assert issubclass(tiercache.NotConfiguredError, RuntimeError)
    assert issubclass(tiercache.SerializationError, tiercache.TierCacheError)
    assert issubclass(tiercache.SerializationError, TypeError)
    assert issubclass(tiercache.L2Error, tiercache.TierCacheError)
    assert issubclass(tiercache.CorruptEntryError, tiercache.L2Error)
    assert issubclass(tiercache.CircuitOpenError, tiercache.L2Error)
    assert issubclass(tiercache.ReentrantLoadError, (tiercache.TierCacheError, RuntimeError))
    assert issubclass(tiercache.ReentrantLoadError, RuntimeError)
    assert issubclass(tiercache.ConfigurationError, tiercache.TierCacheError)
    assert not issubclass(tiercache.ConfigurationError, tiercache.L2Error)  # never a miss


def test_the_package_has_modules_to_check() -> None:
    """Sanity check for the parametrization below."""
    assert {"cache", "codec", "entry", "keys", "l1", "memoizing", "options"} <= set(MODULES)


@pytest.mark.parametrize("module_name", MODULES)
def test_every_module_defines_all_of_existing_names(module_name: str) -> None:
    """Each tiercache module declares __all__, and every name in it exists."""
    module = importlib.import_module(f"tiercache.{module_name}")
    assert hasattr(module, "__all__"), f"tiercache.{module_name} has no __all__"
    exported = list(module.__all__)
    assert len(exported) == len(set(exported)), "duplicates in __all__"
    missing = [name for name in exported if not hasattr(module, name)]
    assert missing == []


@pytest.mark.parametrize("module_name", MODULES)
def test_every_module_has_a_docstring(module_name: str) -> None:
    """Each module says what it is for."""
    module = importlib.import_module(f"tiercache.{module_name}")
    assert inspect.getdoc(module)


def test_missing_is_a_typed_falsy_singleton_that_survives_pickling() -> None:
    """tiercache.MISSING: a default no cached value can be; falsy; the same after pickle."""
    import pickle

    cache = tiercache.TierCache(None)
    assert cache.get("absent", tiercache.MISSING) is tiercache.MISSING
    cache.set("none", None)
    assert cache.get("none", tiercache.MISSING) is None
    assert not tiercache.MISSING
    assert pickle.loads(pickle.dumps(tiercache.MISSING)) is tiercache.MISSING
    assert repr(tiercache.MISSING) == "tiercache.MISSING"
    cache.close()
