"""Secrets in, used and out without a copy on the Python heap, proven by scanning process memory.

A child process (this file run as a script: :class:`securememory._probe._Child` with more
commands) makes a key with ``create_random`` and hands its bytes to the parent by a raw write from
the access view. It runs 10,000 mixed AEAD / HKDF / HMAC operations with it, reads a key file with
``from_file``, reads a passphrase through a pseudo-terminal with ``from_prompt``, derives a key from
it with Argon2id and unwraps a key the parent wrapped (``decrypt_to_secret``). Every secret's bytes
reach the parent the same way, with the addresses of its pages.

The parent scans the child's whole memory (``/proc/<pid>/mem``) while the secrets are open, a
``gcore`` dump of it, the memory again after they are closed, and a real kernel core file, for:

- every secret (key, key file, derived keys, passphrase, Argon2id key, unwrapped key) whole and in
  16-byte halves (a vector register holds 16 bytes);
- every AES-256 round key of the key (the key schedule is invertible: two consecutive round keys
  give the key back), HKDF's PRK, and derived keys of the workload that were closed long ago.

While open, a secret may appear only inside its own pages (for secretmem, nowhere: the kernel does
not let ``/proc/<pid>/mem`` read them); in dumps and after close, nowhere. The dumps include the
CPU registers (the core's register notes), which is where the key schedule of an AES call stays.

Controls: protected and guarded secrets are found in their own pages by the same scan (the scan
sees memory where they are); the same workload with plain ``cryptography`` and ``bytes`` keys
leaves every one of them on the heap, in the registers and on the stack, before and after ``del``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
import select
import sys
import tempfile
import termios
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import IMPLEMENTATIONS, require, skip_unless_available

from securememory import _inspect, _probe
from securememory._factory import factory_for

try:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import hmac as crypto_hmac
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from securememory import crypto
except ImportError as e:  # pragma: no cover - depends on what is installed
    CRYPTO_MISSING: str | None = f"securememory.crypto unavailable: {e}"
else:
    CRYPTO_MISSING = None

pytestmark = [
    pytest.mark.skipif(CRYPTO_MISSING is not None, reason=CRYPTO_MISSING or ""),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="scans /proc/<pid>/mem"),
]

OPS = 10_000
KEY_SIZE = 32
HKDF_SALT = b"hkdf-salt"
ARGON2_SALT = b"heap-proof-salt!"
ARGON2_ITERATIONS, ARGON2_LANES, ARGON2_MEMORY = 1, 2, 4096  # small: the test is not about cost
KEPT = 3  # derived keys kept open to the end
SAMPLED = (0, 1, 1501, 4999, OPS - 1)  # operations whose derived (and closed) keys are needles
PROMPT = b"Passphrase: "
WRAP_AAD = b"wrapped key"


def _info(i: int) -> bytes:
    return b"op-%d" % i


def _argon2(passphrase: bytes) -> bytes:
    """The reference Argon2id, with ``bytes`` (parent side, and the control)."""
    kdf = Argon2id(
        salt=ARGON2_SALT,
        length=32,
        iterations=ARGON2_ITERATIONS,
        lanes=ARGON2_LANES,
        memory_cost=ARGON2_MEMORY,
    )
    return kdf.derive(passphrase)


# ---------------------------------------------------------------------------------------------
# The child
# ---------------------------------------------------------------------------------------------


class _Worker(_probe._Child):
    """The probe child plus the workloads. Secret bytes leave it only as raw writes from an
    access view (``add``); the plain control's keys leave it as hex in the JSON answer."""

    def __init__(self) -> None:
        super().__init__()
        self.plain: dict[str, bytes] = {}

    def do_workload(self, impl: str, key_id: str, n: str) -> None:
        """``n`` mixed operations with secret ``key_id``: AEAD round trips (both algorithms),
        HKDF derivations (closed at once; every 30th also compared), HMAC tags."""
        factory, key = factory_for(impl), self.secrets[int(key_id)]
        boxes = [crypto.AEAD(key, "aes-256-gcm"), crypto.AEAD(key, "chacha20-poly1305")]
        counts = {"aead": 0, "hkdf": 0, "hmac": 0, "compare": 0}
        for i in range(int(n)):
            if i in SAMPLED or i % 3 == 1:
                with crypto.hkdf(key, 32, HKDF_SALT, _info(i), factory=factory) as derived:
                    if i % 30 == 1:
                        assert not crypto.constant_time_equal(derived, key)
                        counts["compare"] += 1
                counts["hkdf"] += 1
            elif i % 3 == 0:
                box = boxes[(i // 3) % 2]
                nonce, data = os.urandom(12), os.urandom(64 + i % 200)
                assert box.decrypt(nonce, box.encrypt(nonce, data, b"ad"), b"ad") == data
                counts["aead"] += 1
            else:
                assert len(crypto.hmac(key, b"message %d" % i)) == 32
                counts["hmac"] += 1
        self.reply(counts=counts)

    def do_derive(self, impl: str, key_id: str, j: str) -> None:
        key = self.secrets[int(key_id)]
        info = b"kept-" + j.encode()
        self.add(crypto.hkdf(key, 32, HKDF_SALT, info, factory=factory_for(impl)))

    def do_file(self, impl: str, path: str) -> None:
        self.add(factory_for(impl).from_file(path))

    def do_prompt(self, impl: str, tty: str) -> None:
        self.add(factory_for(impl).from_prompt(PROMPT.decode(), tty=tty))

    def do_argon2(self, impl: str, pw_id: str) -> None:
        pw = self.secrets[int(pw_id)]
        self.add(
            crypto.argon2id(
                pw,
                ARGON2_SALT,
                iterations=ARGON2_ITERATIONS,
                lanes=ARGON2_LANES,
                memory_cost=ARGON2_MEMORY,
                factory=factory_for(impl),
            )
        )

    def _read_raw(self, n: int) -> bytearray:
        buf = bytearray(n)
        got = 0
        while got < n:
            got += os.readv(0, [memoryview(buf)[got:]])
        return buf

    def do_unwrap(self, impl: str, key_id: str, size: str) -> None:
        """Read nonce || wrapped key from stdin; unwrap it into a new secret."""
        raw = self._read_raw(int(size))
        box = crypto.AEAD(self.secrets[int(key_id)], "aes-256-gcm")
        self.add(box.decrypt_to_secret(raw[:12], raw[12:], WRAP_AAD, factory_for(impl)))

    def do_closeall(self) -> None:
        for s in self.secrets.values():
            s.close()
        self.secrets.clear()
        gc.collect()
        self.do_stats()

    # -- the control: the same workload, the way a program without this library does it ------

    def _keep(self, name: str, value: bytes) -> None:
        self.plain[name] = value
        self.reply(name=name, hex=value.hex())

    def do_plain_key(self) -> None:
        self._keep("key", os.urandom(KEY_SIZE))

    def do_plain_workload(self, n: str) -> None:
        key = self.plain["key"]
        boxes: list[AESGCM | ChaCha20Poly1305] = [AESGCM(key), ChaCha20Poly1305(key)]
        for i in range(int(n)):
            if i in SAMPLED or i % 3 == 1:
                HKDF(hashes.SHA256(), 32, HKDF_SALT, _info(i)).derive(key)
            elif i % 3 == 0:
                box = boxes[(i // 3) % 2]
                nonce, data = os.urandom(12), os.urandom(64 + i % 200)
                assert box.decrypt(nonce, box.encrypt(nonce, data, b"ad"), b"ad") == data
            else:
                mac = crypto_hmac.HMAC(key, hashes.SHA256())
                mac.update(b"message %d" % i)
                assert len(mac.finalize()) == 32
        self.reply(counts={})

    def do_plain_derive(self, j: str) -> None:
        info = b"kept-" + j.encode()
        self._keep(
            f"kept-{j}", HKDF(hashes.SHA256(), 32, HKDF_SALT, info).derive(self.plain["key"])
        )

    def do_plain_file(self, path: str) -> None:
        with open(path, "rb") as f:
            self._keep("file", f.read())

    def do_plain_prompt(self, tty: str) -> None:
        """What ``getpass`` does: echo off, a ``str`` line, encoded."""
        with open(tty, "r+b", buffering=0) as t:
            old = termios.tcgetattr(t.fileno())
            new = list(old)
            new[3] &= ~termios.ECHO
            termios.tcsetattr(t.fileno(), termios.TCSAFLUSH, new)
            try:
                t.write(PROMPT)
                line = t.readline().decode()
            finally:
                termios.tcsetattr(t.fileno(), termios.TCSAFLUSH, old)
                t.write(b"\n")
        self._keep("passphrase", line.rstrip("\n").encode())

    def do_plain_argon2(self) -> None:
        self._keep("argon2", _argon2(self.plain["passphrase"]))

    def do_plain_unwrap(self, size: str) -> None:
        raw = bytes(self._read_raw(int(size)))
        box = AESGCM(self.plain["key"])
        self._keep("unwrapped", box.decrypt(raw[:12], raw[12:], WRAP_AAD))

    def do_plain_drop(self) -> None:
        """What ``close()`` is to a secret: drop every reference, collect."""
        self.plain.clear()
        gc.collect()
        self.reply(ok=True)


def child_main() -> None:
    _probe.serve(_Worker())


class Worker(_probe.Probe):
    """A child running :func:`child_main` (this file's commands)."""

    def __init__(self, cwd: str | None = None) -> None:
        super().__init__(cwd, script=__file__)


# ---------------------------------------------------------------------------------------------
# The parent's side
# ---------------------------------------------------------------------------------------------


def _sbox() -> list[int]:
    """The AES S-box, computed (FIPS-197 5.1.1): the multiplicative inverse, then the affine map."""
    box = [0x63] * 256
    p = q = 1
    while True:
        p ^= ((p << 1) ^ (0x1B if p & 0x80 else 0)) & 0xFF  # p * 3
        q ^= q << 1
        q ^= q << 2
        q ^= q << 4
        q &= 0xFF
        if q & 0x80:
            q ^= 0x09  # q / 3
        rot = [((q << k) | (q >> (8 - k))) & 0xFF for k in range(1, 5)]
        box[p] = q ^ rot[0] ^ rot[1] ^ rot[2] ^ rot[3] ^ 0x63
        if p == 1:
            return box


_SBOX = _sbox()


def aes256_round_keys(key: bytes) -> list[bytes]:
    """The 15 round keys of AES-256 (FIPS-197 5.2); the first two are the key itself."""
    words = [list(key[i : i + 4]) for i in range(0, 32, 4)]
    rcon = 1
    for i in range(8, 60):
        t = list(words[i - 1])
        if i % 8 == 0:
            t = [_SBOX[b] for b in t[1:] + t[:1]]
            t[0] ^= rcon
            rcon = ((rcon << 1) ^ (0x1B if rcon & 0x80 else 0)) & 0xFF
        elif i % 8 == 4:
            t = [_SBOX[b] for b in t]
        words.append([a ^ b for a, b in zip(words[i - 8], t)])
    flat = bytes(b for w in words for b in w)
    return [flat[i : i + 16] for i in range(0, 240, 16)]


def test_aes256_round_keys_match_fips197() -> None:
    """The helper behind the round-key needles matches FIPS-197 appendix A.3."""
    rks = aes256_round_keys(bytes(range(32)))
    assert rks[0] + rks[1] == bytes(range(32))
    assert rks[2].hex() == "a573c29fa176c498a97fce93a572c09c"
    assert rks[14].hex() == "24fc79ccbf0979e9371ac23c6d68de36"


@contextlib.contextmanager
def typist(passphrase: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """A pseudo-terminal; a thread waits for the prompt on its master side, then types
    ``passphrase`` and Enter. Yields the slave's path and, once done, everything the terminal
    showed (prompt, echo if any, the final newline)."""
    master, slave = os.openpty()
    shown: list[bytes] = []
    done = threading.Event()
    open_fds = [master, slave]

    def read_available(timeout: float) -> bytes:
        ready, _, _ = select.select([master], [], [], timeout)
        return os.read(master, 4096) if ready else b""

    def run() -> None:
        screen = b""
        while PROMPT not in screen:
            chunk = read_available(30)
            if not chunk:  # no prompt: close the master so the reader fails instead of hanging
                open_fds.remove(master)
                os.close(master)
                shown.append(screen)
                return
            screen += chunk
        os.write(master, passphrase + b"\n")
        done.wait(30)
        while chunk := read_available(0.2):
            screen += chunk
        shown.append(screen)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield os.ttyname(slave), shown
    finally:
        done.set()
        thread.join(35)
        for fd in open_fds:
            os.close(fd)


@dataclass
class Needle:
    """A byte string the scans look for; ``own`` is the data range of the secret holding it."""

    name: str
    value: bytes
    own: tuple[int, int] | None = None


@dataclass
class Evidence:
    """Everything one run of the workload gave: answers, needles, scans, dumps."""

    impl: str
    counts: dict[str, int]
    answers: dict[str, dict[str, Any]]
    needles: list[Needle]
    typed: bytes
    shown: bytes
    expected: dict[str, bytes]
    live_open: _inspect.ScanResult
    live_closed: _inspect.ScanResult
    stats_closed: dict[str, Any]
    gcore: _inspect.ScanResult | None = None
    gcore_skip: str | None = None
    core: _inspect.ScanResult | None = None
    core_skip: str | None = None
    report: list[str] = field(default_factory=list)


def _value(answer: dict[str, Any]) -> bytes:
    raw = answer.get("bytes")
    return raw if isinstance(raw, bytes) else bytes.fromhex(answer["hex"])


def _hkdf(key: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, HKDF_SALT, info).derive(key)


def _needles(answers: dict[str, dict[str, Any]], key: bytes) -> list[Needle]:
    out: list[Needle] = []
    for name, answer in answers.items():
        value = _value(answer)
        own = (answer["data"], answer["data"] + answer["size"]) if "data" in answer else None
        out.append(Needle(name, value, own))
        for k in range(0, len(value), 16):  # a vector register holds 16 bytes
            if len(value[k : k + 16]) >= 12:
                out.append(Needle(f"{name}[{k}:{k + 16}]", value[k : k + 16], own))
    for i, rk in enumerate(aes256_round_keys(key)[2:], start=2):  # 0 and 1: the key's halves
        out.append(Needle(f"key round key {i}", rk))
    mac = crypto_hmac.HMAC(HKDF_SALT, hashes.SHA256())
    mac.update(key)
    out.append(Needle("HKDF PRK of the key", mac.finalize()))
    out.extend(Needle(f"derived op-{i} (closed)", _hkdf(key, _info(i))) for i in SAMPLED)
    return out


def _where(scan: _inspect.ScanResult, n: Needle, outside_own: bool) -> list[str]:
    return [
        f"{a:#x} {path or '[anon]'}"
        for a, path in scan.hits.get(n.value, [])
        if not (outside_own and n.own and n.own[0] <= a < n.own[1])
    ]


def _summary(label: str, scan: _inspect.ScanResult, needles: list[Needle]) -> str:
    found = {n.name: len(scan.hits.get(n.value, [])) for n in needles}
    hit = {k: v for k, v in found.items() if v}
    return f"{label}: {scan.bytes_read} bytes, {len(needles)} needles, hits {hit or 'none'}"


def run_workload(impl: str, plain: bool = False) -> Evidence:
    """Run the whole workload in a child, scan it, dump it; return the evidence."""
    passphrase = secrets.token_urlsafe(24).encode()
    key_file = os.urandom(KEY_SIZE)
    wrapped_key = os.urandom(KEY_SIZE)
    answers: dict[str, dict[str, Any]] = {}
    p = "plain_" if plain else ""
    with tempfile.TemporaryDirectory() as tmp, Worker(cwd=tmp) as w:
        path = os.path.join(tmp, "key.bin")
        with open(path, "wb") as f:
            f.write(key_file)
        answers["key"] = w.send("plain_key" if plain else f"make {impl} {KEY_SIZE}")
        key = _value(answers["key"])
        counts = w.send(f"plain_workload {OPS}" if plain else f"workload {impl} 0 {OPS}")["counts"]
        for j in range(KEPT):
            answers[f"kept-{j}"] = w.send(f"plain_derive {j}" if plain else f"derive {impl} 0 {j}")
        answers["file"] = w.send(f"plain_file {path}" if plain else f"file {impl} {path}")
        with typist(passphrase) as (tty, shown):
            answers["passphrase"] = w.send(f"{p}prompt {tty}" if plain else f"prompt {impl} {tty}")
        pw_id = answers["passphrase"].get("id")
        answers["argon2"] = w.send("plain_argon2" if plain else f"argon2 {impl} {pw_id}")
        nonce = os.urandom(12)
        blob = nonce + AESGCM(key).encrypt(nonce, wrapped_key, WRAP_AAD)
        line = f"plain_unwrap {len(blob)}" if plain else f"unwrap {impl} 0 {len(blob)}"
        answers["unwrapped"] = w.send(line, blob)
        os.remove(path)

        needles = _needles(answers, key)
        values = [n.value for n in needles]
        live_open = _inspect.scan_memory(w.pid, values)
        ev = Evidence(
            impl=impl,
            counts=counts,
            answers=answers,
            needles=needles,
            typed=passphrase,
            shown=b"".join(shown),
            expected={
                "key file": key_file,
                "passphrase": passphrase,
                "unwrapped": wrapped_key,
                **{f"kept-{j}": _hkdf(key, b"kept-%d" % j) for j in range(KEPT)},
                "argon2": _argon2(passphrase),
            },
            live_open=live_open,
            live_closed=live_open,  # replaced below
            stats_closed={},
        )
        ev.gcore_skip = _inspect.gcore_unavailable()
        if ev.gcore_skip is None:
            ev.gcore = _inspect.scan_file(_inspect.gcore(w.pid, tmp), values)
        answer = w.send("plain_drop" if plain else "closeall")
        ev.stats_closed = answer
        ev.live_closed = _inspect.scan_memory(w.pid, values)
        ev.core_skip = _inspect.kernel_core_unavailable()
        if ev.core_skip is None:
            with contextlib.suppress(_probe.ProbeDied):  # it dies of SIGABRT, as it should
                w.send("core")
            core = _inspect.find_core(tmp)
            assert core is not None, "the child aborted but left no core file"
            ev.core = _inspect.scan_file(core, values)
    label = "plain bytes (control)" if plain else impl
    ev.report.append(_summary(f"{label} live, open", ev.live_open, needles))
    if ev.gcore:
        ev.report.append(_summary(f"{label} gcore, open", ev.gcore, needles))
    ev.report.append(_summary(f"{label} live, closed", ev.live_closed, needles))
    if ev.core:
        ev.report.append(_summary(f"{label} kernel core, closed", ev.core, needles))
    print("\n".join(ev.report))
    return ev


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def evidence(request: pytest.FixtureRequest) -> Evidence:
    impl: str = request.param
    skip_unless_available(impl)
    return run_workload(impl)


@pytest.fixture(scope="module")
def control() -> Evidence:
    return run_workload("plain", plain=True)


# ---------------------------------------------------------------------------------------------
# The proofs
# ---------------------------------------------------------------------------------------------


def test_workload_ran_and_every_secret_arrived(evidence: Evidence) -> None:
    """10,000 operations of each kind ran; every secret's bytes (raw from the access view)
    are what the parent computes independently."""
    assert evidence.counts["aead"] + evidence.counts["hkdf"] + evidence.counts["hmac"] == OPS
    assert min(evidence.counts.values()) > 300
    got = {n.name: n.value for n in evidence.needles}
    assert got["file"] == evidence.expected["key file"]
    assert got["passphrase"] == evidence.expected["passphrase"]
    assert got["unwrapped"] == evidence.expected["unwrapped"]
    assert got["argon2"] == evidence.expected["argon2"]
    for j in range(KEPT):
        assert got[f"kept-{j}"] == evidence.expected[f"kept-{j}"]


def test_prompt_echo_was_off(evidence: Evidence) -> None:
    """The terminal showed the prompt and a newline, never the passphrase."""
    assert evidence.shown.startswith(PROMPT)
    assert evidence.typed not in evidence.shown
    assert evidence.shown == PROMPT + b"\r\n"


def test_open_secrets_only_in_their_own_pages(evidence: Evidence) -> None:
    """While every secret is open, the whole-memory scan finds each needle only inside the
    pages of the secret that holds it: no copy on the heap, the stack, in OpenSSL or anywhere.

    Control within the scan: protected and guarded secrets are found exactly once, in their own
    pages (the scan reads them); secretmem pages are unreadable to it, and listed as such."""
    scan = evidence.live_open
    leaks = {n.name: w for n in evidence.needles if (w := _where(scan, n, outside_own=True))}
    assert not leaks, f"copies outside the secrets' pages: {leaks}"
    for n in evidence.needles:
        if n.own is not None:
            inside = len(scan.hits[n.value])
            assert inside == (0 if evidence.impl == "secretmem" else 1), n.name
    if evidence.impl == "secretmem":
        for answer in evidence.answers.values():
            lo, hi = answer["inner"], answer["inner"] + answer["inner_len"]
            assert any(a <= lo and hi <= b for a, b, _ in scan.unreadable), answer


def test_gcore_of_open_secrets_has_no_copy(evidence: Evidence) -> None:
    """A gcore dump (memory and registers) with every secret open holds none of the needles:
    the secrets' pages are left out (MADV_DONTDUMP or secretmem) and no copy is elsewhere."""
    require(evidence.gcore_skip, "gcore dump")
    assert evidence.gcore is not None
    found = {n.name: w for n in evidence.needles if (w := _where(evidence.gcore, n, False))}
    assert not found, found


def test_nothing_left_after_close(evidence: Evidence) -> None:
    """After ``close()``: no needle anywhere in the child's memory, no secret live."""
    found = {n.name: w for n in evidence.needles if (w := _where(evidence.live_closed, n, False))}
    assert not found, found
    assert evidence.stats_closed["live_secrets"] == 0
    assert evidence.stats_closed["bytes_locked"] == 0


def test_kernel_core_after_close_has_no_copy(evidence: Evidence) -> None:
    """A real kernel core file (memory and registers) after close holds none of the needles."""
    require(evidence.core_skip, "kernel core file")
    assert evidence.core is not None
    found = {n.name: w for n in evidence.needles if (w := _where(evidence.core, n, False))}
    assert not found, found


# -- the control ------------------------------------------------------------------------------

SECRETS = ("key", "file", "passphrase", "argon2", "unwrapped", *(f"kept-{j}" for j in range(KEPT)))


def _counts(scan: _inspect.ScanResult | None, needles: list[Needle]) -> dict[str, int]:
    by_name = {n.name: n.value for n in needles}
    return {name: len(scan.hits[by_name[name]]) if scan else 0 for name in SECRETS}


def test_control_plain_bytes_are_found_everywhere(control: Evidence) -> None:
    """The same workload with ``bytes`` keys: the scan and the gcore dump find every key while
    in use; after ``del`` (and in the core dumped then) most are still there, because pymalloc
    does not zero freed memory (a block reused since is the only way one goes)."""
    in_use = _counts(control.live_open, control.needles)
    assert all(in_use.values()), in_use
    if control.gcore is not None:
        dumped = _counts(control.gcore, control.needles)
        assert all(dumped.values()), dumped
    dropped = [_counts(control.live_closed, control.needles)]
    if control.core is not None:
        dropped.append(_counts(control.core, control.needles))
    for counts in dropped:
        assert sum(1 for v in counts.values() if v) > len(SECRETS) // 2, counts


def test_control_key_schedule_left_in_registers(control: Evidence) -> None:
    """Without the register scrub, AES-GCM leaves round keys of the key in vector registers:
    the dumps' register notes (or the stack, where a signal or the lazy binder saves them)
    hold some. This is what the scrub in ``securememory.crypto`` is for."""
    dumps = [s for s in (control.gcore, control.core, control.live_closed) if s is not None]
    rounds = [n for n in control.needles if "round key" in n.name]
    hits = sum(len(s.hits[n.value]) for s in dumps for n in rounds)
    assert hits > 0


def test_control_echo_was_off(control: Evidence) -> None:
    """Both prompts turn echo off; the difference is only where the passphrase goes."""
    assert control.typed not in control.shown


if __name__ == "__main__":
    child_main()
