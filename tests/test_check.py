"""``securememory check``: the command runs every proof and reports it readably and as JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from securememory import check
from securememory._implementations import IMPLEMENTATIONS, get


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "securememory", *args], capture_output=True, text=True, timeout=600
    )


def test_check_json_every_implementation() -> None:
    out = _run("check", "--json")
    report = json.loads(out.stdout)
    assert out.returncode == (0 if report["ok"] else 1)
    assert report["ok"], out.stdout
    impls = report["implementations"]
    assert set(impls) == {i.name for i in IMPLEMENTATIONS}
    assert report["backend"] == "native"
    for name, entry in impls.items():
        if get(name).unavailable():
            assert entry["unavailable"]
            continue
        assert set(entry["proofs"]) == {p.name for p in check.PROOFS}
        for result in entry["proofs"].values():
            assert result["status"] in ("pass", "skip") and result["detail"]
        assert entry["per_secret"]["locked"] >= 4096
    assert (
        impls["guarded"]["per_secret"]["mapped"]
        == impls["guarded"]["per_secret"]["locked"] + 2 * 4096
    )
    assert {"soft_limit", "available"} <= set(report["memlock"])


def test_check_table_and_console_script() -> None:
    exe = shutil.which("securememory", path=os.path.dirname(sys.executable)) or shutil.which(
        "securememory"
    )
    if exe is None:
        pytest.skip("the securememory console script is not on PATH (package not installed)")
    out = subprocess.run(
        [exe, "check", "--implementation", "protected"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("backend: native; SecretFactory() makes: ")
    assert lines[1].split() == ["guarantee", "protected"]
    assert any(line.startswith("locked in RAM") and "PASS" in line for line in lines)
    assert "all proofs that could run held" in out.stdout


def test_check_fails_when_a_proof_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exit status is not a constant: a failed proof makes it 1."""
    proofs = list(check.PROOFS)
    proofs[0] = check.Proof(proofs[0].name, lambda impl: check.Result("fail", "injected"), 1)
    monkeypatch.setattr(check, "PROOFS", tuple(proofs))
    assert check.main(["--implementation", "protected"]) == 1


def test_usage() -> None:
    out = _run()
    assert out.returncode == 2 and "usage" in out.stderr
