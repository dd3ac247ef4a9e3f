"""Sealed enclaves (issue 11): the contract, bad input, threads and nested opens, fork.

The scale child and the memory scans are in test_enclave_scale.py and test_enclave_proof.py.
"""

from __future__ import annotations

import copy
import ctypes
import errno
import hashlib
import os
import pickle
import signal
import threading
import weakref

import pytest
from conftest import Syscalls

pytest.importorskip("nacl", reason="sealed enclaves need PyNaCl (the 'enclave' extra)")

import securememory
from securememory import (
    Enclave,
    MemoryLockError,
    SecretClosedError,
    SecretFactory,
    SecureMemoryError,
    _region,
)
from securememory._enclave import enclave_stats, reveal_key_halves


def test_seal_open_roundtrip_and_source_wiped() -> None:
    src = bytearray(b"attack at dawn")
    e = Enclave.seal(src)
    assert src == bytearray(len(src)), "a writable source is wiped"
    assert e.size == len(e) == 14
    with e.open() as view:
        assert isinstance(view, memoryview) and view.readonly
        assert bytes(view) == b"attack at dawn"
    with pytest.raises(ValueError):  # released at the end of the block
        view[0]
    # bytes stays as it is (it cannot be wiped), and is sealed all the same
    with Enclave.seal(b"xyz").open() as v:
        assert bytes(v) == b"xyz"


def test_ciphertext_is_not_the_plaintext_and_differs_each_seal() -> None:
    a, b = Enclave.seal(b"same data here!!"), Enclave.seal(b"same data here!!")
    assert b"same data here" not in a._sealed
    assert len(a._sealed) == 16 + 24 + 16
    assert a._sealed != b._sealed  # a random nonce each time


def test_random_secret_seal_and_open_secret() -> None:
    e = Enclave.random(32)
    with e.open() as v:
        first = bytes(v)
    assert len(first) == 32 and first != bytes(32)
    with e.open_secret() as s:
        assert isinstance(s, securememory.Secret)
        assert s.with_bytes(bytes) == first
        e2 = s.seal()
        assert not s.closed, "the secret stays open"
    with e2.open() as v:
        assert bytes(v) == first
    f = SecretFactory()
    with e.open_secret(f) as s2:
        assert s2.implementation == f.implementation
        assert s2.with_bytes(bytes) == first
    with pytest.raises(TypeError):
        e.open_secret(object())  # type: ignore[arg-type]


def test_big_enclave_uses_a_dedicated_region() -> None:
    data = os.urandom(100_000)
    e = Enclave.seal(data)
    before = securememory.stats().mappings
    with e.open() as v:
        assert bytes(v) == data
        during = securememory.stats().mappings
    assert during is not None and before is not None and during > before
    assert securememory.stats().mappings == before, "the dedicated mapping is unmapped"


def test_close_is_idempotent_and_context_manager() -> None:
    with Enclave.seal(b"k" * 32) as e:
        assert not e.closed
    assert e.closed
    e.close()
    with pytest.raises(SecretClosedError), e.open():
        pass
    with pytest.raises(SecretClosedError):
        e.open_secret()


def test_repr_pickle_copy() -> None:
    e = Enclave.seal(b"supersecretvalue")
    assert "supersecret" not in repr(e) and "16 bytes" in repr(e)
    assert "supersecret" not in str(e)
    for attempt in (lambda: pickle.dumps(e), lambda: copy.copy(e), lambda: copy.deepcopy(e)):
        with pytest.raises(TypeError):
            attempt()
    with pytest.raises(TypeError):
        Enclave()


@pytest.mark.parametrize(
    "bad,exc",
    [("text", TypeError), (b"", ValueError), (12, TypeError), (None, TypeError)],
)
def test_bad_input_seal(bad: object, exc: type[Exception]) -> None:
    before = enclave_stats()
    with pytest.raises(exc):
        Enclave.seal(bad)
    after = enclave_stats()
    assert (after.slots_busy, after.slots_retired) == (before.slots_busy, before.slots_retired)


@pytest.mark.parametrize(
    "bad,exc",
    [
        (0, ValueError),
        (-1, ValueError),
        ("32", TypeError),
        (True, TypeError),
        ((1 << 30) + 1, ValueError),
    ],
)
def test_bad_input_random(bad: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        Enclave.random(bad)  # type: ignore[arg-type]


def test_open_context_cannot_be_entered_twice() -> None:
    e = Enclave.seal(b"abc")
    ctx = e.open()
    with ctx, pytest.raises(RuntimeError), ctx:
        pass
    with pytest.raises(RuntimeError), ctx:
        pass


def test_slot_wiped_on_exception_and_freed() -> None:
    e = Enclave.seal(b"secret")
    with pytest.raises(KeyError), e.open():
        raise KeyError("boom")
    st = enclave_stats()
    assert st.slots_busy == 0 and st.slots_retired == 0


def test_kept_slice_reads_zeros_not_plaintext() -> None:
    a = Enclave.seal(b"AAAAAAAAAAAAAAAA")
    b = Enclave.seal(b"BBBBBBBBBBBBBBBB")
    with a.open() as v:
        kept = v[2:]
    assert bytes(kept) == bytes(14), "the slot was wiped"
    assert enclave_stats().slots_retired == 1
    with b.open() as w:  # the retired slot is not reused while `kept` lives
        assert bytes(w) == b"B" * 16
        assert bytes(kept) == bytes(14)
    del kept
    assert enclave_stats().slots_retired == 0
    # control: inside the block a slice does read the plaintext
    with a.open() as v:
        assert bytes(v[2:4]) == b"AA"


def test_tampered_ciphertext_is_refused() -> None:
    e = Enclave.seal(b"0123456789abcdef")
    raw = bytearray(e._sealed)
    # flip one ciphertext bit through the object's own buffer: find it by id (CPython layout)
    import ctypes

    addr = id(e)
    blob = ctypes.string_at(addr, 200)
    off = blob.find(bytes(raw))
    assert off > 0
    ctypes.memset(addr + off + 30, raw[30] ^ 1, 1)
    with pytest.raises(SecureMemoryError, match="does not authenticate"), e.open():
        pass
    assert enclave_stats().slots_busy == 0


def test_nested_and_many_opens_beyond_the_pool() -> None:
    es = [Enclave.seal(bytes([i]) * 32) for i in range(40)]
    import contextlib

    with contextlib.ExitStack() as stack:
        views = [stack.enter_context(e.open()) for e in es]  # 40 > 32 slots: some dedicated
        assert [bytes(v) for v in views] == [bytes([i]) * 32 for i in range(40)]
        assert enclave_stats().slots_busy == 32
    st = enclave_stats()
    assert st.slots_busy == 0 and st.slots_retired == 0


def test_threads_open_concurrently() -> None:
    es = [Enclave.seal(os.urandom(48)) for _ in range(8)]
    plain = []
    for e in es:
        with e.open() as v:
            plain.append(bytes(v))
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(2000):
                j = (i + k) % len(es)
                with es[j].open() as v, es[(j + 1) % len(es)].open() as w:
                    assert bytes(v) == plain[j]
                    assert bytes(w) == plain[(j + 1) % len(es)]
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert enclave_stats().slots_busy == 0


def _halves() -> tuple[bytes, bytes, bytes]:
    """(L, R, K) read through a pipe straight from the keyring (the live proofs' hook)."""
    r, w = os.pipe()
    try:
        reveal_key_halves(w)
        raw = os.read(r, 64)
    finally:
        os.close(r)
        os.close(w)
    left, right = raw[:32], raw[32:]
    h = hashlib.blake2b(left, digest_size=32, person=b"securememory-key").digest()
    return left, right, bytes(a ^ b for a, b in zip(h, right))


def test_rekey_keeps_enclaves_and_changes_the_halves() -> None:
    e = Enclave.seal(b"still here")
    st = enclave_stats()
    assert st.locked_bytes > 0 and st.has_key
    l1, r1, k1 = _halves()
    Enclave.rekey()
    l2, r2, k2 = _halves()
    assert l1 != l2 and r1 != r2, "both halves are new"
    assert k1 == k2, "the key they make is the same"
    assert k1 not in (l1, r1) and len(k1) == 32
    with e.open() as v:
        assert bytes(v) == b"still here"


def test_failed_open_secret_leaves_no_secret_behind() -> None:
    e = Enclave.seal(b"k" * 32)
    e.close()
    before = securememory.stats()
    with pytest.raises(SecretClosedError):
        e.open_secret()
    after = securememory.stats()
    assert (after.live_secrets, after.bytes_locked) == (before.live_secrets, before.bytes_locked)


def _child(fn: object) -> tuple[int, bytes]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(r)
        code = 0
        try:
            out = fn()  # type: ignore[operator]
            os.write(w, out)
        except BaseException as exc:
            os.write(w, repr(exc).encode())
            code = 1
        os._exit(code)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return status, data


def test_fork_child_is_refused_and_parent_intact() -> None:
    e = Enclave.seal(b"parent secret")
    before = enclave_stats()

    def in_child() -> bytes:
        try:
            with e.open():
                return b"OPENED"
        except SecureMemoryError as exc:
            msg = str(exc)
        # the child can seal and open its own
        mine = Enclave.seal(b"child's own")
        with mine.open() as v:
            ok = bytes(v) == b"child's own"
        try:
            with e.open():
                return b"OPENED-after"
        except SecureMemoryError:
            pass
        return f"{ok}|{msg}".encode()

    status, out = _child(in_child)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
    ok, msg = out.decode().split("|", 1)
    assert ok == "True"
    assert "forked" in msg
    with e.open() as v:
        assert bytes(v) == b"parent secret"
    after = enclave_stats()
    assert after.keyring_address == before.keyring_address and after.has_key


def test_fork_inside_an_open_leaves_parent_intact() -> None:
    e = Enclave.seal(b"inside")
    with e.open() as v:
        status, out = _child(lambda: b"ok")
        assert bytes(v) == b"inside"
    assert os.WIFEXITED(status) and out == b"ok"
    assert enclave_stats().slots_busy == 0


def test_enclave_keyring_is_locked_and_out_of_dumps() -> None:
    Enclave.seal(b"x")
    st = enclave_stats()
    start = st.keyring_address
    with open("/proc/self/smaps") as f:
        text = f.read()
    found = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        head = line.split()[0] if line else ""
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(x, 16) for x in head.split("-"))
            if lo <= start < hi:
                j = i + 1
                fields = {}
                while j < len(lines) and ":" in lines[j].split()[0]:
                    k, _, rest = lines[j].partition(":")
                    fields[k] = rest.strip()
                    j += 1
                found = fields
                break
    assert found is not None
    flags = found["VmFlags"].split()
    assert "dd" in flags, flags  # MADV_DONTDUMP
    assert "lo" in flags or st.secretmem, flags  # locked (secretmem pages are locked too)
    assert "dc" in flags, flags  # MADV_DONTFORK


def test_signal_default_untouched_without_catch_signals() -> None:
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_crypto_accepts_an_enclave_as_key() -> None:
    crypto = pytest.importorskip("securememory.crypto", reason="needs the crypto extra")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import hmac as chmac
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    raw = os.urandom(32)
    e = Enclave.seal(raw)
    nonce = os.urandom(12)
    box = crypto.AEAD(e)
    ct = box.encrypt(nonce, b"record", b"hdr")
    assert AESGCM(raw).decrypt(nonce, ct, b"hdr") == b"record"
    assert box.decrypt(nonce, ct, b"hdr") == b"record"
    with box.decrypt_to_secret(nonce, box.encrypt(nonce, raw, None), None) as s:
        assert s.with_bytes(bytes) == raw
    inner = Enclave.seal(b"k" * 32)
    assert AESGCM(raw).decrypt(nonce, box.encrypt_secret(nonce, inner), None) == b"k" * 32
    mac = chmac.HMAC(raw, hashes.SHA256())
    mac.update(b"data")
    assert crypto.hmac(e, b"data") == mac.finalize()
    want = HKDF(hashes.SHA256(), 32, b"salt", b"info").derive(raw)
    with crypto.hkdf(e, 32, b"salt", b"info") as derived:
        assert derived.with_bytes(bytes) == want
    with pytest.raises(TypeError):
        crypto.AEAD(raw)
    assert enclave_stats().slots_busy == 0


def test_purge_in_a_child_refuses_old_enclaves_and_closes_secrets() -> None:
    """purge() in a forked child (it would close this test process's secrets): every enclave
    sealed before refuses, every secret is closed, new enclaves work with a new key."""

    def in_child() -> bytes:
        from securememory import purge

        old = [Enclave.random(32) for _ in range(50)]
        secret = SecretFactory().create_random(32)
        with old[0].open() as running:
            assert running.nbytes == 32
            n = purge()
            assert bytes(running) == bytes(32), "an open running at the purge reads zeros"
        refused = 0
        for e in old:
            try:
                with e.open():
                    pass
            except SecureMemoryError as exc:
                refused += "purge" in str(exc)
        new = Enclave.seal(b"after the purge")
        with new.open() as v:
            ok = bytes(v) == b"after the purge"
        return f"{n}|{refused}|{secret.closed}|{ok}".encode()

    status, out = _child(in_child)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
    n, refused, closed, ok = out.decode().split("|")
    assert int(n) >= 1 and refused == "50" and closed == "True" and ok == "True"


def test_catch_signals_purges_then_dies_by_the_signal() -> None:
    """In a forked child: SIGUSR1 under catch_signals purges (the hook sees the secret closed
    and the enclave refused), then the child dies by SIGUSR1, not by an exit."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(r)
        try:
            from securememory import catch_signals

            e = Enclave.random(32)
            s = SecretFactory().create_random(32)

            def hook(signum: int) -> None:
                try:
                    with e.open():
                        refused = False
                except SecureMemoryError:
                    refused = True
                os.write(w, f"{signum}|{s.closed}|{refused}".encode())

            catch_signals(signal.SIGUSR1, after_purge=hook)
            os.kill(os.getpid(), signal.SIGUSR1)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
        finally:
            os._exit(3)  # reached only if the signal did not end the process
    os.close(w)
    got = os.read(r, 100).decode()
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert got == f"{int(signal.SIGUSR1)}|True|True"
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGUSR1


@pytest.mark.parametrize(
    "op,err",
    [
        ("mlock", errno.EAGAIN),
        ("madvise", errno.EINVAL),
        ("mmap", errno.ENOMEM),
        ("mprotect", errno.ENOMEM),
    ],
)
def test_failed_dedicated_mapping_is_a_typed_error_and_leaves_nothing(
    syscalls: Syscalls, op: str, err: int
) -> None:
    """A big enclave's open whose dedicated mapping fails: the typed error, no mapping or lock
    left, the pool untouched; the next open works. (Injected at the core's system-call hook.)"""
    e = Enclave.seal(os.urandom(10_000))
    securememory.stats()  # warm up
    before = securememory.stats()
    syscalls.fail(op, err)
    with pytest.raises(SecureMemoryError) as info, e.open():
        pass
    syscalls.stop()
    if op == "mlock":
        assert isinstance(info.value, MemoryLockError) and "RLIMIT_MEMLOCK" in str(info.value)
    after = securememory.stats()
    assert after.mappings == before.mappings and after.process_locked == before.process_locked
    st = enclave_stats()
    assert st.slots_busy == 0 and st.slots_retired == 0
    with e.open() as v:
        assert len(v) == 10_000


def test_no_system_call_per_open_of_a_small_enclave(syscalls: Syscalls) -> None:
    """An open of a small enclave makes no system call at all (the pool is never mprotect'ed),
    and the trace of a big one shows its mapping locked before use and unmapped at the end."""
    small, big = Enclave.seal(b"s" * 32), Enclave.seal(b"b" * 9000)
    with small.open():
        pass
    calls = syscalls.record()
    with small.open() as v:
        assert v[0] == ord("s")
    assert calls == [], calls
    with big.open() as v:
        assert v[0] == ord("b")
    names = [c[0] for c in calls]
    assert names[0] == "mmap" and "mlock" in names and names[-1] == "munmap", names


def test_abandoned_open_is_ended_by_the_garbage_collector() -> None:
    """An open whose block never ends (its view dropped, ``__exit__`` never called) is a cycle
    (the view is a buffer of the opening, which keeps the view): the garbage collector ends it,
    so its slot is wiped and free again. Before: the slot stayed busy, holding the plaintext."""
    import gc

    e = Enclave.seal(bytearray(b"abandoned plaintext"))
    busy = enclave_stats().slots_busy
    o = e.open()
    v = o.__enter__()
    assert bytes(v) == b"abandoned plaintext"
    assert enclave_stats().slots_busy == busy + 1
    del v, o
    gc.collect()
    assert enclave_stats().slots_busy == busy
    e.close()


def test_seal_while_the_collector_purges_uses_the_live_key() -> None:
    """Sealing allocates the enclave before it takes the key: a finalizer that purges during that
    allocation (the collector runs there) cannot make it seal under the zeroed key. In a child
    (purge closes every secret of the process): each enclave sealed so opens, and the purge
    really ran (the control). Before: it was sealed under the purged, all-zero key halves."""
    import gc

    def in_child() -> bytes:
        purges = []

        class Purger:
            def __init__(self) -> None:
                self.me = self  # a cycle: freed by the collector, which runs __del__

            def __del__(self) -> None:
                purges.append(securememory.purge())

        old = gc.get_threshold()
        bad = 0
        for _ in range(50):
            Purger()
            gc.set_threshold(1)
            e = Enclave.seal(bytearray(b"TOP SECRET VALUE"))
            r = Enclave.random(32)
            gc.set_threshold(*old)
            with e.open() as view:
                bad += bytes(view) != b"TOP SECRET VALUE"
            with r.open() as view:
                bad += bytes(view) == bytes(32)
        return f"{bad}|{len(purges)}".encode()

    status, out = _child(in_child)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
    bad, purges = map(int, out.decode().split("|"))
    assert purges > 0, "control: the finalizer purged during the seals"
    assert bad == 0


def test_purge_while_a_secret_is_being_made_or_accessed() -> None:
    """purge() from inside a fill (a stream's readinto) and from inside an access, in a child:
    the fill ends with SecretClosedError instead of a fault (its pages are wiped and freed then);
    the access reads zeros, and when it ends the purged secret's mapping and file are gone.
    Before: the fill died of SIGSEGV, and the accessed secret stayed mapped, locked and open."""

    def in_child() -> bytes:
        from securememory import _inspect

        factory = SecretFactory()

        class Stream:
            calls = 0

            def readinto(self, b: memoryview) -> int:
                self.calls += 1
                if self.calls == 2:
                    securememory.purge()
                b[:1] = b"k"
                return 1

        try:
            factory.from_stream(Stream(), 4)
            fill = "made"
        except SecretClosedError:
            fill = "refused"
        s = factory.new(bytearray(b"accessed while purged"), inheritable=True)
        base, fd = s._base, s._fd
        with s.access() as view:
            securememory.purge()
            zeros = bytes(view) == bytes(len(view))
        mapped = any(m.start == base for m in _inspect.maps())
        fd_open = fd >= 0 and os.path.exists(f"/proc/self/fd/{fd}")
        stats = securememory.stats()
        return f"{fill}|{zeros}|{mapped}|{fd_open}|{stats.bytes_locked}".encode()

    status, out = _child(in_child)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, out)
    fill, zeros, mapped, fd_open, locked = out.decode().split("|")
    assert fill == "refused"
    assert zeros == "True"  # control: purge really wiped it under the running access
    assert (mapped, fd_open, locked) == ("False", "False", "0")


class _Buffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("rest", ctypes.c_char * 72)]  # a Py_buffer


def _view_address(view: memoryview) -> int:
    """The address of a (read-only) view's first byte."""
    b = _Buffer()
    get, release = ctypes.pythonapi.PyObject_GetBuffer, ctypes.pythonapi.PyBuffer_Release
    assert get(ctypes.py_object(view), ctypes.byref(b), 0) == 0
    release(ctypes.byref(b))
    assert b.buf
    return int(b.buf)


def test_weakref_callback_on_the_view_runs_after_the_wipe() -> None:
    """A weak reference's callback on an open's view is Python code: it runs once the
    plaintext is wiped, never before."""
    e = Enclave.seal(bytearray(b"S" * 32))
    seen: list[bytes] = []
    with e.open() as v:
        at = _view_address(v)
        during = bytes(_region.peek(at + i) for i in range(4))  # control: the probe reads it
        weakref.finalize(v, lambda: seen.append(bytes(_region.peek(at + i) for i in range(4))))
        del v  # only the opening holds it now
    assert during == b"SSSS"
    assert seen == [bytes(4)]
