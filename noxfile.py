"""The test matrix: every CPython from 3.9 to 3.13 that this machine has.

``nox`` (sessions ``tests-3.9`` ... ``tests-3.13``): each session installs the package into a fresh
virtualenv (which compiles the C core for that Python) and runs the suite. An interpreter the
machine lacks is skipped with nox's reason ("Python interpreter 3.X not found"), not failed.
pyenv's interpreters (``~/.pyenv/versions/3.X.*``) are found even when pyenv does not select them.

Time (CI has 2 cores and must stay well under 30 minutes): the default Python (:data:`DEFAULT`)
runs the whole suite (about 5 minutes). The others run it with ``-x``, without the tests marked
``slow`` (builds of the distributions, the long fork and memlock runs) and without the long
end-to-end files in :data:`LONG` (docs builds, recipes, servers, 10,000-operation memory scans):
every one still builds the core and runs the API, guarantee, lifecycle, limit, check, ingress,
crypto, enclave and lint tests. Set ``SECUREMEMORY_FULL_MATRIX=1`` to run everything everywhere.

``nox -s sdist``: build the sdist, unpack it, install it, collect its whole suite (every test
module imports from the unpacked tree) and run it as the non-default Pythons do.
"""

from __future__ import annotations

import glob
import os
import tarfile
from pathlib import Path

import nox

PYTHONS = ["3.9", "3.10", "3.11", "3.12", "3.13"]  # keep in step with pyproject's classifiers
DEFAULT = "3.11"
EXTRAS = ".[test,crypto,docs]"  # docs: tests/test_docs.py must run in CI

nox.options.sessions = ["tests"]
nox.options.error_on_missing_interpreters = False  # absent: skipped with the reason
nox.options.reuse_existing_virtualenvs = False


def _pyenv_on_path() -> None:
    """Put each pyenv CPython's bin/ on PATH, so nox finds ``python3.X`` without pyenv shims."""
    home = os.path.expanduser("~/.pyenv/versions")
    dirs = []
    for version in PYTHONS:
        found = sorted(glob.glob(f"{home}/{version}.*/bin/python{version}"))
        if found:
            dirs.append(os.path.dirname(found[-1]))
    os.environ["PATH"] = os.pathsep.join([*dirs, os.environ.get("PATH", "")])


_pyenv_on_path()


LONG = [  # end-to-end files left to the default Python's full run (minutes each on 2 cores)
    "tests/test_docs.py",
    "tests/test_recipes.py",
    "tests/test_share_gunicorn.py",
    "tests/test_share_mp.py",
    "tests/test_asymmetric_scan.py",
    "tests/test_enclave_proof.py",
    "tests/test_argon2_heap.py",
    "tests/test_heap_proof.py",
    "tests/test_benchmarks.py",
]


def _pytest_args(session: nox.Session, full: bool) -> list[str]:
    args = ["-p", "no:cacheprovider", "-q"]
    if not (full or os.environ.get("SECUREMEMORY_FULL_MATRIX") == "1"):
        args += ["-x", "-m", "not slow", *(f"--ignore={f}" for f in LONG)]
    return args + session.posargs


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Install (building the C core for this Python) and run the suite."""
    session.install(EXTRAS)
    session.run("python", "-c", "import securememory._backend._native as n; print(n.__file__)")
    session.run("python", "-m", "pytest", *_pytest_args(session, session.python == DEFAULT))


@nox.session(python=DEFAULT)
def sdist(session: nox.Session) -> None:
    """The suite of the unpacked sdist, installed from it, passes."""
    session.install("build")
    out = Path(session.create_tmp()).resolve()
    for old in out.glob("securememory-*"):
        session.run("rm", "-rf", str(old), external=True)
    session.run("python", "-m", "build", "--sdist", "--outdir", str(out), ".")
    (archive,) = out.glob("securememory-*.tar.gz")
    with tarfile.open(archive) as t:
        t.extractall(out)  # our own archive, just built
    tree = archive.with_name(archive.name[: -len(".tar.gz")])
    session.chdir(tree)
    session.install(EXTRAS[:-1] + ",release]")  # its own tests/test_packaging.py builds again
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", "-qq", "--collect-only")
    session.run("python", "-m", "pytest", *_pytest_args(session, False))
