"""The repository stands on its own: no citations of documents that live outside it, and
user docs that speak of behaviour, not of the package's files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONTRIBUTING = DOCS / "contributing.md"

#: Citations of notes kept outside the repository: a reader of the code cannot follow them.
#: State the fact where it matters instead, or point at the benchmark that measures it.
OUTSIDE_CITATION = re.compile(
    r"field[- ]notes"
    r"|\.\./shared"
    r"|/work/shared"
    r"|shared/(?:design|style)"
    r"|\bdesign\.md\b"
    r"|\bstyle\.md\b"
    r"|design guarantees?",
    re.IGNORECASE,
)

#: Files still carrying citations, as strict xfails (once a file is clean the test XPASSes
#: and fails, asking for its entry to be removed). Empty: keep it so.
CITATIONS_BEING_REMOVED: frozenset[str] = frozenset()

_SCANNED_SUFFIXES = {".py", ".md", ".txt", ".toml", ".yml", ".yaml", ".cfg", ".ini"}


def _scanned_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for top in ("tiercache", "tests", "benchmarks", "docs"):
        files.extend(
            path
            for path in sorted((ROOT / top).rglob("*"))
            if path.is_file()
            and path.suffix in _SCANNED_SUFFIXES
            and "__pycache__" not in path.parts
        )
    return [path for path in files if path.resolve() != Path(__file__).resolve()]


def _cases() -> list[object]:
    cases: list[object] = []
    for path in _scanned_files():
        name = path.relative_to(ROOT).as_posix()
        marks = []
        if name in CITATIONS_BEING_REMOVED:
            marks.append(pytest.mark.xfail(strict=True, reason="owner is removing its citations"))
        cases.append(pytest.param(path, id=name, marks=marks))
    return cases


@pytest.mark.parametrize("path", _cases())
def test_no_citation_of_documents_outside_the_repository(path: Path) -> None:
    """Code, tests, benchmarks and docs cite nothing a reader of the repository cannot open."""
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE_CITATION.search(line)
    ]
    assert not hits, "citations of documents outside the repository:\n" + "\n".join(hits)


def test_the_citation_pattern_catches_what_it_is_meant_to() -> None:
    """The pattern above is not vacuous."""
    for text in ("(field-notes 5)", "field notes 13", "see ../shared/x", "design.md", "style.md"):
        assert OUTSIDE_CITATION.search(text), text
    for text in ("guarantee 3 of docs/consistency.md", "by design", "the notes field"):
        assert not OUTSIDE_CITATION.search(text), text


# -- user docs speak of behaviour; the contributor page maps it to modules ---------------------

PACKAGE = ROOT / "tiercache"
_MODULE_PATH = re.compile(r"`(tiercache/[\w/]+\.py)`")


def _package_modules() -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*.py")
        if "__pycache__" not in path.parts
    }


def test_the_contributor_page_names_only_modules_that_exist() -> None:
    """Every module named on docs/contributing.md is a file of the package."""
    named = set(_MODULE_PATH.findall(CONTRIBUTING.read_text(encoding="utf-8")))
    assert named, "docs/contributing.md names no module"
    assert sorted(named - _package_modules()) == []


def test_the_contributor_page_names_every_module() -> None:
    """A new module of the package gets a line on docs/contributing.md."""
    named = set(_MODULE_PATH.findall(CONTRIBUTING.read_text(encoding="utf-8")))
    assert sorted(_package_modules() - named) == []


def test_the_contributor_page_is_in_the_docs_navigation() -> None:
    """docs/contributing.md is reachable from the site's navigation."""
    assert "contributing.md" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "page",
    [path for path in sorted(DOCS.glob("*.md")) if path != CONTRIBUTING],
    ids=lambda path: path.name,
)
def test_user_docs_do_not_name_the_package_files(page: Path) -> None:
    """User pages describe behaviour, not which file of tiercache implements it (that map is
    on the contributor page); tests/ and benchmarks/ paths are fine."""
    modules = {Path(name).name for name in _package_modules()}
    pattern = re.compile(
        r"(?<![\w/.-])(?:tiercache/)?(" + "|".join(map(re.escape, modules)) + r")\b"
    )
    hits = [
        f"{page.name}:{number}: {line.strip()}"
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, "user docs name package files:\n" + "\n".join(hits)
