"""Layer 1 for macOS, written from the man pages (mmap(2), minherit(2), memset_s(3),
getentropy(2)). It cannot be run on this project's machines: it is type-checked, not tested.

What macOS lacks: per-region dump exclusion (``MADV_DONTDUMP``) and secretmem. Core dumps are kept
out by the ``RLIMIT_CORE`` 0 the factories set; a forked child gets no mapping (``minherit``
``VM_INHERIT_NONE``) instead of zeros.
"""

from __future__ import annotations

import ctypes

from ..errors import UnsupportedPlatformError
from ._posix import MemlockBudget, bind, check, os_error, rlimit_memlock

CAN_EXCLUDE_FROM_DUMPS = False
VM_INHERIT_NONE = 2

_VP, _SZ, _INT = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
_memset_s = bind("memset_s", _INT, _VP, _SZ, _INT, _SZ)
_getentropy = bind("getentropy", _INT, _VP, _SZ)
_minherit = bind("minherit", _INT, _VP, _SZ, _INT)


def zero(addr: int, length: int) -> None:
    """``memset_s``: C11's wipe that may not be optimised away."""
    check(_memset_s(addr, length, 0, length), "memset_s")


def fill_random(addr: int, length: int) -> None:
    """Fill memory with ``getentropy``, 256 bytes per call (its maximum)."""
    for off in range(0, length, 256):
        if _getentropy(addr + off, min(256, length - off)) != 0:
            raise os_error("getentropy")


def exclude_from_dumps(addr: int, length: int) -> None:
    """macOS has no per-region dump exclusion; never called (``CAN_EXCLUDE_FROM_DUMPS``)."""
    raise UnsupportedPlatformError("macOS has no MADV_DONTDUMP")


def wipe_on_fork(addr: int, length: int) -> None:
    """``minherit(VM_INHERIT_NONE)``: a forked child has no mapping here."""
    check(_minherit(addr, length, VM_INHERIT_NONE), "minherit(VM_INHERIT_NONE)")


drop_on_fork = wipe_on_fork


def map_secretmem(addr: int, length: int) -> None:
    """macOS has no secretmem."""
    raise UnsupportedPlatformError(secretmem_unavailable() or "")


def secretmem_unavailable() -> str | None:
    """Always a reason: ``memfd_secret`` is a Linux system call."""
    return "memfd_secret is a Linux system call; macOS has no equivalent"


def memlock_budget() -> MemlockBudget:
    """The ``RLIMIT_MEMLOCK`` limits; macOS does not report the bytes a process has locked."""
    soft, hard = rlimit_memlock()
    return MemlockBudget(soft, hard, False, None)
