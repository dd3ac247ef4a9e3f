"""Cryptography with keys that stay in secure memory (optional extra: ``securememory[crypto]``).

Built on `cryptography <https://cryptography.io>`_ (47 or later: it needs ``encrypt_into``,
``decrypt_into`` and ``derive_into``), the reference Argon2 (``argon2-cffi-bindings``) and
libsodium (``pynacl``), using only :meth:`Secret.access` and the factories::

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
- ``argon2id`` does not go through ``cryptography``: rust-openssl hands the passphrase to OpenSSL
  in an ``OSSL_PARAM`` block that holds a copy of it and is freed with ``OPENSSL_free``, not
  cleansed, and no scrub can reliably reach freed ``malloc`` memory (issue 9: up to half of a
  1 KiB passphrase was found in freed heap). It calls the reference Argon2 in C
  (``argon2-cffi-bindings``) by pointer: the passphrase is read in its secret's pages, the key is
  written into the new secret's, the memory blocks are wiped before they are freed, and the hash
  state left on the stack is overwritten by a second, cheapest derivation with a zero passphrase.
- ``Ed25519PrivateKey`` and ``X25519PrivateKey`` call libsodium (bundled by PyNaCl) by pointer:
  the key (libsodium's 64-byte Ed25519 secret key, the X25519 scalar) lives in a secret's pages
  and is read there during one access; key pairs and shared secrets are written straight into
  secure pages. libsodium wipes its hashes of the key and the nonce with ``sodium_memzero``;
  no limb or digit of the scalar or nonce was found on the stack after a call, and as defence
  in depth the same call is run at once under an all-zero key, which reuses the same slots.
  These C calls (and Argon2's) run inside an access, and the compiled core zeroes the vector
  registers when an access (or the filling of a new secret) ends.

The scrubs are best effort, not something this module can observe; the tests check them from
outside (``tests/test_heap_proof.py``): after 10,000 mixed operations, a passphrase prompt, an
Argon2id derivation and a key unwrap, a scan of the whole process memory, a ``gcore`` dump and a
kernel core (registers included) find each key, derived key, unwrapped key and passphrase (whole,
in 16-byte halves, and the key's AES round keys) only inside its own secret's pages, and nowhere
once the secrets are closed; the same workload with ``bytes`` keys leaves them on the heap, in the
registers and on the stack. ``tests/test_argon2_heap.py`` and ``tests/test_asymmetric_scan.py``
do the same for Argon2id passphrases of 512-1024 bytes (main thread and worker thread) and for
10,000 Ed25519 signatures and X25519 exchanges.

Not guaranteed: the copies above exist while a call runs (an attacker who can read the process's
memory at that instant sees them); the scrubs depend on the code paths and allocator behaviour of
the ``cryptography``/OpenSSL/glibc versions the tests ran with (another build may leave something
elsewhere: run the tests there); the plaintext of :meth:`AEAD.decrypt` and the data you pass in
are ordinary ``bytes``; tags from :func:`hmac` are not secret. A failed tag check raises
``cryptography``'s own :class:`~cryptography.exceptions.InvalidTag`, re-exported here as
:class:`InvalidTag`.
"""

from __future__ import annotations

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
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

from ._aead import AEAD
from ._ed25519 import Ed25519PrivateKey
from ._kdf import argon2id, hkdf
from ._mac import constant_time_equal, hmac
from ._x25519 import X25519PrivateKey

__all__ = [
    "AEAD",
    "Ed25519PrivateKey",
    "InvalidTag",
    "X25519PrivateKey",
    "argon2id",
    "constant_time_equal",
    "hkdf",
    "hmac",
]
