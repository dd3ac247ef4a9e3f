"""One run of the whole suite: floors, peers, securememory, scale, targets, output."""

from __future__ import annotations

import gc
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import securememory

from . import enclave as EB
from . import report as R
from .native import CFloor, CSpinner, CtypesFloor, PySpinner, Spinner, build
from .ours import (
    IMPLEMENTATIONS,
    access,
    access_cm,
    create_close_new,
    create_close_random,
    factory_for,
    is_secretmem,
    unavailable,
)
from .peers import SECRET, Sodium, bytearray_access, bytearray_create_del
from .scale import Footprint, Plan, memlock_capacity, scale_ours, scale_sodium
from .timing import (
    CBatch,
    Key,
    Member,
    Op,
    Stat,
    c_member,
    calibrate,
    calibrate_c,
    pin_cpus,
    pinned,
    py_member,
    run_group,
    threads_member,
    time_batch,
)

FULL_SIZES = (1, 10, 100, 1000, 10_000)
SCALE_VISITS = 4  # full mode: the sizes are visited up, down, down, up (see scale.Plan)


@dataclass(frozen=True)
class Config:
    """What to run. ``quick`` picks fewer, shorter rounds; explicit values override it."""

    quick: bool = False
    out: Path = Path("bench-out")
    sizes: tuple[int, ...] = FULL_SIZES
    rounds: int | None = None
    round_ms: float | None = None
    memlock_child: bool = True
    chart: bool = True
    pin: bool = True  # threaded cases: the two threads on two different CPUs
    log: Callable[[str], None] = field(default=lambda s: print(s, file=sys.stderr, flush=True))

    @property
    def n_rounds(self) -> int:
        return self.rounds if self.rounds is not None else (7 if self.quick else 41)

    @property
    def target_ns(self) -> int:
        ms = self.round_ms if self.round_ms is not None else (3.0 if self.quick else 20.0)
        return max(1, int(ms * 1e6))

    @property
    def cpus(self) -> tuple[int, int] | None:
        return pin_cpus() if self.pin else None

    @property
    def min_creates(self) -> int:
        return 50 if self.quick else 300


@dataclass
class Run:
    config: Config
    rows: list[R.Row] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    footprints: list[Footprint] = field(default_factory=list)

    def add(self, operation: str, case: str, impl: str, stat: Stat, **kw: Any) -> R.Row:
        if impl in IMPLEMENTATIONS or impl == R.ENCLAVE:
            kw.setdefault("backend", securememory.stats().backend)
        row = R.Row.of(operation, case, impl, stat, **kw)
        self.rows.append(row)
        self.config.log(f"  {row.id}: {R.fmt_ns(row.median_ns)} ns")
        return row

    def group(self, title: str, members: Sequence[Member], rounds: int | None = None) -> None:
        """Run ``members`` interleaved round by round; add a row for each."""
        self.config.log(f"{title}:")
        gc.collect()
        run_group(members, rounds or self.config.n_rounds)
        for m in members:
            wall = statistics.median(m.walls) if m.walls else None
            self.add(*m.key, m.stat(), threads=m.threads, wall_ns_per_op=wall, note=m.note)

    def skip(self, what: str, reason: str) -> None:
        self.skipped.append({"what": what, "reason": reason})
        self.config.log(f"  skipped {what}: {reason}")


@dataclass
class Subjects:
    """Everything that is measured, made once: secrets, peer allocations, floor pages."""

    impls: list[str]
    factories: dict[str, securememory.SecretFactory]
    secrets: dict[str, securememory.Secret]  # one each: a second one is made only for 2 threads
    sodium: Sodium | None
    sodium_ptrs: tuple[int, int] | None
    cfloor: CFloor | None
    cpages: tuple[int, int] | None
    ctypes_floor: CtypesFloor
    array: bytearray
    enclave: Any = None  # a 32-byte securememory.Enclave, None without PyNaCl

    @classmethod
    def make(cls, impls: Sequence[str], sodium: Sodium | None, cfloor: CFloor | None) -> Subjects:
        factories = {i: factory_for(i) for i in impls}
        return cls(
            list(impls),
            factories,
            {i: f.new(SECRET) for i, f in factories.items()},
            sodium,
            None if sodium is None else (sodium.alloc(SECRET), sodium.alloc(SECRET)),
            cfloor,
            None if cfloor is None else (cfloor.page_new(), cfloor.page_new()),
            CtypesFloor(),
            bytearray(SECRET),
            None if EB.unavailable() else securememory.Enclave.seal(SECRET),
        )

    def close(self) -> None:
        for secret in self.secrets.values():
            secret.close()
        if self.sodium is not None and self.sodium_ptrs is not None:
            for p in self.sodium_ptrs:
                self.sodium.free(p)
        if self.cfloor is not None and self.cpages is not None:
            for p in self.cpages:
                self.cfloor.page_free(p)
        self.ctypes_floor.close()


def _py(run: Run, key: Key, op: Op, batch: int | None = None, note: str = "") -> Member:
    n = batch if batch is not None else calibrate(op, run.config.target_ns)
    return py_member(key, op, n, note)


def _c(run: Run, key: Key, fn: CBatch, note: str = "") -> Member:
    return c_member(key, fn, calibrate_c(fn, run.config.target_ns), note)


def _single_access(run: Run, s: Subjects) -> None:
    """The access cycle of each implementation, its floor and its peers, interleaved."""
    ms: list[Member] = []
    if s.cfloor is not None and s.cpages is not None:
        ms.append(_c(run, (R.MPROTECT, R.ONE, R.C), s.cfloor.mprotect_pairs(s.cpages[0])))
        note = "one pair per ctypes call, timed inside C (call overhead excluded)"
        fn = s.cfloor.mprotect_pair_per_call(s.cpages[0])
        ms.append(_c(run, (R.MPROTECT, R.ONE_PER_CALL, R.C), fn, note))
    ms.append(_py(run, (R.MPROTECT, R.ONE, R.CTYPES), s.ctypes_floor.mprotect_pair()))
    if s.sodium is not None and s.sodium_ptrs is not None:
        stmt = s.sodium.access(s.sodium_ptrs[0])
        ms.append(_c(run, (R.ACCESS, R.ONE, R.SODIUM), stmt.batch(), "readonly, v[0], noaccess"))
    ms.append(_c(run, (R.ACCESS, R.ONE, R.BYTEARRAY), bytearray_access(s.array).batch(), "b[0]"))
    for impl in s.impls:
        sec = s.secrets[impl]
        for case, stmt in ((R.ONE, access(sec)), (R.ONE_CM, access_cm(sec))):
            ms.append(_c(run, (R.ACCESS, case, impl), stmt.batch(), " ".join(stmt.text.split())))
    run.group("access, one thread", ms)


def _busy_access(run: Run, s: Subjects) -> None:
    """The access cycle while another thread of the process spins: in C (GIL released; a TLB
    shootdown per mprotect) and in Python (also a fight for the GIL)."""
    cfg = run.config
    here, other = cfg.cpus or (None, None)
    spinners: list[tuple[str, Callable[[], Spinner], str]] = []
    if s.cfloor is not None:
        cfloor = s.cfloor
        spinners.append((R.BUSY_C, lambda: CSpinner(cfloor, other), CSpinner.description))
    else:
        run.skip(f"{R.ACCESS} | {R.BUSY_C}", "no compiled C spinner (no C floor library)")
    spinners.append((R.BUSY_PY, lambda: PySpinner(other), PySpinner.description))
    for case, spinner, description in spinners:
        # A Python busy thread makes every ctypes call of the accessing thread (each releases
        # the GIL) wait for the GIL, up to a switch interval: few, small batches.
        batch = (5 if cfg.quick else 20) if case == R.BUSY_PY else None
        rounds = max(3, cfg.n_rounds // 4) if case == R.BUSY_PY else cfg.n_rounds
        with pinned(here), spinner():
            ms: list[Member] = []
            if s.cfloor is not None and s.cpages is not None:
                fn = s.cfloor.mprotect_pairs(s.cpages[0])
                ms.append(_c(run, (R.MPROTECT, case, R.C), fn, note=description))
            if s.sodium is not None and s.sodium_ptrs is not None:
                op = s.sodium.access(s.sodium_ptrs[0]).op()
                ms.append(_py(run, (R.ACCESS, case, R.SODIUM), op, batch, note=description))
            for impl in s.impls:
                op = access(s.secrets[impl]).op()
                ms.append(_py(run, (R.ACCESS, case, impl), op, batch, note=description))
            run.group(f"access, {case}", ms, rounds)


def _two_threads(run: Run, s: Subjects) -> None:
    """Two threads accessing at once: the same secret, or one secret each."""
    cfg = run.config
    cpus = cfg.cpus

    def both(op: Op, batch: int) -> Callable[[], float]:
        return lambda: time_batch(op, batch)

    def in_c(fn: CBatch, batch: int) -> Callable[[], float]:
        return lambda: fn(batch)

    ms: list[Member] = []
    if s.cfloor is not None and s.cpages is not None:
        fns = [s.cfloor.mprotect_pairs(p) for p in s.cpages]
        batch = calibrate_c(fns[0], cfg.target_ns)
        runs = [in_c(fn, batch) for fn in fns]
        note = "two threads, each in a C batch on its own page"
        ms.append(threads_member((R.MPROTECT, R.FLOOR_TWO, R.C), runs, batch, cpus, note))
    if s.sodium is not None and s.sodium_ptrs is not None:
        ops = [s.sodium.access(p).op() for p in s.sodium_ptrs]
        batch = calibrate(ops[0], cfg.target_ns)
        ms.append(
            threads_member(
                (R.ACCESS, R.TWO_DIFF, R.SODIUM), [both(op, batch) for op in ops], batch, cpus
            )
        )
    # The second secrets exist only here: two adjacent protected secrets share a VMA, which
    # makes each access of either dearer (see the N=10 rows), and the 1-thread rows measure a
    # lone secret.
    partners = {impl: s.factories[impl].new(SECRET) for impl in s.impls}
    try:
        for impl in s.impls:
            a, b = s.secrets[impl], partners[impl]
            batch = calibrate(access(a).op(), cfg.target_ns)
            for case, pair in ((R.TWO_SAME, (a, a)), (R.TWO_DIFF, (a, b))):
                fns2 = [both(access(x).op(), batch) for x in pair]
                ms.append(threads_member((R.ACCESS, case, impl), fns2, batch, cpus))
        run.group("access, two threads", ms)
    finally:
        for secret in partners.values():
            secret.close()


def _create_close(run: Run, s: Subjects) -> None:
    ms: list[Member] = []
    if s.cfloor is not None:
        ms.append(_c(run, (R.MAPLOCK, R.PAGE1, R.C), s.cfloor.map_lock_cycles()))
    ms.append(_py(run, (R.MAPLOCK, R.PAGE1, R.CTYPES), s.ctypes_floor.map_lock_cycle()))
    if s.cfloor is not None and any(is_secretmem(i) for i in s.impls):
        ms.append(_c(run, (R.SECRETMEM_CYCLE, R.PAGE1, R.C), s.cfloor.secretmem_cycles()))
    if s.sodium is not None:
        sodium = s.sodium
        ms.append(_py(run, (R.CREATE_CLOSE, R.PEER_CREATE, R.SODIUM), sodium.malloc_free()))
        if s.cfloor is not None:
            fn = s.cfloor.sodium_malloc_free(sodium.malloc_address, sodium.free_address)
            key = (R.CREATE_CLOSE, R.PEER_CREATE, R.SODIUM_C)
            ms.append(_c(run, key, fn, note="sodium_malloc(32)+sodium_free in a C loop"))

        def full_cycle() -> None:
            sodium.free(sodium.alloc(SECRET))

        key = (R.CREATE_CLOSE, "malloc(32)+copy+noaccess+free", R.SODIUM)
        ms.append(_py(run, key, full_cycle))
    key = (R.CREATE_CLOSE, R.PEER_CREATE, R.BYTEARRAY)
    ms.append(_py(run, key, bytearray_create_del(), note="bytearray(32 bytes); del"))
    for impl in s.impls:
        f = s.factories[impl]
        ms.append(_py(run, (R.CREATE_CLOSE, R.NEW, impl), create_close_new(f)))
        ms.append(_py(run, (R.CREATE_CLOSE, R.RANDOM, impl), create_close_random(f)))
    run.group("create+close", ms)


def _enclave(run: Run, s: Subjects) -> None:
    """Sealed enclaves, in one group so that every ratio is taken round by round: the open, its
    floor (one mprotect pair in C), the open and the floor with a C thread spinning on the other
    CPU (started for each of their batches, outside the timing), the seal, and memguard's open."""
    if s.enclave is None:
        return
    cfg = run.config
    here, other = cfg.cpus or (None, None)
    open_op = EB.open_read(s.enclave)
    note = "with e.open() as v: v[0] (32 bytes)"
    ms = [_py(run, (R.OPEN, R.ONE, R.ENCLAVE), open_op, note=note)]
    ms.append(_py(run, (R.SEAL, R.ONE, R.ENCLAVE), EB.seal_32(), note="Enclave.seal(bytes32)"))
    if s.cfloor is not None and s.cpages is not None:
        cfloor = s.cfloor
        pairs = cfloor.mprotect_pairs(s.cpages[0])
        ms.append(_c(run, (R.MPROTECT, R.ENCLAVE_GROUP, R.C), pairs))
        note = "2 x (mmap 3 pages + 2 mprotect + mlock), 2 x (munlock + munmap); no crypto"
        ms.append(_c(run, (R.OPEN, R.ONE, R.MEMGUARD_C), cfloor.memguard_opens(), note))

        def busy(key: Key, timed: Callable[[], float], batch: int, note: str) -> Member:
            def run_round() -> list[float]:
                with pinned(here), CSpinner(cfloor, other):
                    return [timed()]

            return Member(key, run_round, batch, note=note)

        spin = CSpinner.description
        n = calibrate(open_op, cfg.target_ns)
        ms.append(busy((R.OPEN, R.BUSY_C, R.ENCLAVE), lambda: time_batch(open_op, n), n, spin))
        n_c = calibrate_c(pairs, cfg.target_ns)
        key = (R.MPROTECT, R.ENCLAVE_GROUP_BUSY, R.C)
        ms.append(busy(key, lambda: pairs(n_c), n_c, spin))
    else:
        run.skip(f"{R.OPEN} | {R.BUSY_C}", "no compiled C floor (no C compiler)")
    run.group("sealed enclaves", ms)


def _envelope(run: Run, s: Subjects) -> None:
    """Envelope encryption: a 1 KiB record per operation, each with its own data key."""
    if s.enclave is None:
        return
    reason = EB.crypto_unavailable()
    if reason is not None:
        run.skip(R.ENVELOPE, reason)
        return
    n = 10_000 if run.config.quick else EB.ENVELOPE_KEYS
    sealed, plain = EB.envelope_keys(n)
    note = f"{n:,} data keys used in turn; AES-256-GCM, a fresh 12-byte nonce each"
    ms = [
        _py(run, (R.ENVELOPE, R.RECORD_1K, R.ENCLAVE), EB.envelope_ours(sealed), note=note),
        _py(run, (R.ENVELOPE, R.RECORD_1K, R.PLAIN_AESGCM), EB.envelope_plain(plain), note=note),
    ]
    run.group("envelope encryption", ms)


def _bzero(run: Run, s: Subjects) -> None:
    ms: list[Member] = []
    if s.cfloor is not None:
        ms.append(_c(run, (R.BZERO, R.B32, R.C), s.cfloor.bzero_32()))
    ms.append(_py(run, (R.BZERO, R.B32, R.CTYPES), s.ctypes_floor.bzero_32()))
    run.group("explicit_bzero", ms)


def _scale(
    run: Run, impls: Sequence[str], sodium: Sodium | str, cfloor: CFloor | None
) -> dict[str, Any]:
    cfg = run.config
    rng = random.Random(4)
    visits = 1 if cfg.quick else SCALE_VISITS
    plan = Plan(cfg.sizes, visits, -(-cfg.n_rounds // visits), cfg.target_ns, cfg.min_creates)
    for impl in impls:
        run.config.log(f"scale {impl}:")
        rows, prints = scale_ours(impl, plan, rng, cfloor)
        run.rows.extend(rows)
        run.footprints.extend(prints)
    if not isinstance(sodium, str):
        run.config.log("scale libsodium:")
        run.rows.extend(scale_sodium(sodium, plan, rng))
    if not cfg.memlock_child:
        run.skip("memlock child", "disabled (--no-memlock-child)")
        return {}
    run.config.log("memlock child:")
    names = [*impls] + ([] if isinstance(sodium, str) else [R.SODIUM])
    got = memlock_capacity(names)
    if "error" in got:
        run.skip("memlock child", got["error"])
    return got


def _heap_per_secret(run: Run, impls: Sequence[str]) -> dict[str, float]:
    """Python heap per live secret (tracemalloc: the objects, their list slot included), with
    1,000 (quick) or 10,000 secrets alive."""
    import tracemalloc

    n = 1_000 if run.config.quick else 10_000
    out: dict[str, float] = {}
    for impl in impls:
        factory = factory_for(impl)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            made = [factory.create_random(32) for _ in range(n)]
            out[impl] = (tracemalloc.get_traced_memory()[0] - before) / n
        finally:
            tracemalloc.stop()
        for secret in made:
            secret.close()
        run.config.log(f"  Python heap per live {impl} secret: {out[impl]:.0f} bytes (N={n})")
    return out


def _order(rows: Sequence[R.Row]) -> list[R.Row]:
    """Floors first, then by operation and case, ours before peers, N ascending."""
    ops = [R.MPROTECT, R.MAPLOCK, R.SECRETMEM_CYCLE, R.BZERO, R.ACCESS, R.OPEN, R.SEAL]
    ops += [R.ENVELOPE, R.CREATE_CLOSE, R.CREATE]
    impls = [R.C, R.CTYPES, *IMPLEMENTATIONS, R.ENCLAVE, R.SODIUM, R.SODIUM_C, R.BYTEARRAY]
    impls += [R.MEMGUARD_C, R.PLAIN_AESGCM]
    cases = list(R.CASE_ORDER)
    for r in rows:
        if r.case not in cases:
            cases.append(r.case)

    def key(r: R.Row) -> tuple[int, int, int, int]:
        # at N: the floors and accesses of each N together, then the creates
        at_n = 20 if r.operation == R.CREATE else 10
        return (
            ops.index(r.operation) if r.n is None else at_n,
            r.n or 0,
            cases.index(r.case),
            impls.index(r.implementation) if r.implementation in impls else 99,
        )

    return sorted(rows, key=key)


def run(config: Config) -> dict[str, Any]:
    """Run everything; write ``report.json`` (and ``chart.png``) into ``config.out``; return
    the report."""
    t0 = time.monotonic()
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    r = Run(config)
    impls = [i for i in IMPLEMENTATIONS if unavailable(i) is None]
    for i in IMPLEMENTATIONS:
        reason = unavailable(i)
        if reason is not None:
            r.skip(i, reason)

    sodium = Sodium.load()
    if isinstance(sodium, str):
        r.skip(R.SODIUM, sodium)
    with tempfile.TemporaryDirectory(prefix="securememory-bench-") as tmp:
        config.log("building the C floor...")
        native = build(Path(tmp))
        cfloor = CFloor(native.lib) if native.lib is not None else None
        if cfloor is None:
            r.skip("C floor", native.reason or "not built")
        subjects = Subjects.make(impls, None if isinstance(sodium, str) else sodium, cfloor)
        if subjects.enclave is None:
            r.skip(R.ENCLAVE, EB.unavailable() or "")
        try:
            _single_access(r, subjects)
            _busy_access(r, subjects)
            _two_threads(r, subjects)
            _create_close(r, subjects)
            _enclave(r, subjects)
            _envelope(r, subjects)
            _bzero(r, subjects)
        finally:
            subjects.close()
        memlock = _scale(r, impls, sodium, cfloor)
    heap = _heap_per_secret(r, impls)

    rows = _order(r.rows)
    R.apply_ratios(rows)
    targets = R.targets(rows, impls, heap)
    report: dict[str, Any] = {
        "meta": {
            "mode": "quick" if config.quick else "full",
            "rounds": config.n_rounds,
            "round_target_ms": config.target_ns / 1e6,
            "sizes": list(config.sizes),
            "secret_bytes": len(SECRET),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "euid": os.geteuid(),
            "securememory": securememory.__version__,
            "compiler": native.compiler,
            "floor": "timing loops of benchmarks/floor.c, compiled with the compiler above "
            "and called through ctypes (each call times a whole batch in C)",
            "libsodium": None if isinstance(sodium, str) else sodium.path,
            "libsodium_version": None if isinstance(sodium, str) else sodium.version,
            "pinned_cpus": config.cpus,
            "busy_thread": {
                R.BUSY_C: CSpinner.description,
                R.BUSY_PY: PySpinner.description,
            },
            "spread": "p10-p90 of the per-op time over rounds (threaded rows: over rounds and "
            "threads)",
            "implementations": impls,
            "seconds": 0.0,
        },
        "skipped": r.skipped,
        "results": [asdict(row) for row in rows],
        "footprint": [asdict(f) for f in r.footprints],
        "memlock_child": memlock,
        "python_heap_per_secret": heap,
        "targets": [asdict(t) for t in targets],
    }
    if config.chart:
        why = R.chart(rows, out / "chart.png")
        if why is not None:
            r.skip("chart.png", why)
    else:
        r.skip("chart.png", "disabled (--no-chart)")
    report["meta"]["seconds"] = round(time.monotonic() - t0, 1)
    R.to_json(report, out / "report.json")
    return report
