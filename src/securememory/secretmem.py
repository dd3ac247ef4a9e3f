"""Guarded secrets whose inner pages are a Linux ``memfd_secret`` (5.14+) file.

The kernel removes those pages from its own direct map, so they are not readable through
``/proc/<pid>/mem`` or ptrace, not in core dumps, locked (charged to ``RLIMIT_MEMLOCK``) and zeroed
by the kernel when freed; the library still wipes them before unmap. Forked children get no
mapping (``MADV_DONTFORK``): touching it there is SIGSEGV.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from . import _region
from ._factory import SecretFactory as _Base


@dataclass(frozen=True)
class Availability:
    """Whether secretmem works here; ``bool()`` of it is ``ok``, ``reason`` says why not."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


def available() -> Availability:
    """Whether this host can make secretmem secrets now, and why not (kernel, boot, budget)."""
    reason = _region.secretmem_unavailable()
    return Availability(reason is None, reason or "")


class SecretFactory(_Base):
    """Makes secretmem secrets (``implementation == "secretmem"``); raises
    :class:`securememory.UnsupportedPlatformError` with the reason where the host lacks it."""

    implementation: ClassVar[str] = "secretmem"
    _guarded: ClassVar[bool] = True
    _secretmem: ClassVar[bool] = True

    @classmethod
    def _unavailable(cls) -> str | None:
        return _region.secretmem_unavailable()


__all__ = ["Availability", "SecretFactory", "available"]
