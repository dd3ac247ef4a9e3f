"""The exception hierarchy.

Every error the library raises on purpose is a :class:`SecureMemoryError`, except wrong argument
types (:class:`TypeError`) and wrong argument values (:class:`ValueError`), which follow Python's
own conventions.
"""

from __future__ import annotations


class SecureMemoryError(Exception):
    """Base class: the library could not keep, or could not start to keep, a promise.

    ``errno`` is set when a system call failed, else it is ``None``.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class SecretClosedError(SecureMemoryError):
    """The secret was used after :meth:`Secret.close` (or is being closed)."""


class MemoryLockError(SecureMemoryError):
    """The kernel refused to lock the pages (``mlock`` or ``memfd_secret`` over budget).

    The message gives the bytes wanted, the ``RLIMIT_MEMLOCK`` soft and hard limits, and how to
    raise them. Nothing is left mapped or counted when this is raised.
    """


class UnsupportedPlatformError(SecureMemoryError):
    """The operating system lacks what an implementation needs; the message says what."""


class CanaryError(SecureMemoryError):
    """The canary in front of a guarded secret changed: something wrote before the data.

    It is raised after the region has been wiped and freed: detection never skips the wipe.
    """


class MapCountError(SecureMemoryError):
    """The process ran out of memory mappings (Linux ``vm.max_map_count``).

    Each secret takes two or three mappings, so near 32,000 live secrets the default limit of
    65,530 is reached. The message gives the limit, the mappings in use and how to raise it.
    Nothing is left mapped or counted when this is raised.
    """


__all__ = [
    "CanaryError",
    "MapCountError",
    "MemoryLockError",
    "SecretClosedError",
    "SecureMemoryError",
    "UnsupportedPlatformError",
]
