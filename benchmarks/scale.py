"""Scale: N live secrets (time per create, time per access, memory per secret), and how many fit
in an 8 MiB ``RLIMIT_MEMLOCK`` in an unprivileged child."""

from __future__ import annotations

import json
import math
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import securememory
from securememory import _probe

from . import report as R
from .native import HERE, CFloor, RegionLayout
from .ours import access_among, factory_for, region_layout
from .peers import SECRET, Sodium
from .timing import (
    CBatch,
    Key,
    Member,
    Op,
    Stat,
    Statement,
    c_member,
    calibrate_c,
    no_gc,
    run_group,
)

SAMPLE = 1024  # accesses cycle over this many secrets drawn at random from the N live ones
CHUNKS = 50  # creates of one pass are timed in about this many chunks
MEMLOCK_LIMIT = 8 << 20


@dataclass(frozen=True)
class Plan:
    """How the N live secrets are measured.

    The sizes are visited ``visits`` times, up and down in turn (1, ..., 10000, 10000, ..., 1,
    then down and up again), each visit making its N secrets anew and running ``rounds`` rounds:
    the access at N=1 and at N=10000 are sampled over the same stretch of time, at the same mean
    time, so a steady drift of the machine over the minute the scale takes falls on both alike
    instead of passing for a cost of N (target (c) is their ratio)."""

    sizes: Sequence[int]
    visits: int
    rounds: int  # per visit
    target_ns: int
    min_creates: int  # per N, over all visits


@dataclass(frozen=True)
class Footprint:
    implementation: str
    n: int
    bytes_mapped_per_secret: float | None
    bytes_locked_per_secret: float | None
    live_secrets: int | None


@dataclass
class _Series:
    """One row's samples, gathered over the visits (the batch is calibrated at the first)."""

    samples: list[float] = field(default_factory=list)
    batch: int = 0

    def member(self, key: Key, run: CBatch, plan: Plan) -> Member:
        if not self.batch:
            self.batch = calibrate_c(run, plan.target_ns)
        return c_member(key, run, self.batch)


def _fill(create: Op, n: int, made: list[Any], samples: list[float]) -> None:
    """Make ``n`` objects with ``create`` into ``made`` (the caller's, so that it can destroy
    those made before a failure), timing chunks of them."""
    chunk = max(1, n // CHUNKS)
    with no_gc():
        while len(made) < n:
            k = min(chunk, n - len(made))
            t0 = time.perf_counter_ns()
            for _ in range(k):
                made.append(create())
            samples.append((time.perf_counter_ns() - t0) / k)


def _order(plan: Plan, visit: int) -> Sequence[int]:
    """The sizes of one visit: up, down, down, up, ... (so a steady drift of the machine falls
    on N=1 and on the largest N alike)."""
    return plan.sizes if visit % 4 in (0, 3) else list(reversed(plan.sizes))


def _measure(
    name: str,
    create: Op,
    destroy: Callable[[Any], object],
    among: Callable[[list[Any]], Statement],
    floor: tuple[CFloor, RegionLayout] | None,
    plan: Plan,
    rng: random.Random,
) -> tuple[dict[int, list[float]], dict[int, _Series], dict[int, _Series], list[Footprint]]:
    """Create samples, access series, C floor series (regions of the same layout, measured in
    the same group as the access) and, at the first visit, the memory per secret, at each N."""
    creates: dict[int, list[float]] = {n: [] for n in plan.sizes}
    access = {n: _Series() for n in plan.sizes}
    floors = {n: _Series() for n in plan.sizes}
    prints: list[Footprint] = []
    for visit in range(plan.visits):
        for n in _order(plan, visit):
            reps = max(1, math.ceil(plan.min_creates / (n * plan.visits)))
            for rep in range(reps):
                last = rep == reps - 1
                before = securememory.stats() if last and visit == 0 else None  # reads /proc
                live: list[Any] = []
                try:
                    _fill(create, n, live, creates[n])
                    if not last:
                        continue
                    if before is not None:
                        after = securememory.stats()
                        mapped = (after.bytes_mapped - before.bytes_mapped) / n
                        locked = (after.bytes_locked - before.bytes_locked) / n
                        prints.append(Footprint(name, n, mapped, locked, after.live_secrets))
                    picked = rng.choices(live, k=SAMPLE)
                    seed = rng.getrandbits(64)
                    _visit(n, access[n], among(picked), floors[n], floor, seed, plan)
                finally:
                    for x in live:
                        destroy(x)
    return creates, access, floors, prints


def _visit(
    n: int,
    access: _Series,
    statement: Statement,
    floor_series: _Series,
    floor: tuple[CFloor, RegionLayout] | None,
    seed: int,
    plan: Plan,
) -> None:
    """One visit of N: the access among the N (and the C floor among N regions of the same
    layout, made beside them, interleaved with it round by round)."""
    members = [(access, access.member((R.ACCESS, R.n_case(n), ""), statement.batch(), plan))]
    if floor is None:
        run_group([members[0][1]], plan.rounds)
    else:
        cfloor, layout = floor
        regions = cfloor.regions_new(n, layout, seed)
        try:
            run = cfloor.mprotect_among(regions)
            key: Key = (R.MPROTECT, R.n_case(n), R.C)
            members.append((floor_series, floor_series.member(key, run, plan)))
            run_group([m for _, m in members], plan.rounds)
        finally:
            cfloor.regions_free(regions)
    for series, m in members:
        series.samples.extend(m.samples)


def scale_ours(
    impl: str, plan: Plan, rng: random.Random, cfloor: CFloor | None
) -> tuple[list[R.Row], list[Footprint]]:
    """The rows at each N of one implementation and of the C floor in its layout."""
    factory = factory_for(impl)
    floor = None if cfloor is None else (cfloor, region_layout(impl))
    creates, access, floors, prints = _measure(
        impl, lambda: factory.new(SECRET), securememory.Secret.close, access_among, floor, plan, rng
    )
    backend = securememory.stats().backend
    visits = f"N visited {plan.visits} times in turn" if plan.visits > 1 else ""
    rows: list[R.Row] = []
    for n in plan.sizes:
        st = Stat.of(access[n].samples, access[n].batch)
        rows.append(R.Row.of(R.ACCESS, R.n_case(n), impl, st, n=n, backend=backend, note=visits))
        if floor is not None:
            note = (
                f"on the inner pages of regions picked at random among {n} regions of the "
                f"{impl} layout, interleaved with its access at N={n}"
            )
            st = Stat.of(floors[n].samples, floors[n].batch)
            rows.append(R.Row.of(R.MPROTECT, R.n_layout_case(n, impl), R.C, st, n=n, note=note))
        note = "new(bytes32) while filling up to N live secrets"
        st = Stat.of(creates[n], max(1, n // CHUNKS))
        rows.append(R.Row.of(R.CREATE, R.n_case(n), impl, st, n=n, backend=backend, note=note))
    return rows, prints


def scale_sodium(sodium: Sodium, plan: Plan, rng: random.Random) -> list[R.Row]:
    creates, access, _, _ = _measure(
        R.SODIUM, lambda: sodium.alloc(SECRET), sodium.free, sodium.access_among, None, plan, rng
    )
    rows: list[R.Row] = []
    for n in plan.sizes:
        st = Stat.of(access[n].samples, access[n].batch)
        rows.append(R.Row.of(R.ACCESS, R.n_case(n), R.SODIUM, st, n=n))
        note = "sodium_malloc(32) + copy + sodium_mprotect_noaccess"
        st = Stat.of(creates[n], max(1, n // CHUNKS))
        rows.append(R.Row.of(R.CREATE, R.n_case(n), R.SODIUM, st, n=n, note=note))
    return rows


def memlock_capacity(impls: Sequence[str], limit: int = MEMLOCK_LIMIT) -> dict[str, Any]:
    """Run :mod:`benchmarks.memlock_child` under ``RLIMIT_MEMLOCK = limit`` without
    ``CAP_IPC_LOCK``; the number of 32-byte secrets that fit, per implementation."""
    root = os.geteuid() == 0
    _, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if not root and hard != resource.RLIM_INFINITY and hard < limit:
        limit = hard
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE.parent), env.get("PYTHONPATH", "")) if p
    )
    method = (
        "child python with CAP_IPC_LOCK dropped from the bounding set (prctl PR_CAPBSET_DROP) "
        f"and RLIMIT_MEMLOCK = {limit} bytes"
        if root
        else f"child python with RLIMIT_MEMLOCK = {limit} bytes (not root: no capability to drop)"
    )
    out: dict[str, Any] = {"limit_bytes": limit, "method": method}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.memlock_child", *impls],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            preexec_fn=lambda: _probe._unprivileged(limit),
        )
    except (OSError, subprocess.SubprocessError) as e:
        out["error"] = f"could not run the child: {e}"
        return out
    if done.returncode != 0:
        out["error"] = f"child exited {done.returncode}: {done.stderr.strip()[-500:]}"
        return out
    child = json.loads(done.stdout)
    out.update(child)
    if child.get("memlock_exempt"):
        out["error"] = "the child was still exempt from RLIMIT_MEMLOCK: counts are not limits"
    return out
