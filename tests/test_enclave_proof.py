"""Sealed enclaves, proved from outside the process (issue 11).

A child seals 10,000 enclaves (random, so no plaintext ever exists outside locked memory), opens
them 100,000 times, then the parent scans it: ``/proc/<pid>/mem``, a ``gcore`` dump and a kernel
core. The key is computed by the parent from its two halves (written by the core straight to a
pipe, and checked by decrypting a ciphertext with it). Neither a plaintext nor the key nor a
half of it is found anywhere outside the keyring; the core file holds the ciphertexts. Control: a
plaintext the child copies into ``bytes`` IS found. Then ``purge()``: every enclave refuses, every
secret is closed, the scans find nothing. And a child under ``catch_signals`` that gets SIGTERM is
scanned between its purge and its death, which is by SIGTERM.

Also the scale: a million 32-byte enclaves in a child without ``CAP_IPC_LOCK`` whose
``RLIMIT_MEMLOCK`` is 8 MiB, and the ``MemoryLockError`` of a memlock too small for the keyring.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import require
from test_heap_proof import aes256_round_keys

from securememory import _inspect, _probe, _region

try:
    import securememory.crypto  # noqa: F401

    CRYPTO = True
except ImportError:  # the crypto extra: the AEAD part of the workload is left out
    CRYPTO = False

N_SEALS = 10_000
N_OPENS = 100_000
SAMPLE = 64  # plaintexts searched for (every 10,000/SAMPLE-th enclave)

# ---------------------------------------------------------------------------------------------
# The child
# ---------------------------------------------------------------------------------------------


class _Worker(_probe._Child):
    """The probe child plus enclave commands. Plaintext leaves it only as raw writes from inside
    an open (never a Python object); the key's halves straight from the keyring to stdout."""

    def __init__(self) -> None:
        super().__init__()
        self.enclaves: list[Any] = []

    def do_seal(self, n: str) -> None:
        from securememory import Enclave, SecretFactory

        factory = SecretFactory()
        for i in range(int(n)):
            if i % 3 == 2:  # a third through a Secret, as Secret.seal() does
                with factory.create_random(32) as s:
                    self.enclaves.append(s.seal())
            else:
                self.enclaves.append(Enclave.random(32))
        self.reply(sealed=len(self.enclaves))

    def do_opens(self, n: str) -> None:
        es, total = self.enclaves, 0
        for i in range(int(n)):
            with es[i % len(es)].open() as v:
                total += v[0]
        self.reply(opens=int(n))

    def do_sample(self, step: str) -> None:
        """Raw: each sampled enclave's plaintext (from inside its open) then its sealed blob."""
        picked = self.enclaves[:: int(step)]
        os.write(1, b"RAW %d\n" % (len(picked) * (32 + 72)))
        for e in picked:
            with e.open() as v:
                os.write(1, v)
            os.write(1, e._sealed)
        self.reply(n=len(picked))

    def do_key(self) -> None:
        os.write(1, b"RAW 64\n")
        _region.enclave_reveal(1)
        from securememory._enclave import enclave_stats

        st = enclave_stats()
        self.reply(start=st.keyring_address, length=st.locked_bytes, secretmem=st.secretmem)

    def do_aead(self, n: str) -> None:
        """``n`` AES-256-GCM round trips with a data key sealed in an enclave (crypto.AEAD
        opens it per call); then the key, raw from inside an open."""
        from securememory import Enclave
        from securememory.crypto import AEAD

        dk = Enclave.random(32)
        self.enclaves.append(dk)
        box = AEAD(dk, "aes-256-gcm")
        for i in range(int(n)):
            nonce, data = os.urandom(12), os.urandom(64 + i % 960)
            assert box.decrypt(nonce, box.encrypt(nonce, data, b"ad"), b"ad") == data
        with dk.open() as v:
            os.write(1, b"RAW 32\n")
            os.write(1, v)
        self.reply(rounds=int(n))

    def do_plain_copy(self, index: str) -> None:
        """The control: a plaintext copied into an ordinary bytes object, kept alive."""
        with self.enclaves[int(index)].open() as v:
            self.controls.append(bytearray(bytes(v)))
        self.reply(ok=True)

    def do_purge(self) -> None:
        from securememory import SecureMemoryError, purge, stats

        closed = purge()
        refused = 0
        for e in self.enclaves:
            try:
                with e.open():
                    pass
            except SecureMemoryError:
                refused += 1
        open_secrets = [k for k, s in self.secrets.items() if not s.closed]
        self.reply(
            total=len(self.enclaves),
            closed=closed,
            refused=refused,
            open_secrets=open_secrets,
            live=stats().live_secrets,
        )

    def do_catch(self) -> None:
        """Install catch_signals(SIGTERM); the hook reports, then waits for the parent's scan."""
        from securememory import catch_signals, stats

        def hook(signum: int) -> None:
            self.reply(purged=signum, live=stats().live_secrets)
            os.read(0, 1)  # the parent scans now, then lets it die

        catch_signals(signal.SIGTERM, after_purge=hook)
        self.reply(ok=True)

    def do_wait(self) -> None:
        self.reply(waiting=True)
        while True:
            signal.pause()


def child_main() -> None:
    _probe.serve(_Worker())


class Worker(_probe.Probe):
    """A child running :func:`child_main` (this file's commands)."""

    def __init__(self, cwd: str | None = None, env: dict[str, str] | None = None) -> None:
        super().__init__(cwd, script=__file__, env=env)


# ---------------------------------------------------------------------------------------------
# The parent's side
# ---------------------------------------------------------------------------------------------


def _key_from_halves(halves: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    from nacl.bindings import crypto_generichash_blake2b_salt_personal as blake2b

    left, right = halves[:32], halves[32:]
    h = blake2b(left, digest_size=32, person=b"securememory-key")
    key = bytes(a ^ b for a, b in zip(h, right))
    return key, left, right, h


@dataclass
class Evidence:
    key: bytes = b""
    keyring: tuple[int, int] = (0, 0)
    secretmem: bool = False
    plaintexts: list[bytes] = field(default_factory=list)
    sealed: list[bytes] = field(default_factory=list)
    needles: dict[str, bytes] = field(default_factory=dict)
    live: _inspect.ScanResult | None = None
    gcore: _inspect.ScanResult | None = None
    gcore_skip: str | None = None
    control_live: _inspect.ScanResult | None = None
    purge: dict[str, Any] = field(default_factory=dict)
    purged_live: _inspect.ScanResult | None = None
    purged_gcore: _inspect.ScanResult | None = None
    core: _inspect.ScanResult | None = None
    core_skip: str | None = None


def _outside(scan: _inspect.ScanResult, needle: bytes, keyring: tuple[int, int]) -> list[int]:
    return scan.found(needle, outside=keyring)


@pytest.fixture(scope="module")
def evidence() -> Evidence:
    pytest.importorskip("nacl", reason="sealed enclaves need PyNaCl")
    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt as xdecrypt

    ev = Evidence()
    with tempfile.TemporaryDirectory() as tmp, Worker(cwd=tmp) as w:
        assert w.send(f"seal {N_SEALS}")["sealed"] == N_SEALS
        assert w.send(f"opens {N_OPENS}")["opens"] == N_OPENS
        sample = w.send(f"sample {N_SEALS // SAMPLE}")
        raw = sample["bytes"]
        for i in range(sample["n"]):
            chunk = raw[i * 104 : (i + 1) * 104]
            ev.plaintexts.append(chunk[:32])
            ev.sealed.append(chunk[32:])
        aead_key = None
        if CRYPTO:
            aead_key = w.send("aead 3000")["bytes"]
        answer = w.send("key")
        ev.key, left, right, h = _key_from_halves(answer["bytes"])
        ev.keyring = (answer["start"], answer["start"] + answer["length"])
        ev.secretmem = answer["secretmem"]
        # the key computed from the halves really is the key: it opens a ciphertext
        blob = ev.sealed[0]
        assert xdecrypt(blob[24:], None, blob[:24], ev.key) == ev.plaintexts[0]
        ev.needles = {
            **{f"plaintext-{i}": p for i, p in enumerate(ev.plaintexts)},
            "key": ev.key,
            "key L": left,
            "key R": right,
            "BLAKE2b(L)": h,
            "key half 1": ev.key[:16],
            "key half 2": ev.key[16:],
        }
        if aead_key is not None:  # the AES key and its schedule (registers, stack, heap)
            for i, rk in enumerate(aes256_round_keys(aead_key)):
                ev.needles[f"AEAD data key round key {i}"] = rk
            ev.needles["AEAD data key"] = aead_key
        values = list(ev.needles.values())
        ev.live = _inspect.scan_memory(w.pid, values + ev.sealed[:8])
        ev.gcore_skip = _inspect.gcore_unavailable()
        if ev.gcore_skip is None:
            ev.gcore = _inspect.scan_file(_inspect.gcore(w.pid, tmp), values + ev.sealed[:8])
            os.remove(os.path.join(tmp, f"gcore.{w.pid}"))
        w.send("plain_copy 0")
        ev.control_live = _inspect.scan_memory(w.pid, [ev.plaintexts[0]])
        w.send(
            "make secretmem 32" if _region.secretmem_unavailable() is None else "make guarded 32"
        )
        ev.purge = w.send("purge")
        purged_values = [v for k, v in ev.needles.items() if k != "plaintext-0"]
        ev.purged_live = _inspect.scan_memory(w.pid, purged_values + ev.sealed[:8])
        if ev.gcore_skip is None:
            ev.purged_gcore = _inspect.scan_file(_inspect.gcore(w.pid, tmp), purged_values)
            os.remove(os.path.join(tmp, f"gcore.{w.pid}"))
        ev.core_skip = _inspect.kernel_core_unavailable()
        if ev.core_skip is None:
            with contextlib.suppress(_probe.ProbeDied):
                w.send("core")
            core = _inspect.find_core(tmp)
            assert core is not None, "the child aborted but left no core file"
            ev.core = _inspect.scan_file(core, purged_values + ev.sealed)
    return ev


def _found(scan: _inspect.ScanResult, ev: Evidence, names: list[str]) -> dict[str, list[int]]:
    return {n: w for n in names if (w := _outside(scan, ev.needles[n], ev.keyring))}


def test_live_scan_finds_no_plaintext_and_no_key(evidence: Evidence) -> None:
    """``/proc/<pid>/mem`` after 10,000 seals and 100,000 opens: nothing outside the keyring
    (whose memfd_secret pages the kernel refuses to read at all), the ciphertexts present."""
    assert evidence.live is not None
    assert not _found(evidence.live, evidence, list(evidence.needles))
    assert all(evidence.live.found(s) for s in evidence.sealed[:8]), "the ciphertexts are there"
    if evidence.secretmem:
        lo = evidence.keyring[0]
        assert any(a <= lo < b for a, b, _ in evidence.live.unreadable), "keyring unreadable"


def test_gcore_finds_no_plaintext_and_no_key(evidence: Evidence) -> None:
    require(evidence.gcore_skip, "gcore")
    assert evidence.gcore is not None
    found = {n: w for n, v in evidence.needles.items() if (w := evidence.gcore.found(v))}
    assert not found, found
    assert all(evidence.gcore.found(s) for s in evidence.sealed[:8]), "the dump has ciphertexts"


def test_control_a_plain_copy_is_found(evidence: Evidence) -> None:
    """The scan can fail: a plaintext copied into a bytes object is found in the heap."""
    assert evidence.control_live is not None
    assert evidence.control_live.found(evidence.plaintexts[0])


def test_purge_refuses_every_enclave_and_closes_every_secret(evidence: Evidence) -> None:
    p = evidence.purge
    assert p["refused"] == p["total"] >= N_SEALS
    assert p["closed"] >= 1 and p["open_secrets"] == [] and p["live"] == 0


def test_after_purge_scans_find_nothing(evidence: Evidence) -> None:
    assert evidence.purged_live is not None
    names = [n for n in evidence.needles if n != "plaintext-0"]  # 0 is the control's copy
    found = {n: w for n in names if (w := evidence.purged_live.found(evidence.needles[n]))}
    assert not found, found
    if evidence.purged_gcore is not None:
        found = {n: w for n in names if (w := evidence.purged_gcore.found(evidence.needles[n]))}
        assert not found, found


def test_kernel_core_has_ciphertexts_not_plaintext_or_key(evidence: Evidence) -> None:
    require(evidence.core_skip, "kernel core file")
    assert evidence.core is not None
    names = [n for n in evidence.needles if n != "plaintext-0"]
    found = {n: w for n in names if (w := evidence.core.found(evidence.needles[n]))}
    assert not found, found
    held = sum(1 for s in evidence.sealed if evidence.core.found(s))
    assert held == len(evidence.sealed), f"{held} of {len(evidence.sealed)} ciphertexts in core"


def test_sigterm_under_catch_signals_purges_then_dies_by_sigterm() -> None:
    pytest.importorskip("nacl", reason="sealed enclaves need PyNaCl")
    with Worker() as w:
        w.send("seal 300")
        w.send("make guarded 32")
        sample = w.send("sample 10")
        plain = [sample["bytes"][i * 104 : i * 104 + 32] for i in range(sample["n"])]
        key, *_ = _key_from_halves(w.send("key")["bytes"])
        before = _inspect.scan_memory(w.pid, [*plain, key])
        assert w.send("catch")["ok"]
        stdin, stdout = w._pipes()
        stdin.write(b"wait\n")
        stdin.flush()
        assert json.loads(stdout.readline())["waiting"]
        os.kill(w.pid, signal.SIGTERM)
        report = json.loads(stdout.readline())
        assert report == {"purged": signal.SIGTERM, "live": 0}
        after = _inspect.scan_memory(w.pid, [*plain, key])  # between the purge and the death
        found = {p.hex(): a for p in [*plain, key] if (a := after.found(p))}
        stdin.write(b"x")
        stdin.flush()
        assert w.wait() == -signal.SIGTERM
    assert not found, found
    # control: before the signal the scan could read the process (the key halves' pages aside)
    assert before.bytes_read > 0 and after.bytes_read > 0


def test_control_a_readable_keyring_shows_the_halves_only_inside_it() -> None:
    """The key scan can find what it looks for: with the keyring in ordinary locked pages
    (SECUREMEMORY_ENCLAVE_KEYRING=anonymous), the same scan finds L and R, inside the keyring
    and nowhere else; the key itself (never stored whole) is found nowhere."""
    pytest.importorskip("nacl", reason="sealed enclaves need PyNaCl")
    with Worker(env={"SECUREMEMORY_ENCLAVE_KEYRING": "anonymous"}) as w:
        w.send("seal 300")
        w.send("opens 3000")
        answer = w.send("key")
        key, left, right, _ = _key_from_halves(answer["bytes"])
        ring = (answer["start"], answer["start"] + answer["length"])
        scan = _inspect.scan_memory(w.pid, [key, left, right])
    assert not answer["secretmem"]
    assert scan.found(left) and scan.found(right), "the halves are readable here"
    assert not scan.found(left, outside=ring) and not scan.found(right, outside=ring)
    assert not scan.found(key), "the key is never stored whole"


# -- scale -------------------------------------------------------------------------------------

SCALE = """
    import json, resource
    from securememory import Enclave
    from securememory._enclave import enclave_stats
    from securememory import _inspect

    def snap():
        return dict(vmlck=_inspect.status_field("self", "VmLck"),
                    rss=_inspect.status_field("self", "VmRSS"),
                    maps=len(_inspect.maps()))

    first = Enclave.random(32)  # the keyring exists from here on
    base = snap()
    es = [Enclave.random(32) for _ in range({n})]
    top = snap()
    with es[-1].open() as v:
        ok = len(v) == 32
    st = enclave_stats()
    print(json.dumps(dict(base=base, top=top, n=len(es), ok=ok, keyring=st.locked_bytes,
                          memlock=resource.getrlimit(resource.RLIMIT_MEMLOCK)[0])))
"""


def _unprivileged_child(code: str, memlock: int) -> subprocess.CompletedProcess[str]:
    require(_probe.unprivileged_unavailable(), "a child without CAP_IPC_LOCK")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        preexec_fn=lambda: _probe._unprivileged(memlock),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_million_enclaves_in_8_mib_memlock() -> None:
    """1,000,000 live 32-byte enclaves in a child without CAP_IPC_LOCK, RLIMIT_MEMLOCK 8 MiB:
    VmLck <= 64 KiB and unchanged from the first enclave on, no mapping per enclave, <= 256
    bytes of RSS each."""
    pytest.importorskip("nacl", reason="sealed enclaves need PyNaCl")
    n = 1_000_000
    out = _unprivileged_child(SCALE.format(n=n), 8 << 20)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    print(r)
    assert r["n"] == n and r["ok"] and r["memlock"] == 8 << 20
    assert r["top"]["vmlck"] <= 64 * 1024
    assert r["keyring"] <= 64 * 1024
    # No mapping per enclave (a Secret costs 2-3): the few new ones are the Python heap's own
    # arenas for 1,000,000 small objects, not the library's; its keyring is mapped once.
    assert r["top"]["maps"] - r["base"]["maps"] <= 64
    assert r["top"]["vmlck"] == r["base"]["vmlck"], "nothing more locked for a million"
    per = (r["top"]["rss"] - r["base"]["rss"]) / n
    assert per <= 256, f"{per:.0f} bytes of RSS per enclave"


def test_a_container_memlock_of_64_kib_holds_them_too() -> None:
    """64 KiB of memlock (a Secret each: 16 keys) holds 100,000 enclaves, opens included."""
    pytest.importorskip("nacl", reason="sealed enclaves need PyNaCl")
    out = _unprivileged_child(SCALE.format(n=100_000), 64 * 1024)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert r["n"] == 100_000 and r["ok"] and r["memlock"] == 64 * 1024
    assert r["top"]["vmlck"] == r["base"]["vmlck"] <= 64 * 1024


def test_memlock_too_small_for_the_keyring_names_the_need() -> None:
    pytest.importorskip("nacl", reason="sealed enclaves need PyNaCl")
    code = """
        from securememory import Enclave, MemoryLockError
        try:
            Enclave.random(32)
        except MemoryLockError as e:
            print("MemoryLockError:", e)
    """
    out = _unprivileged_child(code, 8192)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("MemoryLockError:"), out.stdout
    assert "20480 bytes" in out.stdout and "RLIMIT_MEMLOCK" in out.stdout


if __name__ == "__main__":
    child_main()
