"""Argon2id leaves no copy of the passphrase anywhere in the process (issue 9, item 4).

A child (this file run as a script: :class:`securememory._probe._Child` plus one command) makes
two random passphrases of each of 512, 800, 1000 and 1024 bytes with ``create_random`` (1024 is
``from_prompt``'s default maximum), sends their bytes to the parent by raw writes from the access
view, and derives a key from each with :func:`securememory.crypto.argon2id` (64 MiB, 4 lanes, one
pass), from the main thread or from a worker thread (which has its own ``malloc`` arena and
stack). The parent then scans the child's whole memory (``/proc/<pid>/mem``) once for every
passphrase's 16-byte chunks, and those of every derivation's pre-hash H0 (which, with the salt,
is as good as the passphrase) and key (closed at once: it must be nowhere).

Correct: no chunk anywhere outside the passphrase's own pages. The bug it catches: the old code
went through ``cryptography``, whose OpenSSL parameter block left a copy of the passphrase in
freed heap, which its scrub reached only when ``malloc`` handed the same block back. That depends
on the allocator's state. With this test as it is, the old code failed the worker-thread case
in 3 runs of 3 (19 of the 128 chunks of the two 1024-byte passphrases) and passed the main-thread
case in 3 of 3; earlier variants saw 10/50 chunks at 800 bytes and 10/62 at 1000 from the main
thread, 15/124 at 1000 and 16/64 at 1024 from a worker thread. The issue saw 16-30 of 50-64
chunks at 800-1024 bytes. The new code: none, in every run.

Control: the same scan, after the child kept a plain ``bytearray`` copy of the passphrase, finds
every chunk (the scan sees the child's heap and can fail).
"""

from __future__ import annotations

import hashlib
import struct
import sys
import threading
from dataclasses import dataclass
from typing import Any

import pytest

from securememory import _inspect, _probe
from securememory._factory import factory_for
from securememory._implementations import IMPLEMENTATIONS as _TABLE

try:
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    from securememory import crypto
except ImportError as e:  # pragma: no cover - depends on what is installed
    CRYPTO_MISSING: str | None = f"securememory.crypto unavailable: {e}"
else:
    CRYPTO_MISSING = None

pytestmark = [
    pytest.mark.skipif(CRYPTO_MISSING is not None, reason=CRYPTO_MISSING or ""),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="scans /proc/<pid>/mem"),
]

SALT = b"argon2-heap-salt"
ROUNDS = 1  # derivations per passphrase
PER_LENGTH = 2  # passphrases of each length
LENGTHS = (512, 800, 1000, 1024)
MEMORY = 65536  # KiB: the default (64 MiB), the parameter layout users run


def _best_impl() -> str:
    for spec in _TABLE:
        if spec.unavailable() is None:
            return spec.name
    raise RuntimeError("no implementation available")  # pragma: no cover


class _Worker(_probe._Child):
    def do_argon2(self, impl: str, pw_id: str, where: str, memory: str) -> None:
        pw = self.secrets[int(pw_id)]
        errors: list[BaseException] = []

        def derive() -> None:
            try:
                for _ in range(ROUNDS):
                    crypto.argon2id(
                        pw,
                        SALT,
                        iterations=1,
                        lanes=4,
                        memory_cost=int(memory),
                        factory=factory_for(impl),
                    ).close()
            except BaseException as e:  # reported to the parent
                errors.append(e)

        if where == "thread":
            t = threading.Thread(target=derive)
            t.start()
            t.join()
        else:
            derive()
        if errors:
            raise errors[0]
        self.reply(ok=True)


def child_main() -> None:
    _probe.serve(_Worker())


class Worker(_probe.Probe):
    """A child running :func:`child_main` (this file's commands)."""

    def __init__(self) -> None:
        super().__init__(script=__file__)


def _chunks(value: bytes) -> list[bytes]:
    return [value[k : k + 16] for k in range(0, len(value) - 15, 16)]


def prehash(
    pw: bytes,
    salt: bytes,
    *,
    t: int,
    m: int,
    p: int,
    taglen: int,
    secret: bytes = b"",
    ad: bytes = b"",
) -> bytes:
    """Argon2id's 64-byte pre-hash H0 (RFC 9106, section 3.2): with the salt, as good as the
    passphrase to whoever finds it."""

    def le(x: int) -> bytes:
        return struct.pack("<I", x)

    data = le(p) + le(taglen) + le(m) + le(t) + le(0x13) + le(2) + le(len(pw)) + pw
    data += le(len(salt)) + salt + le(len(secret)) + secret + le(len(ad)) + ad
    return hashlib.blake2b(data, digest_size=64).digest()


def test_prehash_is_rfc9106s() -> None:
    """The needle H0 is computed right: RFC 9106's Argon2id pre-hashing digest (section 5.3)."""
    h0 = prehash(
        b"\x01" * 32, b"\x02" * 16, t=3, m=32, p=4, taglen=32, secret=b"\x03" * 8, ad=b"\x04" * 12
    )
    assert h0.hex() == (
        "2889de487eb42ae500c0007ed9252f1069eadec40d5765b485de6dc2437a67b8"
        "546a2f0acc1a0882db8fcf74714b472e94df421a5da1112ffa11434370a1e997"
    )


@dataclass
class Result:
    per_length: dict[int, tuple[int, int]]  # length: (chunks found, chunks), all its passphrases
    derived: dict[str, int]  # pre-hash and key chunks found (closed keys: found anywhere)


def _run(where: str, control: bool) -> Result:
    """Make ``PER_LENGTH`` passphrases of every length in the child, derive from each, scan once
    for the passphrases' 16-byte chunks and (not in the control) those of each derivation's
    pre-hash H0 and key."""
    impl = _best_impl()
    made: list[tuple[int, bytes, tuple[int, int], int]] = []
    with Worker() as w:
        for length in LENGTHS * PER_LENGTH:
            answer: dict[str, Any] = w.send(f"make {impl} {length}")
            own = (answer["base"], answer["base"] + answer["mapped"])
            made.append((length, answer["bytes"], own, answer["id"]))
        for _, _, _, key in made:
            w.send(f"argon2 {impl} {key} {where} {MEMORY}")
            if control:
                w.send(f"control {key}")
        derived: dict[bytes, str] = {}
        if not control:
            for i, (_, pw, _, _) in enumerate(made):
                h0 = prehash(pw, SALT, t=1, m=MEMORY, p=4, taglen=32)
                kdf = Argon2id(salt=SALT, length=32, iterations=1, lanes=4, memory_cost=MEMORY)
                for name, value in ((f"H0 {i}", h0), (f"key {i}", kdf.derive(pw))):
                    derived.update({c: f"{name}[{k * 16}:]" for k, c in enumerate(_chunks(value))})
        needles = [c for _, pw, _, _ in made for c in _chunks(pw)] + list(derived)
        scan = _inspect.scan_memory(w.pid, needles)
    out: dict[int, tuple[int, int]] = {}
    for length, pw, own, _ in made:
        chunks = _chunks(pw)
        found = sum(1 for c in chunks if scan.found(c, outside=own))
        f0, t0 = out.get(length, (0, 0))
        out[length] = (f0 + found, t0 + len(chunks))
    hits = {name: len(scan.found(c)) for c, name in derived.items() if scan.found(c)}
    print(f"{impl} {where}{' control' if control else ''}: {out}; derived found: {hits or 'none'}")
    return Result(out, hits)


@pytest.mark.parametrize("where", ["main", "thread"])
def test_no_chunk_of_the_passphrase_left(where: str) -> None:
    """No 16-byte chunk of any passphrase anywhere outside its own pages, at every length; no
    chunk of a pre-hash or of a (closed) key anywhere."""
    result = _run(where, control=False)
    assert all(found == 0 for found, _ in result.per_length.values()), result.per_length
    assert result.derived == {}


@pytest.mark.parametrize("where", ["main", "thread"])
def test_control_a_kept_copy_is_found(where: str) -> None:
    result = _run(where, control=True)
    assert all(found == total > 0 for found, total in result.per_length.values()), result


if __name__ == "__main__":
    child_main()
