"""Key derivation straight into secure memory: HKDF and Argon2id."""

from __future__ import annotations

from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .._enclave import Enclave
from .._factory import SecretFactory
from .._secret import Secret
from . import _cffi
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
    """Argon2id (RFC 9106, version 1.3) of a passphrase: a new secret of ``length`` bytes.

    The defaults are RFC 9106's second recommended option (3 passes, 4 lanes, 64 MiB;
    ``memory_cost`` is in KiB). ``salt`` (at least 8 bytes, 16 random bytes recommended) and
    ``associated_data`` are not secret. The output is the same as ``cryptography``'s
    ``Argon2id`` (and any RFC 9106 implementation) for the same parameters.

    Computed by the reference Argon2 in C (``argon2-cffi-bindings``, in the ``crypto`` extra),
    called by pointer: it reads the passphrase where it is, in the secret's pages during one
    access, and writes the key straight into the new secret's pages. It makes no heap copy of
    the passphrase (it hashes it, on the stack, into the 64-byte pre-hash the memory is filled
    from) and wipes its memory blocks before freeing them. A copy of the calling thread's stack
    taken right after the call held no 8-byte run of the passphrase or of the key (the reference
    code wipes its BLAKE2b buffers); as defence in depth, a second, cheapest derivation with a
    zero passphrase of the same length runs at once from the same place (same code, same stack
    slots). Checked from outside by ``tests/test_argon2_heap.py``: no 16-byte chunk of a
    512-1024-byte passphrase anywhere in the process after the call, from the main thread or a
    worker thread. Not guaranteed: the copies that exist while the call runs.

    Raises ``ValueError`` for parameters RFC 9106 does not allow (a salt under 8 bytes,
    ``length`` under 4, ``memory_cost`` under ``8 * lanes``...).
    """
    require_secret(passphrase, "passphrase")
    pw_len = len(passphrase)  # SecretClosedError here for a closed secret
    salt_bytes = bytes(salt)
    ad = b"" if associated_data is None else bytes(associated_data)
    _check_argon2(salt_bytes, length, iterations, lanes, memory_cost)
    make = default_factory(factory)
    ffi, lib = _cffi.argon2()
    dummy_pw, dummy_out = bytes(pw_len), bytearray(length)
    with passphrase.access() as pw:

        def fill(out: memoryview) -> None:
            rc = _argon2_ctx(pw, out, salt_bytes, ad, b"", iterations, lanes, memory_cost)
            # the scrub: same code, same stack slots, a zero passphrase, the least work
            _argon2_ctx(dummy_pw, dummy_out, salt_bytes, ad, b"", 1, lanes, 8 * lanes)
            if rc != lib.ARGON2_OK:
                message = ffi.string(lib.argon2_error_message(rc)).decode()
                raise ValueError(f"Argon2id failed: {message}")

        return make._create(length, fill)


def _check_argon2(salt: bytes, length: int, iterations: int, lanes: int, memory: int) -> None:
    """The parameter rules of RFC 9106 (and of ``cryptography``'s ``Argon2id``)."""
    values = {"length": length, "iterations": iterations, "lanes": lanes, "memory_cost": memory}
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if len(salt) < 8:
        raise ValueError("salt must be at least 8 bytes")
    if not 4 <= length <= 0xFFFFFFFF:
        raise ValueError("length must be at least 4 (and fit in 32 bits)")
    if not 1 <= iterations <= 0xFFFFFFFF:
        raise ValueError("iterations must be at least 1 (and fit in 32 bits)")
    if not 1 <= lanes <= 0xFFFFFF:
        raise ValueError("lanes must be between 1 and 2**24 - 1")
    if not 8 * lanes <= memory <= 0xFFFFFFFF:
        raise ValueError("memory_cost must be at least 8 * lanes KiB (and fit in 32 bits)")


def _argon2_ctx(
    pwd: Buffer,
    out: Buffer,
    salt: bytes,
    ad: bytes,
    secret: bytes,
    iterations: int,
    lanes: int,
    memory_cost: int,
) -> int:
    """One ``argon2_ctx`` call (Argon2id, version 1.3, ``lanes`` threads) reading ``pwd`` and
    writing ``out`` where they are; its return code (``ARGON2_OK`` is 0).

    The flags are 0: ``ARGON2_FLAG_CLEAR_PASSWORD`` would write to the passphrase, which is the
    secret's read-only pages (the secret wipes itself when closed)."""
    ffi, lib = _cffi.argon2()
    ctx = ffi.new("argon2_context *")
    buffers = ((pwd, False), (out, True), (salt, False), (ad, False), (secret, False))
    with _cffi.pointers(ffi, *buffers, ctype="uint8_t[]") as (p, o, s, a, k):
        ctx.out, ctx.outlen = o, len(o)
        ctx.pwd, ctx.pwdlen = p, len(p)
        ctx.salt, ctx.saltlen = s, len(s)
        ctx.secret, ctx.secretlen = (k if secret else ffi.NULL), len(secret)
        ctx.ad, ctx.adlen = (a if ad else ffi.NULL), len(ad)
        ctx.t_cost, ctx.m_cost = iterations, memory_cost
        ctx.lanes = ctx.threads = lanes
        ctx.version = lib.ARGON2_VERSION_13
        ctx.allocate_cbk = ctx.free_cbk = ffi.NULL
        ctx.flags = lib.ARGON2_DEFAULT_FLAGS
        rc: int = lib.argon2_ctx(ctx, lib.Argon2_id)
        return rc
