"""X25519 key agreement (RFC 7748) with the private key and the shared secret in secure memory,
through libsodium."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from .._factory import SecretFactory
from .._secret import Secret, copy_bytes
from . import _cffi
from ._common import Buffer, PrivateKey, default_factory, require_secret

KEY_SIZE = 32
_ZERO = bytes(KEY_SIZE)
_BASE_POINT = bytes([9]) + bytes(31)


class X25519PrivateKey(PrivateKey):
    """An X25519 private key (RFC 7748) held in a :class:`~securememory.Secret`.

    Named and used as ``cryptography``'s ``X25519PrivateKey``: :meth:`public_key` returns a
    ``cryptography`` ``X25519PublicKey``, and :meth:`exchange` takes one; but the shared secret
    comes back as a new :class:`~securememory.Secret` (ready for :func:`hkdf`), never as
    ``bytes``. :meth:`close` (or a ``with`` block) wipes the key.

    libsodium's ``crypto_scalarmult`` reads the key by pointer from the secret's pages during one
    access and writes the shared secret straight into the new secret's pages (it also clamps its
    copy of the scalar there, not on the stack; ``crypto_scalarmult_base``, for the public key,
    clamps it in the public key's buffer, then overwrites it with the public key). What its
    field arithmetic leaves in stack slots is overwritten, as defence in depth, by the same call
    once more with an all-zero scalar, at once and from the same place. Checked from outside by
    ``tests/test_asymmetric_scan.py``: after 10,000 exchanges a scan of the whole process memory
    finds neither the key (as given or clamped) nor a shared secret outside their secrets'
    pages, and none of them anywhere once they are closed.

    Not guaranteed: the copies that exist while a call runs; public keys are ordinary objects.
    """

    __slots__ = ("_factory", "_public")

    def __init__(self, key: Secret, public: bytes, factory: SecretFactory) -> None:
        super().__init__(key)
        self._public = public
        self._factory = factory

    # -- making one ---------------------------------------------------------------------------

    @classmethod
    def generate(cls, factory: SecretFactory | None = None) -> X25519PrivateKey:
        """A new key: 32 bytes from the kernel's CSPRNG (``getrandom``) straight into secure
        memory. ``factory`` (default: ``SecretFactory()``) makes the key's secret and the shared
        secrets of :meth:`exchange`."""
        make = default_factory(factory)
        key = make.create_random(KEY_SIZE)
        try:
            return cls(key, _public(key), make)
        except BaseException:
            key.close()
            raise

    @classmethod
    def from_private_bytes(
        cls, secret: Secret, factory: SecretFactory | None = None
    ) -> X25519PrivateKey:
        """The key whose 32 bytes are in ``secret`` (from ``from_file``, say), copied from its
        pages into a new secret of the key's own (no copy anywhere else): close ``secret`` when
        you no longer need it. Raises ``TypeError`` for anything but a
        :class:`~securememory.Secret` and ``ValueError`` unless it holds exactly 32 bytes."""
        require_secret(secret, "secret")
        if len(secret) != KEY_SIZE:  # SecretClosedError for a closed secret
            raise ValueError(f"an X25519 private key is {KEY_SIZE} bytes, got {len(secret)} bytes")
        make = default_factory(factory)
        with secret.access() as src:

            def fill(out: memoryview) -> None:
                copy_bytes(out, src)  # page to page, in the compiled core

            key = make._create(KEY_SIZE, fill)
        try:
            return cls(key, _public(key), make)
        except BaseException:
            key.close()
            raise

    # -- using it -----------------------------------------------------------------------------

    def public_key(self) -> X25519PublicKey:
        """The public key, as ``cryptography``'s ``X25519PublicKey``."""
        len(self._key)  # SecretClosedError for a closed key
        return X25519PublicKey.from_public_bytes(self._public)

    def exchange(self, peer_public_key: X25519PublicKey) -> Secret:
        """The 32-byte shared secret with the holder of ``peer_public_key`` (a ``cryptography``
        ``X25519PublicKey``), as a new secret.

        Raises ``TypeError`` for any other kind of peer key and ``ValueError`` when the shared
        secret would be all zeros (a peer key of small order, RFC 7748 section 6.1), as
        ``cryptography`` does; nothing is left behind then.
        """
        if not isinstance(peer_public_key, X25519PublicKey):
            raise TypeError(
                "peer_public_key must be a cryptography X25519PublicKey, not "
                f"{type(peer_public_key).__name__}"
            )
        peer = peer_public_key.public_bytes_raw()
        with self._key.access() as key:

            def fill(out: memoryview) -> None:
                rc = _scalarmult(out, key, peer)
                _scalarmult(bytearray(KEY_SIZE), _ZERO, _BASE_POINT)  # the stack scrub
                if rc != 0:
                    raise ValueError(
                        "the X25519 shared secret is all zeros: the peer's public key is of "
                        "small order"
                    )

            return self._factory._create(KEY_SIZE, fill)

    def close(self) -> None:
        """Wipe and free the key (idempotent); later calls raise ``SecretClosedError``. Shared
        secrets already returned are secrets of their own: close them too."""
        super().close()


def _public(key: Secret) -> bytes:
    """``crypto_scalarmult_base`` of the key, read where it is; then the stack scrub."""
    pk = bytearray(KEY_SIZE)
    with key.access() as k:
        _scalarmult_base(pk, k)
        _scalarmult_base(bytearray(KEY_SIZE), _ZERO)
    return bytes(pk)


def _scalarmult_base(out: bytearray, n: Buffer) -> None:
    ffi, lib = _cffi.sodium()
    with _cffi.pointers(ffi, (out, True), (n, False)) as (q, k):
        if lib.crypto_scalarmult_base(q, k) != 0:  # pragma: no cover - it cannot fail
            raise RuntimeError("libsodium crypto_scalarmult_base failed")


def _scalarmult(out: Buffer, n: Buffer, p: bytes) -> int:
    ffi, lib = _cffi.sodium()
    with _cffi.pointers(ffi, (out, True), (n, False), (p, False)) as (q, k, u):
        rc: int = lib.crypto_scalarmult(q, k, u)
        return rc
