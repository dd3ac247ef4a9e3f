"""Ed25519 signatures (RFC 8032) with the private key in secure memory, through libsodium."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .._factory import SecretFactory
from .._secret import Secret
from . import _cffi
from ._common import Buffer, PrivateKey, default_factory, require_secret

SEED_SIZE = 32
SECRET_KEY_SIZE = 64  # libsodium's secret key: seed || public key
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
_ZERO_SK = bytes(SECRET_KEY_SIZE)


class Ed25519PrivateKey(PrivateKey):
    """An Ed25519 private key (RFC 8032) held in a :class:`~securememory.Secret`.

    Named and used as ``cryptography``'s ``Ed25519PrivateKey``; :meth:`public_key` returns a
    ``cryptography`` ``Ed25519PublicKey``. Make one with :meth:`generate` or
    :meth:`from_private_bytes`; :meth:`close` (or a ``with`` block) wipes it.

    The key is libsodium's 64-byte secret key (the 32-byte seed, then the public key), written
    by ``crypto_sign_seed_keypair`` straight into the secret's pages; every signature is made by
    ``crypto_sign``, which reads it there by pointer during one access. libsodium hashes the seed
    into the signing scalar and the nonce prefix on its stack and wipes them, the nonce and its
    SHA-512 states with ``sodium_memzero`` before it returns. Its scalar arithmetic could leave
    limbs or digits of the scalar and the nonce (from which the key can be computed) in stack
    slots: a copy of the thread's stack taken right after a call held none (looked for whole, in
    16-byte halves, as signed radix-16 digits and as 21-bit limbs; the same capture does find
    what ``snprintf`` leaves there). For what was not looked for, the same call is run once more
    under an all-zero key, at once and from the same place, which reuses the same stack slots
    (about 40 microseconds per signature). Checked from outside by
    ``tests/test_asymmetric_scan.py``: after 10,000 signatures a scan of the whole process memory
    finds neither the seed, the scalar, the nonce prefix, the last nonce nor the 64-byte key
    outside the secret's pages, and none of them anywhere once it is closed.

    Not guaranteed: the copies that exist while a call runs; the message and the signature are
    ordinary ``bytes`` (they are not secret).
    """

    __slots__ = ("_public",)

    def __init__(self, sk: Secret, public: bytes) -> None:
        super().__init__(sk)
        self._public = public

    # -- making one ---------------------------------------------------------------------------

    @classmethod
    def generate(cls, factory: SecretFactory | None = None) -> Ed25519PrivateKey:
        """A new key from a 32-byte seed read from the kernel's CSPRNG (``getrandom``) straight
        into secure memory. ``factory`` (default: ``SecretFactory()``) makes the secrets."""
        make = default_factory(factory)
        with make.create_random(SEED_SIZE) as seed:
            return cls._from_seed(seed, make)

    @classmethod
    def from_private_bytes(
        cls, secret: Secret, factory: SecretFactory | None = None
    ) -> Ed25519PrivateKey:
        """The key whose 32-byte seed (RFC 8032's private key) is in ``secret`` (from
        ``from_file``, say). ``secret`` is read, not kept: close it when you no longer need it.
        Raises ``TypeError`` for anything but a :class:`~securememory.Secret` and ``ValueError``
        unless it holds exactly 32 bytes."""
        require_secret(secret, "secret")
        if len(secret) != SEED_SIZE:  # SecretClosedError for a closed secret
            raise ValueError(
                f"an Ed25519 private key is a {SEED_SIZE}-byte seed, got {len(secret)} bytes"
            )
        return cls._from_seed(secret, default_factory(factory))

    @classmethod
    def _from_seed(cls, seed: Secret, make: SecretFactory) -> Ed25519PrivateKey:
        _cffi.sodium()  # ImportError, naming the extra, before anything is made
        pk = bytearray(PUBLIC_KEY_SIZE)
        with seed.access() as seed_view:

            def fill(out: memoryview) -> None:
                _keypair(pk, out, seed_view)
                _keypair(bytearray(PUBLIC_KEY_SIZE), bytearray(SECRET_KEY_SIZE), _ZERO_SK[:32])

            sk = make._create(SECRET_KEY_SIZE, fill)
        return cls(sk, bytes(pk))

    # -- using it -----------------------------------------------------------------------------

    def sign(self, data: Buffer) -> bytes:
        """The 64-byte Ed25519 signature of ``data`` (deterministic, RFC 8032)."""
        if isinstance(data, str):
            raise TypeError("data must be bytes-like, not str")
        with memoryview(data) as view:
            n = view.nbytes
        signed = bytearray(SIGNATURE_SIZE + n)
        with self._key.access() as sk:
            rc = _sign(signed, data, sk)
            _sign(bytearray(SIGNATURE_SIZE), b"", _ZERO_SK)  # the stack scrub: same code, slots
        if rc != 0:  # pragma: no cover - crypto_sign cannot fail on valid lengths
            raise RuntimeError("libsodium crypto_sign failed")
        return bytes(signed[:SIGNATURE_SIZE])

    def public_key(self) -> Ed25519PublicKey:
        """The public key, as ``cryptography``'s ``Ed25519PublicKey``."""
        len(self._key)  # SecretClosedError for a closed key
        return Ed25519PublicKey.from_public_bytes(self._public)


def _keypair(pk: Any, sk: Any, seed: Any) -> None:
    """``crypto_sign_seed_keypair(pk, sk, seed)`` on the buffers where they are."""
    ffi, lib = _cffi.sodium()
    with _cffi.pointers(ffi, (pk, True), (sk, True), (seed, False)) as (p, k, s):
        if lib.crypto_sign_seed_keypair(p, k, s) != 0:  # pragma: no cover - it cannot fail
            raise RuntimeError("libsodium crypto_sign_seed_keypair failed")


def _sign(signed: bytearray, data: Buffer, sk: Buffer) -> int:
    """``crypto_sign``: signature || message into ``signed``, the key read where it is.

    (PyNaCl's libsodium exports the combined ``crypto_sign``, not ``crypto_sign_detached``; it
    copies the message after the signature and signs it there, the same code.)"""
    ffi, lib = _cffi.sodium()
    with _cffi.pointers(ffi, (signed, True), (data, False), (sk, False)) as (out, m, k):
        rc: int = lib.crypto_sign(out, ffi.NULL, m, len(m), k)
        return rc
