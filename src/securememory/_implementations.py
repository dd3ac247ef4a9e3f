"""Layer 3: the one table of implementations. Each is a frozen spec (layout, backing, what it
guarantees); the factories, ``securememory check``, the tests and the benchmarks all read it, and
nothing else tells implementations apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._region import SHARE_HEADER, Backing, Layout, secretmem_unavailable
from ._region import UNSUPPORTED as _UNSUPPORTED

__all__ = [
    "DEFAULT_ORDER",
    "GUARDED",
    "IMPLEMENTATIONS",
    "PROTECTED",
    "SECRETMEM",
    "Implementation",
    "get",
]


_LAYOUTS: dict[tuple[bool, int, bool], Layout] = {}


@dataclass(frozen=True)
class Implementation:
    """What one implementation is. ``name`` is its factory's ``implementation``."""

    name: str
    module: str  # the public module whose SecretFactory makes it
    summary: str
    guarded: bool  # guard pages around the inner pages and a canary in front of the data
    backing: Backing
    hidden_from_kernel: bool  # out of the kernel's direct map: not in /proc/<pid>/mem, ptrace

    def layout(self, size: int, shareable: bool = False) -> Layout:
        """The layout of a secret of ``size`` bytes (a shareable plain one has its live marker
        in front of the data; a guarded one's canary is its marker)."""
        key = (self.guarded, size, bool(shareable))
        layout = _LAYOUTS.get(key)
        if layout is None:
            if self.guarded:
                layout = Layout.guarded(size)
            else:
                layout = Layout.plain(size, SHARE_HEADER if shareable else 0)
            if len(_LAYOUTS) < 4096:  # the common sizes; frozen, so shared safely
                _LAYOUTS[key] = layout
        return layout

    def placement(self, size: int, shareable: bool = False) -> tuple[Layout, Backing]:
        """The layout and backing of a secret of ``size`` bytes. A shareable one (made with
        ``inheritable=True``, or received from another process) is a file other processes can
        map: ``memfd_secret`` for secretmem, a sealed ``memfd`` for the others."""
        backing = self.backing
        if shareable and backing is Backing.ANONYMOUS:
            backing = Backing.MEMFD
        return self.layout(size, shareable), backing

    def unavailable(self) -> str | None:
        """Why this host cannot make it, or ``None``."""
        if self.backing is Backing.SECRETMEM:
            return secretmem_unavailable()
        return _UNSUPPORTED

    def __repr__(self) -> str:
        return f"<securememory implementation {self.name}>"


SECRETMEM = Implementation(
    name="secretmem",
    module="securememory.secretmem",
    summary="guarded, and the inner pages are a memfd_secret file out of the kernel's direct map",
    guarded=True,
    backing=Backing.SECRETMEM,
    hidden_from_kernel=True,
)
GUARDED = Implementation(
    name="guarded",
    module="securememory.guarded",
    summary="memguard's design: guard pages on each side and a canary in front of the data",
    guarded=True,
    backing=Backing.ANONYMOUS,
    hidden_from_kernel=False,
)
PROTECTED = Implementation(
    name="protected",
    module="securememory.protectedmemory",
    summary="Asherah's protected memory: locked, undumpable, no-access pages, no guards",
    guarded=False,
    backing=Backing.ANONYMOUS,
    hidden_from_kernel=False,
)

IMPLEMENTATIONS: tuple[Implementation, ...] = (SECRETMEM, GUARDED, PROTECTED)
DEFAULT_ORDER: tuple[Implementation, ...] = (SECRETMEM, GUARDED)  # SecretFactory() picks the first


def get(name: str) -> Implementation:
    """The implementation named ``name``; ``ValueError`` naming the choices otherwise."""
    for impl in IMPLEMENTATIONS:
        if impl.name == name:
            return impl
    choices = ", ".join(i.name for i in IMPLEMENTATIONS)
    raise ValueError(f"unknown implementation {name!r}; expected one of {choices}")
