"""Message authentication with a Secret key, and constant-time comparison."""

from __future__ import annotations

import hmac as _stdlib_hmac

from cryptography.hazmat.primitives import hmac as _crypto_hmac

from .._enclave import Enclave
from .._secret import Secret
from ._common import Buffer, hash_algorithm, key_access, require_key, require_secret


def hmac(secret: Secret | Enclave, data: Buffer, algorithm: str = "sha256") -> bytes:
    """The HMAC tag of ``data`` under the key ``secret``. The tag is not secret: it is returned
    as ``bytes``. To check a tag, compare with :func:`hmac.compare_digest`."""
    require_key(secret, "key")
    algo = hash_algorithm(algorithm)
    with key_access(secret) as key:
        mac = _crypto_hmac.HMAC(key, algo)
        try:
            mac.update(data)
            return mac.finalize()
        finally:
            del mac


def constant_time_equal(secret: Secret, other: Secret | Buffer) -> bool:
    """Whether ``secret`` holds the same bytes as ``other`` (a secret or any bytes-like object),
    in time that depends on the lengths only.

    Compares inside the accesses with :func:`hmac.compare_digest`, which reads both buffers
    where they are (no copy). Different lengths compare unequal.
    """
    require_secret(secret, "secret")
    if isinstance(other, str):
        raise TypeError("other must be a Secret or bytes-like, not str")
    with secret.access() as mine:
        if isinstance(other, Secret):
            with other.access() as theirs:
                return _stdlib_hmac.compare_digest(mine, theirs)
        return _stdlib_hmac.compare_digest(mine, other)
