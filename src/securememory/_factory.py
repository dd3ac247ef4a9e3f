"""Layer 4: the factory every implementation shares; each implementation only names its region.

``SecretFactory()`` called on this base class picks the strongest implementation the host offers
(secretmem, else guarded); ``factory.implementation`` says which.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, ClassVar

from . import _ingress, _region
from ._secret import Secret, create
from .errors import UnsupportedPlatformError

_core_lock = threading.Lock()
_core_dumps_disabled = False


def _disable_core_dumps_once() -> None:
    global _core_dumps_disabled
    with _core_lock:
        if not _core_dumps_disabled:
            _region.disable_core_dumps()
            _core_dumps_disabled = True


class SecretFactory:
    """Makes :class:`Secret` objects of one implementation (see ``implementation``).

    Making the first factory sets the process's ``RLIMIT_CORE`` soft limit to 0 (no core dumps at
    all), as well as excluding each secret's pages from dumps one by one. Pass
    ``disable_core_dumps=False`` to keep core dumps on; the per-region exclusion (``MADV_DONTDUMP``
    on Linux, nothing on macOS) still applies.
    """

    implementation: ClassVar[str] = ""
    _guarded: ClassVar[bool] = True
    _secretmem: ClassVar[bool] = False

    def __new__(cls, *, disable_core_dumps: bool = True) -> SecretFactory:
        if cls is SecretFactory:
            from . import guarded, secretmem

            cls = secretmem.SecretFactory if secretmem.available() else guarded.SecretFactory
        return object.__new__(cls)

    def __init__(self, *, disable_core_dumps: bool = True) -> None:
        reason = self._unavailable()
        if reason is not None:
            raise UnsupportedPlatformError(f"{self.implementation}: {reason}")
        if disable_core_dumps:
            _disable_core_dumps_once()

    @classmethod
    def _unavailable(cls) -> str | None:
        from . import _os

        return _os.UNSUPPORTED

    def __repr__(self) -> str:
        return f"<securememory {self.implementation} SecretFactory>"

    def _create(self, size: int, fill: Callable[[memoryview], None]) -> Secret:
        return create(
            size, fill, guarded=self._guarded, secretmem=self._secretmem, name=self.implementation
        )

    def new(self, data: object) -> Secret:
        """Copy ``data`` (any C-contiguous bytes-like object) into a new secret.

        A writable source (bytearray, writable memoryview, array, mmap...) is wiped right after
        the copy, also when creation fails. A ``bytes`` source cannot be wiped: it stays wherever
        it came from, so prefer a bytearray or the ``from_*`` methods.
        """
        src = _ingress.source_view(data)
        try:
            if src.nbytes == 0:
                raise ValueError("cannot make a secret of 0 bytes")

            def fill(view: memoryview) -> None:
                view[:] = src

            return self._create(_region.check_size(src.nbytes), fill)
        finally:
            if not src.readonly:
                _region.wipe_buffer(src)
            src.release()

    def create_random(self, size: int) -> Secret:
        """A new secret of ``size`` bytes from the OS CSPRNG, written straight into its pages."""
        return self._create(_region.check_size(size), _region.fill_random)

    def from_fd(self, fd: int, size: int) -> Secret:
        """Read exactly ``size`` bytes from file descriptor ``fd`` straight into a new secret.

        Raises ``ValueError`` naming how many bytes came if the input ends early; nothing is left
        behind (the partial data is wiped with the region).
        """
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"fd must be an int, not {type(fd).__name__}")
        n = _region.check_size(size)

        fill = _ingress.fd_filler(fd, n)

        return self._create(n, fill)

    def from_stream(self, stream: Any, size: int) -> Secret:
        """Read exactly ``size`` bytes with ``stream.readinto`` straight into a new secret.

        A buffered stream keeps its own copy of what it read in its buffer, which the library
        cannot wipe: pass an unbuffered one (``open(path, "rb", buffering=0)``, a socket's
        ``makefile("rb", buffering=0)``), or use :meth:`from_fd`.
        """
        readinto = getattr(stream, "readinto", None)
        if not callable(readinto):
            raise TypeError(
                f"expected a binary stream with readinto(), got {type(stream).__name__}"
            )
        n = _region.check_size(size)

        fill = _ingress.stream_filler(readinto, n)

        return self._create(n, fill)

    def from_file(self, path: str | os.PathLike[str], size: int | None = None) -> Secret:
        """Read a key file (its whole content, or its first ``size`` bytes) into a new secret,
        unbuffered, with no copy on the heap."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            if size is None:
                size = os.fstat(fd).st_size
                if size == 0:
                    raise ValueError(f"{os.fspath(path)!r} is empty")
            return self.from_fd(fd, size)
        finally:
            os.close(fd)

    def from_prompt(
        self,
        prompt: str = "Passphrase: ",
        *,
        max_size: int = 1024,
        tty: int | str | os.PathLike[str] | None = None,
    ) -> Secret:
        """Write ``prompt`` to the terminal and read a passphrase with echo off into a new secret.

        ``tty`` is the controlling terminal (``/dev/tty``) by default, else a terminal's file
        descriptor (left open) or path. The line is read byte by byte (``os.readv``) into locked
        scratch memory, never into a ``bytes`` or ``str``; the secret holds exactly the bytes
        typed, without the newline. The terminal is in canonical mode (the kernel does the line
        editing) with echo off, Enter read as a newline; its settings are restored on every exit,
        ``KeyboardInterrupt`` included.

        Raises ``ValueError`` for an empty passphrase or one longer than ``max_size`` bytes
        (the rest of the line is read and wiped too), ``EOFError`` at end of input with nothing
        typed, ``OSError`` when there is no terminal (use :meth:`from_fd` for pipes and files).
        """
        from ._prompt import read_passphrase

        return read_passphrase(self._create, prompt, max_size=max_size, tty=tty)
