"""Peers: libsodium's guarded allocator through ctypes, and a plain (unprotected) ``bytearray``."""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
from collections.abc import Sequence
from typing import Callable

from .native import bind
from .timing import Op, Statement

SECRET = bytes(range(32))


class Sodium:
    """The system libsodium: ``sodium_malloc``/``sodium_free`` and its ``mprotect`` wrappers.

    Its guarded allocation is the closest peer of the guarded implementation: guard pages, a
    canary, ``mlock`` and ``MADV_DONTDUMP``. It has no access counting, so one allocation cannot
    be shared by threads that each make it no-access when they finish.
    """

    def __init__(self, lib: ctypes.CDLL, path: str) -> None:
        self.path = path
        vp, i, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
        self.malloc: Callable[[int], int | None] = bind(lib, "sodium_malloc", vp, sz)
        self.free: Callable[[int], None] = bind(lib, "sodium_free", None, vp)
        self.readonly: Callable[[int], int] = bind(lib, "sodium_mprotect_readonly", i, vp)
        self.noaccess: Callable[[int], int] = bind(lib, "sodium_mprotect_noaccess", i, vp)
        self.version: str = bind(lib, "sodium_version_string", ctypes.c_char_p)().decode()
        # the functions' own addresses, for the C floor to call them without ctypes in between
        self.malloc_address = ctypes.cast(lib.sodium_malloc, vp).value or 0
        self.free_address = ctypes.cast(lib.sodium_free, vp).value or 0

    @classmethod
    def load(cls) -> Sodium | str:
        """The library after ``sodium_init``, or the reason it cannot be used."""
        names = [n for n in (ctypes.util.find_library("sodium"), "libsodium.so.23") if n]
        errors = []
        for name in names:
            try:
                lib = ctypes.CDLL(name)
            except OSError as e:
                errors.append(str(e))
                continue
            init = lib.sodium_init
            init.restype = ctypes.c_int
            if init() < 0:
                return f"sodium_init() failed in {name}"
            return cls(lib, name)
        return (
            "libsodium not found (" + ("; ".join(errors) or "find_library('sodium') = None") + ")"
        )

    def alloc(self, data: bytes = SECRET) -> int:
        """A no-access allocation holding ``data``."""
        p = self.malloc(len(data))
        if not p:
            raise MemoryError("sodium_malloc failed")
        ctypes.memmove(p, data, len(data))
        self.noaccess(p)
        return p

    def malloc_free(self) -> Op:
        malloc, free = self.malloc, self.free

        def op() -> None:
            free(malloc(32))  # type: ignore[arg-type]

        return op

    def malloc_only(self, keep: list[int]) -> Op:
        malloc = self.malloc

        def op() -> None:
            keep.append(malloc(32))  # type: ignore[arg-type]

        return op

    def access(self, p: int) -> Statement:
        """``sodium_mprotect_readonly``, read the first byte, ``sodium_mprotect_noaccess``: the
        thinnest access a ctypes wrapper can make (the byte view is made once, up front)."""
        names = {"p": p, "view": self._view(p), "ro": self.readonly, "na": self.noaccess}
        return Statement("ro(p)\nview[0]\nna(p)", names)

    def access_among(self, ptrs: Sequence[int]) -> Statement:
        """The access of :meth:`access`, each time on the next of ``ptrs`` (cycling)."""
        pairs = itertools.cycle([(p, self._view(p)) for p in ptrs])
        names = {"it": pairs, "ro": self.readonly, "na": self.noaccess}
        return Statement("p, view = next(it)\nro(p)\nview[0]\nna(p)", names)

    @staticmethod
    def _view(p: int) -> memoryview:
        return memoryview((ctypes.c_char * 32).from_address(p)).cast("B")


def bytearray_create_del() -> Op:
    def op() -> None:
        b = bytearray(SECRET)
        del b

    return op


def bytearray_access(b: bytearray) -> Statement:
    return Statement("b[0]", {"b": b})
