"""The docs site (``docs/``) builds with warnings as errors, every example on it runs, its
guarantees table says what the code says, and every public name has an API entry.

Builds as CI does::

    sphinx-build -W -b html docs docs/_build/html
    sphinx-build -W -b doctest docs docs/_build/doctest

Skipped where Sphinx is not installed (``pip install -e '.[docs]'``); in CI (``CI=true``) that
fails instead. The recipes' code is run by ``tests/test_recipes.py``.
"""

from __future__ import annotations

import html.parser
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import zlib
from dataclasses import dataclass

import pytest
from test_exports import PUBLIC

from securememory import check
from securememory._implementations import DEFAULT_ORDER, IMPLEMENTATIONS

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))


def _require_sphinx() -> None:
    if importlib.util.find_spec("sphinx") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("sphinx must be installed in CI (pip install -e '.[docs]')")
        pytest.skip("sphinx is not installed (pip install -e '.[docs]')", allow_module_level=True)


_require_sphinx()

import implementations_table  # noqa: E402  (docs/_ext: the directive that renders the table)


@dataclass
class Build:
    out: pathlib.Path
    returncode: int
    log: str


def _build(builder: str, out: pathlib.Path) -> Build:
    _require_sphinx()
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder]
    proc = subprocess.run(
        [*cmd, str(DOCS), str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    return Build(out, proc.returncode, proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def html_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return _build("html", tmp_path_factory.mktemp("html"))


@pytest.fixture(scope="module")
def doctest_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return _build("doctest", tmp_path_factory.mktemp("doctest"))


def test_html_builds_without_warnings(html_build: Build) -> None:
    """``sphinx-build -W -b html``: nitpicky, warnings are errors."""
    assert html_build.returncode == 0, html_build.log[-6000:]
    assert "WARNING" not in html_build.log, html_build.log[-6000:]
    pages = {p.relative_to(html_build.out).as_posix() for p in html_build.out.rglob("*.html")}
    expected = {"index.html", "guarantees.html", "limitations.html", "api.html"}
    expected |= {f"recipes/{p.stem}.html" for p in (DOCS / "recipes").glob("*.rst")}
    expected |= {f"topics/{p.stem}.html" for p in (DOCS / "topics").glob("*.rst")}
    assert expected <= pages, expected - pages


def test_topics_are_globbed_into_the_contents(html_build: Build) -> None:
    """Every page dropped into ``docs/topics/`` is linked from the index without an edit."""
    index = (html_build.out / "index.html").read_text()
    for page in (DOCS / "topics").glob("*.rst"):
        assert f'href="topics/{page.stem}.html"' in index, page.name


def test_doctests_pass(doctest_build: Build) -> None:
    """``sphinx-build -W -b doctest``: every example on the pages (and in the docstrings the
    API reference includes) runs and prints what the page shows."""
    assert doctest_build.returncode == 0, doctest_build.log[-6000:]
    summary = (doctest_build.out / "output.txt").read_text()
    ran = re.search(r"^\s*(\d+) tests?$", summary, re.M)
    assert ran is not None and int(ran.group(1)) >= 10, summary
    assert re.search(r"^\s*0 failures in tests$", summary, re.M), summary


class _TableParser(html.parser.HTMLParser):
    """The cells of the table whose class is ``implementations-table``, as text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._depth = 0  # > 0 inside the table
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag == "table" and (self._depth or "implementations-table" in classes):
            self._depth += 1
        elif self._depth and tag == "tr":
            self.rows.append([])
        elif self._depth and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._depth:
            self._depth -= 1
        elif self._depth and tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_guarantees_table_matches_the_code(html_build: Build) -> None:
    """The built guarantees page, read back, says what the one table of implementations and
    the proofs of ``securememory check`` say: one column per implementation in table order,
    guard pages exactly where ``guarded``, out of the direct map exactly where
    ``hidden_from_kernel``, the cost from each layout, the default order, every proof named."""
    assert html_build.returncode == 0, html_build.log[-6000:]
    parser = _TableParser()
    parser.feed((html_build.out / "guarantees.html").read_text())
    header, *body = parser.rows
    names = [impl.name for impl in IMPLEMENTATIONS]
    assert header[1 : 1 + len(names)] == names
    by_proof = {row[1 + len(names)]: row for row in body}
    assert {p.name for p in check.PROOFS} <= set(by_proof)
    assert not implementations_table.proofs_missing()

    def column(row: list[str]) -> list[str]:
        return row[1 : 1 + len(names)]

    expected = {
        "guard pages and canary": ["yes" if i.guarded else "no" for i in IMPLEMENTATIONS],
        "out of the direct map": ["yes" if i.hidden_from_kernel else "no" for i in IMPLEMENTATIONS],
    }
    for proof in check.PROOFS:
        want = expected.get(proof.name, ["yes"] * len(names))
        assert column(by_proof[proof.name]) == want, proof.name
    cost = [
        f"{i.layout(implementations_table.SIZE).mapped} / "
        f"{i.layout(implementations_table.SIZE).locked}"
        for i in IMPLEMENTATIONS
    ]
    assert column(by_proof["per secret"]) == cost
    order = [
        str(DEFAULT_ORDER.index(i) + 1) if i in DEFAULT_ORDER else "never" for i in IMPLEMENTATIONS
    ]
    assert column(by_proof["default"]) == order
    for row in body:  # every test the table names exists
        test = row[-1]
        if "::" in test:
            path, name = test.split("::")
            assert f"def {name}(" in (ROOT / "tests" / path).read_text(), test


def _inventory(out: pathlib.Path) -> set[str]:
    """The names of every object documented in the build (``objects.inv``)."""
    raw = (out / "objects.inv").read_bytes()
    body = raw.split(b"\n", 4)[4]  # four header lines, then zlib
    return {line.split(" ", 1)[0] for line in zlib.decompress(body).decode().splitlines()}


def test_every_public_name_is_documented(html_build: Build) -> None:
    """Each name of ``tests/test_exports.py``'s PUBLIC has an entry in the API reference (the
    errors under the ``securememory`` name that re-exports them)."""
    assert html_build.returncode == 0, html_build.log[-6000:]
    documented = _inventory(html_build.out)
    missing = []
    for module, names in PUBLIC.items():
        assert module in documented, f"no automodule for {module}"
        home = "securememory" if module == "securememory.errors" else module
        missing += [f"{home}.{name}" for name in names if f"{home}.{name}" not in documented]
    assert not missing, missing


def test_macos_is_stated_untested() -> None:
    """The platforms page says what is coded for macOS and that it is not tested."""
    text = " ".join((DOCS / "topics" / "platforms.rst").read_text().split())
    assert "macOS: coded, not tested" in text
    assert "not tested" in " ".join((DOCS / "limitations.rst").read_text().split())
