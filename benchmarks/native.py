"""The physical floor: timing loops in C (``floor.c``, compiled at run time and loaded with ctypes),
a C spinner thread, and the same system calls from bare ctypes.

Nothing here uses securememory: it is what any Python library pays for the same kernel work.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Callable

from .timing import CBatch, Op

HERE = Path(__file__).resolve().parent
PAGE = mmap.PAGESIZE
PROT_NONE, PROT_READ, PROT_RW = 0, 1, 3
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20
MAP_FAILED = (1 << (8 * ctypes.sizeof(ctypes.c_void_p))) - 1


def bind(lib: ctypes.CDLL, name: str, restype: object, *argtypes: object) -> Callable[..., Any]:
    """``lib.name`` with its C signature set (shared by the floor and the peers)."""
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = argtypes
    return fn  # type: ignore[no-any-return]


@dataclass(frozen=True)
class NativeBuild:
    """The compiled floor library, or ``None`` and the reason when there is no working compiler."""

    compiler: str | None
    lib: Path | None
    reason: str | None


def find_compiler() -> str | None:
    """``$CC`` if set and on the path, else ``cc``, ``gcc`` or ``clang``, else ``None``."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name:
            path = shutil.which(name)
            if path:
                return path
    return None


def build(build_dir: Path) -> NativeBuild:
    """Compile ``floor.c`` into a shared library in ``build_dir``."""
    cc = find_compiler()
    if cc is None:
        return NativeBuild(None, None, "no C compiler (cc, gcc, clang or $CC) on PATH")
    build_dir.mkdir(parents=True, exist_ok=True)
    lib = build_dir / "libfloor.so"
    cmd = [cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(HERE / "floor.c")]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return NativeBuild(cc, None, f"{' '.join(cmd)} failed: {e}")
    if done.returncode != 0:
        err = " / ".join(done.stderr.strip().splitlines()[-3:])
        return NativeBuild(cc, None, f"{' '.join(cmd)} failed: {err}")
    return NativeBuild(cc, lib, None)


@dataclass(frozen=True)
class RegionLayout:
    """Where a region's locked pages are in its mapping, in bytes, and whether they are a
    ``memfd_secret`` file: what the C floor needs to make regions as securememory makes them."""

    mapped: int
    inner_offset: int
    inner_len: int
    secretmem: bool


def _checked(ns: float, what: str) -> float:
    if ns < 0:
        err = int(-ns)
        raise OSError(err, f"{what} failed in the C floor: {os.strerror(err)}")
    return ns


class CFloor:
    """The compiled timing loops of ``floor.c``; each call times one whole batch in C."""

    def __init__(self, lib_path: Path) -> None:
        lib = ctypes.CDLL(str(lib_path), use_errno=True)
        vp, lng, dbl = ctypes.c_void_p, ctypes.c_long, ctypes.c_double
        self.lib_path = lib_path
        self._page_new = bind(lib, "floor_page_new", vp)
        self._page_free = bind(lib, "floor_page_free", None, vp)
        self._pairs = bind(lib, "floor_mprotect_pairs", dbl, vp, lng)
        self._maps = bind(lib, "floor_map_lock_cycles", dbl, lng)
        self._bzero = bind(lib, "floor_bzero_32", dbl, lng)
        self._regions_new = bind(
            lib, "floor_regions_new", vp, lng, lng, lng, lng, ctypes.c_int, ctypes.c_uint64
        )
        self._regions_free = bind(lib, "floor_regions_free", None, vp)
        self._among = bind(lib, "floor_mprotect_among", dbl, vp, lng)
        self.spin_until = bind(lib, "spin_until", None, ctypes.POINTER(ctypes.c_int))
        self._sodium_cycles = bind(lib, "floor_sodium_malloc_free", dbl, vp, vp, lng)
        self._secretmem_cycles = bind(lib, "floor_secretmem_cycles", dbl, lng)
        self._memguard_opens = bind(lib, "floor_memguard_opens", dbl, lng)

    def page_new(self) -> int:
        p: int | None = self._page_new()
        if not p:
            raise OSError("floor_page_new failed")
        return p

    def page_free(self, p: int) -> None:
        self._page_free(p)

    def mprotect_pairs(self, page: int) -> CBatch:
        """``mprotect(PROT_READ)`` + ``mprotect(PROT_NONE)`` of one locked page."""
        return lambda batch: _checked(self._pairs(page, batch), "mprotect")

    def mprotect_pair_per_call(self, page: int) -> CBatch:
        """The same pair, one pair per ctypes call, timed in C: the kernel's cost when the
        calls come one at a time between Python code, as a library's do (caches and branch
        predictors are no longer warm from the previous pair). Call overhead excluded."""
        pairs = self._pairs

        def run(batch: int) -> float:
            total = 0.0
            for _ in range(batch):
                total += _checked(pairs(page, 1), "mprotect")
            return total / batch

        return run

    def map_lock_cycles(self) -> CBatch:
        """``mmap`` + ``mlock`` + ``munlock`` + ``munmap`` of one page."""
        return lambda batch: _checked(self._maps(batch), "mmap/mlock/munlock/munmap")

    def sodium_malloc_free(self, malloc_address: int, free_address: int) -> CBatch:
        """``sodium_malloc(32)`` + ``sodium_free`` called from C (no ctypes call per op)."""
        fn = self._sodium_cycles
        return lambda batch: _checked(fn(malloc_address, free_address, batch), "sodium_malloc")

    def secretmem_cycles(self) -> CBatch:
        """``memfd_secret`` + ``ftruncate`` + ``mmap`` + ``munmap`` + ``close`` of one page."""
        return lambda batch: _checked(self._secretmem_cycles(batch), "memfd_secret cycle")

    def memguard_opens(self) -> CBatch:
        """memguard's Enclave.Open design, its system calls from C: two guarded, locked
        buffers made and destroyed per open (see ``floor_memguard_opens``)."""
        return lambda batch: _checked(self._memguard_opens(batch), "memguard open")

    def bzero_32(self) -> CBatch:
        return lambda batch: _checked(self._bzero(batch), "explicit_bzero")

    def regions_new(self, n: int, layout: RegionLayout, seed: int) -> int:
        """``n`` live regions of ``layout``, made with the system calls securememory makes;
        ``seed`` picks the regions :meth:`mprotect_among` cycles over."""
        r: int | None = self._regions_new(
            n, layout.mapped, layout.inner_offset, layout.inner_len, layout.secretmem, seed
        )
        if not r:
            err = ctypes.get_errno()
            raise OSError(err, f"floor_regions_new({n}, {layout}) failed: {os.strerror(err)}")
        return r

    def regions_free(self, regions: int) -> None:
        self._regions_free(regions)

    def mprotect_among(self, regions: int) -> CBatch:
        """The mprotect pair on the inner pages of regions picked at random among N."""
        return lambda batch: _checked(self._among(regions, batch), "mprotect")


# -- busy threads ----------------------------------------------------------------------------


class Spinner:
    """Context manager: another thread of this process busy on a CPU until the block ends."""

    kind = ""
    description = ""

    def __init__(self, cpu: int | None = None) -> None:
        self._thread: threading.Thread | None = None
        self._cpu = cpu

    def _start(self) -> None:
        if self._cpu is not None:
            os.sched_setaffinity(0, {self._cpu})  # this thread only
        self._run()

    def _run(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Spinner:
        name = f"{self.kind}-spinner"
        self._thread = threading.Thread(target=self._start, name=name, daemon=True)
        self._thread.start()
        time.sleep(0.02)  # let it get going on the other CPU
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()
        if self._thread is not None:
            self._thread.join()


class CSpinner(Spinner):
    """A thread inside a ctypes call to a C loop: it spins without holding the GIL, so it costs
    the accessing thread only what the kernel charges (TLB shootdowns), not GIL hand-offs."""

    kind = "C"
    description = "a thread spinning inside a ctypes call to a compiled C loop (GIL released)"

    def __init__(self, floor: CFloor, cpu: int | None = None) -> None:
        super().__init__(cpu)
        self._spin = floor.spin_until
        self._flag = ctypes.c_int(0)

    def _run(self) -> None:
        self._flag.value = 0
        self._spin(ctypes.byref(self._flag))

    def _stop(self) -> None:
        self._flag.value = 1


class PySpinner(Spinner):
    """A pure-Python busy loop: it holds the GIL whenever it runs, so every ctypes call of the
    accessing thread (which releases the GIL) may wait a whole switch interval to get it back."""

    kind = "Python"
    description = (
        "a pure-Python busy loop: it contends for the GIL, so the cost is GIL hand-offs "
        "(bimodal, microseconds or milliseconds per access) more than the kernel's"
    )

    def __init__(self, cpu: int | None = None) -> None:
        super().__init__(cpu)
        self._stopped = False

    def _run(self) -> None:
        self._stopped = False
        n = 0
        while not self._stopped:
            n += 1

    def _stop(self) -> None:
        self._stopped = True


# -- bare ctypes -----------------------------------------------------------------------------


class Libc:
    """The libc calls of the floor, bound through ``ctypes.CDLL(None)`` with ``argtypes`` set."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        vp, sz, i = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        self.mmap = bind(libc, "mmap", vp, vp, sz, i, i, i, ctypes.c_long)
        self.munmap = bind(libc, "munmap", i, vp, sz)
        self.mprotect = bind(libc, "mprotect", i, vp, sz, i)
        self.mlock = bind(libc, "mlock", i, vp, sz)
        self.munlock = bind(libc, "munlock", i, vp, sz)
        self.explicit_bzero = bind(libc, "explicit_bzero", None, vp, sz)

    @staticmethod
    def _bind(
        lib: ctypes.CDLL, name: str, restype: object, *argtypes: object
    ) -> Callable[..., int]:
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
        return fn  # type: ignore[no-any-return]


class CtypesFloor:
    """One locked no-access page (between unlocked guard pages, as in ``floor_page_new``) and the
    floor operations on it from bare ctypes."""

    def __init__(self) -> None:
        self.libc = c = Libc()
        base = c.mmap(None, 3 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if base is None or base == MAP_FAILED:
            raise OSError(ctypes.get_errno(), "mmap failed")
        self.base: int = base
        self.addr: int = base + PAGE
        if c.mprotect(self.addr, PAGE, PROT_RW) != 0 or c.mlock(self.addr, PAGE) != 0:
            c.munmap(base, 3 * PAGE)
            raise OSError(ctypes.get_errno(), "mprotect/mlock failed")
        ctypes.memset(self.addr, 0x5A, PAGE)
        c.mprotect(self.addr, PAGE, PROT_NONE)
        self.buf = ctypes.create_string_buffer(32)
        self.buf_addr = ctypes.addressof(self.buf)

    def close(self) -> None:
        self.libc.munmap(self.base, 3 * PAGE)

    def mprotect_pair(self) -> Op:
        mprotect, addr = self.libc.mprotect, self.addr

        def op() -> None:
            mprotect(addr, PAGE, PROT_READ)
            mprotect(addr, PAGE, PROT_NONE)

        return op

    def map_lock_cycle(self) -> Op:
        c = self.libc

        def op() -> None:
            p = c.mmap(None, PAGE, PROT_RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            c.mlock(p, PAGE)
            c.munlock(p, PAGE)
            c.munmap(p, PAGE)

        return op

    def bzero_32(self) -> Op:
        bzero, addr = self.libc.explicit_bzero, self.buf_addr

        def op() -> None:
            bzero(addr, 32)

        return op
