"""Layer 4: the factory every implementation shares; each implementation names its spec.

``SecretFactory()`` called on this base class picks the strongest implementation the host offers
(the first of :data:`~securememory._implementations.DEFAULT_ORDER` the kernel supports: secretmem,
else guarded); ``factory.implementation`` says which, and a fallback is logged once as a warning
on the ``securememory`` logger.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from typing import Any, Callable, ClassVar

from . import _implementations, _ingress, _process
from ._implementations import Implementation
from ._secret import (
    Secret,
    check_size,
    copy_bytes,
    create,
    scratch,
    take_environ,
    wipe_buffer,
)
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

        Any item format is accepted and copied as its raw bytes: ``bytes``, ``bytearray``,
        ``memoryview``, ``array.array``, ``mmap``, ctypes arrays and structures (little- or
        big-endian). A writable source is wiped right after the copy, also when creation fails
        and also when it is refused: a strided (not C-contiguous) view raises ``ValueError`` after
        every item it covers is zeroed. A ``bytes`` source cannot be wiped: it stays wherever it
        came from, so prefer a bytearray or the ``from_*`` methods.
        """
        src = _ingress.source_view(data)
        try:
            size = check_size(_ingress.check_source(src))

            def fill(view: memoryview) -> None:
                copy_bytes(view, src)

            return self._create(size, fill, inheritable=inheritable)
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

    def from_stream(
        self, stream: Any, size: int, until: bytes | None = None, *, inheritable: bool = False
    ) -> Secret:
        """Read with ``stream.readinto`` straight into a new secret: exactly ``size`` bytes, or,
        with ``until`` (one byte, such as ``b"\\n"``), a line of at most ``size`` bytes.

        With ``until`` the value ends at that byte (not included) or at the end of input (many
        programs print no trailing newline). It is read one byte per ``readinto`` call into
        locked, undumpable scratch memory, so that nothing after the delimiter is consumed (a pipe
        cannot give back what was read too far), then copied into a secret of its exact length;
        the scratch memory is wiped. Raises ``EOFError`` if the input ends before any byte,
        ``ValueError`` for an empty line or a value longer than ``size`` (what was read of it is
        wiped; the rest stays in the stream).

        ``readinto`` is not trusted: a count below 0 or above what it was asked for is an
        ``OSError``, anything but an int a ``TypeError``, at once. If it raises, nothing is left
        behind: the buffers it was given (and the views of them its frames hold) are released
        and the new secret's pages are wiped and unmapped.

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
        if until is not None:
            return self._read_line(readinto, n, until, "the stream", inheritable)

        fill = _ingress.stream_filler(readinto, n)

        return self._create(n, fill, inheritable=inheritable)

    def from_stdin(
        self, max_size: int = 4096, until: bytes | None = b"\n", *, inheritable: bool = False
    ) -> Secret:
        """Read a line from standard input straight into a new secret (``vault kv get -field=k
        ... | app``): at most ``max_size`` bytes, ending at ``until`` (not included) or at the
        end of input; ``until=None`` reads everything to the end of input.

        Reads ``sys.stdin``'s file descriptor with ``os.readv``, one byte per call, into locked
        scratch memory (see :meth:`from_stream`), never through ``sys.stdin``'s text wrapper or
        its buffer: nothing after the delimiter is consumed, and no ``bytes`` or ``str`` of the
        value is made. Call it before anything reads ``sys.stdin`` (``input()``,
        ``sys.stdin.readline()``): what those read ahead sits in their buffer, not in the file
        descriptor. On a terminal the line is echoed; use :meth:`from_prompt` to type a secret.

        Raises ``EOFError`` when the input is already at its end (a closed pipe, ``/dev/null``),
        ``ValueError`` for an empty line or a value longer than ``max_size``, ``OSError`` when
        there is no standard input.
        """
        stdin = sys.stdin
        try:
            if stdin is None:
                raise ValueError("sys.stdin is None")
            fd = stdin.fileno()
        except (ValueError, OSError) as e:  # None, closed, or not backed by a descriptor
            raise OSError(
                errno.EBADF, f"there is no standard input to read a secret from ({e})"
            ) from None
        n = check_size(max_size)

        def read_into(b: memoryview) -> int:
            return os.readv(fd, [b])

        return self._read_line(read_into, n, until, "standard input", inheritable)

    def from_env(self, name: str, *, inheritable: bool = False) -> Secret:
        """Move the environment variable ``name``'s value into a new secret, and out of the
        environment.

        The value is copied from ``os.environ``'s own ``bytes`` object straight into the
        secret's pages (no ``str`` is made). Then the variable is removed from ``os.environ`` and
        from the C environment, and these copies are overwritten before they are let go: the C
        string ``getenv`` returns; the ``NAME=`` string of the initial environment block (the one
        ``/proc/<pid>/environ`` shows, blanked there too), also when the variable was set again
        since; Python's ``bytes`` object of the value, when nobody else holds it.

        Not wiped, because the library cannot reach them: the environment of the parent process
        and of the shell that started this one (and their shell history, ``ps e`` output while
        they run), any ``str`` the program made by reading ``os.environ[name]`` or
        ``os.getenv(name)`` before this call (alive or in freed memory), ``os.environ.copy()``
        and other references the program holds, and copies a C library made. Call it early, at
        start-up, before other threads run (another thread's ``getenv`` may see it emptied).

        Raises ``KeyError`` if the variable is not set, ``ValueError`` if it is empty (it is
        then left as it is) or its name is invalid, ``TypeError`` for a name that is not a
        ``str``.
        """
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if not name or "=" in name or "\0" in name:
            raise ValueError(f"invalid environment variable name {name!r}")
        data = getattr(os.environ, "_data", None)
        if not isinstance(data, dict):
            raise UnsupportedPlatformError(
                "os.environ is not the standard mapping of bytes on this platform"
            )
        key = os.fsencode(name)
        value = data.get(key)
        if value is None:
            raise KeyError(f"environment variable {name!r} is not set")
        if not isinstance(value, bytes):
            raise UnsupportedPlatformError("os.environ does not hold its values as bytes here")
        size = len(value)
        del value  # no reference of ours may keep it alive past the wipe
        if size == 0:
            raise ValueError(f"environment variable {name!r} is empty")

        def fill(view: memoryview) -> None:
            copy_bytes(view, data[key])

        secret = self._create(check_size(size), fill, inheritable=inheritable)
        take_environ(key, data, key)
        return secret

    def _read_line(
        self,
        read_into: Callable[[memoryview], Any],
        limit: int,
        until: object,
        what: str,
        inheritable: bool,
    ) -> Secret:
        delim = _ingress.delimiter(until)
        with scratch(limit + 1) as buf:
            n = _ingress.read_line(read_into, buf, limit, delim, what)

            def fill(view: memoryview) -> None:
                with buf[:n] as part:
                    copy_bytes(view, part)

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
