"""Authenticated encryption (AES-256-GCM, ChaCha20-Poly1305) with a key that stays in a Secret,
and the scrub of the vector registers the cipher leaves the key schedule in."""

from __future__ import annotations

import contextlib
import traceback
from typing import Callable, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .._enclave import OPEN_SCRUBS_REGISTERS, Enclave
from .._factory import SecretFactory
from .._secret import Secret
from ._common import Buffer, T, default_factory, key_access, nbytes, require_key

_Cipher = Union[AESGCM, ChaCha20Poly1305]

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
_CIPHERS: dict[str, type[AESGCM] | type[ChaCha20Poly1305]] = {
    "aes-256-gcm": AESGCM,
    "chacha20-poly1305": ChaCha20Poly1305,
}
_ZERO_KEY = bytes(KEY_SIZE)
_ZERO_NONCE = bytes(NONCE_SIZE)
_SCRUB_MAX = 8192
_SCRUB_PERIOD = 3072  # a multiple of 64, 256, 512, 768 and 1024: the tail takes the same path
_zeros = bytes(_SCRUB_MAX + TAG_SIZE)


def _scrub_registers(cipher: type[_Cipher], decrypting: bool, length: int) -> None:
    """Run the operation just done once more, under an all-zero key and on zeros, so the CPU's
    vector registers it left the key schedule (and data) in are overwritten with harmless values.

    The same code path uses the same registers, so the length (up to ``_SCRUB_MAX``; beyond it,
    the same remainder modulo ``_SCRUB_PERIOD``) and the direction are the real ones. Best
    effort: it is what the tests check from outside, not something the library can see.
    """
    n = max(0, length)
    if n > _SCRUB_MAX:
        n = _SCRUB_MAX - _SCRUB_PERIOD + n % _SCRUB_PERIOD
    dummy = cipher(_ZERO_KEY)
    zeros = memoryview(_zeros)
    if decrypting:
        with contextlib.suppress(InvalidTag):  # zeros are no valid ciphertext: it fails at the tag
            dummy.decrypt_into(_ZERO_NONCE, zeros[: n + TAG_SIZE], None, bytearray(n))
    else:
        dummy.encrypt(_ZERO_NONCE, zeros[:n], None)


def _check_nonce(nonce: object) -> None:
    if isinstance(nonce, str):
        raise TypeError("nonce must be bytes-like, not str")
    if len(memoryview(nonce)) != NONCE_SIZE:  # type: ignore[arg-type]
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")


class AEAD:
    """Authenticated encryption with a key that is a :class:`Secret`.

    ``algorithm`` is ``"aes-256-gcm"`` or ``"chacha20-poly1305"``; both take a 32-byte key and a
    12-byte nonce and add a 16-byte tag. The key may also be an :class:`~securememory.Enclave`
    (each call opens it: the plaintext key sits in a locked scratch slot for that call only).
    The key stays in its secret: every call opens one access,
    builds ``cryptography``'s cipher inside it and drops it before the access ends (see the module
    docstring for where OpenSSL copies the key and why that copy is wiped), then runs the same
    operation once more under an all-zero key to overwrite the CPU registers the real one left
    the key schedule in (see "Registers" in the module docstring); with an Enclave key on x86-64
    the end of the open zeroes every vector register instead (no second operation). The AEAD
    holds a reference to the secret, not a copy: closing the secret makes every later call raise
    :class:`~securememory.SecretClosedError`.

    Never reuse a nonce with the same key.
    """

    __slots__ = ("_cipher", "_key", "algorithm")

    def __init__(self, key: Secret | Enclave, algorithm: str = "aes-256-gcm") -> None:
        self._key = require_key(key, "key")
        try:
            self._cipher = _CIPHERS[algorithm]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown AEAD algorithm {algorithm!r}; expected one of {', '.join(_CIPHERS)}"
            ) from None
        self.algorithm = algorithm
        if len(key) != KEY_SIZE:  # len() of a closed secret raises SecretClosedError
            raise ValueError(f"{algorithm} needs a {KEY_SIZE}-byte key, got {len(key)} bytes")

    def __repr__(self) -> str:
        return f"<securememory.crypto.AEAD {self.algorithm} key={self._key!r}>"

    def _run(self, decrypting: bool, length: int, use: Callable[[_Cipher], T]) -> T:
        """``use(cipher)`` with a cipher built inside one access of the key and dropped at its
        end; then the register scrub, also when ``use`` raised."""
        try:
            with key_access(self._key) as key:
                cipher = self._cipher(key)
                try:
                    return use(cipher)
                except BaseException as e:  # no frame kept by the traceback holds the cipher
                    traceback.clear_frames(e.__traceback__)
                    raise
                finally:
                    del cipher
        finally:
            if not (OPEN_SCRUBS_REGISTERS and isinstance(self._key, Enclave)):
                _scrub_registers(self._cipher, decrypting, length)

    def encrypt(self, nonce: Buffer, data: Buffer, associated_data: Buffer | None = None) -> bytes:
        """``data`` encrypted and authenticated with ``associated_data``: ciphertext || tag."""
        _check_nonce(nonce)
        return self._run(False, nbytes(data), lambda c: c.encrypt(nonce, data, associated_data))

    def decrypt(
        self, nonce: Buffer, ciphertext: Buffer, associated_data: Buffer | None = None
    ) -> bytes:
        """The plaintext, as ordinary ``bytes``; :class:`InvalidTag` if anything was changed.

        For a plaintext that is itself a key, use :meth:`decrypt_to_secret`.
        """
        _check_nonce(nonce)
        return self._run(
            True,
            nbytes(ciphertext) - TAG_SIZE,
            lambda c: c.decrypt(nonce, ciphertext, associated_data),
        )

    def decrypt_to_secret(
        self,
        nonce: Buffer,
        ciphertext: Buffer,
        associated_data: Buffer | None = None,
        factory: SecretFactory | None = None,
    ) -> Secret:
        """Unwrap a key: decrypt straight into a new secret of ``len(ciphertext) - 16`` bytes.

        The plaintext is written by OpenSSL into the new secret's pages (``decrypt_into``) and
        never exists anywhere else in memory. On :class:`InvalidTag` the unauthenticated
        plaintext already written there is wiped with the region before the exception leaves.
        ``factory`` (default: ``SecretFactory()``) chooses the implementation of the new secret.
        """
        _check_nonce(nonce)
        size = nbytes(ciphertext) - TAG_SIZE
        if size < 0:
            raise InvalidTag()
        if size == 0:
            raise ValueError("the plaintext would be empty; a secret cannot be 0 bytes")
        make = default_factory(factory)

        def unwrap(cipher: _Cipher) -> Secret:
            def fill(out: memoryview) -> None:
                cipher.decrypt_into(nonce, ciphertext, associated_data, out)

            return make._create(size, fill)

        return self._run(True, size, unwrap)

    def encrypt_secret(
        self, nonce: Buffer, secret: Secret | Enclave, associated_data: Buffer | None = None
    ) -> bytes:
        """Wrap a key: encrypt the content of ``secret`` (a Secret read inside its access, or an
        Enclave inside an open; no copy)."""
        require_key(secret, "secret")
        _check_nonce(nonce)

        def wrap(cipher: _Cipher) -> bytes:
            with key_access(secret) as plaintext:
                return cipher.encrypt(nonce, plaintext, associated_data)

        return self._run(False, len(secret), wrap)
