"""The distributions: ``python -m build`` makes an sdist and, from it, a wheel (issue 13).

The wheel carries the compiled core, the ``.pyi`` beside it, ``py.typed`` and the license; its
metadata has the SPDX license and a classifier for each tested Python and no macOS; ``twine
check`` accepts both. The sdist holds everything its own test suite needs (every file of tests/
and benchmarks/, the C source, README, LICENSE): running that suite from the unpacked sdist is
the ``sdist`` nox session (too slow to run inside the suite).
"""

from __future__ import annotations

import email.message
import email.parser
import importlib.util
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")  # noxfile.py's matrix
IGNORED = {"_build", "__pycache__", ".hypothesis", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{module} must be installed in CI (pip install '.[release]')")
        pytest.skip(f"{module} is not installed (pip install '.[release]')")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """``python -m build``: the sdist, then the wheel built from that sdist."""
    _need("build")
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = out.glob("securememory-*.tar.gz")
    (wheel,) = out.glob("securememory-*.whl")
    yield sdist, wheel


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(name).decode())


@pytest.mark.slow  # builds both distributions
def test_wheel_has_core_stub_marker_and_license(dist: tuple[Path, Path]) -> None:
    names = zipfile.ZipFile(dist[1]).namelist()
    assert any(n.startswith("securememory/_backend/_native.") and n.endswith(".so") for n in names)
    assert "securememory/_backend/_native.pyi" in names
    assert "securememory/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert not any(n.endswith(".c") for n in names), "the C source belongs in the sdist only"
    meta = _metadata(dist[1])
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier") or []
    for v in PYTHONS:
        assert f"Programming Language :: Python :: {v}" in classifiers
    assert not any("MacOS" in c for c in classifiers)
    assert not any(c.startswith("License ::") for c in classifiers)  # the SPDX field says it


def test_license_is_the_full_apache_text() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License")
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX" in text
    assert len(text.split()) > 1500  # the full text, not a notice


@pytest.mark.slow  # builds both distributions
def test_twine_check(dist: tuple[Path, Path]) -> None:
    _need("twine")
    done = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dist)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 2, done.stdout


def _tree(top: Path) -> set[str]:
    """Every file under ``top``, relative to the project root, skipping caches."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if d not in IGNORED]
        for f in filenames:
            if not f.endswith((".pyc", ".so")) and not f.startswith("core"):
                found.add(str((Path(dirpath) / f).relative_to(ROOT)))
    return found


def _missing(sdist_names: set[str], required: set[str]) -> set[str]:
    return {r for r in required if r not in sdist_names}


@pytest.mark.slow  # builds both distributions
def test_sdist_holds_what_its_tests_need(dist: tuple[Path, Path]) -> None:
    with tarfile.open(dist[0]) as t:
        members = t.getnames()
    prefix = members[0].split("/")[0] + "/"
    names = {m[len(prefix) :] for m in members if m.startswith(prefix)}
    required = _tree(ROOT / "tests") | _tree(ROOT / "benchmarks")
    required |= {
        "LICENSE",
        "README.md",
        "pyproject.toml",
        "setup.py",
        "noxfile.py",
        "src/securememory/_backend/_native.c",
        "src/securememory/_backend/_native.pyi",
        "src/securememory/py.typed",
    }
    required |= {n for n in _tree(ROOT / "src") if n.endswith((".py", ".c", ".pyi", "py.typed"))}
    if (ROOT / "docs").is_dir():  # tests/test_docs.py builds the site, test_recipes runs it
        required |= {n for n in _tree(ROOT / "docs") if not n.startswith("docs/_build/")}
    assert "tests/test_packaging.py" in required and "benchmarks/floor.c" in required
    assert "src/securememory/_backend/enclave.c" in required  # #included by _native.c
    assert _missing(names, required) == set()
    # control: the comparison does see a file the sdist lacks
    assert _missing(names - {"tests/conftest.py"}, required) == {"tests/conftest.py"}
