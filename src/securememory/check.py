"""``securememory check``: prove, on this host, every guarantee of every implementation.

Each proof runs a child process (:mod:`securememory._probe`) that holds real secrets, and looks at
it from outside with :mod:`securememory._inspect`: smaps flags and ``Locked:``, a child killed by
SIGSEGV, a real core file and a ``gcore`` dump scanned for the secret, ``/proc/<pid>/mem`` scanned
after close. Every scan carries its control: a plain ``bytearray`` copy of a second secret in the
same child, which the same scan must find, so a scan that cannot see memory fails instead of
passing.

A proof the host cannot run (no gdb, a piped ``core_pattern``, a memlock limit too small for the
secrets it needs...) is *skipped* with its reason and what would allow it: it is not claimed. The
exit status is 0 only if every proof that ran held.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal

from . import _implementations, _inspect, _probe
from ._implementations import IMPLEMENTATIONS, Implementation
from ._process import BACKEND, PAGE_SIZE, MemlockBudget, memlock_budget, stats

SIZE = 32
Status = Literal["pass", "fail", "skip"]


@dataclass(frozen=True)
class Result:
    """The outcome of one proof: ``status`` is ``pass``, ``fail`` or ``skip``."""

    status: Status
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImplementationReport:
    """Every proof of one implementation, or why the host cannot make it at all."""

    name: str
    unavailable: str | None = None
    proofs: dict[str, Result] = field(default_factory=dict)
    per_secret: dict[str, int] | None = None  # bytes mapped and locked by one 32-byte secret


@dataclass(frozen=True)
class Report:
    """What ``securememory check`` found. :meth:`as_json` is the ``--json`` output."""

    backend: str
    default: str  # what SecretFactory() makes here
    implementations: tuple[ImplementationReport, ...]
    memlock: dict[str, Any]
    host: dict[str, str]

    @property
    def ok(self) -> bool:
        """Whether every proof that ran held."""
        return all(r.status != "fail" for i in self.implementations for r in i.proofs.values())

    def as_json(self) -> dict[str, Any]:
        impls: dict[str, Any] = {}
        for i in self.implementations:
            if i.unavailable is not None:
                impls[i.name] = {"unavailable": i.unavailable}
            else:
                impls[i.name] = {
                    "proofs": {n: asdict(r) for n, r in i.proofs.items()},
                    "per_secret": i.per_secret,
                }
        return {
            "backend": self.backend,
            "default": self.default,
            "implementations": impls,
            "memlock": self.memlock,
            "host": self.host,
            "ok": self.ok,
        }


def _ok(cond: bool, detail: str, **evidence: Any) -> Result:
    return Result("pass" if cond else "fail", detail, evidence)


def _range(a: dict[str, Any]) -> tuple[int, int]:
    return a["inner"], a["inner"] + a["inner_len"]


def _make(p: _probe.Probe, impl: Implementation) -> dict[str, Any]:
    return p.send(f"make {impl.name} {SIZE}")


def prove_locked(impl: Implementation) -> Result:
    """The inner pages are locked: smaps ``Locked:`` equals their size and ``lo`` is set."""
    with _probe.Probe() as p:
        a = _make(p, impl)
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


def prove_no_access(impl: Implementation) -> Result:
    """``---`` when idle and ``r--`` during an access; a raw read of the idle data is SIGSEGV."""
    with _probe.Probe() as p:
        a = _make(p, impl)
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


def _dump_proof(impl: Implementation, dump: Callable[[_probe.Probe, str], str]) -> Result:
    """Two secrets in one child, a plain bytearray copy of the second (the control); dump the
    child; the first secret must be absent and the control present."""
    with tempfile.TemporaryDirectory() as tmp, _probe.Probe(cwd=tmp) as p:
        secret = _make(p, impl)["bytes"]
        control = _make(p, impl)["bytes"]
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


def prove_kernel_core(impl: Implementation) -> Result:
    """A real kernel core file of a child holding the secret does not contain it."""
    reason = _inspect.kernel_core_unavailable()
    if reason:
        return Result("skip", reason)
    return _dump_proof(impl, _kernel_core)


def prove_gcore(impl: Implementation) -> Result:
    """A ``gcore`` dump of a live child holding the secret does not contain it."""
    reason = _inspect.gcore_unavailable()
    if reason:
        return Result("skip", reason)
    return _dump_proof(impl, lambda p, tmp: _inspect.gcore(p.pid, tmp))


def _wipe_proof(impl: Implementation, how: str) -> Result:
    with _probe.Probe() as p:
        a = _make(p, impl)
        secret = a["bytes"]
        control = _make(p, impl)["bytes"]
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


def prove_wiped_on_close(impl: Implementation) -> Result:
    """No copy of the secret anywhere in the child after ``close()`` (``/proc/<pid>/mem``)."""
    return _wipe_proof(impl, "close")


def prove_wiped_on_gc(impl: Implementation) -> Result:
    """No copy after the garbage collector reaps an unclosed secret, with a ResourceWarning."""
    return _wipe_proof(impl, "drop")


def prove_fork(impl: Implementation) -> Result:
    """A forked child is refused the parent's secret, can make and use its own, and dies of
    SIGSEGV if it touches the parent's pages (``MADV_DONTFORK``: it has no mapping); the
    parent's secret is intact afterwards."""
    with _probe.Probe() as p:
        before = _make(p, impl)["bytes"]
        a = p.send("fork 0")
    intact = a.pop("bytes") == before
    return _ok(
        a["refused"] and a["own_secret"] and a["exit_status"] == 0 and a["signal"] == 11 and intact,
        f"library refused the parent's secret: {a['refused']}; child made its own: "
        f"{a['own_secret']}; raw read in a child killed it by signal {a['signal']}; parent's "
        f"secret intact: {intact}",
        intact=intact,
        **a,
    )


def _no_guards(impl: Implementation) -> str | None:
    return None if impl.guarded else f"{impl.name} memory has no guard pages (use guarded)"


def _in_direct_map(impl: Implementation) -> str | None:
    return None if impl.hidden_from_kernel else "only secretmem pages leave the kernel's direct map"


def prove_guards(impl: Implementation) -> Result:
    """One byte past the end is SIGSEGV (guard page); one byte before is a CanaryError."""
    reason = _no_guards(impl)
    if reason:
        return Result("skip", reason)
    with _probe.Probe() as p:
        _make(p, impl)
        under = p.send("underflow 0")
        _make(p, impl)
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


def prove_direct_map(impl: Implementation) -> Result:
    """``/proc/<pid>/mem`` cannot read the pages (a guarded control in the same child can)."""
    reason = _in_direct_map(impl)
    if reason:
        return Result("skip", reason)
    with _probe.Probe() as p:
        a = _make(p, impl)
        control_a = _make(p, _implementations.GUARDED)
        scan = _inspect.scan_memory(p.pid, [a["bytes"], control_a["bytes"]])
    lo = a["inner"]
    unreadable = any(start <= lo < end for start, end, _ in scan.unreadable)
    found, seen = len(scan.found(a["bytes"])), len(scan.found(control_a["bytes"]))
    return _ok(
        unreadable and found == 0 and seen == 1,
        f"{impl.name} range unreadable: {unreadable}, found {found}; guarded control found {seen}",
        unreadable=unreadable,
        secret_hits=found,
        control_hits=seen,
    )


MEMLOCK_PROOF_PAGES = 16


def prove_memlock_budget(impl: Implementation) -> Result:
    """Over ``RLIMIT_MEMLOCK`` (a child without CAP_IPC_LOCK): exactly as many secrets as the
    limit holds, then MemoryLockError naming the limit, and nothing leaked."""
    reason = _probe.unprivileged_unavailable()
    if reason:
        return Result("skip", reason)
    hard = memlock_budget().hard
    limit = MEMLOCK_PROOF_PAGES * PAGE_SIZE
    if hard is not None:
        limit = min(hard, limit)
    with _probe.Probe(memlock=limit) as p:
        a = p.send(f"fill {impl.name} {SIZE}")
    before, after = a["before"], a["after"]
    same = all(before[k] == after[k] for k in ("live_secrets", "bytes_mapped", "bytes_locked"))
    expected = limit // PAGE_SIZE
    ok = (
        a["made"] == expected
        and "RLIMIT_MEMLOCK" in a["error"]
        and same
        and a["vmlck"] == after["bytes_locked"]
        and a["errno"] is not None
    )
    return _ok(
        ok,
        f"{a['made']} secrets fit in {limit // 1024} KiB (expected {expected}), then "
        f"MemoryLockError (errno {a['errno']}); nothing leaked: {same}",
        made=a["made"],
        expected=expected,
        error=a["error"],
        errno=a["errno"],
    )


ENCLAVE_SCALE = 10_000
ENCLAVE_LOCKED_MAX = 64 * 1024
# the process's enclave keyring (enclave.c): a page for the key and the 16 KiB pool of plaintext
# slots (EK_SLOT 512 x EK_SLOTS 32), locked once on the first seal
ENCLAVE_KEYRING_LOCKED = PAGE_SIZE + 16 * 1024


def _enclave_key(halves: bytes) -> bytes:
    """The enclave key from its halves: BLAKE2b-256(L, person "securememory-key") xor R (the
    standard library's BLAKE2b is the same function as libsodium's)."""
    h = hashlib.blake2b(halves[:32], digest_size=32, person=b"securememory-key").digest()
    return bytes(a ^ b for a, b in zip(h, halves[32:]))


def prove_enclave(impl: Implementation) -> Result:
    """A secret sealed into an enclave (``secret.seal()``, then closed) is nowhere in the child's
    memory (``/proc/<pid>/mem``) or its ``gcore`` dump, nor is the key or either half of it
    outside the keyring; the control (a plain copy of the plaintext) is found by the same scan;
    10,000 more enclaves lock nothing more and map nothing each."""
    if importlib.util.find_spec("nacl") is None:
        return Result("skip", "PyNaCl is not installed: pip install 'securememory[enclave]'")
    with tempfile.TemporaryDirectory() as tmp, _probe.Probe(cwd=tmp) as p:
        plain = _make(p, impl)["bytes"]
        p.send("seal 0")
        control = _make(p, impl)["bytes"]
        p.send("seal 1")
        p.send("seal_control")
        scale = p.send(f"seal_many {ENCLAVE_SCALE}")
        k = p.send("enclave_key")
        key, halves = _enclave_key(k["bytes"]), k["bytes"]
        keyring = (k["start"], k["start"] + k["length"])
        needles = [plain, control, key, key[:16], key[16:], halves[:32], halves[32:]]
        live = _inspect.scan_memory(p.pid, needles)
        dump = None
        if _inspect.gcore_unavailable() is None:
            dump = _inspect.scan_file(_inspect.gcore(p.pid, tmp), needles)
    hidden = [plain, key, key[:16], key[16:], halves[:32], halves[32:]]
    leaks = sum(len(live.found(n, outside=keyring)) for n in hidden)
    if dump is not None:
        leaks += sum(len(dump.found(n)) for n in hidden)
    seen = len(live.found(control)) + (len(dump.found(control)) if dump is not None else 0)
    vmlck, maps = scale["vmlck"], scale["mappings"]
    flat = vmlck[1] == vmlck[0] and maps[1] - maps[0] <= 16
    small = scale["keyring_locked"] <= ENCLAVE_LOCKED_MAX
    scans = "memory scan" + (" and gcore dump" if dump is not None else " (gcore unavailable)")
    return _ok(
        leaks == 0 and seen > 0 and flat and small,
        f"{scans}: sealed data and key found {leaks} times, control copy {seen} times; "
        f"{ENCLAVE_SCALE} more enclaves: VmLck {vmlck[0]} -> {vmlck[1]} bytes, mappings "
        f"{maps[0]} -> {maps[1]}; keyring {scale['keyring_locked']} bytes locked"
        + (" (memfd_secret)" if scale["secretmem"] else ""),
        leaks=leaks,
        control_hits=seen,
        vmlck=vmlck,
        mappings=maps,
        keyring_locked=scale["keyring_locked"],
        gcore=dump is not None,
    )


@dataclass(frozen=True)
class Proof:
    """One guarantee: its name in the table, how it is proven, how many secrets it locks."""

    name: str
    run: Callable[[Implementation], Result]
    secrets: int  # locked secrets the child holds at once (its memlock need)
    not_for: Callable[[Implementation], str | None] = lambda impl: None  # why it does not apply
    extra_locked: int = 0  # locked bytes the child needs beyond its secrets

    def locked_need(self, impl: Implementation) -> int:
        """Bytes of locked memory the proof's child needs at once (0 for the memlock proof,
        which sets its own limit)."""
        return self.secrets * impl.layout(SIZE).locked + self.extra_locked


PROOFS: tuple[Proof, ...] = (
    Proof("locked in RAM", prove_locked, 1),
    Proof("no access when idle", prove_no_access, 1),
    Proof("not in a kernel core file", prove_kernel_core, 2),
    Proof("not in a gcore dump", prove_gcore, 2),
    Proof("wiped after close", prove_wiped_on_close, 2),
    Proof("wiped after GC", prove_wiped_on_gc, 2),
    Proof("hidden from forked child", prove_fork, 2),
    Proof("guard pages and canary", prove_guards, 2, _no_guards),
    Proof("out of the direct map", prove_direct_map, 2, _in_direct_map),
    Proof("memlock budget enforced", prove_memlock_budget, 0),
    Proof("sealed in an enclave", prove_enclave, 2, extra_locked=ENCLAVE_KEYRING_LOCKED),
)


RECOMMENDED_MEMLOCK_KIB = 64  # every proof runs, the memlock proof with its 16 pages


def _kib(n: int | None) -> str:
    return "unlimited" if n is None else f"{n // 1024} KiB"


def how_to_raise(budget: MemlockBudget, need: int) -> str:
    """How a user lets ``need`` more bytes be locked: ``ulimit -l`` while the hard limit allows,
    else what root must change (limits.conf, systemd's ``LimitMEMLOCK``)."""
    kib = max(RECOMMENDED_MEMLOCK_KIB, -(-(need + (budget.locked or 0)) // 1024))
    if budget.hard is None or budget.hard >= kib * 1024:
        return f"raise it with `ulimit -l {kib}` (KiB) in the shell that runs the program"
    return (
        f"the hard limit ({_kib(budget.hard)}) is below that, and only root can raise it: "
        f"`<user> hard memlock {kib}` in /etc/security/limits.conf (then log in again), "
        f"`LimitMEMLOCK={kib}K` in a systemd unit, or a process with CAP_IPC_LOCK"
    )


def _budget_skip(proof: Proof, impl: Implementation) -> Result | None:
    """A skip if the memlock budget cannot hold the secrets ``proof`` needs, else None."""
    need = proof.locked_need(impl)
    budget = memlock_budget()
    avail = budget.available()
    if avail is None or need <= avail:
        return None
    return Result(
        "skip",
        f"needs {need} bytes of locked memory; RLIMIT_MEMLOCK is {_kib(budget.soft)} (hard "
        f"{_kib(budget.hard)}), {avail} bytes left: {how_to_raise(budget, need)}",
        {"need": need, "available": avail, "soft_limit": budget.soft, "hard_limit": budget.hard},
    )


def _run_proof(proof: Proof, impl: Implementation) -> Result:
    reason = proof.not_for(impl)
    if reason is not None:
        return Result("skip", reason)
    skip = _budget_skip(proof, impl)
    if skip is not None:
        return skip
    try:
        return proof.run(impl)
    except Exception as e:  # a proof that cannot run to the end has not held
        return Result("fail", f"{type(e).__name__}: {e}")


def _per_secret(impl: Implementation) -> dict[str, int]:
    layout = impl.layout(SIZE)
    return {"mapped": layout.mapped, "locked": layout.locked, "size": SIZE}


def run(implementations: tuple[Implementation, ...] = IMPLEMENTATIONS) -> Report:
    """Run every proof for every implementation the host offers; return the report."""
    reports = []
    for impl in implementations:
        reason = impl.unavailable()
        if reason is not None:
            reports.append(ImplementationReport(impl.name, unavailable=reason))
            continue
        proofs = {proof.name: _run_proof(proof, impl) for proof in PROOFS}
        reports.append(ImplementationReport(impl.name, None, proofs, _per_secret(impl)))
    st = stats()
    default, skipped = "none", []
    for spec in _implementations.DEFAULT_ORDER:
        why = spec.unavailable()
        if why is None:
            default = spec.name
            break
        skipped.append(f"{spec.name} unavailable: {why}")
    return Report(
        backend=BACKEND,
        default=default + (f" ({'; '.join(skipped)})" if skipped else ""),
        implementations=tuple(reports),
        memlock={
            "soft_limit": st.memlock_limit,
            "hard_limit": st.memlock_hard_limit,
            "exempt (CAP_IPC_LOCK)": st.memlock_exempt,
            "locked by this process": st.process_locked,
            "available": st.memlock_available,
        },
        host={
            "kernel core file": _inspect.kernel_core_unavailable() or "available",
            "gcore": _inspect.gcore_unavailable() or "available",
            "unprivileged child": _probe.unprivileged_unavailable() or "available",
            "mappings": f"{st.mappings} of vm.max_map_count {st.mappings_limit}",
        },
    )


_MARK = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}


def _table_rows(report: Report) -> list[str]:
    impls = [i for i in report.implementations if i.unavailable is None]
    width = max(len(p.name) for p in PROOFS) + 2
    rows = ["guarantee".ljust(width) + "".join(i.name.ljust(12) for i in impls)]
    for proof in PROOFS:
        marks = "".join(_MARK[i.proofs[proof.name].status].ljust(12) for i in impls)
        rows.append(proof.name.ljust(width) + marks)
    rows.append(
        "per 32-byte secret".ljust(width)
        + "".join("{mapped}/{locked}".format(**(i.per_secret or {})).ljust(12) for i in impls)
        + " (bytes mapped/locked)"
    )
    return rows


def _grouped(report: Report, status: Status) -> dict[str, list[str]]:
    """``detail -> ["proof (implementation)", ...]`` for every result with ``status``."""
    groups: dict[str, list[str]] = {}
    for i in report.implementations:
        for name, r in i.proofs.items():
            if r.status == status:
                groups.setdefault(r.detail, []).append(f"{name} ({i.name})")
    return groups


def _counts(report: Report) -> dict[str, int]:
    counts = {"pass": 0, "fail": 0, "skip": 0}
    for i in report.implementations:
        for r in i.proofs.values():
            counts[r.status] += 1
    return counts


def _verdict(report: Report) -> str:
    c = _counts(report)
    ran = f"{c['pass'] + c['fail']} ran, {c['skip']} skipped"
    if report.ok:
        return f"all proofs that could run held ({ran})"
    return f"SOME GUARANTEES FAILED: {c['fail']} proofs ({ran})"


def format_table(report: Report) -> str:
    """The report as a table a person can read; identical skip reasons are given once."""
    lines = [f"backend: {report.backend}; SecretFactory() makes: {report.default}"]
    lines += _table_rows(report)
    lines.append("")
    lines += [
        f"{i.name}: unavailable: {i.unavailable}"
        for i in report.implementations
        if i.unavailable is not None
    ]
    for detail, where in _grouped(report, "fail").items():
        lines.append(f"FAIL {', '.join(where)}: {detail}")
    for detail, where in _grouped(report, "skip").items():
        lines.append(f"SKIP {', '.join(where)}: {detail}")
    lines.append("memlock: " + ", ".join(f"{k} {v}" for k, v in report.memlock.items()))
    lines.append("host: " + ", ".join(f"{k}: {v}" for k, v in report.host.items()))
    lines.append(_verdict(report))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``securememory check``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="securememory check", description="Prove securememory's guarantees on this host."
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--implementation",
        choices=[i.name for i in IMPLEMENTATIONS],
        action="append",
        help="only these",
    )
    args = parser.parse_args(argv)
    chosen = tuple(_implementations.get(n) for n in args.implementation or ()) or IMPLEMENTATIONS
    report = run(chosen)
    print(json.dumps(report.as_json(), indent=2) if args.json else format_table(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
