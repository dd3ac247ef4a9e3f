"""Rows, ratios to the floor and the peer, the targets (issue 10), and the table/JSON/PNG output."""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ours import IMPLEMENTATIONS as OURS
from .ours import is_secretmem
from .timing import Stat

# Implementation names of the reference rows.
C, CTYPES, SODIUM, BYTEARRAY = "C", "ctypes", "libsodium", "bytearray"
SODIUM_C = "libsodium from C"  # the peer's functions called in a C loop: no call overhead

# Operations and cases.
MPROTECT = "mprotect pair"
MAPLOCK = "mmap+mlock+munlock+munmap"
SECRETMEM_CYCLE = "memfd_secret+ftruncate+mmap+munmap+close"
BZERO = "explicit_bzero"
ACCESS = "access"
CREATE_CLOSE = "create+close"
CREATE = "create"

ONE = "1 thread"
ONE_CM = "1 thread, context manager"
ONE_PER_CALL = "1 thread, 1 pair per call"  # C floor: one pair per call from Python
BUSY_C = "busy C thread"
BUSY_PY = "busy Python thread"
TWO_SAME = "2 threads, same secret"
TWO_DIFF = "2 threads, different secrets"
NEW = "new(bytes32)"
RANDOM = "create_random(32)"
PAGE1 = "1 page"
B32 = "32 bytes"
FLOOR_TWO = "2 threads"
PEER_CREATE = "malloc(32)+free"  # libsodium; bytearray uses the same case name

# sealed enclaves (issue 11)
ENCLAVE = "enclave"
MEMGUARD_C = "memguard design, from C"  # two guarded, locked buffers per open (floor.c)
PLAIN_AESGCM = "cryptography AESGCM, bytes keys"
OPEN = "enclave open"
SEAL = "enclave seal"
ENVELOPE = "envelope encryption"
RECORD_1K = "1 KiB record, its own data key"
ENCLAVE_GROUP = "1 thread, enclave group"  # the floor measured beside the enclave rows
ENCLAVE_GROUP_BUSY = "busy C thread, enclave group"
OPEN_TARGET_FLOOR_RATIO = 1.0  # target (e): open <= the C floor of one mprotect pair
OPEN_BUSY_TARGET_RATIO = 1.2  # target (f): open with a busy C thread <= 1.2x open alone
SEAL_TARGET_OPEN_RATIO = 2.0  # target (g)
ENVELOPE_TARGET_PEER_RATIO = 3.0  # target (h): per record, against AESGCM with bytes keys

ACCESS_TARGET_FLOOR_RATIO = 1.3  # target (a)
CREATE_TARGET_PEER_RATIO = 1.0  # target (b), against libsodium called from C
HEAP_TARGET_BYTES = 512  # target (d): Python heap per live secret
FLAT_TOLERANCE = 1.2  # target (c): "flat" read as access@N=10000 <= 1.2 x access@N=1
FLAT_MAX_N = 10_000


def row_id(operation: str, case: str, implementation: str) -> str:
    return f"{operation} | {case} | {implementation}"


def n_case(n: int) -> str:
    return f"N={n}"


def n_layout_case(n: int, impl: str) -> str:
    """The case of the C floor among N regions in the layout (and backing) of ``impl``."""
    return f"N={n}, {impl} layout"


CASE_ORDER = [ONE, ONE_PER_CALL, ONE_CM, BUSY_C, BUSY_PY, TWO_SAME, TWO_DIFF, FLOOR_TWO, PAGE1, B32]
CASE_ORDER += [NEW, RANDOM, PEER_CREATE, RECORD_1K, ENCLAVE_GROUP, ENCLAVE_GROUP_BUSY]


@dataclass
class Row:
    """One measurement and its ratios. ``floor_ratio = median_ns / median_ns of floor_ref``,
    ``peer_ratio = median_ns / median_ns of peer_ref`` (``None`` where the reference is missing
    or the row is itself that reference)."""

    operation: str
    case: str
    implementation: str
    median_ns: float
    p10_ns: float
    p90_ns: float
    rounds: int
    batch: int
    n: int | None = None
    note: str = ""
    threads: int = 1
    backend: str = ""  # securememory's backend for its own rows ("native"), else empty
    wall_ns_per_op: float | None = None  # threaded rows: wall time / all threads' ops
    floor_ref: str | None = None
    peer_ref: str | None = None
    floor_ratio: float | None = None
    peer_ratio: float | None = None
    id: str = field(init=False)

    def __post_init__(self) -> None:
        self.id = row_id(self.operation, self.case, self.implementation)

    @classmethod
    def of(cls, operation: str, case: str, implementation: str, stat: Stat, **kw: Any) -> Row:
        return cls(
            operation,
            case,
            implementation,
            stat.median_ns,
            stat.p10_ns,
            stat.p90_ns,
            stat.rounds,
            stat.batch,
            **kw,
        )


def references(row: Row) -> tuple[str | None, str | None]:
    """The ids of the floor and the peer a row is compared with."""
    op, case, impl = row.operation, row.case, row.implementation
    floor: str | None = None
    peer: str | None = None
    if op in (MPROTECT, MAPLOCK, BZERO, SECRETMEM_CYCLE):
        if impl == C:  # the floors themselves; the per-call floor is set against the tight loop
            return (row_id(op, ONE, C) if case == ONE_PER_CALL else None), None
        return row_id(op, case, C), None
    if op == ACCESS:
        if row.n is not None:  # the same N, regions of the same layout, in the same group
            floor = row_id(MPROTECT, n_layout_case(row.n, impl), C) if impl in OURS else None
        elif case in (ONE, ONE_CM):
            floor = row_id(MPROTECT, ONE, C)
        elif case in (BUSY_C, BUSY_PY):
            floor = row_id(MPROTECT, case, C)
        elif case in (TWO_SAME, TWO_DIFF):
            floor = row_id(MPROTECT, FLOOR_TWO, C)
        peer_case = {ONE_CM: ONE, TWO_SAME: TWO_DIFF}.get(case, case)
        peer = row_id(ACCESS, peer_case, SODIUM)
    elif op == CREATE_CLOSE:
        secretmem = impl in OURS and is_secretmem(impl)
        floor = row_id(SECRETMEM_CYCLE if secretmem else MAPLOCK, PAGE1, C)
        peer = row_id(CREATE_CLOSE, PEER_CREATE, SODIUM_C)
    elif op == CREATE:
        floor = row_id(MAPLOCK, PAGE1, C)
        peer = row_id(CREATE, case, SODIUM)
    elif op == OPEN:
        if case == ONE:
            floor = row_id(MPROTECT, ENCLAVE_GROUP, C)
            peer = None if impl == MEMGUARD_C else row_id(OPEN, ONE, MEMGUARD_C)
        else:  # a busy thread: against the same open alone (target f)
            floor = row_id(OPEN, ONE, impl)
    elif op == SEAL:
        floor = row_id(OPEN, ONE, impl)
    elif op == ENVELOPE and impl != PLAIN_AESGCM:
        peer = row_id(ENVELOPE, case, PLAIN_AESGCM)
    if impl in (SODIUM, SODIUM_C):
        peer = None
    return floor, peer


def apply_ratios(rows: Sequence[Row]) -> None:
    """Set every row's references and ratios from the medians of the rows it refers to."""
    by_id = {r.id: r for r in rows}
    for r in rows:
        r.floor_ref, r.peer_ref = references(r)
        r.floor_ratio = ratio(r, by_id.get(r.floor_ref or ""))
        r.peer_ratio = ratio(r, by_id.get(r.peer_ref or ""))
        if r.floor_ref not in by_id:
            r.floor_ref = None
        if r.peer_ref not in by_id:
            r.peer_ref = None


def ratio(row: Row, ref: Row | None) -> float | None:
    if ref is None or ref is row or ref.median_ns <= 0:
        return None
    return row.median_ns / ref.median_ns


# -- targets ---------------------------------------------------------------------------------


@dataclass
class Target:
    id: str
    description: str
    status: str  # "met", "not met" or "not evaluated"
    checks: list[dict[str, Any]]


def _overall(checks: Sequence[dict[str, Any]]) -> str:
    statuses = [c["status"] for c in checks]
    if not statuses or "not evaluated" in statuses:
        return "not evaluated" if "not met" not in statuses else "not met"
    return "met" if all(s == "met" for s in statuses) else "not met"


def targets(
    rows: Sequence[Row], implementations: Iterable[str], heap: dict[str, float] | None = None
) -> list[Target]:
    by_id = {r.id: r for r in rows}
    impls = list(implementations)

    a_checks: list[dict[str, Any]] = []
    for impl in impls:
        r = by_id.get(row_id(ACCESS, ONE, impl))
        check: dict[str, Any] = {"implementation": impl}
        if r is None:
            check.update(status="not evaluated", reason="no access row")
        else:
            # Each half is judged when its reference exists; one failing half is enough.
            parts = []
            check["median_ns"] = r.median_ns
            if r.floor_ratio is not None:
                parts.append(r.floor_ratio <= ACCESS_TARGET_FLOOR_RATIO)
                check.update(floor_ratio=r.floor_ratio, floor_ratio_max=ACCESS_TARGET_FLOOR_RATIO)
            if r.peer_ratio is not None:
                parts.append(r.peer_ratio < 1.0)
                check.update(peer_ratio=r.peer_ratio, peer_ratio_max_exclusive=1.0)
            cold = by_id.get(row_id(MPROTECT, ONE_PER_CALL, C))
            if cold is not None and cold.floor_ratio is not None:  # context, not the target
                check["c_floor_one_pair_per_call_ratio"] = cold.floor_ratio
            if not all(parts):
                check["status"] = "not met"
            elif len(parts) == 2:
                check["status"] = "met"
            else:
                check.update(status="not evaluated", reason="C floor or libsodium peer missing")
        a_checks.append(check)

    b_checks: list[dict[str, Any]] = []
    for case in (NEW, RANDOM):
        r = by_id.get(row_id(CREATE_CLOSE, case, "guarded"))
        check = {"implementation": "guarded", "case": case}
        if r is None or r.peer_ratio is None:
            check.update(status="not evaluated", reason="row or libsodium peer missing")
        else:
            check.update(
                status="met" if r.peer_ratio <= CREATE_TARGET_PEER_RATIO else "not met",
                median_ns=r.median_ns,
                peer_ratio=r.peer_ratio,
                peer_ratio_max=CREATE_TARGET_PEER_RATIO,
            )
        b_checks.append(check)

    c_checks: list[dict[str, Any]] = []
    for impl in impls:
        at = {r.n: r for r in rows if r.operation == ACCESS and r.implementation == impl and r.n}
        check = {"implementation": impl}
        if 1 not in at or len(at) < 2:
            check.update(status="not evaluated", reason="access measured at fewer than 2 N")
        else:
            max_n = max(at)
            flat = at[max_n].median_ns / at[1].median_ns
            check.update(
                max_n=max_n,
                access_ns_at_1=at[1].median_ns,
                access_ns_at_max_n=at[max_n].median_ns,
                ratio=flat,
                ratio_max=FLAT_TOLERANCE,
            )
            f1 = by_id.get(row_id(MPROTECT, n_layout_case(1, impl), C))
            fmax = by_id.get(row_id(MPROTECT, n_layout_case(max_n, impl), C))
            if f1 is not None and fmax is not None:  # context: how flat the kernel itself is
                check["c_floor_ratio"] = fmax.median_ns / f1.median_ns
                check["beyond_c_floor"] = flat / check["c_floor_ratio"]
            if max_n < FLAT_MAX_N:
                check.update(status="not evaluated", reason=f"largest N measured is {max_n}")
            else:
                check["status"] = "met" if flat <= FLAT_TOLERANCE else "not met"
        c_checks.append(check)

    d_checks: list[dict[str, Any]] = []
    for impl in impls:
        per = (heap or {}).get(impl)
        if per is None:
            d_checks.append({"implementation": impl, "status": "not evaluated"})
        else:
            d_checks.append(
                {
                    "implementation": impl,
                    "status": "met" if per <= HEAP_TARGET_BYTES else "not met",
                    "heap_bytes_per_secret": per,
                    "heap_bytes_max": HEAP_TARGET_BYTES,
                }
            )

    def ratio_check(rid: str, which: str, limit: float) -> list[dict[str, Any]]:
        r = by_id.get(rid)
        value = None if r is None else getattr(r, which)
        if r is None or value is None:
            return [{"row": rid, "status": "not evaluated", "reason": "row or reference missing"}]
        return [
            {
                "row": rid,
                "median_ns": r.median_ns,
                which: value,
                f"{which}_max": limit,
                "status": "met" if value <= limit else "not met",
            }
        ]

    e_checks = ratio_check(row_id(OPEN, ONE, ENCLAVE), "floor_ratio", OPEN_TARGET_FLOOR_RATIO)
    memguard = by_id.get(row_id(OPEN, ONE, ENCLAVE))
    if memguard is not None and memguard.peer_ratio is not None:  # context, not the target
        e_checks[0]["memguard_design_over_ours"] = 1 / memguard.peer_ratio
    f_checks = ratio_check(row_id(OPEN, BUSY_C, ENCLAVE), "floor_ratio", OPEN_BUSY_TARGET_RATIO)
    busy_floor = by_id.get(row_id(MPROTECT, ENCLAVE_GROUP_BUSY, C))
    idle_floor = by_id.get(row_id(MPROTECT, ENCLAVE_GROUP, C))
    if busy_floor is not None and idle_floor is not None:  # context: what mprotect designs pay
        f_checks[0]["mprotect_pair_busy_over_alone"] = busy_floor.median_ns / idle_floor.median_ns
    g_checks = ratio_check(row_id(SEAL, ONE, ENCLAVE), "floor_ratio", SEAL_TARGET_OPEN_RATIO)
    h_checks = ratio_check(
        row_id(ENVELOPE, RECORD_1K, ENCLAVE), "peer_ratio", ENVELOPE_TARGET_PEER_RATIO
    )

    return [
        Target(
            "a",
            f"access cycle, 1 thread: <= {ACCESS_TARGET_FLOOR_RATIO}x the C floor of the two "
            "mprotect calls, and faster than the libsodium peer through ctypes",
            _overall(a_checks),
            a_checks,
        ),
        Target(
            "b",
            f"guarded create+close <= {CREATE_TARGET_PEER_RATIO}x sodium_malloc(32)+sodium_free "
            "called from C",
            _overall(b_checks),
            b_checks,
        ),
        Target(
            "c",
            f"access cost flat from N=1 to N={FLAT_MAX_N} live secrets "
            f"(access@maxN / access@N=1 <= {FLAT_TOLERANCE})",
            _overall(c_checks),
            c_checks,
        ),
        Target(
            "d",
            f"Python heap per live secret <= {HEAP_TARGET_BYTES} bytes (tracemalloc)",
            _overall(d_checks),
            d_checks,
        ),
        Target(
            "e",
            f"enclave open (`with e.open() as v: v[0]`) <= {OPEN_TARGET_FLOOR_RATIO}x the C "
            "floor of one mprotect pair",
            _overall(e_checks),
            e_checks,
        ),
        Target(
            "f",
            f"enclave open with a busy C thread <= {OPEN_BUSY_TARGET_RATIO}x the same open alone",
            _overall(f_checks),
            f_checks,
        ),
        Target(
            "g",
            f"Enclave.seal(32 bytes) <= {SEAL_TARGET_OPEN_RATIO}x the enclave open",
            _overall(g_checks),
            g_checks,
        ),
        Target(
            "h",
            "envelope encryption, per 1 KiB record with its own data key sealed in an enclave, "
            f"<= {ENVELOPE_TARGET_PEER_RATIO}x cryptography's AESGCM with bytes keys",
            _overall(h_checks),
            h_checks,
        ),
    ]


# -- output ----------------------------------------------------------------------------------


def fmt_ns(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows (in their JSON form) as an aligned text table."""
    head = (
        "operation",
        "case",
        "implementation",
        "backend",
        "median ns",
        "p10-p90 ns",
        "x floor",
        "x peer",
    )
    body = [
        (
            r["operation"],
            r["case"],
            r["implementation"],
            r.get("backend") or "-",
            fmt_ns(r["median_ns"]),
            f"{fmt_ns(r['p10_ns'])}-{fmt_ns(r['p90_ns'])}",
            fmt_ratio(r["floor_ratio"]),
            fmt_ratio(r["peer_ratio"]),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    right = {4, 5, 6, 7}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [line(head), line(["-" * w for w in widths])]
    last: object = None
    for r, cells in zip(rows, body):
        op, n = r["operation"], r["n"]
        section = (op, None) if n is None else (op == CREATE, n)
        if last is not None and section != last:
            out.append("")
        last = section
        out.append(line(cells))
    return "\n".join(out)


def _ratio_text(c: dict[str, Any]) -> str:
    if "median_ns" not in c:
        return f" ({c.get('reason', '')})"
    parts = [f"{fmt_ns(c['median_ns'])} ns"]
    for which in ("floor_ratio", "peer_ratio"):
        if which in c:
            parts.append(f"{c[which]:.2f}x its reference (<= {c[which + '_max']})")
    if "memguard_design_over_ours" in c:
        parts.append(f"memguard's design costs {c['memguard_design_over_ours']:.1f}x ours")
    if "mprotect_pair_busy_over_alone" in c:
        parts.append(f"an mprotect pair busy/alone: {c['mprotect_pair_busy_over_alone']:.2f}x")
    return ": " + "; ".join(parts)


def targets_text(ts: Sequence[dict[str, Any]]) -> str:
    """The targets (in their JSON form) as text, with the numbers behind each verdict."""
    out = []
    for t in ts:
        out.append(f"target ({t['id']}) {t['status'].upper()}: {t['description']}")
        for c in t["checks"]:
            if "row" in c:  # the enclave targets (e-h): one row and one ratio each
                out.append(f"    {c['row']}: {c['status']}" + _ratio_text(c))
                continue
            what = c["implementation"] + (f" {c['case']}" if "case" in c else "")
            if c["status"] == "not evaluated" and "ratio" not in c and "median_ns" not in c:
                out.append(f"    {what}: not evaluated ({c.get('reason', '')})")
            elif t["id"] == "a":
                parts = [f"{fmt_ns(c['median_ns'])} ns"]
                if "floor_ratio" in c:
                    parts.append(f"{c['floor_ratio']:.2f}x floor (<= {c['floor_ratio_max']})")
                if "peer_ratio" in c:
                    parts.append(f"{c['peer_ratio']:.2f}x libsodium (< 1)")
                if "c_floor_one_pair_per_call_ratio" in c:
                    parts.append(
                        "the same two calls from C, one pair per call: "
                        f"{c['c_floor_one_pair_per_call_ratio']:.2f}x floor"
                    )
                extra = f" ({c['reason']})" if "reason" in c else ""
                out.append(f"    {what}: {c['status']}{extra}: " + "; ".join(parts))
            elif t["id"] == "d":
                out.append(
                    f"    {what}: {c['status']}: {c['heap_bytes_per_secret']:.0f} bytes "
                    f"(<= {c['heap_bytes_max']})"
                )
            elif t["id"] == "b":
                out.append(
                    f"    {what}: {c['status']}: {fmt_ns(c['median_ns'])} ns = "
                    f"{c['peer_ratio']:.2f}x libsodium (<= {c['peer_ratio_max']})"
                )
            else:
                extra = f" ({c['reason']})" if "reason" in c else ""
                out.append(
                    f"    {what}: {c['status']}{extra}: access {fmt_ns(c['access_ns_at_1'])} ns "
                    f"at N=1, {fmt_ns(c['access_ns_at_max_n'])} ns at N={c['max_n']}: "
                    f"ratio {c['ratio']:.2f} (<= {c['ratio_max']})"
                    + (
                        f"; the C floor's own ratio in the same layout: {c['c_floor_ratio']:.2f}"
                        f" (ours / the floor's: {c['beyond_c_floor']:.2f})"
                        if "c_floor_ratio" in c
                        else ""
                    )
                )
    return "\n".join(out)


def to_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")


def chart(rows: Sequence[Row], path: Path) -> str | None:
    """Write the PNG; return why not (matplotlib missing) or ``None``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FormatStrFormatter
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib)"

    by_id = {r.id: r for r in rows}
    cases = [ONE, ONE_CM, BUSY_C, BUSY_PY, TWO_SAME, TWO_DIFF]
    floor_case = {
        ONE: ONE,
        ONE_CM: ONE,
        BUSY_C: BUSY_C,
        BUSY_PY: BUSY_PY,
        TWO_SAME: FLOOR_TWO,
        TWO_DIFF: FLOOR_TWO,
    }
    series: list[tuple[str, list[float]]] = []
    for impl in (*OURS, SODIUM):
        vals = [
            by_id[row_id(ACCESS, c, impl)].median_ns
            if row_id(ACCESS, c, impl) in by_id
            else math.nan
            for c in cases
        ]
        if not all(math.isnan(v) for v in vals):
            backends = {by_id[k].backend for c in cases if (k := row_id(ACCESS, c, impl)) in by_id}
            label = impl + "".join(f" ({b} backend)" for b in sorted(backends) if b)
            series.append((label, vals))
    floor_vals = [
        by_id[k].median_ns if (k := row_id(MPROTECT, floor_case[c], C)) in by_id else math.nan
        for c in cases
    ]
    if not all(math.isnan(v) for v in floor_vals):
        series.append(("C floor (mprotect pair)", floor_vals))

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    ax = axes[0]
    width = 0.8 / max(1, len(series))
    for i, (name, vals) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(cases))]
        ax.bar(xs, [v / 1000 for v in vals], width, label=name)
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([textwrap.fill(c, 14) for c in cases], fontsize=8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_ylabel("time per access (us, log)")
    ax.set_title("access cycle, 32-byte secret")
    ax.legend(fontsize=8)

    for ax, op, title in (
        (axes[1], CREATE, "time per create with N live secrets"),
        (axes[2], ACCESS, "time per access with N live secrets (random sample)"),
    ):
        for impl in (*OURS, SODIUM):
            pts = sorted(
                (r.n, r.median_ns, r.p10_ns, r.p90_ns)
                for r in rows
                if r.operation == op and r.implementation == impl and r.n
            )
            if pts:
                ns = [p[0] for p in pts]
                ax.errorbar(
                    ns,
                    [p[1] / 1000 for p in pts],
                    yerr=[[(p[1] - p[2]) / 1000 for p in pts], [(p[3] - p[1]) / 1000 for p in pts]],
                    marker="o",
                    capsize=3,
                    label=impl,
                )
        if op == ACCESS:
            for impl, style in zip(OURS, ("--", ":", "-.")):
                floor = sorted(
                    (r.n, r.median_ns)
                    for r in rows
                    if r.operation == MPROTECT and r.n and r.case.endswith(f"{impl} layout")
                )
                if floor:
                    ax.plot(
                        [p[0] for p in floor],
                        [p[1] / 1000 for p in floor],
                        style,
                        color="black",
                        label=f"C floor, {impl} layout",
                    )
        ax.set_xscale("log")
        ax.set_xlabel("N live secrets (log)")
        ax.set_ylabel("us (median, p10-p90)")
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
