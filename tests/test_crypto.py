"""``securememory.crypto``: correct against plain ``cryptography``, keys only as secrets, the
cipher never outliving the access, and clear errors. Memory scans are in test_heap_proof.py."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest

import securememory
from securememory import SecretClosedError, _inspect, stats

pytest.importorskip("cryptography", minversion="47", reason="needs securememory[crypto]")

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securememory import crypto
from securememory.crypto import _aead

ALGORITHMS: dict[str, type[AESGCM] | type[ChaCha20Poly1305]] = {
    "aes-256-gcm": AESGCM,
    "chacha20-poly1305": ChaCha20Poly1305,
}


@pytest.fixture(params=sorted(ALGORITHMS))
def algorithm(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def _key(factory: securememory.SecretFactory) -> tuple[securememory.Secret, bytes]:
    raw = os.urandom(32)
    return factory.new(bytearray(raw)), raw


def _usage() -> tuple[int, int, int]:
    s = stats()
    return s.live_secrets, s.bytes_mapped, s.bytes_locked


def _ciphers_alive() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, (AESGCM, ChaCha20Poly1305)))


# -- AEAD -------------------------------------------------------------------------------------


def test_aead_matches_cryptography(factory: securememory.SecretFactory, algorithm: str) -> None:
    key, raw = _key(factory)
    reference = ALGORITHMS[algorithm](raw)
    box = crypto.AEAD(key, algorithm)
    for size in (0, 1, 16, 100, 4096, 100_000):
        nonce, data = os.urandom(12), os.urandom(size)
        ct = box.encrypt(nonce, data, b"aad")
        assert ct == reference.encrypt(nonce, data, b"aad")
        assert box.decrypt(nonce, ct, b"aad") == data
        assert box.decrypt(nonce, reference.encrypt(nonce, data, None)) == data
    key.close()


def test_aead_bad_tag_is_cryptographys_invalid_tag(
    factory: securememory.SecretFactory, algorithm: str
) -> None:
    assert crypto.InvalidTag is InvalidTag
    with factory.create_random(32) as key:
        box = crypto.AEAD(key, algorithm)
        nonce = os.urandom(12)
        ct = bytearray(box.encrypt(nonce, b"data", b"aad"))
        with pytest.raises(InvalidTag):
            box.decrypt(nonce, bytes(ct), b"other aad")
        ct[0] ^= 1
        with pytest.raises(InvalidTag):
            box.decrypt(nonce, bytes(ct), b"aad")
        with pytest.raises(InvalidTag):
            box.decrypt(nonce, b"short", b"aad")


def test_aead_refuses_bytes_keys_and_bad_arguments(factory: securememory.SecretFactory) -> None:
    for raw in (os.urandom(32), bytearray(32), memoryview(bytes(32))):
        with pytest.raises(TypeError, match=r"must be a securememory\.Secret.*cannot be locked"):
            crypto.AEAD(raw)  # type: ignore[arg-type]
    with factory.create_random(16) as short, pytest.raises(ValueError, match="32-byte key, got 16"):
        crypto.AEAD(short)
    with factory.create_random(32) as key:
        with pytest.raises(ValueError, match="unknown AEAD algorithm"):
            crypto.AEAD(key, "aes-128-ecb")
        box = crypto.AEAD(key)
        with pytest.raises(ValueError, match="nonce must be 12 bytes"):
            box.encrypt(b"short", b"data")
        with pytest.raises(TypeError):
            box.encrypt("twelve chars", b"data")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            box.encrypt_secret(os.urandom(12), b"not a secret")  # type: ignore[arg-type]


def test_aead_closed_key(factory: securememory.SecretFactory) -> None:
    key = factory.create_random(32)
    box = crypto.AEAD(key, "chacha20-poly1305")
    key.close()
    with pytest.raises(SecretClosedError):
        box.encrypt(os.urandom(12), b"data")
    with pytest.raises(SecretClosedError):
        crypto.AEAD(key)


def test_cipher_lives_only_inside_the_access(factory: securememory.SecretFactory) -> None:
    """After every call, on success and on a failed tag (exception kept), no cipher object is
    left, and the key's pages are no-access again."""
    with factory.create_random(32) as key:
        before = _ciphers_alive()
        box = crypto.AEAD(key)
        nonce = os.urandom(12)
        box.decrypt(nonce, box.encrypt(nonce, b"data"))
        assert _ciphers_alive() == before
        try:
            box.decrypt(nonce, bytes(32))
        except InvalidTag as e:
            kept = e  # a caller keeping the exception keeps its traceback's frames
            assert _ciphers_alive() == before
            del kept
        r = key
        (m,) = _inspect.smaps("self", r._inner, r._inner + r._inner_len)
        assert m.perms.startswith("---")


def test_wrap_and_unwrap_a_key(factory: securememory.SecretFactory, algorithm: str) -> None:
    """encrypt_secret wraps without exposing; decrypt_to_secret unwraps into a new secret of
    the factory's implementation; both interoperate with plain cryptography."""
    kek, raw_kek = _key(factory)
    inner, raw_inner = _key(factory)
    reference = ALGORITHMS[algorithm](raw_kek)
    box = crypto.AEAD(kek, algorithm)
    nonce = os.urandom(12)
    wrapped = box.encrypt_secret(nonce, inner, b"label")
    assert reference.decrypt(nonce, wrapped, b"label") == raw_inner
    with box.decrypt_to_secret(nonce, wrapped, b"label", factory=factory) as out:
        assert out.implementation == factory.implementation
        assert len(out) == 32
        assert crypto.constant_time_equal(out, inner)
    other = reference.encrypt(nonce, b"k" * 48, None)
    with box.decrypt_to_secret(nonce, other) as out:
        assert out.with_bytes(bytes) == b"k" * 48
    kek.close()
    inner.close()


def test_unwrap_failure_leaves_nothing(factory: securememory.SecretFactory) -> None:
    with factory.create_random(32) as kek:
        box = crypto.AEAD(kek)
        nonce = os.urandom(12)
        wrapped = bytearray(box.encrypt(nonce, os.urandom(32)))
        wrapped[-1] ^= 1
        before = _usage()
        with pytest.raises(InvalidTag):
            box.decrypt_to_secret(nonce, bytes(wrapped), factory=factory)
        with pytest.raises(InvalidTag):
            box.decrypt_to_secret(nonce, b"too short", factory=factory)
        with pytest.raises(ValueError, match="empty"):
            box.decrypt_to_secret(nonce, box.encrypt(nonce, b""), factory=factory)
        assert _usage() == before


def test_register_scrub_covers_every_length() -> None:
    """The scrub runs (and fails at the tag, as meant) for short, long and odd lengths."""
    for cls in (AESGCM, ChaCha20Poly1305):
        for n in (-16, 0, 1, 8191, 8192, 8193, 1_000_003):
            _aead._scrub_registers(cls, True, n)
            _aead._scrub_registers(cls, False, n)


# -- KDFs, MAC, comparison ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512", "sha3-256"])
def test_hkdf_matches_cryptography(factory: securememory.SecretFactory, algorithm: str) -> None:
    key, raw = _key(factory)
    algo = {
        "sha256": hashes.SHA256(),
        "sha384": hashes.SHA384(),
        "sha512": hashes.SHA512(),
        "sha3-256": hashes.SHA3_256(),
    }[algorithm]
    for length, salt, info in ((32, b"salt", b"info"), (100, None, None), (1, b"", b"x")):
        with crypto.hkdf(key, length, salt, info, algorithm, factory=factory) as out:
            expected = HKDF(algo, length, salt, info).derive(raw)
            assert out.with_bytes(bytes) == expected
            assert out.implementation == factory.implementation
    key.close()


def test_hkdf_errors(factory: securememory.SecretFactory) -> None:
    with pytest.raises(TypeError, match="Secret"):
        crypto.hkdf(b"k" * 32, 32, None, None)  # type: ignore[arg-type]
    with factory.create_random(32) as key:
        with pytest.raises(ValueError, match="unknown hash"):
            crypto.hkdf(key, 32, None, None, "md5")
        before = _usage()
        with pytest.raises(ValueError):
            crypto.hkdf(key, 255 * 32 + 1, None, None)
        assert _usage() == before
    with pytest.raises(SecretClosedError):
        crypto.hkdf(key, 32, None, None)


def test_argon2id_matches_cryptography(factory: securememory.SecretFactory) -> None:
    pw = factory.new(bytearray(b"correct horse battery staple"))
    salt = os.urandom(16)
    with crypto.argon2id(
        pw, salt, length=24, iterations=2, lanes=2, memory_cost=256, factory=factory
    ) as key:
        expected = Argon2id(salt=salt, length=24, iterations=2, lanes=2, memory_cost=256).derive(
            b"correct horse battery staple"
        )
        assert key.with_bytes(bytes) == expected
        assert key.implementation == factory.implementation
    with crypto.argon2id(pw, salt, memory_cost=64, lanes=1, associated_data=b"ad") as key:
        expected = Argon2id(
            salt=salt, length=32, iterations=3, lanes=1, memory_cost=64, ad=b"ad"
        ).derive(b"correct horse battery staple")
        assert key.with_bytes(bytes) == expected
    pw.close()
    with pytest.raises(SecretClosedError):
        crypto.argon2id(pw, salt)
    with pytest.raises(TypeError, match=r"passphrase must be a securememory\.Secret"):
        crypto.argon2id(b"hunter2", salt)  # type: ignore[arg-type]


def test_hmac_matches_cryptography(factory: securememory.SecretFactory) -> None:
    key, raw = _key(factory)
    for name, algo in (("sha256", hashes.SHA256()), ("sha512", hashes.SHA512())):
        mac = crypto_hmac.HMAC(raw, algo)
        mac.update(b"message")
        assert crypto.hmac(key, b"message", name) == mac.finalize()
    with pytest.raises(TypeError, match=r"key must be a securememory\.Secret"):
        crypto.hmac(raw, b"message")  # type: ignore[arg-type]
    key.close()
    with pytest.raises(SecretClosedError):
        crypto.hmac(key, b"message")


def test_constant_time_equal(factory: securememory.SecretFactory) -> None:
    a, raw = _key(factory)
    b = factory.new(bytearray(raw))
    c = factory.create_random(32)
    assert crypto.constant_time_equal(a, b)
    assert crypto.constant_time_equal(a, raw)
    assert crypto.constant_time_equal(a, bytearray(raw))
    assert crypto.constant_time_equal(a, memoryview(raw))
    assert not crypto.constant_time_equal(a, c)
    assert not crypto.constant_time_equal(a, raw[:31])
    assert not crypto.constant_time_equal(a, raw + b"\0")
    with pytest.raises(TypeError):
        crypto.constant_time_equal(a, "a str")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        crypto.constant_time_equal(raw, a)  # type: ignore[arg-type]
    for s in (a, b, c):
        s.close()


def test_import_error_names_the_extra() -> None:
    """Without cryptography, importing securememory.crypto says how to get it."""
    code = (
        "import sys\n"
        "sys.modules['cryptography'] = None\n"
        "try:\n    import securememory.crypto\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install securememory[crypto]" in out.stdout, out.stdout + out.stderr


# RFC 9106, section 5.3: Argon2id, version 0x13
RFC9106_TAG = "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659"


def test_argon2id_rfc9106_vector() -> None:
    """The C call the module makes, with RFC 9106's own inputs (a key ``secret`` included)."""
    from securememory.crypto._kdf import _argon2_ctx

    out = bytearray(32)
    rc = _argon2_ctx(b"\x01" * 32, out, b"\x02" * 16, b"\x04" * 12, b"\x03" * 8, 3, 4, 32)
    assert rc == 0
    assert out.hex() == RFC9106_TAG


@pytest.mark.parametrize(
    ("length", "iterations", "lanes", "memory_cost", "ad", "pw_len"),
    [
        (32, 3, 4, 64 * 1024, None, 24),  # the defaults
        (16, 1, 1, 8, b"", 1),
        (64, 2, 3, 96, b"associated", 1000),
        (100, 1, 8, 64, None, 1024),
    ],
)
def test_argon2id_same_output_as_cryptography(
    length: int, iterations: int, lanes: int, memory_cost: int, ad: bytes | None, pw_len: int
) -> None:
    factory = securememory.SecretFactory()
    raw = os.urandom(pw_len)
    salt = os.urandom(16)
    expected = Argon2id(
        salt=salt,
        length=length,
        iterations=iterations,
        lanes=lanes,
        memory_cost=memory_cost,
        ad=ad,
    ).derive(raw)
    with (
        factory.new(bytearray(raw)) as pw,
        crypto.argon2id(
            pw,
            salt,
            length=length,
            iterations=iterations,
            lanes=lanes,
            memory_cost=memory_cost,
            associated_data=ad,
        ) as key,
    ):
        assert key.with_bytes(bytes) == expected


def test_argon2id_bad_parameters_leave_nothing(factory: securememory.SecretFactory) -> None:
    before = _usage()
    with factory.new(bytearray(b"passphrase")) as pw:
        during = _usage()
        for kwargs, match in (
            ({"length": 3}, "length"),
            ({"iterations": 0}, "iterations"),
            ({"lanes": 0}, "lanes"),
            ({"lanes": 4, "memory_cost": 31}, "memory_cost"),
            ({"memory_cost": 2**32}, "memory_cost"),
        ):
            with pytest.raises(ValueError, match=match):
                crypto.argon2id(pw, b"saltsalt", factory=factory, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="salt"):
            crypto.argon2id(pw, b"short", factory=factory)
        with pytest.raises(TypeError, match="lanes must be an int"):
            crypto.argon2id(pw, b"saltsalt", lanes=2.0, factory=factory)  # type: ignore[arg-type]
        assert _usage() == during
    assert _usage() == before
