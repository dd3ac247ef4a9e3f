"""Layer 1: every call into the kernel, one module per OS. Nothing above this package uses ctypes.

``UNSUPPORTED`` is ``None`` on Linux and macOS, else the reason no implementation can run; the
other names exist only on a supported OS.
"""

from __future__ import annotations

import sys

UNSUPPORTED: str | None = None

if sys.platform.startswith("linux"):
    from . import linux as _impl
elif sys.platform == "darwin":
    from . import darwin as _impl
else:  # pragma: no cover
    UNSUPPORTED = f"securememory runs on Linux and macOS, not on {sys.platform}"

if UNSUPPORTED is None:
    from ._posix import (
        MAP_FIXED,
        PAGE_SIZE,
        PROT_NONE,
        PROT_READ,
        PROT_RW,
        MemlockBudget,
        address_of,
        comparer,
        disable_core_dumps,
        exporter,
        lock,
        map_memory,
        memlock_error,
        os_error,
        protector,
        rlimit_memlock,
        unlock,
        unmap,
        view,
    )

    CAN_EXCLUDE_FROM_DUMPS = _impl.CAN_EXCLUDE_FROM_DUMPS
    zero = _impl.zero
    fill_random = _impl.fill_random
    exclude_from_dumps = _impl.exclude_from_dumps
    wipe_on_fork = _impl.wipe_on_fork
    drop_on_fork = _impl.drop_on_fork
    map_secretmem = _impl.map_secretmem
    secretmem_unavailable = _impl.secretmem_unavailable
    memlock_budget = _impl.memlock_budget
    if sys.platform.startswith("linux"):
        from .linux import drop_ipc_lock_capability

__all__ = [
    "CAN_EXCLUDE_FROM_DUMPS",
    "MAP_FIXED",
    "PAGE_SIZE",
    "PROT_NONE",
    "PROT_READ",
    "PROT_RW",
    "UNSUPPORTED",
    "MemlockBudget",
    "address_of",
    "comparer",
    "disable_core_dumps",
    "drop_ipc_lock_capability",
    "drop_on_fork",
    "exclude_from_dumps",
    "exporter",
    "fill_random",
    "lock",
    "map_memory",
    "map_secretmem",
    "memlock_budget",
    "memlock_error",
    "os_error",
    "protector",
    "rlimit_memlock",
    "secretmem_unavailable",
    "unlock",
    "unmap",
    "view",
    "wipe_on_fork",
    "zero",
]
