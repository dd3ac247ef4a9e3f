"""Tests of the benchmark harness (``python -m benchmarks``): the shape and consistency of its
report, not the speed of anything. One quick run on tiny N in a subprocess, shared by the tests."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks package lives at the repository root
    sys.path.insert(0, str(ROOT))

from benchmarks import report as R  # noqa: E402
from benchmarks.__main__ import parse_args, render  # noqa: E402
from benchmarks.ours import IMPLEMENTATIONS, unavailable  # noqa: E402
from benchmarks.scale import Plan, _order, scale_ours  # noqa: E402
from benchmarks.timing import Stat, quantile  # noqa: E402

SIZES = (1, 10)
STATUSES = {"met", "not met", "not evaluated"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    """(report.json, printed output, output directory) of one tiny quick run."""
    out = tmp_path_factory.mktemp("bench-out")
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--sizes", ",".join(map(str, SIZES))]
    cmd += ["--rounds", "3", "--round-ms", "0.5", "--out", str(out), "--silent"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    return report, done.stdout, out


def _report(run: tuple[dict[str, Any], str, Path]) -> dict[str, Any]:
    return run[0]


def _skipped(report: dict[str, Any]) -> set[str]:
    return {s["what"] for s in report["skipped"]}


def _ids(report: dict[str, Any]) -> set[str]:
    return {r["id"] for r in report["results"]}


def test_top_level_keys(run: tuple[dict[str, Any], str, Path]) -> None:
    report = _report(run)
    assert set(report) == {
        "meta",
        "skipped",
        "results",
        "footprint",
        "memlock_child",
        "python_heap_per_secret",
        "targets",
    }
    meta = report["meta"]
    assert meta["mode"] == "quick"
    assert meta["rounds"] == 3
    assert meta["sizes"] == list(SIZES)
    assert meta["secret_bytes"] == 32
    assert meta["seconds"] > 0


def test_every_operation_is_present(run: tuple[dict[str, Any], str, Path]) -> None:
    report = _report(run)
    ids, skipped = _ids(report), _skipped(report)
    impls = [i for i in IMPLEMENTATIONS if unavailable(i) is None]
    assert report["meta"]["implementations"] == impls
    for i in IMPLEMENTATIONS:
        assert (i in impls) != (i in skipped)

    busy = [R.BUSY_PY] + ([] if f"{R.ACCESS} | {R.BUSY_C}" in skipped else [R.BUSY_C])
    want = set()
    for impl in impls:
        for case in [R.ONE, R.ONE_CM, R.TWO_SAME, R.TWO_DIFF, *busy]:
            want.add(R.row_id(R.ACCESS, case, impl))
        for case in (R.NEW, R.RANDOM):
            want.add(R.row_id(R.CREATE_CLOSE, case, impl))
        for n in SIZES:
            want.add(R.row_id(R.ACCESS, R.n_case(n), impl))
            want.add(R.row_id(R.CREATE, R.n_case(n), impl))
    want |= {
        R.row_id(R.ACCESS, R.ONE, R.BYTEARRAY),
        R.row_id(R.CREATE_CLOSE, R.PEER_CREATE, R.BYTEARRAY),
        R.row_id(R.MPROTECT, R.ONE, R.CTYPES),
        R.row_id(R.MAPLOCK, R.PAGE1, R.CTYPES),
        R.row_id(R.BZERO, R.B32, R.CTYPES),
    }
    if "libsodium" not in skipped:
        for case in [R.ONE, R.TWO_DIFF, *busy]:
            want.add(R.row_id(R.ACCESS, case, R.SODIUM))
        want.add(R.row_id(R.CREATE_CLOSE, R.PEER_CREATE, R.SODIUM))
        for n in SIZES:
            want.add(R.row_id(R.ACCESS, R.n_case(n), R.SODIUM))
            want.add(R.row_id(R.CREATE, R.n_case(n), R.SODIUM))
    if "C floor" not in skipped:
        for case in [R.ONE, R.ONE_PER_CALL, R.FLOOR_TWO, *busy]:
            want.add(R.row_id(R.MPROTECT, case, R.C))
        want |= {R.row_id(R.MAPLOCK, R.PAGE1, R.C), R.row_id(R.BZERO, R.B32, R.C)}
        for n in SIZES:
            for impl in impls:  # the floor among N regions in each implementation's layout
                want.add(R.row_id(R.MPROTECT, R.n_layout_case(n, impl), R.C))
    if "enclave" not in skipped:
        want.add(R.row_id(R.OPEN, R.ONE, R.ENCLAVE))
        want.add(R.row_id(R.SEAL, R.ONE, R.ENCLAVE))
        if "C floor" not in skipped:
            want.add(R.row_id(R.OPEN, R.ONE, R.MEMGUARD_C))
            want.add(R.row_id(R.OPEN, R.BUSY_C, R.ENCLAVE))
            want.add(R.row_id(R.MPROTECT, R.ENCLAVE_GROUP, R.C))
            want.add(R.row_id(R.MPROTECT, R.ENCLAVE_GROUP_BUSY, R.C))
        if R.ENVELOPE not in skipped:
            want.add(R.row_id(R.ENVELOPE, R.RECORD_1K, R.ENCLAVE))
            want.add(R.row_id(R.ENVELOPE, R.RECORD_1K, R.PLAIN_AESGCM))
    assert want <= ids, sorted(want - ids)


def test_rows_are_well_formed(run: tuple[dict[str, Any], str, Path]) -> None:
    rows = _report(run)["results"]
    assert len({r["id"] for r in rows}) == len(rows), "row ids must be unique"
    for r in rows:
        assert r["id"] == R.row_id(r["operation"], r["case"], r["implementation"])
        assert 0 < r["p10_ns"] <= r["median_ns"] <= r["p90_ns"], r["id"]
        assert r["batch"] >= 1
        assert r["rounds"] >= r["threads"] >= 1
        if r["threads"] > 1 and r["implementation"] != R.C:
            assert r["wall_ns_per_op"] > 0
        if r["case"].startswith("N="):
            assert r["n"] in SIZES


def test_ratios_are_consistent(run: tuple[dict[str, Any], str, Path]) -> None:
    rows = _report(run)["results"]
    by_id = {r["id"]: r for r in rows}
    with_floor = with_peer = 0
    for r in rows:
        for ref_key, ratio_key in (("floor_ref", "floor_ratio"), ("peer_ref", "peer_ratio")):
            ref = r[ref_key]
            if ref is None:
                assert r[ratio_key] is None, r["id"]
                continue
            assert ref in by_id and ref != r["id"]
            assert r[ratio_key] > 0
            assert math.isclose(r[ratio_key], r["median_ns"] / by_id[ref]["median_ns"])
        with_floor += r["floor_ref"] is not None
        with_peer += r["peer_ref"] is not None
    skipped = _skipped(_report(run))
    if "C floor" not in skipped:
        assert by_id[R.row_id(R.ACCESS, R.ONE, "protected")]["floor_ref"] == R.row_id(
            R.MPROTECT, R.ONE, R.C
        )
        assert with_floor > 0
    if "libsodium" not in skipped:
        assert by_id[R.row_id(R.CREATE_CLOSE, R.NEW, "guarded")]["peer_ref"] == R.row_id(
            R.CREATE_CLOSE, R.PEER_CREATE, R.SODIUM_C
        )
        assert with_peer > 0


def test_targets(run: tuple[dict[str, Any], str, Path]) -> None:
    report = _report(run)
    targets = {t["id"]: t for t in report["targets"]}
    assert set(targets) == {"a", "b", "c", "d", "e", "f", "g", "h"}
    by_id = {r["id"]: r for r in report["results"]}
    for t in targets.values():
        assert t["status"] in STATUSES
        assert t["checks"]
        assert all(c["status"] in STATUSES for c in t["checks"])
        if all(c["status"] == "met" for c in t["checks"]):
            assert t["status"] == "met"
        if any(c["status"] == "not met" for c in t["checks"]):
            assert t["status"] == "not met"
    for c in targets["a"]["checks"]:
        row = by_id[R.row_id(R.ACCESS, R.ONE, c["implementation"])]
        parts = []
        if "floor_ratio" in c:
            assert c["floor_ratio"] == row["floor_ratio"]
            parts.append(c["floor_ratio"] <= R.ACCESS_TARGET_FLOOR_RATIO)
        if "peer_ratio" in c:
            assert c["peer_ratio"] == row["peer_ratio"]
            parts.append(c["peer_ratio"] < 1)
        want = "not met" if not all(parts) else "met" if len(parts) == 2 else "not evaluated"
        assert c["status"] == want
    for c in targets["b"]["checks"]:
        if c["status"] != "not evaluated":
            assert (c["status"] == "met") == (c["peer_ratio"] <= 1.0)
    for c in targets["c"]["checks"]:  # N=10000 was not measured: a ratio, but no verdict
        assert c["status"] == "not evaluated"
        assert c["max_n"] == max(SIZES)
        assert math.isclose(c["ratio"], c["access_ns_at_max_n"] / c["access_ns_at_1"])
    limits = {
        "e": ("floor_ratio", R.OPEN_TARGET_FLOOR_RATIO),
        "f": ("floor_ratio", R.OPEN_BUSY_TARGET_RATIO),
        "g": ("floor_ratio", R.SEAL_TARGET_OPEN_RATIO),
        "h": ("peer_ratio", R.ENVELOPE_TARGET_PEER_RATIO),
    }
    for tid, (which, limit) in limits.items():  # the enclave targets: one row, one ratio each
        for c in targets[tid]["checks"]:
            if c["status"] != "not evaluated":
                assert c[which] == by_id[c["row"]][which]
                assert (c["status"] == "met") == (c[which] <= limit)
    heap = report["python_heap_per_secret"]
    for c in targets["d"]["checks"]:
        assert c["heap_bytes_per_secret"] == heap[c["implementation"]] > 0
        assert (c["status"] == "met") == (c["heap_bytes_per_secret"] <= R.HEAP_TARGET_BYTES)


def test_footprint_and_memlock_child(run: tuple[dict[str, Any], str, Path]) -> None:
    report = _report(run)
    impls = report["meta"]["implementations"]
    prints = {(f["implementation"], f["n"]): f for f in report["footprint"]}
    assert set(prints) == {(i, n) for i in impls for n in SIZES}
    for f in prints.values():
        assert f["bytes_locked_per_secret"] > 0
        assert f["bytes_mapped_per_secret"] >= f["bytes_locked_per_secret"]
    mem = report["memlock_child"]
    if "memlock child" in _skipped(report):
        pytest.skip("the memlock child could not run here")
    assert mem["memlock_exempt"] is False
    for impl in impls:
        count = mem["counts"][impl]["count"]
        assert 0 < count <= mem["limit_bytes"] // 4096, impl


def test_outputs(run: tuple[dict[str, Any], str, Path]) -> None:
    report, printed, out = run
    assert "median ns" in printed and "x floor" in printed and "x peer" in printed
    for t in ("a", "b", "c"):
        assert f"target ({t})" in printed
    assert render(report).splitlines()[0] == printed.splitlines()[0]
    chart = out / "chart.png"
    if "chart.png" in _skipped(report):
        assert not chart.exists()
    else:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stat_and_quantile() -> None:
    s = Stat.of([5.0, 1.0, 3.0, 2.0, 4.0], batch=10)
    assert (s.median_ns, s.rounds, s.batch) == (3.0, 5, 10)
    assert math.isclose(s.p10_ns, 1.4) and math.isclose(s.p90_ns, 4.6)
    assert quantile([7.0], 0.9) == 7.0
    with pytest.raises(ValueError):
        Stat.of([], batch=1)


def test_apply_ratios_on_synthetic_rows() -> None:
    def row(op: str, case: str, impl: str, ns: float, n: int | None = None) -> R.Row:
        return R.Row.of(op, case, impl, Stat(ns, ns, ns, 1, 1), n=n)

    rows = [
        row(R.MPROTECT, R.ONE, R.C, 1000),
        row(R.ACCESS, R.ONE, R.SODIUM, 2000),
        row(R.ACCESS, R.ONE, "guarded", 3000),
        row(R.ACCESS, R.n_case(1), "protected", 4000, n=1),  # its floor and peer are missing
    ]
    R.apply_ratios(rows)
    c, sodium, guarded, at_n = rows
    assert (c.floor_ratio, c.peer_ratio) == (None, None)
    assert (sodium.floor_ratio, sodium.peer_ratio) == (2.0, None)
    assert (guarded.floor_ratio, guarded.peer_ratio) == (3.0, 1.5)
    assert (at_n.floor_ref, at_n.floor_ratio, at_n.peer_ratio) == (None, None, None)
    a = {t.id: t for t in R.targets(rows, ["guarded"])}["a"]
    assert a.status == "not met" and a.checks[0]["floor_ratio"] == 3.0


def test_cli_arguments() -> None:
    cfg = parse_args(["--quick", "--sizes", "10,1,10", "--out", "x", "--rounds", "2"])
    assert cfg.quick and cfg.sizes == (1, 10) and cfg.out == Path("x") and cfg.n_rounds == 2
    assert parse_args([]).sizes == (1, 10, 100, 1000, 10_000)
    with pytest.raises(SystemExit):
        parse_args(["--sizes", "0,5"])
    with pytest.raises(SystemExit):
        parse_args(["--sizes", "a"])


def test_scale_visits_go_up_and_down_and_pool_their_samples() -> None:
    """The full mode's visits of the sizes (the quick run above makes one): up, down, down, up,
    and each row pools the rounds of every visit."""
    plan = Plan((1, 3), 4, 2, 200_000, 1)
    assert [list(_order(plan, v)) for v in range(4)] == [[1, 3], [3, 1], [3, 1], [1, 3]]
    impl = next(i for i in IMPLEMENTATIONS if unavailable(i) is None)
    rows, prints = scale_ours(impl, plan, random.Random(1), None)
    access = {r.n: r.rounds for r in rows if r.operation == R.ACCESS}
    assert access == {1: 8, 3: 8}
    assert [p.n for p in prints] == [1, 3]  # the memory per secret, at the first visit only
    assert all(p.bytes_locked_per_secret for p in prints)
