"""Layer 2: a region is some pages with a layout. It maps, locks, protects, wipes and frees them.

Two layouts: *plain* (the data at the start of whole pages) and *guarded* (a no-access guard page,
the inner pages with a random canary in front of right-aligned data, a no-access guard page).
Two backings: private anonymous memory (``mlock``, ``MADV_DONTDUMP``, ``MADV_WIPEONFORK``) or a
``memfd_secret`` file (locked, undumpable and out of the kernel's direct map by the kernel itself;
``MADV_DONTFORK``). A region knows nothing of threads, access counts or Python-level secrets.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

from . import _os
from .errors import SecureMemoryError, UnsupportedPlatformError

MIN_CANARY = 16
MAX_SIZE = 1 << 30
_CANARY = os.urandom(_os.PAGE_SIZE + MIN_CANARY) if _os.UNSUPPORTED is None else b""

_counter_lock = threading.Lock()
_mapped = 0  # bytes mapped by live regions (guard pages included)
_locked = 0  # bytes locked by live regions
_quarantined = 0  # bytes of address space kept reserved for views that outlived their secret


def counters() -> tuple[int, int, int]:
    """(bytes mapped, bytes locked, bytes quarantined) by this library's live regions."""
    return _mapped, _locked, _quarantined


def _count(mapped: int, locked: int, quarantined: int = 0) -> None:
    global _mapped, _locked, _quarantined
    with _counter_lock:
        _mapped += mapped
        _locked += locked
        _quarantined += quarantined


_exempt: bool | None = None  # CAP_IPC_LOCK, learnt at the first region
_pid = os.getpid()  # kept current by the fork hook: no system call on the access path


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _precheck_budget(want: int) -> None:
    """Refuse, before any system call, a lock that ``RLIMIT_MEMLOCK`` cannot take.

    Cheap (one ``getrlimit``): this library's own locked bytes are a lower bound of what the
    process has locked, so exceeding the limit with them is certain; only then is the exact
    budget read (``/proc``) for the message. Anything the pre-check lets through that the kernel
    refuses still becomes :class:`MemoryLockError`.
    """
    global _exempt
    if _exempt is None:
        _exempt = _os.memlock_budget().exempt
    if _exempt:
        return
    soft, _ = _os.rlimit_memlock()
    if soft is not None and _locked + want > soft:
        budget = _os.memlock_budget()
        avail = budget.available()
        if avail is not None and want > avail:
            raise _os.memlock_error(want, budget)


def check_size(size: object) -> int:
    """``size`` as a valid secret length, or the ``TypeError``/``ValueError`` that says why not."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, not {type(size).__name__}")
    if not 0 < size <= MAX_SIZE:
        raise ValueError(f"size must be between 1 and {MAX_SIZE} bytes, got {size}")
    return size


def _round_up(n: int) -> int:
    return -(-n // _os.PAGE_SIZE) * _os.PAGE_SIZE


class Region:
    """Pages holding ``size`` bytes of data; created writable, wiped on :meth:`free`.

    ``mapped`` is the whole mapping (guard pages included), ``locked`` the bytes locked (the inner
    pages). The data is reachable only through :meth:`view`; the views it hands out are tracked so
    that :meth:`free` never unmaps an address range a live view still points into.
    """

    __slots__ = (
        "_canary_cmp",
        "_exp",
        "_exp_refs",
        "_mprotect",
        "base",
        "canary_len",
        "data",
        "inner",
        "inner_len",
        "locked",
        "mapped",
        "pid",
        "secretmem",
        "size",
    )

    def __init__(self, size: int, *, guarded: bool, secretmem: bool) -> None:
        if _os.UNSUPPORTED is not None:
            raise UnsupportedPlatformError(_os.UNSUPPORTED)
        page = _os.PAGE_SIZE
        self.size = size
        self.pid = _pid
        self.secretmem = secretmem
        self.inner_len = _round_up(size + MIN_CANARY if guarded else size)
        # guarded: a guard page on each side. plain: one unlocked no-access page after the data,
        # so that adjacent regions never merge into one kernel VMA (every mprotect would then
        # split and re-merge it, and an access would cost more the more secrets are alive).
        self.mapped = self.inner_len + (2 * page if guarded else page)
        self.locked = self.inner_len
        _precheck_budget(self.inner_len)
        self.base = _os.map_memory(self.mapped)
        self.inner = self.base + (page if guarded else 0)
        self.data = self.inner + (self.inner_len - size if guarded else 0)
        self.canary_len = self.data - self.inner
        self._mprotect = _os.protector(self.inner, self.inner_len)
        try:
            if secretmem:
                _os.map_secretmem(self.inner, self.inner_len)
                _os.drop_on_fork(self.base, self.mapped)
            else:
                if _os.CAN_EXCLUDE_FROM_DUMPS:
                    _os.exclude_from_dumps(self.base, self.mapped)
                _os.wipe_on_fork(self.base, self.mapped)
            self.protect(_os.PROT_RW)
            if not secretmem:
                # mlock while writable: it faults every page in, so Locked: shows them at once.
                _os.lock(self.inner, self.inner_len, _os.memlock_budget)
        except BaseException:
            _os.unmap(self.base, self.mapped)
            raise
        self._canary_cmp = (
            _os.comparer(self.inner, _CANARY, self.canary_len) if self.canary_len else None
        )
        self._exp = _os.exporter(self.data, size)
        self._exp_refs = sys.getrefcount(self._exp)
        if guarded:
            canary = _os.view(_os.exporter(self.inner, self.canary_len), writable=True)
            canary[:] = _CANARY[: self.canary_len]
            canary.release()
        _count(self.mapped, self.locked)

    def protect(self, prot: int) -> None:
        """Set the data pages to ``_os.PROT_NONE``, ``PROT_READ`` or ``PROT_RW``."""
        if self._mprotect(prot):
            raise _os.os_error(f"mprotect({prot})")

    def view(self, writable: bool = False) -> memoryview:
        """A new byte view of the data. Release it with :meth:`end_view`."""
        return _os.view(self._exp, writable)

    def end_view(self, view: memoryview) -> None:
        """Release a view from :meth:`view`; a view with live exports is left to :meth:`free`."""
        try:  # noqa: SIM105 (contextlib.suppress costs 0.5 us more on the access path)
            view.release()
        except BufferError:  # a live export of it: free() sees the reference
            pass

    def views_alive(self) -> bool:
        """Whether any view of the data (or a slice of one) is still referenced."""
        return sys.getrefcount(self._exp) > self._exp_refs

    def canary_ok(self) -> bool:
        """Whether the canary is intact (one ``memcmp``). The data pages must be readable."""
        return self._canary_cmp is None or self._canary_cmp() == 0

    def in_forked_child(self) -> bool:
        """Whether this process is a fork of the one that made the region."""
        return self.pid != _pid

    def free(self) -> bool:
        """Wipe, unlock and unmap; return whether the canary was intact before the wipe.

        If a view of the data is still referenced, the range is replaced by fresh no-access
        memory and never unmapped, so the stale view faults instead of reading whatever the
        kernel maps there next (another secret, say). The wipe happens in every case.

        In a forked child the region holds zeros (``MADV_WIPEONFORK``) or is not mapped at all
        (``MADV_DONTFORK``): there is nothing to wipe, and the child only drops its mapping.

        If the pages cannot be made writable (``mprotect`` failing, say for lack of memory), they
        are released unwiped and the error is raised: the kernel zeroes them before any reuse.
        """
        if self.in_forked_child():
            with contextlib.suppress(SecureMemoryError):
                _os.unmap(self.base, self.mapped)
            _count(-self.mapped, -self.locked)
            return True
        intact = True
        try:
            self.protect(_os.PROT_RW)
            intact = self.canary_ok()
            _os.zero(self.inner, self.inner_len)
        finally:  # the pages are released even if they could not be made writable and wiped
            try:
                if not self.secretmem:
                    with contextlib.suppress(SecureMemoryError):
                        _os.unlock(self.inner, self.inner_len)
            finally:
                if self.views_alive():
                    _os.map_memory(self.mapped, addr=self.base, flags=_os.MAP_FIXED)
                    _count(-self.mapped, -self.locked, self.mapped)
                else:
                    _os.unmap(self.base, self.mapped)
                    _count(-self.mapped, -self.locked)
        return intact


def wipe_buffer(buf: memoryview) -> None:
    """Zero a writable, C-contiguous buffer with a call the optimiser cannot drop."""
    if buf.nbytes:
        _os.zero(_os.address_of(buf), buf.nbytes)


def fill_random(buf: memoryview) -> None:
    """Fill a writable, C-contiguous buffer from the kernel CSPRNG, in place."""
    if buf.nbytes:
        _os.fill_random(_os.address_of(buf), buf.nbytes)


def memlock_budget() -> _os.MemlockBudget:
    """The process's memlock limits and use, re-exported for the layers above."""
    return _os.memlock_budget()


def secretmem_unavailable() -> str | None:
    """Why secretmem-backed regions cannot be made here, or ``None``."""
    return _os.UNSUPPORTED or _os.secretmem_unavailable()


def disable_core_dumps() -> None:
    """Process-wide: ``RLIMIT_CORE`` soft limit 0."""
    _os.disable_core_dumps()
