"""Layer 1, the half Linux and macOS share: libc calls through ctypes, errno turned into exceptions.

Only this package (``securememory._os``) imports ctypes or knows a system call. Addresses are plain
``int``; lengths are bytes. Every function either does what it says or raises.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import os
import resource
import sys
from typing import Callable, NamedTuple

from ..errors import MemoryLockError, SecureMemoryError

PAGE_SIZE: int = mmap.PAGESIZE
PROT_NONE = 0
PROT_READ = 1
PROT_RW = 3
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x1000 if sys.platform == "darwin" else 0x20
_MAP_FAILED = (1 << (8 * ctypes.sizeof(ctypes.c_void_p))) - 1

libc = ctypes.CDLL(
    ctypes.util.find_library("c") if sys.platform == "darwin" else None, use_errno=True
)


def bind(name: str, restype: object, *argtypes: object) -> Callable[..., int]:
    """Return libc's ``name`` with its C signature set (addresses as ``void *``, never ``int``)."""
    fn = getattr(libc, name)
    fn.restype = restype
    fn.argtypes = argtypes
    return fn  # type: ignore[no-any-return]


_VP, _SZ, _INT = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
_mmap = bind("mmap", _VP, _VP, _SZ, _INT, _INT, _INT, ctypes.c_long)
_munmap = bind("munmap", _INT, _VP, _SZ)
_mlock = bind("mlock", _INT, _VP, _SZ)
_munlock = bind("munlock", _INT, _VP, _SZ)
madvise = bind("madvise", _INT, _VP, _SZ, _INT)


def os_error(what: str) -> SecureMemoryError:
    """The exception for a failed call, built from the thread's errno right after the call."""
    err = ctypes.get_errno()
    return SecureMemoryError(f"{what} failed: {os.strerror(err)} (errno {err})", err)


def check(rc: int, what: str) -> None:
    """Raise the errno of a C call that returned -1."""
    if rc != 0:
        raise os_error(what)


def map_memory(length: int, *, addr: int = 0, flags: int = 0, fd: int = -1) -> int:
    """``mmap`` ``length`` bytes with no access; private anonymous unless ``flags``/``fd`` say."""
    if fd < 0:
        flags |= MAP_PRIVATE | MAP_ANONYMOUS
    p = _mmap(addr or None, length, PROT_NONE, flags, fd, 0)
    if p is None or p == _MAP_FAILED:
        raise os_error(f"mmap of {length} bytes")
    return p


def unmap(addr: int, length: int) -> None:
    """``munmap``: the pages are gone from the address space."""
    check(_munmap(addr, length), "munmap")


_libc_gil = ctypes.PyDLL(libc._name, use_errno=True)  # keeps the GIL: for microsecond calls
_mprotect_fast = _libc_gil.mprotect
_mprotect_fast.restype = _INT


def protector(addr: int, length: int) -> Callable[[int], int]:
    """A fast ``mprotect`` of one fixed range: ``f(prot)`` returns 0, or -1 with errno set.

    Its pointer and length are converted to C once, and the call keeps the GIL (releasing and
    taking it back would cost more than the system call). Raise with :func:`os_error` on -1.
    """
    return functools.partial(_mprotect_fast, ctypes.c_void_p(addr), ctypes.c_size_t(length))


_memcmp_fast = _libc_gil.memcmp
_memcmp_fast.restype = _INT


def comparer(addr: int, expected: bytes, length: int) -> Callable[[], int]:
    """A fast ``memcmp`` of ``length`` bytes at ``addr`` against ``expected`` (kept alive by the
    returned callable): 0 means equal. Same calling convention as :func:`protector`."""
    return functools.partial(
        _memcmp_fast, ctypes.c_void_p(addr), ctypes.c_char_p(expected), ctypes.c_size_t(length)
    )


class MemlockBudget(NamedTuple):
    """What ``mlock`` may still take in this process."""

    soft: int | None  # RLIMIT_MEMLOCK soft limit in bytes, None if unlimited
    hard: int | None  # RLIMIT_MEMLOCK hard limit in bytes, None if unlimited
    exempt: bool  # the process has CAP_IPC_LOCK (or the OS does not enforce the limit)
    locked: int | None  # bytes the process has locked now (VmLck), None if unknown

    def available(self) -> int | None:
        """Bytes that can still be locked, or None when there is no limit."""
        if self.exempt or self.soft is None:
            return None
        return max(0, self.soft - (self.locked or 0))


def rlimit_memlock() -> tuple[int | None, int | None]:
    """``RLIMIT_MEMLOCK`` (soft, hard) in bytes, ``None`` for unlimited."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return (
        None if soft == resource.RLIM_INFINITY else soft,
        None if hard == resource.RLIM_INFINITY else hard,
    )


def _limit(v: int | None) -> str:
    return "unlimited" if v is None else f"{v} bytes"


def memlock_error(wanted: int, budget: MemlockBudget, err: int | None = None) -> MemoryLockError:
    """The :class:`MemoryLockError` for ``wanted`` bytes that the budget cannot take."""
    why = f" ({os.strerror(err)}, errno {err})" if err is not None else ""
    used = "unknown" if budget.locked is None else f"{budget.locked} bytes"
    return MemoryLockError(
        f"cannot lock {wanted} bytes of memory{why}: RLIMIT_MEMLOCK soft limit is "
        f"{_limit(budget.soft)}, hard limit {_limit(budget.hard)}, already locked by this "
        f"process {used}. Raise it with `ulimit -l <KiB>` (up to the hard limit), "
        f"resource.setrlimit(resource.RLIMIT_MEMLOCK, ...), LimitMEMLOCK= in a systemd unit, "
        f"or /etc/security/limits.conf; or close secrets you no longer need.",
        err,
    )


def lock(addr: int, length: int, budget: Callable[[], MemlockBudget]) -> None:
    """``mlock``; a refusal becomes :class:`MemoryLockError` with the budget in its message."""
    if _mlock(addr, length) != 0:
        err = ctypes.get_errno()
        raise memlock_error(length, budget(), err)


def unlock(addr: int, length: int) -> None:
    """``munlock``."""
    check(_munlock(addr, length), "munlock")


def exporter(addr: int, length: int) -> object:
    """An object exporting the buffer protocol over ``length`` bytes at ``addr`` (no copy)."""
    return (ctypes.c_char * length).from_address(addr)


def view(exp: object, writable: bool) -> memoryview:
    """A new one-dimensional byte view (format ``B``) over an :func:`exporter`."""
    v = memoryview(exp).cast("B")  # type: ignore[arg-type]
    if writable:
        return v
    ro = v.toreadonly()
    v.release()
    return ro


def address_of(buf: memoryview) -> int:
    """The address of a writable, C-contiguous buffer's first byte."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def disable_core_dumps() -> None:
    """Set the ``RLIMIT_CORE`` soft limit to 0; the hard limit is left as it is."""
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
