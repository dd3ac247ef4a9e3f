"""Layer 4: the factory every implementation shares; each implementation names its spec.

``SecretFactory()`` called on this base class picks the strongest implementation the host offers
(the first of :data:`~securememory._implementations.DEFAULT_ORDER` the kernel supports: secretmem,
else guarded); ``factory.implementation`` says which, and a fallback is logged once as a warning
on the ``securememory`` logger.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, ClassVar

from . import _implementations, _ingress, _process
from ._implementations import Implementation
from ._secret import Secret, check_size, create, wipe_buffer
from .errors import UnsupportedPlatformError

_log = logging.getLogger("securememory")
_fallback_logged = False


class SecretFactory:
    """Makes :class:`Secret` objects of one implementation (see ``implementation``).

    Making a factory sets the process's ``RLIMIT_CORE`` soft limit to 0 (no core dumps at all),
    as well as excluding each secret's pages from dumps one by one. Pass
    ``disable_core_dumps=False`` to keep core dumps on: that opt-out holds for the whole process
    (also against factories made before or after it, the one ``securememory.crypto`` makes
    included); the per-region exclusion (``MADV_DONTDUMP`` on Linux, nothing on macOS) still
    applies.

    Every constructor takes ``inheritable=True`` to make a *shareable* secret: its pages are a
    file (``memfd_secret`` for secretmem, a sealed ``memfd`` for guarded and protected) that
    stays usable in a child made by ``os.fork()``, and that :func:`securememory.send` and
    ``multiprocessing`` can pass to another process. By default a forked child sees nothing and
    the secret cannot leave its process. The descriptor is close-on-exec: an ``exec``'d program
    never inherits it. See docs/topics/sharing.rst for who wipes and who pays the memlock.
    """

    _spec: ClassVar[Implementation | None] = None
    _registry: ClassVar[dict[str, type[SecretFactory]]] = {}

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        if cls._spec is not None:
            SecretFactory._registry[cls._spec.name] = cls

    def __new__(cls, *, disable_core_dumps: bool = True) -> SecretFactory:
        if cls is SecretFactory:
            cls = _default_class()
        return object.__new__(cls)

    def __init__(self, *, disable_core_dumps: bool = True) -> None:
        spec = self.spec
        reason = spec.unavailable()
        if reason is not None:
            raise UnsupportedPlatformError(f"{spec.name}: {reason}")
        if disable_core_dumps:
            _process.stop_core_dumps()
        else:
            _process.keep_core_dumps()

    @property
    def spec(self) -> Implementation:
        """What this factory's secrets are (the table entry of its implementation)."""
        assert self._spec is not None  # the base class never makes instances of itself
        return self._spec

    @property
    def implementation(self) -> str:
        """``"secretmem"``, ``"guarded"`` or ``"protected"``."""
        return self.spec.name

    def __repr__(self) -> str:
        return f"<securememory {self.implementation} SecretFactory>"

    def _create(
        self,
        size: int,
        fill: Callable[[memoryview], None] | None,
        *,
        inheritable: bool = False,
    ) -> Secret:
        """A new secret of ``size`` bytes that ``fill(view)`` writes through a writable view of
        its pages (``None``: random). On any failure it is wiped and freed."""
        return create(self.spec, size, fill, inheritable=inheritable)

    def new(self, data: object, *, inheritable: bool = False) -> Secret:
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

            return self._create(check_size(src.nbytes), fill, inheritable=inheritable)
        finally:
            if not src.readonly:
                wipe_buffer(src)
            src.release()

    def create_random(self, size: int, *, inheritable: bool = False) -> Secret:
        """A new secret of ``size`` bytes from the OS CSPRNG, written straight into its pages."""
        return self._create(check_size(size), None, inheritable=inheritable)

    def from_fd(self, fd: int, size: int, *, inheritable: bool = False) -> Secret:
        """Read exactly ``size`` bytes from file descriptor ``fd`` straight into a new secret.

        Raises ``ValueError`` naming how many bytes came if the input ends early; nothing is left
        behind (the partial data is wiped with the region).
        """
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"fd must be an int, not {type(fd).__name__}")
        n = check_size(size)

        fill = _ingress.fd_filler(fd, n)

        return self._create(n, fill, inheritable=inheritable)

    def from_stream(self, stream: Any, size: int, *, inheritable: bool = False) -> Secret:
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
        n = check_size(size)

        fill = _ingress.stream_filler(readinto, n)

        return self._create(n, fill, inheritable=inheritable)

    def from_file(
        self,
        path: str | os.PathLike[str],
        size: int | None = None,
        *,
        inheritable: bool = False,
    ) -> Secret:
        """Read a key file (its whole content, or its first ``size`` bytes) into a new secret,
        unbuffered, with no copy on the heap."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            if size is None:
                size = os.fstat(fd).st_size
                if size == 0:
                    raise ValueError(f"{os.fspath(path)!r} is empty")
            return self.from_fd(fd, size, inheritable=inheritable)
        finally:
            os.close(fd)

    def from_prompt(
        self,
        prompt: str = "Passphrase: ",
        *,
        max_size: int = 1024,
        tty: int | str | os.PathLike[str] | None = None,
        inheritable: bool = False,
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

        def create(size: int, fill: Callable[[memoryview], None] | None) -> Secret:
            return self._create(size, fill, inheritable=inheritable)

        return read_passphrase(create, prompt, max_size=max_size, tty=tty)


def _default_class() -> type[SecretFactory]:
    """The factory class ``SecretFactory()`` makes: the first of the default order the kernel
    supports, the fallback logged once."""
    global _fallback_logged
    from . import guarded, protectedmemory, secretmem  # noqa: F401  (they register themselves)

    skipped: list[str] = []
    for spec in _implementations.DEFAULT_ORDER:
        reason = spec.unavailable()
        if reason is None:
            if skipped and not _fallback_logged:
                _fallback_logged = True
                _log.warning("SecretFactory() uses %s: %s", spec.name, "; ".join(skipped))
            return SecretFactory._registry[spec.name]
        skipped.append(f"{spec.name} is unavailable ({reason})")
    raise UnsupportedPlatformError("; ".join(skipped))


def factory_for(name: str, *, disable_core_dumps: bool = True) -> SecretFactory:
    """A factory of the implementation named ``name`` (``ValueError`` for an unknown name)."""
    from . import guarded, protectedmemory, secretmem  # noqa: F401  (they register themselves)

    cls = SecretFactory._registry[_implementations.get(name).name]
    return cls(disable_core_dumps=disable_core_dumps)
