"""Key derivation straight into secure memory: HKDF and Argon2id."""

from __future__ import annotations

import contextlib

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .._enclave import Enclave
from .._factory import SecretFactory
from .._secret import Secret
from ._common import (
    Buffer,
    default_factory,
    hash_algorithm,
    key_access,
    require_key,
    require_secret,
)


def hkdf(
    secret: Secret | Enclave,
    length: int,
    salt: Buffer | None,
    info: Buffer | None,
    algorithm: str = "sha256",
    factory: SecretFactory | None = None,
) -> Secret:
    """HKDF (RFC 5869) of ``secret``: a new secret of ``length`` bytes, derived straight into its
    pages (``derive_into``). ``salt`` and ``info`` are not secret."""
    require_key(secret, "secret")
    kdf = HKDF(
        algorithm=hash_algorithm(algorithm),
        length=length,
        salt=None if salt is None else bytes(salt),
        info=None if info is None else bytes(info),
    )
    make = default_factory(factory)
    with key_access(secret) as ikm:

        def fill(out: memoryview) -> None:
            kdf.derive_into(ikm, out)

        return make._create(length, fill)


def argon2id(
    passphrase: Secret,
    salt: Buffer,
    *,
    length: int = 32,
    iterations: int = 3,
    lanes: int = 4,
    memory_cost: int = 64 * 1024,
    associated_data: Buffer | None = None,
    factory: SecretFactory | None = None,
) -> Secret:
    """Argon2id (RFC 9106) of a passphrase: a new secret of ``length`` bytes, derived straight
    into its pages (``derive_into``).

    The defaults are RFC 9106's second recommended option (3 passes, 4 lanes, 64 MiB;
    ``memory_cost`` is in KiB). ``salt`` (at least 8 bytes, 16 random bytes recommended) is not
    secret. Raises ``cryptography``'s ``UnsupportedAlgorithm`` where OpenSSL lacks Argon2
    (before 3.2).
    """
    require_secret(passphrase, "passphrase")
    pw_len = len(passphrase)  # SecretClosedError here for a closed secret
    salt_bytes = bytes(salt)
    ad = None if associated_data is None else bytes(associated_data)
    kdf = Argon2id(
        salt=salt_bytes,
        length=length,
        iterations=iterations,
        lanes=lanes,
        memory_cost=memory_cost,
        ad=ad,
    )
    make = default_factory(factory)
    try:
        with passphrase.access() as pw:

            def fill(out: memoryview) -> None:
                kdf.derive_into(pw, out)  # type: ignore[arg-type]  # any buffer works at run time

            return make._create(length, fill)
    finally:
        _scrub_argon2(pw_len, len(salt_bytes), length, lanes, ad)


def _scrub_argon2(pw_len: int, salt_len: int, length: int, lanes: int, ad: bytes | None) -> None:
    """Overwrite the parameter block the last Argon2 call left in the C heap.

    rust-openssl passes the passphrase to OpenSSL in an ``OSSL_PARAM`` block built by
    ``OSSL_PARAM_BLD_to_param``, which copies it and is freed with ``OPENSSL_free``, not
    cleansed: the passphrase stays in freed ``malloc`` memory. A second, cheapest derivation with
    a zero passphrase of the same length and the same parameter layout asks ``malloc`` for a
    block of the same size, gets the one just freed (glibc's per-thread cache is last in, first
    out) and overwrites the passphrase with zeros. Best effort, checked from outside by the tests.
    """
    with contextlib.suppress(Exception):  # the real call's error is the one to report
        dummy = Argon2id(
            salt=bytes(salt_len),
            length=length,
            iterations=1,
            lanes=lanes,
            memory_cost=8 * lanes,
            ad=None if ad is None else bytes(len(ad)),
        )
        dummy.derive_into(bytes(pw_len), bytearray(length))
