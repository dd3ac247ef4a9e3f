"""``securememory check``: prove, on this host, every guarantee of every implementation.

Each proof runs a child process (:mod:`securememory._probe`) that holds real secrets, and looks at
it from outside with :mod:`securememory._inspect`: smaps flags and ``Locked:``, a child killed by
SIGSEGV, a real core file and a ``gcore`` dump scanned for the secret, ``/proc/<pid>/mem`` scanned
after close. Every scan carries its control: a plain ``bytearray`` copy of a second secret in the
same child, which the same scan must find, so a scan that cannot see memory fails instead of
passing.

A proof the host cannot run (no gdb, a piped ``core_pattern``...) is *skipped* with its reason: it
is not claimed. The exit status is 0 only if every proof that ran held.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from . import _inspect, _probe, secretmem
from ._secret import stats

IMPLEMENTATIONS = ("secretmem", "guarded", "protected")
SIZE = 32


@dataclass
class Result:
    """The outcome of one proof: ``status`` is ``pass``, ``fail`` or ``skip``."""

    status: str
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)


def _ok(cond: bool, detail: str, **evidence: Any) -> Result:
    return Result("pass" if cond else "fail", detail, evidence)


def _range(a: dict[str, Any]) -> tuple[int, int]:
    return a["inner"], a["inner"] + a["inner_len"]


def prove_locked(impl: str) -> Result:
    """The inner pages are locked: smaps ``Locked:`` equals their size and ``lo`` is set."""
    with _probe.Probe() as p:
        a = p.send(f"make {impl} {SIZE}")
        entries = _inspect.smaps(p.pid, *_range(a))
        locked = sum(m.fields.get("Locked", 0) for m in entries)
        flags = set().union(*(m.flags for m in entries))
        guards = _inspect.smaps(p.pid, a["base"], a["base"] + a["mapped"])
        guard_locked = sum(m.fields.get("Locked", 0) for m in guards) - locked
    return _ok(
        locked == a["inner_len"] and "lo" in flags and guard_locked == 0,
        f"Locked: {locked} of {a['inner_len']} bytes, guard pages {guard_locked}",
        locked=locked,
        inner_len=a["inner_len"],
        flags=sorted(flags),
        guard_locked=guard_locked,
    )


def prove_no_access(impl: str) -> Result:
    """``---`` when idle and ``r--`` during an access; a raw read of the idle data is SIGSEGV."""
    with _probe.Probe() as p:
        a = p.send(f"make {impl} {SIZE}")
        idle = [m.perms for m in _inspect.smaps(p.pid, *_range(a))]
        p.send("hold 0")
        held = [m.perms for m in _inspect.smaps(p.pid, *_range(a))]
        p.send("release 0")
        in_access = p.send("peek_in_access 0").get("byte") is True  # control: the read works
        try:
            p.send("peek 0")
            sig = None
        except _probe.ProbeDied as e:
            sig = e.signal
    return _ok(
        all(x.startswith("---") for x in idle)
        and all(x.startswith("r--") for x in held)
        and in_access
        and sig == 11,
        f"idle {idle}, in access {held}; raw read in access ok={in_access}, idle killed by "
        f"signal {sig}",
        idle=idle,
        held=held,
        read_in_access=in_access,
        idle_read_signal=sig,
    )


def _dump_proof(impl: str, dump: Callable[[_probe.Probe, str], str]) -> Result:
    """Two secrets in one child, a plain bytearray copy of the second (the control); dump the
    child; the first secret must be absent and the control present."""
    with tempfile.TemporaryDirectory() as tmp, _probe.Probe(cwd=tmp) as p:
        secret = p.send(f"make {impl} {SIZE}")["bytes"]
        control = p.send(f"make {impl} {SIZE}")["bytes"]
        p.send("control 1")
        path = dump(p, tmp)
        scan = _inspect.scan_file(path, [secret, control])
    found, seen = len(scan.found(secret)), len(scan.found(control))
    return _ok(
        found == 0 and seen > 0,
        f"secret found {found} times, control copy {seen} times in {scan.bytes_read} bytes",
        secret_hits=found,
        control_hits=seen,
        dump_bytes=scan.bytes_read,
    )


def _kernel_core(p: _probe.Probe, tmp: str) -> str:
    with contextlib.suppress(_probe.ProbeDied):  # it dies of SIGABRT, as it should
        p.send("core")
    path = _inspect.find_core(tmp)
    if path is None:
        raise RuntimeError("the child aborted but left no core file")
    return path


def prove_kernel_core(impl: str) -> Result:
    """A real kernel core file of a child holding the secret does not contain it."""
    reason = _inspect.kernel_core_unavailable()
    if reason:
        return Result("skip", reason)
    return _dump_proof(impl, _kernel_core)


def prove_gcore(impl: str) -> Result:
    """A ``gcore`` dump of a live child holding the secret does not contain it."""
    reason = _inspect.gcore_unavailable()
    if reason:
        return Result("skip", reason)
    return _dump_proof(impl, lambda p, tmp: _inspect.gcore(p.pid, tmp))


def _wipe_proof(impl: str, how: str) -> Result:
    with _probe.Probe() as p:
        a = p.send(f"make {impl} {SIZE}")
        secret = a["bytes"]
        control = p.send(f"make {impl} {SIZE}")["bytes"]
        p.send("control 1")
        live = _inspect.scan_memory(p.pid, [secret])
        outside = live.found(secret, outside=_range(a))
        inside = len(live.found(secret)) - len(outside)
        answer = p.send(f"{how} 0")
        p.send("close 1")
        after = _inspect.scan_memory(p.pid, [secret, control])
    warned = [w for w in answer.get("warnings", []) if w.startswith("ResourceWarning")]
    found, seen = len(after.found(secret)), len(after.found(control))
    ok = not outside and found == 0 and seen > 0 and (how == "close" or bool(warned))
    return _ok(
        ok,
        f"while open: {inside} copy in its own pages, {len(outside)} elsewhere; after {how}: "
        f"{found} copies, control {seen}" + (f"; {warned[0]}" if warned else ""),
        in_own_pages=inside,
        elsewhere_while_open=len(outside),
        after=found,
        control_hits=seen,
        warnings=warned,
        bytes_scanned=after.bytes_read,
    )


def prove_wiped_on_close(impl: str) -> Result:
    """No copy of the secret anywhere in the child after ``close()`` (``/proc/<pid>/mem``)."""
    return _wipe_proof(impl, "close")


def prove_wiped_on_gc(impl: str) -> Result:
    """No copy after the garbage collector reaps an unclosed secret, with a ResourceWarning."""
    return _wipe_proof(impl, "drop")


def prove_fork(impl: str) -> Result:
    """A forked child sees zeros (``MADV_WIPEONFORK``) or dies touching it (``MADV_DONTFORK``)."""
    with _probe.Probe() as p:
        p.send(f"make {impl} {SIZE}")
        a = p.send("fork 0")
    refused = f"library refused use in the child: {a['refused']}"
    if impl == "secretmem":
        return _ok(
            a["refused"] and a["signal"] == 11,
            f"{refused}; raw read killed it by signal {a['signal']}",
            **a,
        )
    return _ok(
        a["refused"] and a["zero"] and not a["seen_secret"],
        f"{refused}; raw read saw zeros: {a['zero']}",
        **a,
    )


def prove_guards(impl: str) -> Result:
    """One byte past the end is SIGSEGV (guard page); one byte before is a CanaryError."""
    if impl == "protected":
        return Result("skip", "protected memory has no guard pages (use guarded)")
    with _probe.Probe() as p:
        p.send(f"make {impl} {SIZE}")
        under = p.send("underflow 0")
        p.send(f"make {impl} {SIZE}")
        try:
            p.send("overflow 1")
            sig = None
        except _probe.ProbeDied as e:
            sig = e.signal
    canary = str(under.get("error", "")).startswith("CanaryError") and under["closed"]
    return _ok(
        sig == 11 and canary,
        f"write past the end: signal {sig}; write before the data: {under.get('error')}",
        overflow_signal=sig,
        underflow=under,
    )


def prove_direct_map(impl: str) -> Result:
    """secretmem only: ``/proc/<pid>/mem`` cannot read the pages (the guarded control can)."""
    if impl != "secretmem":
        return Result("skip", "only secretmem pages leave the kernel's direct map")
    with _probe.Probe() as p:
        a = p.send(f"make {impl} {SIZE}")
        control_a = p.send(f"make guarded {SIZE}")
        scan = _inspect.scan_memory(p.pid, [a["bytes"], control_a["bytes"]])
    lo = a["inner"]
    unreadable = any(start <= lo < end for start, end, _ in scan.unreadable)
    found, seen = len(scan.found(a["bytes"])), len(scan.found(control_a["bytes"]))
    return _ok(
        unreadable and found == 0 and seen == 1,
        f"secretmem range unreadable: {unreadable}, found {found}; guarded control found {seen}",
        unreadable=unreadable,
        secret_hits=found,
        control_hits=seen,
    )


def prove_memlock_budget(impl: str) -> Result:
    """Over ``RLIMIT_MEMLOCK`` (a child without CAP_IPC_LOCK): MemoryLockError, nothing leaked,
    both from the library's pre-check and from the kernel's own refusal."""
    reason = _probe.unprivileged_unavailable()
    if reason:
        return Result("skip", reason)
    answers = {}
    for how in ("precheck", "kernel"):
        with _probe.Probe(memlock=16 * 4096) as p:
            answers[how] = p.send(f"fill {impl} {SIZE} {how}")
    ok, notes = True, []
    for how, a in answers.items():
        before, after = a["before"], a["after"]
        same = all(before[k] == after[k] for k in ("live_secrets", "bytes_mapped", "bytes_locked"))
        ok = ok and a["made"] > 0 and "RLIMIT_MEMLOCK" in a["error"] and same
        ok = ok and a["vmlck"] == after["bytes_locked"]
        notes.append(f"{how}: {a['made']} fit, then MemoryLockError (errno {a['errno']})")
    ok = ok and answers["kernel"]["errno"] is not None
    return _ok(
        ok,
        "; ".join(notes) + " in 64 KiB; nothing leaked",
        made=answers["precheck"]["made"],
        made_kernel=answers["kernel"]["made"],
        error=answers["precheck"]["error"],
        kernel_errno=answers["kernel"]["errno"],
    )


PROOFS: dict[str, Callable[[str], Result]] = {
    "locked in RAM": prove_locked,
    "no access when idle": prove_no_access,
    "not in a kernel core file": prove_kernel_core,
    "not in a gcore dump": prove_gcore,
    "wiped after close": prove_wiped_on_close,
    "wiped after GC": prove_wiped_on_gc,
    "hidden from forked child": prove_fork,
    "guard pages and canary": prove_guards,
    "out of the direct map": prove_direct_map,
    "memlock budget enforced": prove_memlock_budget,
}


def run(implementations: tuple[str, ...] = IMPLEMENTATIONS) -> dict[str, Any]:
    """Run every proof for every implementation the host offers; return the report."""
    report: dict[str, Any] = {"implementations": {}, "host": {}}
    avail = secretmem.available()
    for impl in implementations:
        if impl == "secretmem" and not avail:
            report["implementations"][impl] = {"unavailable": avail.reason}
            continue
        results: dict[str, Any] = {}
        for name, proof in PROOFS.items():
            try:
                results[name] = asdict(proof(impl))
            except Exception as e:  # a proof that cannot run to the end has not held
                results[name] = asdict(Result("fail", f"{type(e).__name__}: {e}"))
        with _probe.Probe() as p:
            a = p.send(f"make {impl} {SIZE}")
        report["implementations"][impl] = {
            "proofs": results,
            "per_secret": {"mapped": a["mapped"], "locked": a["inner_len"], "size": SIZE},
        }
    st = stats()
    report["memlock"] = {
        "soft_limit": st.memlock_limit,
        "hard_limit": st.memlock_hard_limit,
        "exempt (CAP_IPC_LOCK)": st.memlock_exempt,
        "locked by this process": st.process_locked,
        "available": st.memlock_available,
    }
    report["host"] = {
        "secretmem": avail.reason or "available",
        "kernel core file": _inspect.kernel_core_unavailable() or "available",
        "gcore": _inspect.gcore_unavailable() or "available",
        "unprivileged child": _probe.unprivileged_unavailable() or "available",
    }
    report["ok"] = all(
        r["status"] != "fail"
        for impl in report["implementations"].values()
        for r in impl.get("proofs", {}).values()
    )
    return report


def format_table(report: dict[str, Any]) -> str:
    """The report as a table a person can read."""
    impls = [i for i, v in report["implementations"].items() if "proofs" in v]
    width = max(len(n) for n in PROOFS) + 2
    lines = ["guarantee".ljust(width) + "".join(i.ljust(12) for i in impls)]
    skips: dict[str, str] = {}
    for name in PROOFS:
        row = name.ljust(width)
        for impl in impls:
            r = report["implementations"][impl]["proofs"][name]
            row += {"pass": "PASS", "fail": "FAIL", "skip": "n/a"}[r["status"]].ljust(12)
            if r["status"] == "skip":
                skips.setdefault(name, r["detail"])
        lines.append(row)
    lines.append(
        "per 32-byte secret".ljust(width)
        + "".join(
            "{mapped}/{locked}".format(**report["implementations"][i]["per_secret"]).ljust(12)
            for i in impls
        )
        + " (bytes mapped/locked)"
    )
    lines.append("")
    for impl, v in report["implementations"].items():
        if "unavailable" in v:
            lines.append(f"{impl}: unavailable: {v['unavailable']}")
        for name, r in v.get("proofs", {}).items():
            if r["status"] == "fail":
                lines.append(f"FAIL {impl} / {name}: {r['detail']}")
    for name, why in skips.items():
        lines.append(f"n/a  {name}: {why}")
    lines.append("memlock: " + ", ".join(f"{k} {v}" for k, v in report["memlock"].items()))
    lines.append("host: " + ", ".join(f"{k}: {v}" for k, v in report["host"].items()))
    lines.append("all claimed guarantees held" if report["ok"] else "SOME GUARANTEES FAILED")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``securememory check``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="securememory check", description="Prove securememory's guarantees on this host."
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--implementation", choices=IMPLEMENTATIONS, action="append", help="only these"
    )
    args = parser.parse_args(argv)
    report = run(tuple(args.implementation or IMPLEMENTATIONS))
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
