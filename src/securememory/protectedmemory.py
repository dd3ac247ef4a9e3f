"""The seed's *protected memory* implementation: per secret, whole pages of private anonymous
memory, locked (``mlock``), left out of core dumps (``MADV_DONTDUMP``), zeroed in forked children
(``MADV_WIPEONFORK``), no-access except during an access, wiped before unlock and unmap.
No canary and no leading guard page: reads past the end of the data land in the rest of its last
page. One unlocked no-access page follows the data pages, only so that neighbouring secrets never
merge into one kernel VMA (each access would then split and re-merge it).
"""

from __future__ import annotations

from typing import ClassVar

from ._factory import SecretFactory as _Base
from ._implementations import PROTECTED, Implementation


class SecretFactory(_Base):
    """Makes protected-memory secrets (``implementation == "protected"``)."""

    _spec: ClassVar[Implementation | None] = PROTECTED


__all__ = ["SecretFactory"]
