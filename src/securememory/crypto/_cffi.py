"""The C libraries the crypto module calls by pointer, through cffi, and how it hands them a
secret's pages.

- libsodium, as PyNaCl bundles it (``nacl._sodium``): Ed25519 and X25519.
- The reference Argon2 (the PHC winner's C code), as ``argon2-cffi-bindings`` bundles it
  (``_argon2_cffi_bindings``): Argon2id.

Both are loaded on first use, so that ``securememory.crypto`` imports without them and says
what to install when they are needed. :func:`pointer` gives C a pointer into a buffer where it
is (``ffi.from_buffer``: no copy); used on the view of an access (or the writable view a factory
hands out while it makes a secret), the pointer is the secret's own pages. The buffer export is
released when the ``with`` block ends, before the access does.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

_lock = threading.Lock()
_sodium: tuple[Any, Any] | None = None
_argon2: tuple[Any, Any] | None = None


def sodium() -> tuple[Any, Any]:
    """``(ffi, lib)`` of the libsodium PyNaCl bundles, initialised (``sodium_init``)."""
    global _sodium
    with _lock:
        if _sodium is None:
            try:
                from nacl._sodium import ffi, lib
            except ImportError as e:
                raise ImportError(
                    "Ed25519 and X25519 in securememory.crypto need PyNaCl (its bundled "
                    "libsodium): pip install 'securememory[crypto]'"
                ) from e
            if lib.sodium_init() < 0:  # pragma: no cover - libsodium could not initialise
                raise RuntimeError("libsodium failed to initialise (sodium_init)")
            _sodium = (ffi, lib)
        return _sodium


def argon2() -> tuple[Any, Any]:
    """``(ffi, lib)`` of the reference Argon2 that ``argon2-cffi-bindings`` bundles."""
    global _argon2
    with _lock:
        if _argon2 is None:
            try:
                from _argon2_cffi_bindings import ffi, lib
            except ImportError as e:
                raise ImportError(
                    "argon2id in securememory.crypto needs argon2-cffi-bindings (the reference "
                    "Argon2 in C): pip install 'securememory[crypto]'"
                ) from e
            _argon2 = (ffi, lib)
        return _argon2


@contextlib.contextmanager
def pointer(
    ffi: Any, buf: object, *, writable: bool = False, ctype: str = "unsigned char[]"
) -> Iterator[Any]:
    """A pointer (an array of ``ctype``) to ``buf`` where it is, for the duration of the block."""
    if isinstance(buf, str):
        raise TypeError("expected a bytes-like object, not str")
    p = ffi.from_buffer(ctype, buf, require_writable=writable)
    try:
        yield p
    finally:
        ffi.release(p)


@contextlib.contextmanager
def pointers(
    ffi: Any, *buffers: tuple[object, bool], ctype: str = "unsigned char[]"
) -> Iterator[list[Any]]:
    """:func:`pointer` to each ``(buffer, writable)``, all for the duration of the block."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(pointer(ffi, b, writable=w, ctype=ctype)) for b, w in buffers]
