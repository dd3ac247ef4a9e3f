"""Layer 3: the :class:`Secret`: a region with a lifecycle, readers and per-task access rules.

Every implementation shares this code; they differ only in the layout and backing their spec
(:mod:`securememory._implementations`) gives the region. The access transitions themselves (count,
``mprotect``, the view handed out) are one call each into the compiled core.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, NoReturn, TypeVar

from . import _process, _region
from ._implementations import Implementation
from ._region import (
    Backing,
    Layout,
    check_size,
    copy_bytes,
    current_context,
    fill_random,
    scratch,
    take_environ,
    wipe_buffer,
)
from .errors import SecureMemoryError

if TYPE_CHECKING:
    from ._enclave import Enclave

T = TypeVar("T")
Write = Callable[[memoryview], None]
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_STATES = ("filling", "open", "closing", "closed", "closed", "inherited")
_NEWLINE = 0x0A

__all__ = [
    "Backing",
    "Layout",
    "Secret",
    "SecretReader",
    "adopt",
    "check_size",
    "copy_bytes",
    "create",
    "fill_random",
    "scratch",
    "take_environ",
    "wipe_buffer",
]


def _creation_site() -> tuple[str, int]:
    """``(file, line)`` of the first frame outside this package (where the user made it)."""
    f = sys._getframe(1)
    while f.f_back is not None and f.f_code.co_filename.startswith(_PACKAGE_DIR):
        f = f.f_back
    return f.f_code.co_filename, f.f_lineno


def _task_name(context: object) -> str:
    """The asyncio task that runs in ``context``, named as asyncio names it, if one does."""
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:  # no running loop in this thread
        return "another context"
    for task in tasks:
        get = getattr(task, "get_context", None)  # 3.12+
        ctx = get() if get is not None else getattr(task, "_context", None)
        if ctx is context:
            return f"task {task.get_name()!r}"
    return "another task"


class Secret(_region.Region):
    """A secret held in locked, undumpable memory that is no-access except during an access.

    Made only by a factory (``SecretFactory().new(...)``). Read it inside :meth:`with_bytes` or
    :meth:`access`, which hand out a read-only ``memoryview`` valid until the access ends; the view
    itself is then released (using it raises ``ValueError``), and a slice or other view derived
    from it points at no-access memory: reading it kills the process with SIGSEGV, never returns
    the secret (except while another access of the same secret runs: do not keep slices).
    :meth:`close` wipes and frees the memory; a secret that is garbage collected or still open at
    interpreter exit is wiped too.

    Accesses are counted: the first makes the pages readable, the last makes them no-access again,
    each in one call into the compiled core that no signal handler can split. Threads and asyncio
    tasks may access the same secret concurrently.

    Not guaranteed: what the caller does with the bytes during an access (any ``bytes(view)``
    makes an ordinary, unwiped copy), and anything against root or a debugger attached to the
    process.

    Shared secrets (made with ``inheritable=True``, inherited over ``fork``, received with
    :func:`securememory.receive` or through ``multiprocessing``): every process maps the same
    pages and locks its own view. :meth:`close` wipes them only in the process that created the
    secret; elsewhere it unmaps this process's view, and an access begun after the creator's
    wipe raises :class:`SecretClosedError`. See :mod:`securememory._share`.

    Inherited from the compiled core: ``access()`` (``with s.access() as view:``),
    ``with_bytes(action)``, ``closed``, ``len()``.
    """

    __slots__ = ()

    @property
    def implementation(self) -> str:
        """The implementation that made it (``"secretmem"``, ``"guarded"`` or ``"protected"``)."""
        spec: Implementation = self._spec
        return spec.name

    def reader(self) -> SecretReader:
        """A seekable :class:`io.RawIOBase` over the secret; ``readinto`` copies straight into
        the caller's buffer during one short access."""
        len(self)  # SecretClosedError now rather than at the first read
        return SecretReader(self)

    def seal(self) -> Enclave:
        """This secret's contents sealed into a new :class:`~securememory.Enclave` (one access;
        the secret stays open)."""
        from ._enclave import _seal_secret

        return _seal_secret(self)

    # -- closing ------------------------------------------------------------------------------

    def _refuse_own(self, contexts: list[object]) -> NoReturn:
        here = current_context()
        if any(ctx is here for ctx in contexts):
            raise SecureMemoryError(
                "close() called inside an access of the same secret; it would wait for itself. "
                "End the access first."
            )
        raise SecureMemoryError(
            f"close() called while {_task_name(contexts[0])} on this thread is inside an access "
            "of this secret: waiting here would block it forever. Use `await secret.aclose()`, "
            "which waits for it, or end that access first."
        )

    def close(self) -> None:
        """Refuse new accesses, wait for running ones to end, then wipe and free the memory
        (a shared secret's pages are wiped only by the process that created it; any other
        process only unmaps its view, and the creator does not wait for other processes).

        Idempotent. Raises :class:`SecureMemoryError`, and leaves the secret open, when waiting
        could never end: called inside an access of this secret, while another asyncio task (or
        context) on this thread is inside one (use :meth:`aclose`), or when the threads it waits
        for are themselves waiting, in ``close()``, for a secret this thread is accessing (a
        cycle). Raises :class:`CanaryError` (after the wipe) if the guarded canary was found
        changed. An exception raised by a signal handler while it waits ends the wait; the secret
        then stays closing and is wiped by the last access to end.
        """
        if self.closed or self._close_if_idle():  # no access running: wiped and freed now
            return
        me = threading.get_ident()
        with _process.waits() as graph:
            own = [ctx for tid, ctx in self._holders() if tid == me]
            if own:
                self._refuse_own(own)
            if graph.would_deadlock(me, self):
                raise SecureMemoryError(
                    "close() would deadlock: a thread inside an access of this secret is itself "
                    "waiting, in close(), for a secret this thread is accessing. End this "
                    "thread's access first; the secret is still open."
                )
            if self._begin_close():
                return
            graph.waiting[me] = self
        try:
            self._wait_closed()
        finally:
            with _process.waits() as graph:
                graph.waiting.pop(me, None)

    async def aclose(self) -> None:
        """Close from asyncio code: refuse new accesses, then let the event loop run until every
        running access (other tasks' included) has ended, then wipe and free.

        Raises :class:`SecureMemoryError` when called inside this task's own access of the
        secret. Cancelling the wait leaves the secret closing; the last access to end wipes it.
        """
        if self.closed:
            return
        here, me = current_context(), threading.get_ident()
        if any(tid == me and ctx is here for tid, ctx in self._holders()):
            self._refuse_own([here])
        if self._begin_close():
            return
        delay = 0.0005
        while self._state <= 2:  # filling, open or closing: the last access has not ended
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        self._wait_closed()  # returns at once; raises CanaryError if the canary was found changed

    def __enter__(self) -> Secret:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Secret:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the object itself ----------------------------------------------------------------------

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<Secret {self.implementation} {self._size} bytes {_STATES[self._state]}>"

    __str__ = __repr__

    def _refuse(self, *args: object) -> NoReturn:
        raise TypeError("a Secret cannot be pickled or copied: that would put it on the heap")

    __reduce__ = __reduce_ex__ = __copy__ = __deepcopy__ = __getstate__ = _refuse


def create(
    spec: Implementation, size: int, write: Write | None, *, inheritable: bool = False
) -> Secret:
    """A new secret of ``size`` bytes: ``write(view)`` fills it through a writable view of its
    pages (``None``: from the kernel's CSPRNG). On any failure the region is wiped and freed."""
    layout, backing = spec.placement(size, shareable=inheritable)
    secret = _region.new_region(
        Secret,
        layout,
        backing,
        spec=spec,
        site=_creation_site(),
        inheritable=inheritable,
    )
    if write is None:
        try:
            secret._fill_random()
            secret._finish()
        except BaseException:
            if not secret.closed:
                secret._free()
            raise
    else:
        _region.fill(secret, write)
    return secret


def adopt(spec: Implementation, size: int, fd: int, *, inheritable: bool = False) -> Secret:
    """A :class:`Secret` over the pages of a shareable secret another process created, from its
    descriptor ``fd``, which the new secret owns from now on (closed on failure too).

    The descriptor is checked (a ``memfd_secret`` file, or a sealed ``memfd``, of the size
    ``spec`` and ``size`` imply) and made close-on-exec; the creator's live marker must be in the
    pages (``SecretClosedError`` if its creator has wiped them). This process locks its own view
    and only unmaps it on close; the creator's close wipes for every process."""
    try:
        layout, backing = spec.placement(check_size(size), shareable=True)
    except BaseException:  # a bad size from the peer: the descriptor is ours to close
        os.close(fd)
        raise
    return _region.new_region(
        Secret,
        layout,
        backing,
        spec=spec,
        site=_creation_site(),
        inheritable=inheritable,
        fd=fd,
    )


class SecretReader(io.RawIOBase):
    """A seekable, read-only raw stream over a secret (from :meth:`Secret.reader`).

    ``readinto`` copies straight into the caller's buffer. ``read``, ``readline``,
    ``readlines`` and iteration return ``bytes``: exactly one copy each (the object returned,
    which the library cannot wipe), made by the compiled core inside one access.
    """

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
        n: int = self._secret.copy_out(buffer, self._pos)
        self._pos += n
        return n

    def _read(self, size: int | None, stop: int) -> bytes:
        n = sys.maxsize if size is None or size < 0 else size
        data: bytes = self._secret.read_bytes(self._pos, n, stop)
        self._pos += len(data)
        return data

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all that is left by default)."""
        return self._read(size, -1)

    def readall(self) -> bytes:
        return self._read(-1, -1)

    def readline(self, size: int | None = -1) -> bytes:
        """The next line, its ``\\n`` included, or up to ``size`` bytes of it."""
        return self._read(size, _NEWLINE)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._secret)}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos
