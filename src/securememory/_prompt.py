"""Layer 4: read a passphrase from a terminal, echo off, straight into secure memory.

Used by :meth:`SecretFactory.from_prompt`. The passphrase is read one byte at a time with
``os.readv`` into a one-byte slice of a locked, undumpable, guarded scratch region (never
``os.read``, which returns a ``bytes`` object, and never a ``str``), then copied region to region
into a secret of exactly its length; the scratch region is wiped and freed.

Guaranteed: the passphrase bytes never become a Python object in this process; the terminal's
settings are restored on every exit (normal, error, ``KeyboardInterrupt``), and input still unread
then is discarded (``TCSAFLUSH``) rather than left for the next reader of the terminal.

Not guaranteed: what the kernel keeps (the terminal's line buffer lives in kernel memory until it
is overwritten), what a terminal emulator, ``script``/``tmux`` logging or a keylogger on the other
side of the terminal sees, and anything against root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import termios
from collections.abc import Iterator
from typing import Callable, Union

from ._secret import Secret, scratch

TtyArg = Union[int, str, "os.PathLike[str]", None]
Create = Callable[[int, Callable[[memoryview], None]], Secret]

_NEWLINE = 0x0A
_MAX_SIZE = 1 << 20
_TCSA = termios.TCSAFLUSH | getattr(termios, "TCSASOFT", 0)  # TCSASOFT: BSD/macOS only


def _open_tty(tty: TtyArg) -> tuple[int, bool]:
    """The terminal's file descriptor and whether this module opened it (and must close it)."""
    if isinstance(tty, bool):
        raise TypeError("tty must be a file descriptor, a path or None, not bool")
    if isinstance(tty, int):
        return tty, False
    path = "/dev/tty" if tty is None else os.fspath(tty)
    flags = os.O_RDWR | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags), True
    except OSError as e:
        why = " (this process has no controlling terminal)" if tty is None else ""
        raise OSError(
            e.errno,
            f"cannot open {path} to read a passphrase{why}: {e.strerror}. Pass tty= a terminal, "
            "or read the secret with from_fd/from_file",
        ) from None


@contextlib.contextmanager
def _echo_off(fd: int) -> Iterator[None]:
    """Canonical mode (the kernel does line editing), echo off, CR read as NL; restored on exit."""
    try:
        old = termios.tcgetattr(fd)
    except termios.error as e:
        code = e.args[0] if e.args and isinstance(e.args[0], int) else errno.ENOTTY
        raise OSError(
            code,
            f"file descriptor {fd} is not a terminal: from_prompt reads only from a terminal, "
            "with echo off. For a pipe or a file, use from_fd or from_file",
        ) from None
    new = list(old)
    new[0] |= termios.ICRNL
    new[3] = (new[3] & ~termios.ECHO) | termios.ICANON
    termios.tcsetattr(fd, _TCSA, new)
    try:
        yield
    finally:
        termios.tcsetattr(fd, _TCSA, old)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_line(fd: int, buf: memoryview, max_size: int) -> int:
    """Read one line into ``buf`` (``max_size + 1`` bytes) byte by byte; return its length
    without the line end. A longer line is drained into ``buf[max_size]`` and refused."""
    n = 0
    too_long = False
    while True:
        pos = min(n, max_size)
        with buf[pos : pos + 1] as one:
            got = os.readv(fd, [one])
        if got == 0:  # end of input (^D on an empty line, or the other side closed)
            if n == 0 and not too_long:
                raise EOFError("end of input before any passphrase was typed")
            break
        if buf[pos] == _NEWLINE:
            break
        if n == max_size:
            too_long = True  # keep reading (into the spare byte) until the line ends
        else:
            n += 1
    buf[pos] = 0
    if too_long:
        raise ValueError(
            f"the passphrase is longer than max_size={max_size} bytes; it was read and wiped. "
            "Pass a larger max_size"
        )
    if n == 0:
        raise ValueError("empty passphrase")
    return n


def read_passphrase(create: Create, prompt: str, *, max_size: int, tty: TtyArg) -> Secret:
    """Write ``prompt`` to the terminal, read a line with echo off, return it as a secret
    made by ``create(size, fill)`` (a factory's ``_create``). See
    :meth:`SecretFactory.from_prompt`."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
    if isinstance(max_size, bool) or not isinstance(max_size, int):
        raise TypeError(f"max_size must be an int, not {type(max_size).__name__}")
    if not 0 < max_size <= _MAX_SIZE:
        raise ValueError(f"max_size must be between 1 and {_MAX_SIZE}, got {max_size}")
    fd, opened = _open_tty(tty)
    try:
        with _echo_off(fd):
            _write_all(fd, prompt.encode())
            try:
                with scratch(max_size + 1) as buf:
                    n = _read_line(fd, buf, max_size)

                    def fill(view: memoryview) -> None:
                        with buf[:n] as src:
                            view[:] = src

                    return create(n, fill)
            finally:
                with contextlib.suppress(OSError):  # echo was off: end the prompt's line
                    _write_all(fd, b"\n")
    finally:
        if opened:
            os.close(fd)
