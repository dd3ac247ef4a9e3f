"""Guarded secrets whose inner pages are a Linux ``memfd_secret`` (5.14+) file.

The kernel removes those pages from its own direct map, so they are not readable through
``/proc/<pid>/mem`` or ptrace, not in core dumps, locked (charged to ``RLIMIT_MEMLOCK``) and zeroed
by the kernel when freed; the library still wipes them before unmap. Forked children get no
mapping (``MADV_DONTFORK``): touching it there is SIGSEGV.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._factory import SecretFactory as _Base
from ._implementations import SECRETMEM, Implementation


@dataclass(frozen=True)
class Availability:
    """Whether the kernel offers secretmem; ``bool()`` of it is ``ok``, ``reason`` says why not.

    Only the kernel's support is judged: a memlock budget too small for a secret is a
    :class:`~securememory.MemoryLockError`, with the limit, when one is made.
    """

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


def available() -> Availability:
    """Whether this host's kernel can make secretmem secrets, and why not."""
    reason = SECRETMEM.unavailable()
    return Availability(reason is None, reason or "")


class SecretFactory(_Base):
    """Makes secretmem secrets (``implementation == "secretmem"``); raises
    :class:`securememory.UnsupportedPlatformError` with the reason where the kernel lacks it."""

    _spec: ClassVar[Implementation | None] = SECRETMEM


__all__ = ["Availability", "SecretFactory", "available"]
