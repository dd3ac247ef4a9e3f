"""No Ed25519 or X25519 private key, nor a shared secret, anywhere outside secure pages after
10,000 signatures and 10,000 exchanges (issue 13), proven by scanning the process's memory.

A child (this file run as a script: :class:`securememory._probe._Child` plus commands) generates
an Ed25519 key and an X25519 key with :mod:`securememory.crypto` and hands their bytes to the
parent by a raw write from the access view (libsodium's 64-byte secret key: seed || public key;
the X25519 scalar). It signs 10,000 messages and runs 10,000 exchanges with four peers the parent
made (each shared secret closed at once, but the last, which is also sent raw). The parent scans
the child's whole memory (``/proc/<pid>/mem``), with the keys open and again after every secret
is closed, for:

- the Ed25519 seed, the 64-byte secret key (whole: its second half is the public key), the
  signing scalar (SHA-512 of the seed, clamped, and as hashed), the nonce prefix (the hash's
  second half) and the nonce of the last signature;
- the X25519 scalar, as given and clamped, and the four shared secrets;

each whole and in 16-byte halves (a vector register holds 16). While open, a value may appear
only inside its own secret's pages (for secretmem, nowhere: ``/proc/<pid>/mem`` cannot read
them); after close, nowhere.

Control: the same child, after keeping ``bytearray`` copies of the keys and the last shared
secret (as a program without this library would hold them), is scanned the same way: every
value is found outside the secrets' pages.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass

import pytest
from conftest import IMPLEMENTATIONS, skip_unless_available

from securememory import _inspect, _probe
from securememory._factory import factory_for

try:
    from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

    from securememory import crypto
except ImportError as e:  # pragma: no cover - depends on what is installed
    MISSING: str | None = f"securememory.crypto unavailable: {e}"
else:
    MISSING = None

pytestmark = [
    pytest.mark.skipif(MISSING is not None, reason=MISSING or ""),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="scans /proc/<pid>/mem"),
]

OPS = 10_000
PEERS = 4
L = 2**252 + 27742317777372353535851937790883648493  # the order of the Ed25519 base point


def _message(i: int) -> bytes:
    return b"message number %d" % i


class _Worker(_probe._Child):
    def __init__(self) -> None:
        super().__init__()
        self.ed: crypto.Ed25519PrivateKey | None = None
        self.x: crypto.X25519PrivateKey | None = None
        self.copies: list[bytearray] = []

    def _ranges(self) -> list[tuple[int, int]]:
        return [(s._base, s._base + s._mapped) for s in self.secrets.values() if not s.closed]

    def do_keys(self, impl: str) -> None:
        factory = factory_for(impl)
        self.ed = crypto.Ed25519PrivateKey.generate(factory)
        self.x = crypto.X25519PrivateKey.generate(factory)
        self.secrets[0], self.secrets[1] = self.ed._key, self.x._key
        self.send_bytes(self.ed._key)
        self.reply(ok=True)

    def do_xkey(self) -> None:
        assert self.x is not None
        self.send_bytes(self.x._key)
        self.reply(ok=True)

    def do_sign(self, n: str) -> None:
        assert self.ed is not None
        public = self.ed.public_key()
        sig = b""
        for i in range(int(n)):
            sig = self.ed.sign(_message(i))
            if i % 1000 == 0:
                public.verify(sig, _message(i))
        self.reply(public=public.public_bytes_raw().hex(), last=sig.hex())

    def do_exchange(self, n: str, *peers_hex: str) -> None:
        assert self.x is not None
        peers = [x25519.X25519PublicKey.from_public_bytes(bytes.fromhex(p)) for p in peers_hex]
        for i in range(int(n) - 1):
            self.x.exchange(peers[i % len(peers)]).close()
        last = self.x.exchange(peers[(int(n) - 1) % len(peers)])
        self.secrets[2] = last
        self.send_bytes(last)
        self.reply(public=self.x.public_key().public_bytes_raw().hex(), ranges=self._ranges())

    def do_ranges(self) -> None:
        self.reply(ranges=self._ranges())

    def do_copies(self) -> None:
        self.copies = [s.with_bytes(bytearray) for s in self.secrets.values()]
        self.reply(ok=True)

    def do_closeall(self) -> None:
        assert self.ed is not None and self.x is not None
        self.ed.close()
        self.x.close()
        for s in self.secrets.values():
            s.close()
        self.reply(ok=True)


def child_main() -> None:
    _probe.serve(_Worker())


class Worker(_probe.Probe):
    """A child running :func:`child_main` (this file's commands)."""

    def __init__(self) -> None:
        super().__init__(script=__file__)


def _clamp(k: bytes) -> bytes:
    b = bytearray(k)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


def _needles(sk: bytes, xkey: bytes, shared: list[bytes]) -> dict[str, bytes]:
    seed = sk[:32]
    h = hashlib.sha512(seed).digest()
    r = int.from_bytes(hashlib.sha512(h[32:] + _message(OPS - 1)).digest(), "little") % L
    values = {
        "ed25519 seed": seed,
        "ed25519 secret key (64)": sk,
        "ed25519 scalar (hashed)": h[:32],
        "ed25519 scalar (clamped)": _clamp(h[:32]),
        "ed25519 nonce prefix": h[32:],
        "ed25519 last nonce": r.to_bytes(32, "little"),
        "x25519 key": xkey,
        "x25519 key (clamped)": _clamp(xkey),
        **{f"shared secret {i}": s for i, s in enumerate(shared)},
    }
    out = dict(values)
    for name, v in values.items():
        if name == "ed25519 secret key (64)":
            continue  # its halves are the seed's (above) and the public key's (not secret)
        for k in range(0, len(v), 16):
            out[f"{name}[{k}:{k + 16}]"] = v[k : k + 16]
    return out


@dataclass
class Evidence:
    impl: str
    needles: dict[str, bytes]
    open_outside: dict[str, int]
    open_inside: dict[str, int]
    closed_anywhere: dict[str, int]
    control_outside: dict[str, int]


def _count(
    scan: _inspect.ScanResult, needles: dict[str, bytes], ranges: list[tuple[int, int]]
) -> tuple[dict[str, int], dict[str, int]]:
    outside: dict[str, int] = {}
    inside: dict[str, int] = {}
    for name, v in needles.items():
        for a, _ in scan.hits.get(v, []):
            d = inside if any(lo <= a < hi for lo, hi in ranges) else outside
            d[name] = d.get(name, 0) + 1
    return outside, inside


def run(impl: str) -> Evidence:
    peers = [x25519.X25519PrivateKey.generate() for _ in range(PEERS)]
    with Worker() as w:
        sk, xkey = w.send(f"keys {impl}")["bytes"], w.send("xkey")["bytes"]
        ed_public = ed25519.Ed25519PrivateKey.from_private_bytes(sk[:32]).public_key()
        signed = w.send(f"sign {OPS}")
        assert bytes.fromhex(signed["public"]) == ed_public.public_bytes_raw() == sk[32:]
        ed_public.verify(bytes.fromhex(signed["last"]), _message(OPS - 1))
        peer_hex = " ".join(p.public_key().public_bytes_raw().hex() for p in peers)
        answer = w.send(f"exchange {OPS} {peer_hex}")
        public = x25519.X25519PublicKey.from_public_bytes(bytes.fromhex(answer["public"]))
        shared = [p.exchange(public) for p in peers]
        assert answer["bytes"] == shared[(OPS - 1) % PEERS]
        needles = _needles(sk, xkey, shared)
        values = list(set(needles.values()))
        ranges = [tuple(r) for r in answer["ranges"]]
        open_outside, open_inside = _count(_inspect.scan_memory(w.pid, values), needles, ranges)
        w.send("copies")
        control_outside, _ = _count(_inspect.scan_memory(w.pid, values), needles, ranges)
    with Worker() as w:  # after close: a fresh child, no copies kept
        sk, xkey = w.send(f"keys {impl}")["bytes"], w.send("xkey")["bytes"]
        w.send(f"sign {OPS}")
        answer = w.send(f"exchange {OPS} {peer_hex}")
        public = x25519.X25519PublicKey.from_public_bytes(bytes.fromhex(answer["public"]))
        closed_needles = _needles(sk, xkey, [p.exchange(public) for p in peers])
        w.send("closeall")
        scan = _inspect.scan_memory(w.pid, list(set(closed_needles.values())))
        closed_anywhere, _ = _count(scan, closed_needles, [])
    ev = Evidence(impl, needles, open_outside, open_inside, closed_anywhere, control_outside)
    print(
        f"{impl}: open, outside own pages {open_outside or 'none'}; inside "
        f"{len(open_inside)} values; after close {closed_anywhere or 'none'}; control found "
        f"{len(control_outside)}/{len(needles)}"
    )
    return ev


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def evidence(request: pytest.FixtureRequest) -> Evidence:
    impl: str = request.param
    skip_unless_available(impl)
    return run(impl)


def test_no_key_or_shared_secret_outside_secure_pages(evidence: Evidence) -> None:
    assert evidence.open_outside == {}


def test_nothing_left_after_close(evidence: Evidence) -> None:
    assert evidence.closed_anywhere == {}


def test_scan_sees_the_pages_it_can_read(evidence: Evidence) -> None:
    """Where ``/proc/<pid>/mem`` can read secret pages (not secretmem), the keys and the last
    shared secret are found there, in their own pages: the scan looks where they are."""
    if evidence.impl == "secretmem":
        assert evidence.open_inside == {}  # the kernel refuses to read memfd_secret pages
    else:
        for name in ("ed25519 seed", "ed25519 secret key (64)", "x25519 key"):
            assert evidence.open_inside.get(name, 0) >= 1, name


def test_control_copies_are_found(evidence: Evidence) -> None:
    """The same scan finds the bytearray copies a program without this library would keep."""
    for name in ("ed25519 seed", "ed25519 secret key (64)", "x25519 key"):
        assert evidence.control_outside.get(name, 0) >= 1, name
    assert any(k.startswith("shared secret") for k in evidence.control_outside)


if __name__ == "__main__":
    child_main()
