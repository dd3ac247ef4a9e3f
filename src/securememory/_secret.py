"""Layer 3: the :class:`Secret`: access counting, lifecycle, views, reader, finalizers, stats.

Every implementation (protected, guarded, secretmem) shares this code; they differ only in the
region they ask for.
"""

from __future__ import annotations

import atexit
import io
import itertools
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, NoReturn, TypeVar

from . import _os
from ._region import Region, check_size, counters, memlock_budget, wipe_buffer
from .errors import CanaryError, SecretClosedError, SecureMemoryError

T = TypeVar("T")
_OPEN, _CLOSING, _CLOSED = 0, 1, 2
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

_stats_lock = threading.Lock()
_created = 0
_live: dict[int, weakref.finalize[Any, Any]] = {}
_keys = itertools.count()
_exiting = False


def _creation_site() -> str:
    """``file:line`` of the first frame outside this package (where the user made the secret)."""
    f = sys._getframe(1)
    while f.f_back is not None and f.f_code.co_filename.startswith(_PACKAGE_DIR):
        f = f.f_back
    return f"{f.f_code.co_filename}:{f.f_lineno}"


def _reap(key: int, region: Region, site: str) -> None:
    """Finalizer of a secret nobody closed: warn (unless the interpreter is exiting) and wipe."""
    with _stats_lock:
        _live.pop(key, None)
    if not _exiting:
        warnings.warn(
            f"a secret of {region.size} bytes created at {site} was never closed; "
            "the garbage collector wiped it",
            ResourceWarning,
            stacklevel=2,
        )
    region.free()


@atexit.register
def _wipe_all_at_exit() -> None:
    """At interpreter exit, wipe and free every secret still open (no warning).

    weakref's own exit hook has already run by then and made calling a finalizer a no-op, so
    each secret is taken back from its finalizer and closed in place: later uses raise
    SecretClosedError. An access still running in a daemon thread does not stop the wipe.
    """
    global _exiting
    _exiting = True
    with _stats_lock:
        finalizers = list(_live.values())
    for fin in finalizers:
        info = fin.detach()
        if info is not None:
            secret = info[0]
            with secret._lock:
                secret._destroy()


class Secret:
    """A secret held in locked, undumpable memory that is no-access except during an access.

    Made only by a factory (``SecretFactory().new(...)``). Read it inside :meth:`with_bytes` or
    :meth:`access`, which hand out a read-only ``memoryview`` valid until the access ends; the view
    itself is then released (using it raises ``ValueError``), and a slice or other view derived
    from it points at no-access memory: reading it kills the process with SIGSEGV, never returns
    the secret (except while another access of the same secret runs: do not keep slices).
    :meth:`close` wipes and frees the memory; a secret that is garbage collected or still open at
    interpreter exit is wiped too.

    Not guaranteed: what the caller does with the bytes during an access (any ``bytes(view)``
    makes an ordinary, unwiped copy), and anything against root or a debugger attached to the
    process.
    """

    __slots__ = (
        "__weakref__",
        "_closed_cond",
        "_count",
        "_finalizer",
        "_key",
        "_lock",
        "_region",
        "_state",
        "_threads",
        "implementation",
    )

    implementation: str

    def __init__(self, region: Region, implementation: str) -> None:
        """Private: wrap a filled, no-access region. Use a factory to make secrets."""
        global _created
        self._region = region
        self.implementation = implementation
        self._lock = threading.Lock()
        self._closed_cond = threading.Condition(self._lock)
        self._count = 0
        self._threads: dict[int, int] = {}
        self._state = _OPEN
        self._key = next(_keys)
        self._finalizer = weakref.finalize(self, _reap, self._key, region, _creation_site())
        self._finalizer.atexit = False  # _wipe_all_at_exit handles exit, without the warning
        with _stats_lock:
            _created += 1
            _live[self._key] = self._finalizer

    # -- access -------------------------------------------------------------------------------

    def _enter(self, tid: int) -> memoryview:
        """Count one access by thread ``tid`` and hand out its view; undone if anything fails."""
        with self._lock:
            if self._state is not _OPEN:
                raise SecretClosedError("the secret is closed")
            if self._region.in_forked_child():
                raise SecureMemoryError(
                    "this secret belongs to the parent process: a forked child sees only zeros "
                    "or no mapping at all. Create secrets after the fork."
                )
            if self._count == 0:
                self._protect(_os.PROT_READ)
            self._count += 1
            self._threads[tid] = self._threads.get(tid, 0) + 1
            try:
                return self._region.view()
            except BaseException:
                self._leave(tid)
                raise

    def _exit(self, view: memoryview, tid: int) -> None:
        """End the access ``_enter(tid)`` began, from whichever thread."""
        try:
            self._region.end_view(view)
        finally:
            with self._lock:
                self._leave(tid)

    def _leave(self, tid: int) -> None:
        """Uncount one access of ``tid`` (lock held); the last one re-protects the pages."""
        self._count -= 1
        depth = self._threads.pop(tid, 1) - 1
        if depth > 0:
            self._threads[tid] = depth
        if self._count:
            return
        if not self._region.canary_ok():
            self._destroy()
            raise CanaryError(
                "the canary in front of the secret changed during an access: memory before "
                "the data was overwritten; the secret has been wiped and freed"
            )
        self._protect(_os.PROT_NONE)
        if self._state is _CLOSING:
            self._closed_cond.notify_all()

    def _protect(self, prot: int) -> None:
        try:
            self._region.protect(prot)
        except SecureMemoryError:  # fail closed: a region we cannot protect is destroyed
            self._destroy()
            raise

    def with_bytes(self, action: Callable[[memoryview], T]) -> T:
        """Call ``action(view)`` with a read-only view of the secret; return its result.

        The view is valid only during the call. Concurrent and nested calls are counted: the
        memory is readable while at least one is running, and no-access again when the last ends.
        """
        tid = threading.get_ident()
        view = self._enter(tid)
        try:
            return action(view)
        finally:
            self._exit(view, tid)

    def access(self) -> _Access:
        """The same as :meth:`with_bytes` as a context manager: ``with s.access() as view:``."""
        return _Access(self)

    def reader(self) -> SecretReader:
        """A seekable :class:`io.RawIOBase` over the secret; ``readinto`` copies straight into
        the caller's buffer during one short access. ``read`` returns ``bytes`` (a copy the
        library cannot wipe) after wiping its own temporary buffer."""
        self._check_open()
        return SecretReader(self)

    # -- lifecycle ----------------------------------------------------------------------------

    def _destroy(self) -> bool:
        """Wipe and free the region; the caller holds the lock. Return canary intact."""
        self._state = _CLOSED
        self._finalizer.detach()
        with _stats_lock:
            _live.pop(self._key, None)
        self._closed_cond.notify_all()
        return self._region.free()

    def close(self) -> None:
        """Refuse new accesses, wait for running ones to end, then wipe and free the memory.

        Idempotent. Raises :class:`SecureMemoryError` when called from inside an access of this
        same secret (waiting would never end), and :class:`CanaryError` (after the wipe) when the
        guarded canary was found changed.
        """
        with self._lock:
            if self._state is _CLOSED:
                return
            if threading.get_ident() in self._threads:
                raise SecureMemoryError(
                    "close() called inside an access of the same secret; it would wait for "
                    "itself. End the access first."
                )
            self._state = _CLOSING
            while self._count:
                self._closed_cond.wait()
            if self._state is _CLOSED:  # another thread's close() or a canary failure did it
                return
            intact = self._destroy()
        if not intact:
            raise CanaryError(
                "the canary in front of the secret changed: memory before the data was "
                "overwritten; the secret has been wiped and freed"
            )

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run (or is running)."""
        return self._state is not _OPEN

    def _check_open(self) -> None:
        if self._state is not _OPEN:
            raise SecretClosedError("the secret is closed")

    def __len__(self) -> int:
        self._check_open()
        return self._region.size

    def __bool__(self) -> bool:
        return True

    def __enter__(self) -> Secret:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = ("open", "closing", "closed")[self._state]
        return f"<Secret {self.implementation} {self._region.size} bytes {state}>"

    __str__ = __repr__

    def _refuse(self, *args: object) -> NoReturn:
        raise TypeError("a Secret cannot be pickled or copied: that would put it on the heap")

    __reduce__ = __reduce_ex__ = __copy__ = __deepcopy__ = __getstate__ = _refuse


class _Access:
    """Context manager of :meth:`Secret.access`; it may be left from another thread."""

    __slots__ = ("_secret", "_tid", "_view")

    def __init__(self, secret: Secret) -> None:
        self._secret = secret
        self._view: memoryview | None = None
        self._tid = 0

    def __enter__(self) -> memoryview:
        if self._view is not None:
            raise RuntimeError("this access() context is already entered; call access() again")
        self._tid = threading.get_ident()
        self._view = self._secret._enter(self._tid)
        return self._view

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        view, self._view = self._view, None
        if view is not None:
            self._secret._exit(view, self._tid)


class SecretReader(io.RawIOBase):
    """A seekable, read-only raw stream over a secret (from :meth:`Secret.reader`)."""

    def __init__(self, secret: Secret) -> None:
        super().__init__()
        self._secret = secret
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        """Copy the next bytes of the secret straight into ``buffer``; 0 at the end."""
        dst = memoryview(buffer).cast("B")
        try:
            size = len(self._secret)
            n = max(0, min(dst.nbytes, size - self._pos))
            if n:
                with self._secret.access() as view:
                    dst[:n] = view[self._pos : self._pos + n]
                self._pos += n
            return n
        finally:
            dst.release()

    def read(self, size: int | None = -1) -> bytes:
        """Read into a temporary buffer, return it as ``bytes``, wipe the temporary."""
        remaining = max(0, len(self._secret) - self._pos)
        n = remaining if size is None or size < 0 else min(size, remaining)
        tmp = bytearray(n)
        view = memoryview(tmp)
        try:
            got = self.readinto(view)
            return bytes(view[:got])
        finally:
            wipe_buffer(view)
            view.release()

    def readall(self) -> bytes:
        return self.read(-1)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._secret)}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos


def create(
    size: int, fill: Callable[[memoryview], None], *, guarded: bool, secretmem: bool, name: str
) -> Secret:
    """Allocate a region, let ``fill`` write the data through a writable view, protect it, and
    wrap it in a :class:`Secret`. On any failure the region is wiped and freed."""
    region = Region(size, guarded=guarded, secretmem=secretmem)
    try:
        view = region.view(writable=True)
        try:
            fill(view)
        finally:
            region.end_view(view)
        region.protect(_os.PROT_NONE)
    except BaseException:
        region.free()
        raise
    return Secret(region, name)


@contextmanager
def scratch(size: int) -> Iterator[memoryview]:
    """A writable buffer of ``size`` bytes in locked, undumpable, guarded memory, wiped and freed
    on exit (exceptions included). Raises :class:`CanaryError` on exit, after the wipe, if
    something wrote in front of the buffer."""
    region = Region(check_size(size), guarded=True, secretmem=False)
    view = region.view(writable=True)
    try:
        yield view
    finally:
        region.end_view(view)
        intact = region.free()
    if not intact:
        raise CanaryError("something wrote in front of the scratch buffer; it has been wiped")


@dataclass(frozen=True)
class Stats:
    """A snapshot of this process's secure memory use (see :func:`stats`)."""

    live_secrets: int
    total_created: int
    bytes_mapped: int  # by live secrets and scratch buffers, guard pages included
    bytes_locked: int  # by live secrets and scratch buffers
    bytes_quarantined: int  # address space kept no-access for views that outlived a secret
    memlock_limit: int | None  # RLIMIT_MEMLOCK soft limit in bytes; None = unlimited
    memlock_hard_limit: int | None
    memlock_exempt: bool  # CAP_IPC_LOCK: the kernel does not apply the limit
    process_locked: int | None  # VmLck of the whole process; None where the OS hides it
    memlock_available: int | None  # what can still be locked; None = no limit applies


def stats() -> Stats:
    """Live and total secrets, bytes mapped and locked, and the memlock budget right now."""
    mapped, locked, quarantined = counters()
    budget = memlock_budget()
    with _stats_lock:
        live, created = len(_live), _created
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
    )
