"""The operations of securememory that the suite times, one factory per implementation."""

from __future__ import annotations

import securememory
from securememory._factory import factory_for as _factory_for
from securememory._implementations import IMPLEMENTATIONS as _TABLE
from securememory._implementations import get

from .peers import SECRET
from .timing import Op

IMPLEMENTATIONS = tuple(reversed([i.name for i in _TABLE]))  # protected, guarded, secretmem


def unavailable(impl: str) -> str | None:
    """Why ``impl`` cannot run on this host, or ``None``."""
    reason = get(impl).unavailable()
    return None if reason is None else f"{impl} unavailable: {reason}"


def factory_for(impl: str) -> securememory.SecretFactory:
    """The factory of one implementation by its ``implementation`` name."""
    return _factory_for(impl)


def access(secret: securememory.Secret) -> Op:
    """One access cycle as the issue states it: ``s.with_bytes(lambda v: v[0])``."""

    def op() -> int:
        return secret.with_bytes(lambda v: v[0])

    return op


def access_cm(secret: securememory.Secret) -> Op:
    """One access cycle through the context manager: ``with s.access() as v: v[0]``."""

    def op() -> int:
        with secret.access() as v:
            return v[0]

    return op


def create_close_new(factory: securememory.SecretFactory) -> Op:
    def op() -> None:
        factory.new(SECRET).close()

    return op


def create_close_random(factory: securememory.SecretFactory) -> Op:
    def op() -> None:
        factory.create_random(32).close()

    return op
