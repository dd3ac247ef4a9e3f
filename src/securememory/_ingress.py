"""Leaf: getting secret bytes in without a copy on the heap, and without trusting the source.

Each ``*_filler`` returns the ``fill(view)`` a factory calls with the writable view of a new
secret's pages: the bytes go from their source straight there. :func:`read_line` reads a line
byte by byte into a buffer (the factory's locked scratch memory). :func:`source_view` turns what
``SecretFactory.new`` is given into a buffer view, or says why it cannot.

Every buffer handed to a stream's ``readinto`` (or ``os.readv``) is a slice of the secret's (or
the scratch region's) pages, released as soon as the call returns or raises; if it raises, the
views of those pages that the stream's own frames still hold (its traceback keeps them alive) are
released too, so a failed read leaves no view behind and the pages are unmapped at once. A view
the stream stores anywhere else (an attribute, a list) cannot be found: the library then keeps the
address range no-access (quarantined, see ``stats().bytes_quarantined``) until that view goes.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable

Fill = Callable[[memoryview], None]
ReadInto = Callable[[memoryview], Any]


def source_view(data: object) -> memoryview:
    """A view of any bytes-like object, as it is (any format, any layout), or a ``TypeError``."""
    if isinstance(data, str):
        raise TypeError(
            "expected a bytes-like object, got str: a str cannot be wiped. Read the secret into a "
            "bytearray (or use from_fd/from_prompt) so the library can wipe the source"
        )
    try:
        return memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            "expected a bytes-like object (bytes, bytearray, memoryview, array, mmap, ctypes "
            f"array or structure...), got {type(data).__name__}"
        ) from None


def check_source(view: memoryview) -> int:
    """The byte count of a source ``new()`` can copy, or the ``ValueError`` that says why not."""
    if not view.c_contiguous:
        raise ValueError(
            f"expected a C-contiguous buffer, got a strided view (strides {view.strides}, "
            f"format {view.format!r}): copy it into a bytearray first"
            + (" (this one was wiped)" if not view.readonly else "")
        )
    if view.nbytes == 0:
        raise ValueError("cannot make a secret of 0 bytes")
    return view.nbytes


def _count(k: object, asked: int) -> int:
    """What ``readinto`` returned, checked: bytes written into a buffer of ``asked`` bytes."""
    if k is None:
        raise ValueError("the stream is non-blocking and had no data; use a blocking one")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"the stream's readinto() returned {type(k).__name__}, not an int")
    if not 0 <= k <= asked:
        raise OSError(
            f"the stream's readinto() returned {k} for a buffer of {asked} bytes (it must be "
            f"between 0 and {asked}): the stream is broken; nothing was kept"
        )
    return k


def _release_views_in(exc: BaseException, owner: object) -> None:
    """Release every ``memoryview`` of ``owner`` held by a local of a frame in ``exc``'s
    traceback (and those of the exceptions chained to it), below the frame that caught it."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        todo += [e.__cause__, e.__context__]
        tb = e.__traceback__
        tb = tb.tb_next if tb is not None and e is exc else tb  # not the catching frame
        while tb is not None:
            for value in list(tb.tb_frame.f_locals.values()):
                if isinstance(value, memoryview):
                    with contextlib.suppress(ValueError, BufferError):  # released / exported
                        if value.obj is owner:
                            value.release()
            tb = tb.tb_next


def call_readinto(read_into: ReadInto, buf: memoryview, start: int, stop: int) -> int:
    """``read_into(buf[start:stop])``, its count checked; the slice (and, if it raises, every
    view of ``buf``'s object its frames hold) released before this returns or raises."""
    part = buf[start:stop]
    try:
        return _count(read_into(part), stop - start)
    except BaseException as e:
        _release_views_in(e, buf.obj)
        raise
    finally:
        with contextlib.suppress(BufferError):  # an export of it is the quarantine's business
            part.release()


def fd_filler(fd: int, n: int) -> Fill:
    """Read exactly ``n`` bytes from ``fd`` with ``os.readv`` (no ``bytes`` object)."""

    def read_into(b: memoryview) -> int:
        return os.readv(fd, [b])

    def fill(view: memoryview) -> None:
        got = 0
        while got < n:
            k = call_readinto(read_into, view, got, n)
            if k == 0:
                raise ValueError(f"expected {n} bytes from fd {fd}, got {got} before EOF")
            got += k

    return fill


def stream_filler(read_into: ReadInto, n: int) -> Fill:
    """Read exactly ``n`` bytes with a stream's ``readinto``, whose counts are checked."""

    def fill(view: memoryview) -> None:
        got = 0
        while got < n:
            k = call_readinto(read_into, view, got, n)
            if k == 0:
                raise ValueError(f"expected {n} bytes from the stream, got {got} before EOF")
            got += k

    return fill


def delimiter(until: object) -> int:
    """The one byte ``until`` names (``b"\\n"``), or ``-1`` for ``None`` (read to the end)."""
    if until is None:
        return -1
    if not isinstance(until, (bytes, bytearray)) or len(until) != 1:
        raise ValueError(f"until must be one byte (such as b'\\n') or None, got {until!r}")
    return until[0]


def read_line(read_into: ReadInto, buf: memoryview, limit: int, delim: int, what: str) -> int:
    """Read into ``buf`` (``limit + 1`` bytes) one byte per call until the byte ``delim`` (not
    kept) or the end of input; return the length. Byte by byte, so that nothing after the
    delimiter is consumed: a pipe cannot give back what was read too far.

    Raises ``EOFError`` when the input ends before any byte, ``ValueError`` for an empty line or
    one longer than ``limit`` bytes (after reading ``limit + 1`` bytes of it; the rest stays in the
    input). What was read stays in ``buf``, for its owner to wipe.
    """
    n = 0
    while True:
        if call_readinto(read_into, buf, n, n + 1) == 0:
            if n == 0:
                raise EOFError(f"{what} ended before any byte of the secret came")
            return n
        if buf[n] == delim:
            buf[n] = 0
            if n == 0:
                raise ValueError(f"empty line from {what}: a secret cannot be 0 bytes")
            return n
        n += 1
        if n > limit:
            raise ValueError(
                f"the value from {what} is longer than the maximum of {limit} bytes; what was "
                "read was wiped and nothing was kept. Pass a larger maximum"
            )
