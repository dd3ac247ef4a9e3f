"""Layer 4: getting secret bytes in without a copy on the heap.

Each ``*_filler`` returns the ``fill(view)`` a factory calls with the writable view of a new
secret's pages: the bytes go from their source straight there. :func:`source_view` turns what
``SecretFactory.new`` is given into a flat byte view, or says why it cannot.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Callable

Fill = Callable[[memoryview], None]


def source_view(data: object) -> memoryview:
    """A flat byte view of any C-contiguous bytes-like object, or a ``TypeError``/``ValueError``."""
    if isinstance(data, str):
        raise TypeError(
            "expected a bytes-like object, got str: a str cannot be wiped. Read the secret into a "
            "bytearray (or use from_fd/from_prompt) so the library can wipe the source"
        )
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            "expected a bytes-like object (bytes, bytearray, memoryview, array, mmap...), "
            f"got {type(data).__name__}"
        ) from None
    if not view.c_contiguous:
        if not view.readonly:  # still wiped, item by item, as every writable source is
            zero = b"\0" if view.format.lstrip("@=<>!") == "c" else 0
            for index in itertools.product(*(range(n) for n in view.shape or ())):
                view[index] = zero  # type: ignore[assignment]
        view.release()
        raise ValueError("expected a C-contiguous buffer; copy it into a bytearray first")
    flat = view.cast("B")
    view.release()
    return flat


def fd_filler(fd: int, n: int) -> Fill:
    """Read exactly ``n`` bytes from ``fd`` with ``os.readv`` (no ``bytes`` object)."""

    def fill(view: memoryview) -> None:
        got = 0
        while got < n:
            k = os.readv(fd, [view[got:]])
            if k == 0:
                raise ValueError(f"expected {n} bytes from fd {fd}, got {got} before EOF")
            got += k

    return fill


def stream_filler(readinto: Callable[[memoryview], Any], n: int) -> Fill:
    """Read exactly ``n`` bytes with a stream's ``readinto``."""

    def fill(view: memoryview) -> None:
        got = 0
        while got < n:
            k = readinto(view[got:])
            if k is None:
                raise ValueError("the stream is non-blocking and had no data; use a blocking one")
            if k == 0:
                raise ValueError(f"expected {n} bytes from the stream, got {got} before EOF")
            got += k

    return fill
