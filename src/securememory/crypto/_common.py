"""What every part of :mod:`securememory.crypto` shares: the default factory, argument checks,
the hash names."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from types import TracebackType
from typing import NoReturn, TypeVar, Union

from cryptography.hazmat.primitives import hashes

from .._enclave import Enclave
from .._factory import SecretFactory
from .._secret import Secret

Buffer = Union[bytes, bytearray, memoryview]
Key = Union[Secret, Enclave]
T = TypeVar("T")
K = TypeVar("K", bound="PrivateKey")

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
    "sha3-256": hashes.SHA3_256,
    "sha3-384": hashes.SHA3_384,
    "sha3-512": hashes.SHA3_512,
}

_default_lock = threading.Lock()
_default: SecretFactory | None = None


def default_factory(factory: SecretFactory | None) -> SecretFactory:
    """``factory``, or the process's default ``SecretFactory()`` (made once)."""
    global _default
    if factory is not None:
        if not isinstance(factory, SecretFactory):
            raise TypeError(f"factory must be a SecretFactory, not {type(factory).__name__}")
        return factory
    with _default_lock:
        if _default is None:
            _default = SecretFactory()
        return _default


def require_secret(obj: object, what: str) -> Secret:
    if isinstance(obj, Secret):
        return obj
    kind = type(obj).__name__
    raise TypeError(
        f"{what} must be a securememory.Secret, not {kind}: a key in a {kind} is an ordinary "
        "heap object that cannot be locked or wiped, and copies of it stay in memory after it "
        "is gone. Make the key with a SecretFactory (create_random, from_file, from_fd, "
        "from_prompt, or new() from a bytearray, which wipes the bytearray), or seal it in an "
        "Enclave (Enclave.seal(bytearray) wipes it too)"
    )


def require_key(obj: object, what: str) -> Key:
    """``obj`` if it is a :class:`Secret` or an :class:`Enclave`, else the ``TypeError`` that
    says why a heap object is refused."""
    if isinstance(obj, Enclave):
        return obj
    return require_secret(obj, what)


def key_access(key: Key) -> AbstractContextManager[memoryview]:
    """One read of the key's bytes: a secret's access, or an enclave's open (its plaintext in a
    locked scratch slot for the length of the block)."""
    if isinstance(key, Enclave):
        return key.open()
    return key.access()


def hash_algorithm(algorithm: str) -> hashes.HashAlgorithm:
    try:
        return _HASHES[algorithm]()
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown hash algorithm {algorithm!r}; expected one of {', '.join(_HASHES)}"
        ) from None


def nbytes(data: object) -> int:
    if isinstance(data, str):
        raise TypeError("expected a bytes-like object, not str")
    with memoryview(data) as view:  # type: ignore[arg-type]
        return view.nbytes


class PrivateKey:
    """What the private keys of this package share: the key, in a :class:`Secret` of their own;
    closing (``close()``, a ``with`` block); no pickling or copying."""

    __slots__ = ("_key",)

    def __init__(self, key: Secret) -> None:
        self._key = key

    @property
    def closed(self) -> bool:
        return self._key.closed

    def close(self) -> None:
        """Wipe and free the key (idempotent); later calls raise ``SecretClosedError``."""
        self._key.close()

    def __enter__(self: K) -> K:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<securememory.crypto.{type(self).__name__} key={self._key!r}>"

    def _refuse(self, *args: object) -> NoReturn:
        raise TypeError("a private key cannot be pickled or copied: that would put it on the heap")

    __reduce__ = __reduce_ex__ = __copy__ = __deepcopy__ = __getstate__ = _refuse
