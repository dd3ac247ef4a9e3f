"""The memguard design: protected memory plus a no-access guard page on each side and a random
canary of at least 16 bytes in front of right-aligned data.

Writing one byte past the end hits the trailing guard page (SIGSEGV); writing before the data
changes the canary, which is checked when the last access ends and at close
(:class:`securememory.CanaryError`, raised after the wipe). Only the inner pages are locked.
"""

from __future__ import annotations

from typing import ClassVar

from ._factory import SecretFactory as _Base
from ._implementations import GUARDED, Implementation


class SecretFactory(_Base):
    """Makes guarded secrets (``implementation == "guarded"``)."""

    _spec: ClassVar[Implementation | None] = GUARDED


__all__ = ["SecretFactory"]
