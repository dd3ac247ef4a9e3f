"""Ed25519 and X25519 with the private key in secure memory (issue 13).

Vectors from RFC 8032 and RFC 7748; signatures verify with ``cryptography``, shared secrets
match ``cryptography``'s; bad input raises typed errors and leaves nothing behind; the pointer
libsodium is handed is the secret's own pages. The proof that no copy is left anywhere is
``test_asymmetric_scan.py``.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

import securememory
from securememory import SecretClosedError, stats

try:
    from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

    from securememory import crypto
    from securememory.crypto import _cffi
    from securememory.crypto._ed25519 import _sign
    from securememory.crypto._x25519 import _scalarmult
except ImportError as e:  # pragma: no cover - depends on what is installed
    MISSING: str | None = f"securememory.crypto unavailable: {e}"
else:
    MISSING = None

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

# RFC 8032, section 7.1: (secret key, public key, message, signature)
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]

# RFC 7748, section 5.2: (scalar, u-coordinate, output)
RFC7748_MULT = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]
# RFC 7748, section 6.1
ALICE_PRIVATE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
ALICE_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
BOB_PRIVATE = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
BOB_PUBLIC = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
SHARED = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"


def _secret(factory: securememory.SecretFactory, hexkey: str) -> securememory.Secret:
    return factory.new(bytearray.fromhex(hexkey))


def _usage() -> tuple[int, int, int]:
    s = stats()
    return s.live_secrets, s.bytes_locked, s.bytes_quarantined


# -- Ed25519 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("sk", "pk", "msg", "sig"), RFC8032)
def test_ed25519_rfc8032(
    factory: securememory.SecretFactory, sk: str, pk: str, msg: str, sig: str
) -> None:
    with (
        _secret(factory, sk) as seed,
        crypto.Ed25519PrivateKey.from_private_bytes(seed, factory) as key,
    ):
        assert key.public_key().public_bytes_raw().hex() == pk
        assert key.sign(bytes.fromhex(msg)).hex() == sig
        assert key.sign(bytearray.fromhex(msg)).hex() == sig
        assert key.sign(memoryview(bytes.fromhex(msg))).hex() == sig
        assert key._key.implementation == factory.implementation


def test_ed25519_matches_cryptography(factory: securememory.SecretFactory) -> None:
    with crypto.Ed25519PrivateKey.generate(factory) as key:
        public = key.public_key()
        assert isinstance(public, ed25519.Ed25519PublicKey)
        seed = key._key.with_bytes(lambda v: bytes(v[:32]))
        reference = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        assert reference.public_key() == public
        for n in (0, 1, 63, 64, 65, 1000, 100_000):
            data = bytes(range(256)) * (n // 256) + bytes(n % 256)
            sig = key.sign(data)
            public.verify(sig, data)  # raises InvalidSignature if wrong
            assert sig == reference.sign(data)


def test_ed25519_keys_differ_and_seed_comes_from_the_kernel(
    factory: securememory.SecretFactory,
) -> None:
    publics = set()
    for _ in range(8):
        with crypto.Ed25519PrivateKey.generate(factory) as key:
            publics.add(key.public_key().public_bytes_raw())
    assert len(publics) == 8


def test_ed25519_bad_input_leaves_nothing(factory: securememory.SecretFactory) -> None:
    before = _usage()
    with pytest.raises(TypeError, match=r"secret must be a securememory\.Secret"):
        crypto.Ed25519PrivateKey.from_private_bytes(bytes(32))  # type: ignore[arg-type]
    for size in (31, 33, 64):
        with factory.create_random(size) as s, pytest.raises(ValueError, match="32-byte seed"):
            crypto.Ed25519PrivateKey.from_private_bytes(s, factory)
    with pytest.raises(TypeError, match="factory must be a SecretFactory"):
        crypto.Ed25519PrivateKey.generate("secretmem")  # type: ignore[arg-type]
    closed = factory.create_random(32)
    closed.close()
    with pytest.raises(SecretClosedError):
        crypto.Ed25519PrivateKey.from_private_bytes(closed, factory)
    key = crypto.Ed25519PrivateKey.generate(factory)
    with pytest.raises(TypeError, match="not str"):
        key.sign("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(TypeError):
        copy.copy(key)
    key.close()
    key.close()  # idempotent
    assert key.closed
    with pytest.raises(SecretClosedError):
        key.sign(b"data")
    with pytest.raises(SecretClosedError):
        key.public_key()
    assert _usage() == before


# -- X25519 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("scalar", "u", "out"), RFC7748_MULT)
def test_x25519_rfc7748_scalar_multiplication(
    factory: securememory.SecretFactory, scalar: str, u: str, out: str
) -> None:
    peer = x25519.X25519PublicKey.from_public_bytes(bytes.fromhex(u))
    with (
        _secret(factory, scalar) as s,
        crypto.X25519PrivateKey.from_private_bytes(s, factory) as key,
        key.exchange(peer) as shared,
    ):
        assert shared.with_bytes(bytes).hex() == out
        assert isinstance(shared, securememory.Secret)
        assert shared.implementation == factory.implementation


def test_x25519_rfc7748_diffie_hellman(factory: securememory.SecretFactory) -> None:
    with _secret(factory, ALICE_PRIVATE) as a, _secret(factory, BOB_PRIVATE) as b:
        alice = crypto.X25519PrivateKey.from_private_bytes(a, factory)
        bob = crypto.X25519PrivateKey.from_private_bytes(b, factory)
    # the keys are copies of their own: closing the sources above changed nothing
    with alice, bob:
        assert alice.public_key().public_bytes_raw().hex() == ALICE_PUBLIC
        assert bob.public_key().public_bytes_raw().hex() == BOB_PUBLIC
        with alice.exchange(bob.public_key()) as s1, bob.exchange(alice.public_key()) as s2:
            assert s1.with_bytes(bytes).hex() == s2.with_bytes(bytes).hex() == SHARED


def test_x25519_matches_cryptography(factory: securememory.SecretFactory) -> None:
    with crypto.X25519PrivateKey.generate(factory) as key:
        public = key.public_key()
        assert isinstance(public, x25519.X25519PublicKey)
        reference = x25519.X25519PrivateKey.from_private_bytes(key._key.with_bytes(bytes))
        assert reference.public_key() == public
        for _ in range(5):
            peer = x25519.X25519PrivateKey.generate()
            with key.exchange(peer.public_key()) as shared:
                assert shared.with_bytes(bytes) == peer.exchange(public)
                assert shared.with_bytes(bytes) == reference.exchange(peer.public_key())
        # ready for hkdf
        with (
            key.exchange(peer.public_key()) as shared,
            crypto.hkdf(shared, 32, b"salt", b"info", factory=factory) as derived,
        ):
            assert len(derived) == 32


def test_x25519_bad_input_leaves_nothing(factory: securememory.SecretFactory) -> None:
    before = _usage()
    with pytest.raises(TypeError, match=r"secret must be a securememory\.Secret"):
        crypto.X25519PrivateKey.from_private_bytes(bytearray(32))  # type: ignore[arg-type]
    for size in (16, 31, 33):
        with factory.create_random(size) as s, pytest.raises(ValueError, match="32 bytes"):
            crypto.X25519PrivateKey.from_private_bytes(s, factory)
    key = crypto.X25519PrivateKey.generate(factory)
    ed_public = ed25519.Ed25519PrivateKey.generate().public_key()
    for wrong in (ed_public, bytes(32), key):
        with pytest.raises(TypeError, match="X25519PublicKey"):
            key.exchange(wrong)  # type: ignore[arg-type]
    # a point of small order: the shared secret would be all zeros (RFC 7748, section 6.1)
    zero = x25519.X25519PublicKey.from_public_bytes(bytes(32))
    with pytest.raises(ValueError, match="all zeros"):
        key.exchange(zero)
    with pytest.raises(ValueError):  # cryptography refuses it too
        x25519.X25519PrivateKey.generate().exchange(zero)
    key.close()
    with pytest.raises(SecretClosedError):
        key.exchange(x25519.X25519PrivateKey.generate().public_key())
    with pytest.raises(SecretClosedError):
        key.public_key()
    assert _usage() == before


# -- by pointer ---------------------------------------------------------------------------------


def test_libsodium_is_handed_the_secrets_own_pages(
    factory: securememory.SecretFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pointers libsodium receives for the key (and for the shared secret it writes) are
    addresses inside the secrets' data pages: no copy is made on the way."""
    ffi, _ = _cffi.sodium()
    seen: list[int] = []
    real = _cffi.pointer

    def spy(ffi_: object, buf: object, *, writable: bool = False, ctype: str = "unsigned char[]"):  # type: ignore[no-untyped-def]
        cm = real(ffi_, buf, writable=writable, ctype=ctype)

        class Wrapped:
            def __enter__(self) -> object:
                p = cm.__enter__()
                seen.append(int(ffi.cast("uintptr_t", p)))
                return p

            def __exit__(self, *exc: Any) -> None:
                cm.__exit__(*exc)

        return Wrapped()

    monkeypatch.setattr(_cffi, "pointer", spy)
    with crypto.Ed25519PrivateKey.generate(factory) as ed:
        seen.clear()
        ed.sign(b"message")
        assert ed._key._data in seen
    with crypto.X25519PrivateKey.generate(factory) as x:
        seen.clear()
        with x.exchange(x25519.X25519PrivateKey.generate().public_key()) as shared:
            assert x._key._data in seen
            assert shared._data in seen
    assert _sign is not None and _scalarmult is not None
