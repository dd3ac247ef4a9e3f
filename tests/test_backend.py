"""The compiled core as a user meets it: which backend runs, forcing one, a missing build, and
the probe child's ids (issue 10)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import securememory
from securememory import _probe


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )


def test_stats_and_check_name_the_backend() -> None:
    assert securememory.stats().backend == "native"
    out = _python("import securememory; print(securememory.stats().backend)")
    assert out.stdout.strip() == "native"


@pytest.mark.parametrize("name", ["native", "ctypes", "bogus"])
def test_forcing_a_backend(name: str) -> None:
    """``native`` runs; ``ctypes`` (removed) and anything else fail at import with an error that
    says why and what to do, never a silent fallback."""
    out = _python(
        "import securememory; print(securememory.stats().backend)", SECUREMEMORY_BACKEND=name
    )
    if name == "native":
        assert out.returncode == 0 and out.stdout.strip() == "native", out.stderr
    else:
        assert out.returncode != 0
        assert f"SECUREMEMORY_BACKEND='{name}'" in out.stderr and "ImportError" in out.stderr
        assert "only the 'native' backend" in out.stderr


def test_missing_compiled_core_is_a_clear_import_error(tmp_path: os.PathLike[str]) -> None:
    """A copy of the package without its compiled core: importing it says what is missing and
    how to get it (a C compiler and the Python headers), not a bare ModuleNotFoundError."""
    src = os.path.dirname(securememory.__file__)
    dst = os.path.join(str(tmp_path), "securememory")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    out = subprocess.run(
        [sys.executable, "-c", "import securememory"],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert out.returncode != 0
    assert "compiled core" in out.stderr and "C compiler" in out.stderr, out.stderr[-800:]


def test_setup_without_a_compiler_says_so(tmp_path: os.PathLike[str]) -> None:
    """Building with no C compiler: the build stops with a message naming what is needed."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, "setup.py")):
        pytest.skip("not a source checkout (no setup.py)")
    out = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "build_ext",
            "--build-temp",
            str(tmp_path) + "/t",
            "--build-lib",
            str(tmp_path) + "/l",
        ],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "CC": "/nonexistent/cc"},
    )
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "C compiler" in text and "Python headers" in text, text[-1500:]


def test_probe_never_reuses_an_id() -> None:
    """The probe child numbers secrets with a counter: a dropped secret's id is never reused."""
    with _probe.Probe() as p:
        first = p.send("make guarded 16")
        p.send("close 0")
        second = p.send("make guarded 16")
        assert (first["id"], second["id"]) == (0, 1)
