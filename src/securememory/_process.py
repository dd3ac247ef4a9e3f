"""Layer 3: what is per process rather than per secret.

- **Exit.** At interpreter exit every secret still open is wiped (no warning) and closed, but
  nothing is unmapped: a daemon thread still inside an access reads zeros instead of dying of
  SIGSEGV, and atexit hooks registered before this module's still run.
- **Fork.** The compiled core makes every region inherited by a forked child inert (never wiped,
  protected or unmapped there) or, for inheritable ones, mapped again on first use. Here the
  Python-level state is made consistent in the child: the lock below is new and no thread of the
  child waits on anything.
- **Core dumps.** The first factory that asks sets the ``RLIMIT_CORE`` soft limit to 0; an
  explicit opt-out anywhere in the process wins, also over a later request and over a request
  made before it (the soft limit it found is put back).
- **Waiting to close.** ``close()`` waits for accesses in other threads; the wait-for graph kept
  here lets it refuse, instead of deadlocking, when that wait would close a cycle (thread A
  inside an access of s1 closes s2 while thread B inside s2 closes s1).
- :func:`stats`.

It also passes on, for the layers above, the host facts the region layer knows (budgets, the
backend's name) and the raw operations the live proofs use on purpose.
"""

from __future__ import annotations

import atexit
import os
import resource
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from . import _region
from ._region import (
    BACKEND,
    PAGE_SIZE,
    MapBudget,
    MemlockBudget,
    drop_ipc_lock_capability,
    make_no_access,
    make_readable,
    make_writable,
    map_budget,
    memlock_budget,
    peek,
    poke,
)

__all__ = [
    "BACKEND",
    "PAGE_SIZE",
    "MapBudget",
    "MemlockBudget",
    "Stats",
    "drop_ipc_lock_capability",
    "keep_core_dumps",
    "make_no_access",
    "make_readable",
    "make_writable",
    "map_budget",
    "memlock_budget",
    "peek",
    "poke",
    "stats",
    "stop_core_dumps",
    "waits",
]

_lock = threading.Lock()


# -- exit -------------------------------------------------------------------------------------


@atexit.register
def _wipe_at_exit() -> None:
    _region.wipe_all()


# -- core dumps -------------------------------------------------------------------------------

_core_opted_out = False
_core_saved_soft: int | None = None  # the soft limit we replaced by 0, while we keep it so


def stop_core_dumps() -> None:
    """Set the ``RLIMIT_CORE`` soft limit to 0, unless the process opted out (see
    :func:`keep_core_dumps`). Idempotent."""
    global _core_saved_soft
    with _lock:
        if _core_opted_out or _core_saved_soft is not None:
            return
        soft, _ = resource.getrlimit(resource.RLIMIT_CORE)
        _region.disable_core_dumps()
        _core_saved_soft = soft


def keep_core_dumps() -> None:
    """An explicit opt-out: core dumps stay as the process has them. If this library already
    set the soft limit to 0 and it is still 0, the limit it replaced is put back."""
    global _core_opted_out, _core_saved_soft
    with _lock:
        _core_opted_out = True
        if _core_saved_soft is None:
            return
        soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
        if soft == 0:
            resource.setrlimit(resource.RLIMIT_CORE, (_core_saved_soft, hard))
        _core_saved_soft = None


# -- the wait-for graph of close() --------------------------------------------------------------


class _Holds(Protocol):
    def _holders(self) -> list[tuple[int, object]]: ...


class WaitGraph:
    """Which thread waits, in ``close()``, for which secret's accesses to end."""

    def __init__(self) -> None:
        self.waiting: dict[int, _Holds] = {}

    def would_deadlock(self, me: int, secret: _Holds) -> bool:
        """Whether ``me`` waiting for ``secret``'s holders closes a cycle of waits."""
        stack = [tid for tid, _ in secret._holders()]
        seen: set[int] = set()
        while stack:
            tid = stack.pop()
            if tid == me:
                return True
            if tid in seen:
                continue
            seen.add(tid)
            waited = self.waiting.get(tid)
            if waited is not None:
                stack.extend(t for t, _ in waited._holders())
        return False


_graph = WaitGraph()


@contextmanager
def waits() -> Iterator[WaitGraph]:
    """The process's wait-for graph, under its lock."""
    with _lock:
        yield _graph


# -- fork ----------------------------------------------------------------------------------------


def _after_fork_in_child() -> None:
    global _lock, _graph
    _lock = threading.Lock()  # it may have been held by a thread that does not exist here
    _graph = WaitGraph()


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- stats ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """A snapshot of this process's secure memory use (see :func:`stats`)."""

    live_secrets: int  # secrets and scratch buffers open now
    total_created: int
    bytes_mapped: int  # by live secrets and scratch buffers, guard pages included
    bytes_locked: int  # by live secrets and scratch buffers
    bytes_quarantined: int  # address space kept no-access for views that outlived a secret
    memlock_limit: int | None  # RLIMIT_MEMLOCK soft limit in bytes; None = unlimited
    memlock_hard_limit: int | None
    memlock_exempt: bool  # CAP_IPC_LOCK: the kernel does not apply the limit
    process_locked: int | None  # VmLck of the whole process; None where the OS hides it
    memlock_available: int | None  # what can still be locked; None = no limit applies
    mappings: int | None  # memory mappings (VMAs) of the whole process; None if unknown
    mappings_limit: int | None  # vm.max_map_count; each secret takes 2 or 3 mappings
    backend: str  # "native": the compiled core


def stats() -> Stats:
    """Live and total secrets, bytes mapped, locked and quarantined, the memlock budget and the
    mapping budget right now."""
    live, created, mapped, locked, quarantined = _region.counters()
    budget = memlock_budget()
    maps = map_budget()
    return Stats(
        live,
        created,
        mapped,
        locked,
        quarantined,
        budget.soft,
        budget.hard,
        budget.exempt,
        budget.locked,
        budget.available(),
        maps.used,
        maps.max_map_count,
        BACKEND,
    )
