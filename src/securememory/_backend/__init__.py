"""Layer 1, the one door to the kernel: the compiled core and the platform facts around it.

Only this package knows the compiled extension (:mod:`securememory._backend._native`), a system
call or a ``/proc`` file of its own process. The region layer (:mod:`securememory._region`) is its
only importer.

``SECUREMEMORY_BACKEND`` may name the backend: ``native`` (the default and the only one). The
pure-ctypes backend of earlier versions was removed: several ctypes calls cannot make an access
transition atomic with respect to Python signal handlers, and a backend that is not equally
correct is not offered. Naming it, or anything else, raises :class:`ImportError` at import.
"""

from __future__ import annotations

import errno as _errno
import os
import resource
import sys
from typing import NamedTuple

from .._ingress import source_view
from ..errors import MemoryLockError, SecureMemoryError, UnsupportedPlatformError

NAME = "native"

_wanted = os.environ.get("SECUREMEMORY_BACKEND", NAME)
if _wanted != NAME:
    raise ImportError(
        f"SECUREMEMORY_BACKEND={_wanted!r}: this build of securememory has only the 'native' "
        "backend (its compiled core). The ctypes backend was removed because it cannot make an "
        "access begin or end atomically with respect to Python signal handlers. Unset "
        "SECUREMEMORY_BACKEND or set it to 'native'."
    )

UNSUPPORTED: str | None = None
if not (sys.platform.startswith("linux") or sys.platform == "darwin"):  # pragma: no cover
    UNSUPPORTED = f"securememory runs on Linux and macOS, not on {sys.platform}"

try:
    from . import _native
except ImportError as _e:  # pragma: no cover - an installation without its compiled core
    raise ImportError(
        "securememory's compiled core (securememory._backend._native) is missing or does not "
        f"load ({_e}). Install the package with pip, which builds it: it needs a C compiler and "
        "the Python headers (Debian: apt-get install gcc python3-dev)."
    ) from _e

from ._native import (  # noqa: E402
    ANONYMOUS,
    CAN_EXCLUDE_FROM_DUMPS,
    CANARY_MIN,
    MEMFD,
    PAGE_SIZE,
    SECRETMEM,
    Region,
    copy_bytes,
    counters,
    current_context,
    fill_random,
    read_byte,
    wipe,
    wipe_all,
    write_byte,
)

CAP_IPC_LOCK = 14


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


def _status_field(name: str) -> str | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux, or /proc not mounted
        return None
    return None


def _limit(value: int) -> int | None:
    return None if value == resource.RLIM_INFINITY else value


def memlock_budget() -> MemlockBudget:
    """The ``RLIMIT_MEMLOCK`` limits, the ``CAP_IPC_LOCK`` exemption and ``VmLck`` right now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    caps = _status_field("CapEff")
    exempt = caps is not None and bool(int(caps, 16) >> CAP_IPC_LOCK & 1)
    vmlck = _status_field("VmLck")
    locked = int(vmlck.split()[0]) * 1024 if vmlck else None
    return MemlockBudget(_limit(soft), _limit(hard), exempt, locked)


class MapBudget(NamedTuple):
    """The kernel's limit on mappings (VMAs) per process, and how many this one has."""

    max_map_count: int | None  # /proc/sys/vm/max_map_count, None where unknown
    used: int | None  # lines of /proc/self/maps


def map_budget() -> MapBudget:
    """``vm.max_map_count`` and the mappings this process has now (Linux; else unknown)."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit: int | None = int(f.read())
    except (OSError, ValueError):
        limit = None
    try:
        with open("/proc/self/maps", "rb") as f:
            used: int | None = sum(1 for _ in f)
    except OSError:
        used = None
    return MapBudget(limit, used)


def _fmt(v: int | None) -> str:
    return "unlimited" if v is None else f"{v} bytes"


def memlock_error(wanted: int, err: int | None = None) -> MemoryLockError:
    """The :class:`MemoryLockError` for ``wanted`` bytes the memlock budget cannot take."""
    budget = memlock_budget()
    why = f" ({os.strerror(err)}, errno {err})" if err is not None else ""
    used = "unknown" if budget.locked is None else f"{budget.locked} bytes"
    return MemoryLockError(
        f"cannot lock {wanted} bytes of memory{why}: RLIMIT_MEMLOCK soft limit is "
        f"{_fmt(budget.soft)}, hard limit {_fmt(budget.hard)}, already locked by this process "
        f"{used}. Raise it with `ulimit -l <KiB>` (up to the hard limit), "
        "resource.setrlimit(resource.RLIMIT_MEMLOCK, ...), LimitMEMLOCK= in a systemd unit, or "
        "/etc/security/limits.conf; or close secrets you no longer need.",
        err,
    )


def _map_count_error(op: str, err: int) -> SecureMemoryError | None:
    """A :class:`MapCountError` if ``err`` from ``op`` is the process running out of mappings."""
    from ..errors import MapCountError

    budget = map_budget()
    if budget.max_map_count is None or budget.used is None:
        return None
    if budget.used + 8 < budget.max_map_count:
        return None
    return MapCountError(
        f"{op} failed ({os.strerror(err)}, errno {err}): this process has {budget.used} memory "
        f"mappings and the kernel allows {budget.max_map_count} (vm.max_map_count); each secret "
        "uses 2 or 3. Raise the limit with `sysctl -w vm.max_map_count=<N>` (as root; "
        "/etc/sysctl.d/ to keep it), close secrets you no longer need, or keep many small keys "
        "in sealed enclaves (securememory.Enclave), which need no mapping each.",
        err,
    )


def explain(op: str, err: int, length: int) -> SecureMemoryError:
    """The typed exception for a failed system call ``op`` with ``errno`` ``err``.

    Called by the compiled core on every failure: a refused lock becomes
    :class:`MemoryLockError` with the budget, an exhausted mapping count :class:`MapCountError`
    with ``vm.max_map_count``, anything else :class:`SecureMemoryError` with the errno.
    """
    if op == "mlock" or (op == "mmap" and err == _errno.EAGAIN):
        return memlock_error(length, err)  # secretmem is charged to RLIMIT_MEMLOCK at mmap
    if err == _errno.ENOMEM and op in ("mmap", "mprotect", "madvise", "munmap"):
        mapped = _map_count_error(op, err)
        if mapped is not None:
            return mapped
    if err == _errno.ENOSYS:
        return UnsupportedPlatformError(f"{op} is not available here (errno {err})", err)
    return SecureMemoryError(f"{op} failed: {os.strerror(err)} (errno {err})", err)


_native.set_explain(explain)


def secretmem_unavailable() -> str | None:
    """Why the kernel cannot give this process ``memfd_secret`` pages, or ``None`` when it can.

    Only the kernel's support is judged here; a memlock budget too small for a secret is a
    :class:`MemoryLockError` when one is made.
    """
    if UNSUPPORTED is not None:
        return UNSUPPORTED
    if not sys.platform.startswith("linux"):
        return "memfd_secret is a Linux system call; this OS has no equivalent"
    err = _native.secretmem_errno()
    if err == 0:
        return None
    if err == _errno.ENOSYS:
        return (
            "memfd_secret is not available: kernel older than 5.14, built without "
            "CONFIG_SECRETMEM, or booted with secretmem.enable=0"
        )
    return f"memfd_secret failed: {os.strerror(err)} (errno {err})"


# -- sealed enclaves (issue 11) -------------------------------------------------------------------

_native.enclave_core()  # readies the type and adds it to the module
from ._native import SCRUBS_VECTOR_REGISTERS, EnclaveCore  # noqa: E402

enclave_seal_view = _native.enclave_seal_view
enclave_random = _native.enclave_random
enclave_rekey = _native.enclave_rekey
enclave_purge = _native.enclave_purge
enclave_stats = _native.enclave_stats
enclave_reveal = _native.enclave_reveal  # the live proofs only

_ENCLAVE_CRYPTO = (
    "crypto_aead_xchacha20poly1305_ietf_encrypt",
    "crypto_aead_xchacha20poly1305_ietf_decrypt",
    "crypto_generichash_blake2b_salt_personal",
)


def enclave_setup() -> None:
    """Hand the compiled core libsodium's XChaCha20-Poly1305 and BLAKE2b (PyNaCl's bundled copy,
    by address: no cryptography is written here) and the keyring's backing: ``memfd_secret``
    where the kernel has it, else locked private pages (also where
    ``SECUREMEMORY_ENCLAVE_KEYRING=anonymous``: readable through ``/proc/<pid>/mem``, which the
    tests use as the control of their key scans). Idempotent. ``ImportError`` without
    PyNaCl."""
    try:
        import nacl.bindings
        from nacl._sodium import ffi, lib
    except ImportError as e:
        raise ImportError(
            "securememory.Enclave needs libsodium through PyNaCl: pip install "
            f"'securememory[enclave]' (or pip install pynacl) ({e})"
        ) from e
    nacl.bindings.sodium_init()
    encrypt, decrypt, blake2b = (
        int(ffi.cast("uintptr_t", ffi.addressof(lib, name))) for name in _ENCLAVE_CRYPTO
    )
    backing = SECRETMEM if secretmem_unavailable() is None else ANONYMOUS
    wanted = os.environ.get("SECUREMEMORY_ENCLAVE_KEYRING", "")
    if wanted == "anonymous":  # locked private pages even where memfd_secret exists
        backing = ANONYMOUS
    elif wanted not in ("", "secretmem"):
        raise ValueError(
            f"SECUREMEMORY_ENCLAVE_KEYRING={wanted!r}: expected 'secretmem' (the default where "
            "the kernel has it) or 'anonymous'"
        )
    _native.enclave_setup(encrypt, decrypt, blake2b, backing)


def _refuse_seal(data: object) -> None:
    """Why ``data`` cannot be sealed (``TypeError``/``ValueError``; a non-contiguous writable
    source is wiped first, as ``SecretFactory.new`` does)."""
    source_view(data).release()


_native.enclave_hooks(enclave_setup, _refuse_seal)


def disable_core_dumps() -> None:
    """Set the ``RLIMIT_CORE`` soft limit to 0; the hard limit is left as it is."""
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))


def drop_ipc_lock_capability() -> None:
    """Drop ``CAP_IPC_LOCK`` from the bounding set (``prctl(PR_CAPBSET_DROP)``), so that a
    program this process ``exec``\\ s next is held to ``RLIMIT_MEMLOCK`` even as root. Needs
    ``CAP_SETPCAP``; meant for a ``preexec_fn``. Linux only."""
    _native.drop_capability(CAP_IPC_LOCK)


# -- ingress: from_env (issue 13) --------------------------------------------------------------


def _writable_ranges() -> list[tuple[int, int]]:
    """The writable mappings of this process (``/proc/self/maps``); empty where unknown."""
    out: list[tuple[int, int]] = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 2)
                if len(parts) > 1 and parts[1].startswith("rw"):
                    lo, hi = parts[0].split("-")
                    out.append((int(lo, 16), int(hi, 16)))
    except OSError:  # not Linux, or /proc not mounted
        return []
    return out


def environ_block(writable: list[tuple[int, int]]) -> tuple[int, int]:
    """Where the kernel wrote this process's initial environment strings at ``exec`` (fields
    ``env_start`` and ``env_end`` of ``/proc/self/stat``, what ``/proc/<pid>/environ`` reads), or
    ``(0, 0)`` where unknown or not inside one writable mapping."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        lo, hi = int(fields[47]), int(fields[48])  # fields 50 and 51; the list starts at field 3
    except (OSError, ValueError, IndexError):
        return 0, 0
    if lo and any(a <= lo and hi <= b for a, b in writable):
        return lo, hi
    return 0, 0


def take_environ(name: bytes, data: dict[bytes, bytes], key: bytes) -> tuple[int, int]:
    """Remove ``name`` from the C environment and ``key`` from ``data`` (``os.environ``'s bytes
    mapping), overwriting every copy of the value that can be reached first: the C string
    ``getenv`` returns (if it is in writable memory), each ``name=`` string of the initial
    environment block, and the Python ``bytes`` object when nobody else holds it. Returns (C
    strings wiped, 1 if the ``bytes`` object was wiped else 0)."""
    writable = _writable_ranges()
    lo, hi = environ_block(writable)
    return _native.take_environ(name, data, key, lo, hi, writable)


__all__ = [
    "ANONYMOUS",
    "CANARY_MIN",
    "CAN_EXCLUDE_FROM_DUMPS",
    "MEMFD",
    "NAME",
    "PAGE_SIZE",
    "SCRUBS_VECTOR_REGISTERS",
    "SECRETMEM",
    "UNSUPPORTED",
    "EnclaveCore",
    "MapBudget",
    "MemlockBudget",
    "Region",
    "copy_bytes",
    "counters",
    "current_context",
    "disable_core_dumps",
    "drop_ipc_lock_capability",
    "enclave_purge",
    "enclave_random",
    "enclave_rekey",
    "enclave_reveal",
    "enclave_seal_view",
    "enclave_setup",
    "enclave_stats",
    "environ_block",
    "explain",
    "fill_random",
    "map_budget",
    "memlock_budget",
    "memlock_error",
    "read_byte",
    "secretmem_unavailable",
    "take_environ",
    "wipe",
    "wipe_all",
    "write_byte",
]
