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
from dataclasses import dataclass
from typing import Any

import securememory
from securememory import _probe

from . import report as R
from .native import HERE
from .ours import access_among, factory_for
from .peers import SECRET, Sodium
from .timing import Op, Stat, measure_batches, no_gc

SAMPLE = 1024  # accesses cycle over this many secrets drawn at random from the N live ones
CHUNKS = 50  # creates of one pass are timed in about this many chunks
MEMLOCK_LIMIT = 8 << 20


@dataclass(frozen=True)
class Footprint:
    implementation: str
    n: int
    bytes_mapped_per_secret: float | None
    bytes_locked_per_secret: float | None
    live_secrets: int | None


def _fill(create: Op, n: int, samples: list[float]) -> list[Any]:
    """Make ``n`` objects with ``create``, timing chunks of them; return them."""
    made: list[Any] = []
    chunk = max(1, n // CHUNKS)
    with no_gc():
        while len(made) < n:
            k = min(chunk, n - len(made))
            t0 = time.perf_counter_ns()
            for _ in range(k):
                made.append(create())
            samples.append((time.perf_counter_ns() - t0) / k)
    return made


def scale_ours(
    impl: str,
    sizes: Sequence[int],
    *,
    min_creates: int,
    rounds: int,
    target_ns: int,
    rng: random.Random,
) -> tuple[list[R.Row], list[Footprint]]:
    factory = factory_for(impl)
    rows: list[R.Row] = []
    prints: list[Footprint] = []
    for n in sizes:
        reps = max(1, math.ceil(min_creates / n))
        samples: list[float] = []
        for rep in range(reps):
            before = securememory.stats()
            live: list[securememory.Secret] = _fill(lambda: factory.new(SECRET), n, samples)
            try:
                if rep == reps - 1:
                    after = securememory.stats()
                    prints.append(
                        Footprint(
                            impl,
                            n,
                            (after.bytes_mapped - before.bytes_mapped) / n,
                            (after.bytes_locked - before.bytes_locked) / n,
                            after.live_secrets,
                        )
                    )
                    picked = rng.choices(live, k=min(SAMPLE, max(n, 64)))
                    st = measure_batches(access_among(picked).batch(), rounds, target_ns)
                    rows.append(R.Row.of(R.ACCESS, R.n_case(n), impl, st, n=n))
            finally:
                for s in live:
                    s.close()
        rows.append(
            R.Row.of(
                R.CREATE,
                R.n_case(n),
                impl,
                Stat.of(samples, max(1, n // CHUNKS)),
                n=n,
                note="new(bytes32) while filling up to N live secrets",
            )
        )
    return rows, prints


def scale_sodium(
    sodium: Sodium,
    sizes: Sequence[int],
    *,
    min_creates: int,
    rounds: int,
    target_ns: int,
    rng: random.Random,
) -> list[R.Row]:
    rows: list[R.Row] = []
    for n in sizes:
        reps = max(1, math.ceil(min_creates / n))
        samples: list[float] = []
        for rep in range(reps):
            live: list[int] = _fill(lambda: sodium.alloc(SECRET), n, samples)
            try:
                if rep == reps - 1:
                    picked = rng.choices(live, k=min(SAMPLE, max(n, 64)))
                    st = measure_batches(sodium.access_among(picked).batch(), rounds, target_ns)
                    rows.append(R.Row.of(R.ACCESS, R.n_case(n), R.SODIUM, st, n=n))
            finally:
                for p in live:
                    sodium.free(p)
        rows.append(
            R.Row.of(
                R.CREATE,
                R.n_case(n),
                R.SODIUM,
                Stat.of(samples, max(1, n // CHUNKS)),
                n=n,
                note="sodium_malloc(32) + copy + sodium_mprotect_noaccess",
            )
        )
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
