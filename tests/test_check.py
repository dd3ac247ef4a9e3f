"""``securememory check``: the command runs every proof and reports it readably and as JSON."""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys

import pytest
from conftest import require, skip_unless_available

from securememory import _inspect, _probe, check
from securememory._implementations import IMPLEMENTATIONS, get
from securememory._process import MemlockBudget


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "securememory", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow  # every proof of every implementation
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


# -- `securememory check` as a user held to a small RLIMIT_MEMLOCK (issue 13) ------------------

LIMITS = [0, 4096, 16384, 65536]


def _as_user(soft: int, hard: int, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` in a child held to ``RLIMIT_MEMLOCK`` (soft, hard) without
    CAP_IPC_LOCK: what a user who is not root gets (as root, the child drops the capability)."""
    require(_probe.unprivileged_unavailable(), "a child without CAP_IPC_LOCK")

    def limit() -> None:
        _probe._unprivileged(hard)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (soft, hard))

    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit,
    )


CHECK = ("-m", "securememory", "check")
# The control: the same command with the memlock skip removed, so every proof runs into the limit
NO_SKIP = (
    "-c",
    "import sys; from securememory import check; check._budget_skip = lambda p, i: None; "
    "sys.exit(check.main(sys.argv[1:]))",
)
CHOSEN = ("--implementation", "guarded")  # guard pages and canary too; one keeps the test short


def _expected(limit: int, impl: str) -> dict[str, str]:
    """What each proof of ``impl`` must say under ``limit``: SKIP if it does not apply or the
    host lacks a tool, SKIP if its secrets need more than ``limit``, else PASS."""
    spec = get(impl)
    host_skips = {
        "not in a kernel core file": _inspect.kernel_core_unavailable(),
        "not in a gcore dump": _inspect.gcore_unavailable(),
        "sealed in an enclave": None if importlib.util.find_spec("nacl") else "no PyNaCl",
    }
    out = {}
    for proof in check.PROOFS:
        need = proof.locked_need(spec)
        skip = proof.not_for(spec) or host_skips.get(proof.name) or need > limit
        out[proof.name] = "skip" if skip else "pass"
    return out


def _impls_here() -> list[str]:
    skip_unless_available("guarded")
    return ["guarded"]


@pytest.mark.slow  # runs securememory check under a small limit
@pytest.mark.parametrize("limit", LIMITS)
def test_check_text_under_small_memlock(limit: int) -> None:
    """Under each limit: no FAIL, no traceback, exit 0; every proof whose secrets fit runs and
    PASSes, every other SKIPs with the limit and how root raises the hard limit."""
    impls = _impls_here()
    out = _as_user(limit, limit, *CHECK, *CHOSEN)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "FAIL" not in out.stdout, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1].startswith("all proofs that could run held (")
    columns = lines[1].split()[1:]
    for proof in check.PROOFS:
        row = next(line for line in lines if line.startswith(proof.name + "  "))
        marks = dict(zip(columns, row[len(proof.name) :].split()))
        for name in impls:
            assert marks[name] == _expected(limit, name)[proof.name].upper(), (proof.name, row)
    memlock_skips = [line for line in lines if "bytes of locked memory" in line]
    specs = [get(n) for n in impls]
    over = [p for p in check.PROOFS for i in specs if p.locked_need(i) > limit and not p.not_for(i)]
    assert bool(memlock_skips) == bool(over), out.stdout
    for line in memlock_skips:
        assert line.startswith("SKIP ") and f"RLIMIT_MEMLOCK is {limit // 1024} KiB" in line
        assert "limits.conf" in line and "LimitMEMLOCK=64K" in line, line


@pytest.mark.slow  # runs securememory check under a small limit
@pytest.mark.parametrize("limit", LIMITS)
def test_check_json_under_small_memlock(limit: int) -> None:
    """``--json`` says the same: ok, each proof's status as expected, skips with evidence."""
    impls = _impls_here()
    out = _as_user(limit, limit, *CHECK, "--json", *CHOSEN)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True
    assert (
        report["memlock"]["soft_limit"] == limit and not report["memlock"]["exempt (CAP_IPC_LOCK)"]
    )
    for name in impls:
        proofs = report["implementations"][name]["proofs"]
        assert {n: r["status"] for n, r in proofs.items()} == _expected(limit, name)
        for r in proofs.values():
            if "need" in r["evidence"]:
                assert r["evidence"]["soft_limit"] == limit and r["evidence"]["need"] > limit
                assert "limits.conf" in r["detail"]


@pytest.mark.slow  # runs securememory check under a small limit
def test_check_soft_limit_below_hard_says_ulimit() -> None:
    """A soft limit under a larger hard limit: the user can raise it, and is told `ulimit -l`."""
    _impls_here()
    out = _as_user(4096, 65536, *CHECK, *CHOSEN)
    assert out.returncode == 0, out.stdout + out.stderr
    skips = [line for line in out.stdout.splitlines() if "bytes of locked memory" in line]
    assert skips and all("`ulimit -l 64`" in s and "limits.conf" not in s for s in skips), skips


@pytest.mark.slow  # runs securememory check under a small limit
@pytest.mark.parametrize(("limit", "as_json"), [(0, False), (4096, True)], ids=["text", "json"])
def test_check_control_proofs_past_the_limit_fail(limit: int, as_json: bool) -> None:
    """Control: with the memlock skip removed, the same proofs run into the limit for real and
    fail, and the exit status is 1: the SKIPs above are what keeps it 0, not a constant."""
    _impls_here()
    args = ("--json",) if as_json else ()
    out = _as_user(limit, limit, *NO_SKIP, *args, *CHOSEN)
    assert out.returncode == 1, out.stdout + out.stderr
    if as_json:
        report = json.loads(out.stdout)
        assert report["ok"] is False
        fails = [
            r["detail"]
            for i in report["implementations"].values()
            for r in i.get("proofs", {}).values()
            if r["status"] == "fail"
        ]
    else:
        assert "SOME GUARANTEES FAILED" in out.stdout
        fails = [line for line in out.stdout.splitlines() if line.startswith("FAIL ")]
    assert fails and any("RLIMIT_MEMLOCK" in f or "MemoryLockError" in f for f in fails), fails


def test_how_to_raise() -> None:
    """The advice follows the hard limit: `ulimit -l` when it allows, else what root changes."""
    free = MemlockBudget(4096, None, False, 0)
    assert "`ulimit -l 64`" in check.how_to_raise(free, 8192)
    capped = MemlockBudget(4096, 4096, False, 0)
    advice = check.how_to_raise(capped, 8192)
    assert "limits.conf" in advice and "LimitMEMLOCK=64K" in advice and "ulimit" not in advice
    big = MemlockBudget(0, None, False, 4096)
    assert "`ulimit -l 132`" in check.how_to_raise(big, 128 * 1024)
