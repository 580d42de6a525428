"""Developer and CI tasks: ``nox`` runs lint, typecheck and tests; ``nox -l`` lists the rest.

Real-Redis tests need ``redis-server`` on PATH; they skip without it, and fail instead when
``CI=true`` or ``TIERCACHE_REQUIRE_REDIS=1`` (see tests/conftest.py).
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "venv"

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
LINT_PATHS = ["tiercache", "tests", "benchmarks", "noxfile.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite on the interpreter running nox (``nox -s tests -- -k lease``)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHONS)
def tests_matrix(session: nox.Session) -> None:
    """Run the test suite on every supported Python that is installed."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
@nox.parametrize("django", ["4.2", "5.2"])
def frameworks(session: nox.Session, django: str) -> None:
    """The framework adapters' tests (Django's own BaseCacheTests included) on each supported
    Django LTS (Django 6 needs Python 3.12+)."""
    session.install("-e", ".[dev]", f"django~={django}.0")
    session.run("pytest", "tests/frameworks", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package, and on tests/typing (typed usage of the public API)."""
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", "tiercache")
    session.run("mypy", "--strict", "tests/typing")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks (``python -m benchmarks``; posargs are passed on)."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def peers(session: nox.Session) -> None:
    """Run the peers benchmark with the ``peers`` extra (``-- --quick``, ``-- --out DIR``).

    ``nox -s peers -- --out docs/assets/peers`` refreshes the Benchmarks page's plots.
    """
    session.install("-e", ".[dev,peers]")
    session.run("python", "-m", "benchmarks", "peers", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Run the demo on the embedded default cache (``python -m tiercache demo``)."""
    session.install("-e", ".[demo]")
    session.run("python", "-m", "tiercache", "demo", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs strictly: a broken link or reference fails."""
    session.install("-e", ".[dev]")
    session.run("mkdocs", "build", "--strict", *session.posargs)
