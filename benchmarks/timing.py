"""Timing: repeated rounds, each timing a batch of operations with ``perf_counter_ns``.

Measurements that are compared with each other run as a *group*: round by round, every member
runs one batch (in a rotating order), so a drift of the machine (another tenant, frequency,
a noisy neighbour of the VM) hits them all alike. Every member yields per-operation nanoseconds,
one value per round (and per thread in the threaded cases), summarised as the median and the
p10/p90 spread.
"""

from __future__ import annotations

import gc
import os
import statistics
import textwrap
import threading
import time
import timeit
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

Op = Callable[[], object]
CBatch = Callable[[int], float]  # runs a batch in C, returns ns per op measured in C
Key = tuple[str, str, str]  # operation, case, implementation


@dataclass(frozen=True)
class Stat:
    """Median and spread of per-operation times over rounds, in nanoseconds."""

    median_ns: float
    p10_ns: float
    p90_ns: float
    rounds: int
    batch: int

    @classmethod
    def of(cls, per_op_ns: Sequence[float], batch: int) -> Stat:
        if not per_op_ns:
            raise ValueError("no samples")
        xs = sorted(per_op_ns)
        return cls(statistics.median(xs), quantile(xs, 0.10), quantile(xs, 0.90), len(xs), batch)


@dataclass(frozen=True)
class Statement:
    """Python code to time and the names it uses.

    :meth:`batch` times it as :mod:`timeit` times a statement: compiled into the body of the
    timing loop, so a batch costs the statement and the loop's own step, and no Python call per
    execution (the C floors' loops make none either). :meth:`op` wraps it in a function, for the
    threaded cases that need a callable."""

    text: str
    names: dict[str, object]

    def batch(self) -> CBatch:
        timer = timeit.Timer(self.text, globals=self.names)
        return lambda n: timer.timeit(n) * 1e9 / n

    def op(self) -> Op:
        namespace = dict(self.names)
        exec("def op():\n" + textwrap.indent(self.text, "    "), namespace)
        op = namespace["op"]
        assert callable(op)
        return op


def quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of already sorted values (numpy's default method)."""
    pos = (len(sorted_xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


@contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector off for the duration (as ``timeit`` does)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def time_batch(op: Op, batch: int) -> float:
    """Nanoseconds per call of ``op`` over one batch of ``batch`` calls."""
    t0 = time.perf_counter_ns()
    for _ in range(batch):
        op()
    return (time.perf_counter_ns() - t0) / batch


def calibrate(op: Op, target_ns: int, max_batch: int = 1 << 20) -> int:
    """A batch size for which one round of ``op`` takes about ``target_ns``."""
    op()
    batch = 1
    while True:
        took = time_batch(op, batch) * batch
        if took >= target_ns // 8 or batch >= max_batch:
            return max(1, min(max_batch, int(target_ns * batch / max(took, 1.0))))
        batch *= 4


def calibrate_c(run: CBatch, target_ns: int, max_batch: int = 1 << 24) -> int:
    """The same for a batch timed in C."""
    run(10)
    per_op = max(run(max(10, min(1000, target_ns // 20_000))), 0.1)
    return max(1, min(max_batch, int(target_ns / per_op)))


# -- threads ---------------------------------------------------------------------------------


def pin_cpus() -> tuple[int, int] | None:
    """Two CPUs this process may run on (the accessing thread's and the other thread's), or
    ``None`` when there is only one (or the OS cannot pin threads)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


@contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """The calling thread runs only on ``cpu`` for the duration (nothing if ``None``)."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# -- groups ----------------------------------------------------------------------------------


@dataclass
class Member:
    """One measurement of a group: ``run_round()`` runs one batch (one per thread) and returns
    the per-operation nanoseconds of each thread."""

    key: Key
    run_round: Callable[[], list[float]]
    batch: int
    threads: int = 1
    note: str = ""
    samples: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)  # threaded: wall ns / all threads' ops

    def stat(self) -> Stat:
        return Stat.of(self.samples, self.batch)


def py_member(key: Key, op: Op, batch: int, note: str = "") -> Member:
    return Member(key, lambda: [time_batch(op, batch)], batch, note=note)


def c_member(key: Key, run: CBatch, batch: int, note: str = "") -> Member:
    return Member(key, lambda: [run(batch)], batch, note=note)


def _thread_main(
    fn: Callable[[], float], barrier: threading.Barrier, out: list[float], i: int, cpu: int | None
) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # this thread only; it ends with the round
    barrier.wait()
    out[i] = fn()


def threads_member(
    key: Key,
    fns: Sequence[Callable[[], float]],
    batch: int,
    cpus: Sequence[int] | None,
    note: str = "",
) -> Member:
    """Each round starts one thread per ``fns`` item (pinned to ``cpus[i]`` if given); they
    start their batches together at a barrier. Samples: each thread's ns per op; walls: the
    round's wall time over all threads' ops (the inverse of the throughput)."""
    member = Member(key, lambda: [], batch, threads=len(fns), note=note)

    def run_round() -> list[float]:
        barrier = threading.Barrier(len(fns) + 1)
        out = [0.0] * len(fns)
        threads = [
            threading.Thread(
                target=_thread_main, args=(fn, barrier, out, i, cpus[i] if cpus else None)
            )
            for i, fn in enumerate(fns)
        ]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter_ns()
        for t in threads:
            t.join()
        member.walls.append((time.perf_counter_ns() - t0) / (batch * len(fns)))
        return out

    member.run_round = run_round
    return member


def run_group(members: Sequence[Member], rounds: int) -> None:
    """One warm-up round, then ``rounds`` rounds in which every member runs once, in an order
    rotated each round."""
    with no_gc():
        for m in members:
            m.run_round()
            m.walls.clear()
        for r in range(rounds):
            k = r % len(members)
            for m in [*members[k:], *members[:k]]:
                m.samples.extend(m.run_round())
