"""securememory: secrets in locked, undumpable memory that is no-access except during an access
and wiped when no longer needed.

>>> from securememory import SecretFactory
>>> with SecretFactory().create_random(32) as key:
...     key.with_bytes(len)
32
"""

from __future__ import annotations

from ._enclave import Enclave, catch_signals, purge
from ._factory import SecretFactory
from ._process import Stats, stats
from ._secret import Secret, SecretReader, scratch
from ._share import receive, send
from .errors import (
    CanaryError,
    MapCountError,
    MemoryLockError,
    SecretClosedError,
    SecureMemoryError,
    UnsupportedPlatformError,
)

__version__ = "0.1.0"

__all__ = [
    "CanaryError",
    "Enclave",
    "MapCountError",
    "MemoryLockError",
    "Secret",
    "SecretClosedError",
    "SecretFactory",
    "SecretReader",
    "SecureMemoryError",
    "Stats",
    "UnsupportedPlatformError",
    "catch_signals",
    "purge",
    "receive",
    "scratch",
    "send",
    "stats",
]
