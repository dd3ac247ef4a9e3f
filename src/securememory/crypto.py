"""Cryptography with keys that stay in secure memory (optional extra: ``securememory[crypto]``).

Built on `cryptography <https://cryptography.io>`_ (47 or later: it needs ``encrypt_into``,
``decrypt_into`` and ``derive_into``), using only :meth:`Secret.access` and the factories::

    from securememory import SecretFactory
    from securememory.crypto import AEAD, argon2id

    factory = SecretFactory()
    with factory.from_prompt("Passphrase: ") as pw, argon2id(pw, salt) as key:
        box = AEAD(key, "chacha20-poly1305")
        ciphertext = box.encrypt(nonce, b"data", b"header")

Every function that takes key material takes a :class:`~securememory.Secret` and refuses
``bytes``, ``bytearray`` and the like with a ``TypeError``: a key held in an ordinary Python
object is already on the heap, where it cannot be locked or wiped. Outputs that are keys
(:meth:`AEAD.decrypt_to_secret`, :func:`hkdf`, :func:`argon2id`) are written by ``cryptography``
straight into a new secret's pages (``decrypt_into``/``derive_into`` on the writable view a factory
hands out while it makes the secret); they never exist as ``bytes``.

Where the key goes inside ``cryptography`` and OpenSSL, and what this module does about it:

- ``AESGCM`` and ``ChaCha20Poly1305`` (OpenSSL 3.2+, which every ``cryptography`` wheel bundles)
  copy the key at construction into two ``EVP_CIPHER_CTX`` (one to encrypt, one to decrypt): the
  AES key schedule, whose first two round keys *are* the AES-256 key, or the ChaCha20 state,
  which holds the key words as they are. Each call copies that context once more
  (``EVP_CIPHER_CTX_copy``) and frees the copy before it returns; the object also keeps a Python
  reference to the key's view (not a buffer export). This module builds the cipher object inside
  one access of the key and drops it before the access ends (and clears the frames of a traceback
  that would keep it, on ``InvalidTag`` say), so the OpenSSL copies live for one call.
  ``EVP_CIPHER_CTX_free`` runs the provider's ``freectx``, which for AES-GCM and
  ChaCha20-Poly1305 frees the context with ``OPENSSL_clear_free`` (a cleanse, then free): the
  copies are wiped when the object goes.
- **Registers.** AES-GCM (AES-NI, VAES/AVX-512) leaves round keys of the key in vector registers
  after a call, and nothing in OpenSSL clears them. They stay there until other code happens to
  overwrite them; meanwhile a core dump or ``gcore`` writes them into its register notes, and a
  signal or the dynamic linker's lazy binding (``_dl_runtime_resolve_xsavec``) saves them onto
  the thread's stack, where they stay after it returns. The tests saw the whole AES-256 key
  schedule that way with plain ``cryptography``. So after every AEAD call this module runs the
  same operation (same direction, same length, capped) under an all-zero key: the same code
  uses the same registers and overwrites them with harmless values.
- ``HMAC`` keys go into an OpenSSL HMAC context (the inner and outer pad states), freed with a
  cleanse; ``HKDF`` is computed with it.
- ``Argon2id``: rust-openssl hands the passphrase to OpenSSL in an ``OSSL_PARAM`` block
  (``OSSL_PARAM_BLD_to_param``) that holds a copy of it and is freed with ``OPENSSL_free``, not
  cleansed: the passphrase stayed in freed ``malloc`` memory. After every derivation this module
  runs a second, cheapest one with a zero passphrase of the same length and the same parameter
  layout: ``malloc`` hands it the block just freed (glibc's per-thread cache is last in, first
  out) and the copy is overwritten. OpenSSL's own copy of the passphrase and Argon2's memory
  blocks are freed with a cleanse.

The scrubs are best effort, not something this module can observe; the tests check them from
outside (``tests/test_heap_proof.py``): after 10,000 mixed operations, a passphrase prompt, an
Argon2id derivation and a key unwrap, a scan of the whole process memory, a ``gcore`` dump and a
kernel core (registers included) find each key, derived key, unwrapped key and passphrase (whole,
in 16-byte halves, and the key's AES round keys) only inside its own secret's pages, and nowhere
once the secrets are closed; the same workload with ``bytes`` keys leaves them on the heap, in the
registers and on the stack.

Not guaranteed: the copies above exist while a call runs (an attacker who can read the process's
memory at that instant sees them); the scrubs depend on the code paths and allocator behaviour of
the ``cryptography``/OpenSSL/glibc versions the tests ran with (another build may leave something
elsewhere: run the tests there); the plaintext of :meth:`AEAD.decrypt` and the data you pass in
are ordinary ``bytes``; tags from :func:`hmac` are not secret. A failed tag check raises
``cryptography``'s own :class:`~cryptography.exceptions.InvalidTag`, re-exported here as
:class:`InvalidTag`.
"""

from __future__ import annotations

import contextlib
import hmac as _stdlib_hmac
import threading
import traceback
from typing import Callable, TypeVar, Union

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import hmac as _crypto_hmac
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ImportError as _e:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "securememory.crypto needs the 'cryptography' package (47 or later): "
        "pip install securememory[crypto]"
    ) from _e

if not (hasattr(AESGCM, "decrypt_into") and hasattr(HKDF, "derive_into")):  # pragma: no cover
    import cryptography as _cryptography

    raise ImportError(
        f"securememory.crypto needs cryptography 47 or later (for decrypt_into and "
        f"derive_into); {_cryptography.__version__} is installed: "
        "pip install -U 'securememory[crypto]'"
    )

from ._factory import SecretFactory
from ._secret import Secret

__all__ = [
    "AEAD",
    "InvalidTag",
    "argon2id",
    "constant_time_equal",
    "hkdf",
    "hmac",
]

Buffer = Union[bytes, bytearray, memoryview]
T = TypeVar("T")
_Cipher = Union[AESGCM, ChaCha20Poly1305]

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
_CIPHERS: dict[str, type[AESGCM] | type[ChaCha20Poly1305]] = {
    "aes-256-gcm": AESGCM,
    "chacha20-poly1305": ChaCha20Poly1305,
}
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


def _factory(factory: SecretFactory | None) -> SecretFactory:
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


def _require_secret(obj: object, what: str) -> Secret:
    if isinstance(obj, Secret):
        return obj
    kind = type(obj).__name__
    raise TypeError(
        f"{what} must be a securememory.Secret, not {kind}: a key in a {kind} is an ordinary "
        "heap object that cannot be locked or wiped, and copies of it stay in memory after it "
        "is gone. Make the key with a SecretFactory (create_random, from_file, from_fd, "
        "from_prompt, or new() from a bytearray, which wipes the bytearray)"
    )


def _hash(algorithm: str) -> hashes.HashAlgorithm:
    try:
        return _HASHES[algorithm]()
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown hash algorithm {algorithm!r}; expected one of {', '.join(_HASHES)}"
        ) from None


def _nbytes(data: object) -> int:
    if isinstance(data, str):
        raise TypeError("expected a bytes-like object, not str")
    with memoryview(data) as view:  # type: ignore[arg-type]
        return view.nbytes


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
    12-byte nonce and add a 16-byte tag. The key stays in its secret: every call opens one access,
    builds ``cryptography``'s cipher inside it and drops it before the access ends (see the module
    docstring for where OpenSSL copies the key and why that copy is wiped), then runs the same
    operation once more under an all-zero key to overwrite the CPU registers the real one left
    the key schedule in (see "Registers" in the module docstring). The AEAD holds a reference to
    the secret, not a copy: closing the secret makes every later call raise
    :class:`~securememory.SecretClosedError`.

    Never reuse a nonce with the same key.
    """

    __slots__ = ("_cipher", "_key", "algorithm")

    def __init__(self, key: Secret, algorithm: str = "aes-256-gcm") -> None:
        self._key = _require_secret(key, "key")
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
            with self._key.access() as key:
                cipher = self._cipher(key)
                try:
                    return use(cipher)
                except BaseException as e:  # no frame kept by the traceback holds the cipher
                    traceback.clear_frames(e.__traceback__)
                    raise
                finally:
                    del cipher
        finally:
            _scrub_registers(self._cipher, decrypting, length)

    def encrypt(self, nonce: Buffer, data: Buffer, associated_data: Buffer | None = None) -> bytes:
        """``data`` encrypted and authenticated with ``associated_data``: ciphertext || tag."""
        _check_nonce(nonce)
        return self._run(False, _nbytes(data), lambda c: c.encrypt(nonce, data, associated_data))

    def decrypt(
        self, nonce: Buffer, ciphertext: Buffer, associated_data: Buffer | None = None
    ) -> bytes:
        """The plaintext, as ordinary ``bytes``; :class:`InvalidTag` if anything was changed.

        For a plaintext that is itself a key, use :meth:`decrypt_to_secret`.
        """
        _check_nonce(nonce)
        return self._run(
            True,
            _nbytes(ciphertext) - TAG_SIZE,
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
        size = _nbytes(ciphertext) - TAG_SIZE
        if size < 0:
            raise InvalidTag()
        if size == 0:
            raise ValueError("the plaintext would be empty; a secret cannot be 0 bytes")
        make = _factory(factory)

        def unwrap(cipher: _Cipher) -> Secret:
            def fill(out: memoryview) -> None:
                cipher.decrypt_into(nonce, ciphertext, associated_data, out)

            return make._create(size, fill)

        return self._run(True, size, unwrap)

    def encrypt_secret(
        self, nonce: Buffer, secret: Secret, associated_data: Buffer | None = None
    ) -> bytes:
        """Wrap a key: encrypt the content of ``secret`` (read inside its access, no copy)."""
        _require_secret(secret, "secret")
        _check_nonce(nonce)

        def wrap(cipher: _Cipher) -> bytes:
            with secret.access() as plaintext:
                return cipher.encrypt(nonce, plaintext, associated_data)

        return self._run(False, len(secret), wrap)


def hkdf(
    secret: Secret,
    length: int,
    salt: Buffer | None,
    info: Buffer | None,
    algorithm: str = "sha256",
    factory: SecretFactory | None = None,
) -> Secret:
    """HKDF (RFC 5869) of ``secret``: a new secret of ``length`` bytes, derived straight into its
    pages (``derive_into``). ``salt`` and ``info`` are not secret."""
    _require_secret(secret, "secret")
    kdf = HKDF(
        algorithm=_hash(algorithm),
        length=length,
        salt=None if salt is None else bytes(salt),
        info=None if info is None else bytes(info),
    )
    make = _factory(factory)
    with secret.access() as ikm:

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
    _require_secret(passphrase, "passphrase")
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
    make = _factory(factory)
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


def hmac(secret: Secret, data: Buffer, algorithm: str = "sha256") -> bytes:
    """The HMAC tag of ``data`` under the key ``secret``. The tag is not secret: it is returned
    as ``bytes``. To check a tag, compare with :func:`hmac.compare_digest`."""
    _require_secret(secret, "key")
    algo = _hash(algorithm)
    with secret.access() as key:
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
    _require_secret(secret, "secret")
    if isinstance(other, str):
        raise TypeError("other must be a Secret or bytes-like, not str")
    with secret.access() as mine:
        if isinstance(other, Secret):
            with other.access() as theirs:
                return _stdlib_hmac.compare_digest(mine, theirs)
        return _stdlib_hmac.compare_digest(mine, other)
