"""Layer 2: a region is some pages with a layout and a backing; this module says which.

It is the only importer of the backend (:mod:`securememory._backend`). A :class:`Region` (the
compiled core's type) maps, locks, protects, wipes and frees its pages and counts accesses; this
module decides its :class:`Layout` and :class:`Backing` and offers the intents the layers above
need, never raw flags:

- *layouts*: ``plain`` (the data at the start of whole pages, one unlocked no-access page after
  them so that neighbouring regions never merge into one kernel VMA) and ``guarded`` (a
  no-access guard page, the inner pages with a canary in front of right-aligned data, a
  no-access guard page);
- *backings*: private anonymous memory (``mlock``, ``MADV_DONTDUMP``), a ``memfd_secret`` file
  (locked, undumpable and out of the kernel's direct map by the kernel itself), or a sealed
  ``memfd`` (shareable with other processes, locked by each). Every backing is
  ``MADV_DONTFORK``: a forked child has no mapping of it.

A region knows nothing of threads, tasks or Python-level secrets.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from . import _backend
from ._backend import (
    NAME as BACKEND,
)
from ._backend import (
    PAGE_SIZE,
    SCRUBS_VECTOR_REGISTERS,
    UNSUPPORTED,
    EnclaveCore,
    MapBudget,
    MemlockBudget,
    Region,
    counters,
    current_context,
    disable_core_dumps,
    drop_ipc_lock_capability,
    enclave_purge,
    enclave_random,
    enclave_rekey,
    enclave_reveal,
    enclave_seal_view,
    enclave_stats,
    map_budget,
    memlock_budget,
    secretmem_unavailable,
    take_environ,
    wipe_all,
)
from .errors import UnsupportedPlatformError

MAX_SIZE = 1 << 30
SHARE_HEADER = 16  # a shareable plain region's live marker, in front of its data
R = TypeVar("R", bound=Region)

__all__ = [
    "BACKEND",
    "MAX_SIZE",
    "PAGE_SIZE",
    "SCRUBS_VECTOR_REGISTERS",
    "SHARE_HEADER",
    "UNSUPPORTED",
    "Backing",
    "EnclaveCore",
    "Layout",
    "MapBudget",
    "MemlockBudget",
    "Region",
    "check_size",
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
    "enclave_stats",
    "fill_random",
    "make_no_access",
    "make_readable",
    "make_writable",
    "map_budget",
    "memlock_budget",
    "new_region",
    "peek",
    "poke",
    "scratch",
    "secretmem_unavailable",
    "take_environ",
    "wipe_all",
    "wipe_buffer",
]


class Backing(enum.Enum):
    """What the inner pages are."""

    ANONYMOUS = _backend.ANONYMOUS
    SECRETMEM = _backend.SECRETMEM
    MEMFD = _backend.MEMFD


def _round_up(n: int) -> int:
    return -(-n // PAGE_SIZE) * PAGE_SIZE


@dataclass(frozen=True)
class Layout:
    """Where everything is in a region's mapping, in bytes from its start."""

    size: int  # the secret's bytes
    mapped: int  # the whole mapping
    inner_offset: int  # the locked, protected pages
    inner_len: int
    data_offset: int  # the data, from the start of the inner pages
    canary_len: int  # the canary in front of the data (guarded), else 0

    @classmethod
    def plain(cls, size: int, header: int = 0) -> Layout:
        """The data at the start of whole pages (after ``header`` bytes: a shareable region's
        live marker, see :data:`SHARE_HEADER`), then one unlocked no-access separator page."""
        inner = _round_up(size + header)
        return cls(size, inner + PAGE_SIZE, 0, inner, header, 0)

    @classmethod
    def guarded(cls, size: int) -> Layout:
        """Guard page, inner pages (canary of at least ``CANARY_MIN`` bytes, then the data,
        right-aligned), guard page."""
        inner = _round_up(size + _backend.CANARY_MIN)
        return cls(size, inner + 2 * PAGE_SIZE, PAGE_SIZE, inner, inner - size, inner - size)

    @property
    def locked(self) -> int:
        """Bytes of memory locked: the inner pages."""
        return self.inner_len


def check_size(size: object) -> int:
    """``size`` as a valid secret length, or the ``TypeError``/``ValueError`` that says why not."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, not {type(size).__name__}")
    if not 0 < size <= MAX_SIZE:
        raise ValueError(f"size must be between 1 and {MAX_SIZE} bytes, got {size}")
    return size


def new_region(
    cls: type[R],
    layout: Layout,
    backing: Backing,
    *,
    spec: Any = None,
    site: tuple[str, int] | None = None,
    inheritable: bool = False,
    fd: int = -1,
) -> R:
    """Map, lock and (unless ``fd`` is given) make writable a new region of type ``cls``.

    With ``fd``, the inner pages are that shared file (received from another process): the
    region starts open and no-access, and its contents belong to whoever created the file.
    Otherwise it starts being filled: write it through ``_writable_view()`` or
    ``_fill_random()``, then ``_finish()`` (or ``_free()`` on failure). ``site`` is where the user
    created it, named in the warning if the garbage collector has to wipe it.
    """
    if UNSUPPORTED is not None:
        raise UnsupportedPlatformError(UNSUPPORTED)
    file, line = site if site is not None else (None, 0)
    return cls(
        layout.size,
        layout.mapped,
        layout.inner_offset,
        layout.inner_len,
        layout.data_offset,
        layout.canary_len,
        backing.value,
        inheritable=inheritable,
        fd=fd,
        spec=spec,
        site_file=file,
        site_line=line,
    )


def fill(region: Region, write: Callable[[memoryview], None]) -> None:
    """Let ``write`` fill a region being filled through a writable view, then make it
    no-access. No view of it may outlive ``write``; on any failure the region is wiped and
    freed."""
    try:
        view = region._writable_view()
        try:
            write(view)
        finally:
            with contextlib.suppress(BufferError):  # an export of it is seen by _finish
                view.release()
        region._finish()
    except BaseException:
        if not region.closed:
            region._free()
        raise


@contextlib.contextmanager
def scratch(size: int) -> Iterator[memoryview]:
    """A writable buffer of ``size`` bytes in locked, undumpable, guarded memory, wiped and freed
    on exit (exceptions included). Raises :class:`~securememory.CanaryError` on exit, after the
    wipe, if something wrote in front of the buffer. Creating it is no access: its pages are
    readable and writable for its whole life, which should be short."""
    region = new_region(Region, Layout.guarded(check_size(size)), Backing.ANONYMOUS)
    view = region._writable_view()
    try:
        yield view
    finally:
        with contextlib.suppress(BufferError):
            view.release()
        region._free()  # CanaryError, after the wipe, if something wrote in front of it


def wipe_buffer(buf: object) -> None:
    """Zero any writable buffer in place (contiguous or not) with a wipe the optimiser keeps."""
    _backend.wipe(buf)


def fill_random(buf: object) -> None:
    """Fill a writable, C-contiguous buffer from the kernel CSPRNG, in place."""
    _backend.fill_random(buf)


def copy_bytes(dst: object, src: object) -> int:
    """Copy all of ``src`` (any C-contiguous buffer, of any item format, as raw bytes) into the
    start of the writable ``dst``; return the byte count."""
    return _backend.copy_bytes(dst, src)


def make_readable(region: Region) -> None:
    """Make the inner pages readable without counting an access (the live proofs only)."""
    region._raw_protect(1)


def make_writable(region: Region) -> None:
    """Make the inner pages writable without counting an access (the live proofs only)."""
    region._raw_protect(3)


def make_no_access(region: Region) -> None:
    """Make the inner pages no-access again (the live proofs only)."""
    region._raw_protect(0)


def peek(address: int) -> int:
    """Read one byte at ``address`` as a buggy program would: no protection change (a no-access
    page kills the process with SIGSEGV, which is what the live proofs observe)."""
    return _backend.read_byte(address)


def poke(address: int, value: int) -> None:
    """Write one byte at ``address`` as a buggy program would (the live proofs only)."""
    _backend.write_byte(address, value)
