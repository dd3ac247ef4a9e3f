"""The operations of securememory that the suite times, one factory per implementation."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import securememory
from securememory._factory import factory_for as _factory_for
from securememory._implementations import IMPLEMENTATIONS as _TABLE
from securememory._implementations import get
from securememory._region import Backing

from .native import RegionLayout
from .peers import SECRET
from .timing import Op, Statement

IMPLEMENTATIONS = tuple(reversed([i.name for i in _TABLE]))  # protected, guarded, secretmem


def unavailable(impl: str) -> str | None:
    """Why ``impl`` cannot run on this host, or ``None``."""
    reason = get(impl).unavailable()
    return None if reason is None else f"{impl} unavailable: {reason}"


def is_secretmem(impl: str) -> bool:
    """Whether ``impl``'s pages are a ``memfd_secret`` file (its create floor differs)."""
    return get(impl).backing is Backing.SECRETMEM


def region_layout(impl: str) -> RegionLayout:
    """The layout of a 32-byte secret of ``impl``, from the table, for the C floor."""
    layout = get(impl).layout(len(SECRET))
    return RegionLayout(layout.mapped, layout.inner_offset, layout.inner_len, is_secretmem(impl))


def factory_for(impl: str) -> securememory.SecretFactory:
    """The factory of one implementation by its ``implementation`` name."""
    return _factory_for(impl)


def access(secret: securememory.Secret) -> Statement:
    """One access cycle as the issue states it: ``s.with_bytes(lambda v: v[0])``."""
    return Statement("s.with_bytes(lambda v: v[0])", {"s": secret})


def access_cm(secret: securememory.Secret) -> Statement:
    """One access cycle through the context manager: ``with s.access() as v: v[0]``."""
    return Statement("with s.access() as v:\n    v[0]", {"s": secret})


def access_among(secrets: Sequence[securememory.Secret]) -> Statement:
    """The access cycle of :func:`access`, each time on the next of ``secrets`` (cycling)."""
    return Statement("next(it).with_bytes(lambda v: v[0])", {"it": itertools.cycle(secrets)})


def create_close_new(factory: securememory.SecretFactory) -> Op:
    def op() -> None:
        factory.new(SECRET).close()

    return op


def create_close_random(factory: securememory.SecretFactory) -> Op:
    def op() -> None:
        factory.create_random(32).close()

    return op
