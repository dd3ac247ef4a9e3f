"""Layer 1 for Linux: madvise advice, memfd_secret, explicit_bzero, getrandom, capabilities."""

from __future__ import annotations

import ctypes
import errno
import os
import platform

from ..errors import SecureMemoryError
from ._posix import (
    MAP_FIXED,
    MAP_SHARED,
    PAGE_SIZE,
    MemlockBudget,
    bind,
    check,
    libc,
    map_memory,
    memlock_error,
    os_error,
    rlimit_memlock,
)
from ._posix import madvise as _madvise

CAN_EXCLUDE_FROM_DUMPS = True
MADV_DONTFORK = 10
MADV_DONTDUMP = 16
MADV_WIPEONFORK = 18
CAP_IPC_LOCK = 14
# memfd_secret(2) is 447 on both architectures that have it here; others get no secretmem.
_SYS_MEMFD_SECRET = {"x86_64": 447, "aarch64": 447}.get(platform.machine())
_SYS_GETRANDOM = {"x86_64": 318, "aarch64": 278}.get(platform.machine())

_VP, _SZ, _INT = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
_syscall = libc.syscall
_syscall.restype = ctypes.c_long

try:
    _bzero = bind("explicit_bzero", None, _VP, _SZ)
except AttributeError:  # glibc < 2.25: a call into libc through ctypes is never optimised away
    _memset = bind("memset", _VP, _VP, _INT, _SZ)

    def _bzero(addr: int, length: int) -> int:
        return _memset(addr, 0, length)


try:
    _getrandom = bind("getrandom", ctypes.c_ssize_t, _VP, _SZ, ctypes.c_uint)
except AttributeError:  # pragma: no cover - glibc < 2.25

    def _getrandom(addr: int, length: int, flags: int) -> int:
        return int(_syscall(_SYS_GETRANDOM, _VP(addr), _SZ(length), ctypes.c_uint(flags)))


def zero(addr: int, length: int) -> None:
    """``explicit_bzero``: a wipe the compiler cannot remove."""
    _bzero(addr, length)


def fill_random(addr: int, length: int) -> None:
    """Fill memory from the kernel CSPRNG (``getrandom``), with no copy anywhere else."""
    done = 0
    while done < length:
        n = _getrandom(addr + done, length - done, 0)
        if n < 0:
            if ctypes.get_errno() == errno.EINTR:
                continue
            raise os_error("getrandom")
        done += n


def exclude_from_dumps(addr: int, length: int) -> None:
    """``MADV_DONTDUMP``: the pages are left out of core dumps (kernel and gcore)."""
    check(_madvise(addr, length, MADV_DONTDUMP), "madvise(MADV_DONTDUMP)")


def wipe_on_fork(addr: int, length: int) -> None:
    """``MADV_WIPEONFORK``: a forked child sees zeros here (Linux 4.14+)."""
    check(_madvise(addr, length, MADV_WIPEONFORK), "madvise(MADV_WIPEONFORK)")


def drop_on_fork(addr: int, length: int) -> None:
    """``MADV_DONTFORK``: a forked child has no mapping here; touching it is SIGSEGV."""
    check(_madvise(addr, length, MADV_DONTFORK), "madvise(MADV_DONTFORK)")


def secretmem_fd() -> int:
    """A new ``memfd_secret(O_CLOEXEC)`` file descriptor: a program exec'd meanwhile by
    another thread does not inherit it."""
    if _SYS_MEMFD_SECRET is None:
        raise os_error("memfd_secret (no syscall number for this architecture)")
    fd = int(_syscall(_SYS_MEMFD_SECRET, ctypes.c_uint(os.O_CLOEXEC)))
    if fd < 0:
        raise os_error("memfd_secret")
    return fd


def map_secretmem(addr: int, length: int) -> None:
    """Map ``length`` bytes of a new secretmem file over ``[addr, addr+length)`` (no access).

    The kernel takes the pages out of its direct map, locks them, leaves them out of core dumps
    and ``/proc/<pid>/mem``, and zeroes them when freed.
    """
    fd = secretmem_fd()
    try:
        os.ftruncate(fd, length)
        map_memory(length, addr=addr, flags=MAP_SHARED | MAP_FIXED, fd=fd)
    except SecureMemoryError as e:
        if e.errno == errno.EAGAIN:  # the kernel charges secretmem to RLIMIT_MEMLOCK at mmap
            raise memlock_error(length, memlock_budget(), e.errno) from None
        raise
    finally:
        os.close(fd)


def secretmem_unavailable() -> str | None:
    """Why ``memfd_secret`` cannot be used here, or ``None`` when it can."""
    if _SYS_MEMFD_SECRET is None:
        return f"memfd_secret is not wired up on {platform.machine()}"
    try:
        os.close(secretmem_fd())
    except SecureMemoryError as e:  # pragma: no cover - depends on the host
        if e.errno == errno.ENOSYS:
            return (
                "memfd_secret is not available: kernel older than 5.14, built without "
                "CONFIG_SECRETMEM, or booted with secretmem.enable=0"
            )
        return str(e)
    avail = memlock_budget().available()
    if avail is not None and avail < 3 * PAGE_SIZE:
        return f"the memlock budget has {avail} bytes left, too few for one secretmem secret"
    return None


def _status_field(name: str) -> str | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - /proc not mounted
        return None
    return None  # pragma: no cover


def has_ipc_lock() -> bool:
    """Whether this process has ``CAP_IPC_LOCK`` in its effective set (mlock is then unlimited)."""
    caps = _status_field("CapEff")
    return caps is not None and bool(int(caps, 16) >> CAP_IPC_LOCK & 1)


def memlock_budget() -> MemlockBudget:
    """The ``RLIMIT_MEMLOCK`` limits, the capability exemption and ``VmLck`` right now."""
    soft, hard = rlimit_memlock()
    vmlck = _status_field("VmLck")
    locked = int(vmlck.split()[0]) * 1024 if vmlck else None
    return MemlockBudget(soft, hard, has_ipc_lock(), locked)


PR_CAPBSET_DROP = 24


def drop_ipc_lock_capability() -> None:
    """Drop ``CAP_IPC_LOCK`` from the bounding set (``prctl(PR_CAPBSET_DROP)``), so that a
    program this process ``exec``\\ s next is held to ``RLIMIT_MEMLOCK`` even as root. Needs
    ``CAP_SETPCAP``; meant for a ``preexec_fn``."""
    if libc.prctl(PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0) != 0:
        raise os_error("prctl(PR_CAPBSET_DROP, CAP_IPC_LOCK)")
