"""Each guarantee observed on the real system, for every implementation, each with its control.

The proofs live in :mod:`securememory.check` (the same code ``securememory check`` runs); these
tests assert their evidence, including the control that shows each observation can fail.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading

import pytest
from conftest import require, skip_unless_available

import securememory
from securememory import _inspect, _probe, check
from securememory._factory import factory_for
from securememory._implementations import get


def _smaps(s: securememory.Secret) -> list[_inspect.Mapping]:
    return _inspect.smaps("self", s._inner, s._inner + s._inner_len)


def test_smaps_in_process(factory: securememory.SecretFactory) -> None:
    """``/proc/self/smaps``: Locked equals the size, dd/wf (or dc) flags, ---p idle, r--p in access.

    Control: a plain anonymous mapping next to it shows none of these.
    """
    with factory.create_random(32) as s:
        entries = _smaps(s)
        assert [m.perms[:3] for m in entries] == ["---"]
        assert sum(m.fields["Locked"] for m in entries) == s._inner_len
        flags = entries[0].flags
        assert {"lo", "dd"} <= flags
        assert "dc" in flags  # MADV_DONTFORK: a forked child has no mapping here
        with s.access():
            assert [m.perms[:3] for m in _smaps(s)] == ["r--"]
        assert [m.perms[:3] for m in _smaps(s)] == ["---"]
    plain = mmap.mmap(-1, 4096)
    plain[0] = 1
    addr = ctypes.addressof(ctypes.c_char.from_buffer(plain))
    (control,) = _inspect.smaps("self", addr, addr + 4096)
    assert control.fields["Locked"] == 0 and not {"lo", "dd", "wf"} & control.flags
    assert control.perms.startswith("rw-")
    plain.close()


def test_access_is_counted_across_threads(factory: securememory.SecretFactory) -> None:
    """Readable while any access runs; no-access only when the last one ends."""
    with factory.create_random(32) as s:
        inside, leave = threading.Event(), threading.Event()

        def hold() -> None:
            with s.access():
                inside.set()
                leave.wait()

        t = threading.Thread(target=hold)
        t.start()
        inside.wait()
        with s.access():
            pass
        assert _smaps(s)[0].perms.startswith("r--")  # the other thread's access still runs
        leave.set()
        t.join()
        assert _smaps(s)[0].perms.startswith("---")


def _passed(r: check.Result) -> None:
    assert r.status == "pass", r.detail


def test_locked(impl: str) -> None:
    r = check.prove_locked(get(impl))
    _passed(r)
    assert r.evidence["locked"] == r.evidence["inner_len"] > 0
    assert r.evidence["guard_locked"] == 0


def test_idle_read_dies_and_access_read_works(impl: str) -> None:
    r = check.prove_no_access(get(impl))
    _passed(r)
    assert r.evidence["read_in_access"] is True  # control: the same raw read works in access
    assert r.evidence["idle_read_signal"] == 11


def test_kernel_core_file_excludes_secret(impl: str) -> None:
    require(_inspect.kernel_core_unavailable(), "kernel core file")
    r = check.prove_kernel_core(get(impl))
    _passed(r)
    assert r.evidence["secret_hits"] == 0
    assert r.evidence["control_hits"] >= 1  # the bytearray copy is in the same core file


def test_gcore_excludes_secret(impl: str) -> None:
    require(_inspect.gcore_unavailable(), "gcore")
    r = check.prove_gcore(get(impl))
    _passed(r)
    assert r.evidence["secret_hits"] == 0
    assert r.evidence["control_hits"] >= 1


@pytest.mark.parametrize("how", ["close", "drop"])
def test_no_copy_after_close_or_gc(impl: str, how: str) -> None:
    """/proc/<pid>/mem of the child: while open the secret is only in its own pages (for the
    readable backings), after close or GC nowhere; the control bytearray is still found."""
    r = (
        check.prove_wiped_on_close(get(impl))
        if how == "close"
        else check.prove_wiped_on_gc(get(impl))
    )
    _passed(r)
    ev = r.evidence
    assert ev["elsewhere_while_open"] == 0
    assert ev["in_own_pages"] == (0 if get(impl).hidden_from_kernel else 1)
    assert ev["after"] == 0 and ev["control_hits"] >= 1
    if how == "drop":
        assert any("never closed" in w for w in ev["warnings"])


def test_new_from_bytearray_leaves_no_copy(impl: str) -> None:
    """``new(bytearray)`` wipes the source: after close no copy of it is left in the child."""
    data = os.urandom(32)
    with _probe.Probe() as p:
        a = p.send(f"new {impl} 32", raw=data)
        assert a["bytes"] == data
        before = _inspect.scan_memory(p.pid, [data])
        assert before.found(data, outside=(a["inner"], a["inner"] + a["inner_len"])) == []
        p.send("close 0")
        assert _inspect.scan_memory(p.pid, [data]).found(data) == []


def test_forked_child_cannot_see_secret(impl: str) -> None:
    r = check.prove_fork(get(impl))
    _passed(r)
    assert r.evidence["refused"]  # the library will not use a secret in a forked child
    assert r.evidence["own_secret"]  # ... and the child can make and use its own
    assert r.evidence["signal"] == 11  # MADV_DONTFORK: no mapping at the parent's address
    assert r.evidence["intact"]  # the parent's secret is untouched by the child's exit


def test_guard_pages_and_canary(impl: str) -> None:
    if not get(impl).guarded:
        pytest.skip(f"{impl} memory has no guard pages by design")
    r = check.prove_guards(get(impl))
    _passed(r)
    assert r.evidence["overflow_signal"] == 11
    assert r.evidence["underflow"]["error"].startswith("CanaryError")


def test_guard_pages_in_smaps(impl: str) -> None:
    """Two ---p guard mappings around the inner pages, holding no lock."""
    if not get(impl).guarded:
        pytest.skip(f"{impl} memory has no guard pages by design")
    with factory_for(impl).create_random(32) as s:
        r = s
        entries = _inspect.smaps("self", r._base, r._base + r._mapped)
        assert [m.end - m.start for m in entries] == [4096, r._inner_len, 4096]
        lead, inner, trail = entries
        for guard in (lead, trail):
            assert guard.perms.startswith("---") and guard.fields["Locked"] == 0
            assert "lo" not in guard.flags
        assert inner.fields["Locked"] == r._inner_len
        # right-aligned data: the first byte past the end is the trailing guard page
        assert r._data + r._size == trail.start
        assert r._data - r._inner >= 16


def test_secretmem_out_of_direct_map() -> None:
    """/proc/<pid>/mem cannot read secretmem pages; the guarded control is read and found."""
    skip_unless_available("secretmem")
    r = check.prove_direct_map(get("secretmem"))
    _passed(r)
    assert r.evidence["unreadable"] and r.evidence["secret_hits"] == 0
    assert r.evidence["control_hits"] == 1


def test_memlock_refusal_leaks_nothing(impl: str) -> None:
    require(_probe.unprivileged_unavailable(), "a child without CAP_IPC_LOCK")
    r = check.prove_memlock_budget(get(impl))
    _passed(r)
    assert r.evidence["made"] == r.evidence["expected"] == 16  # 64 KiB / 4 KiB locked each
    assert r.evidence["errno"] in (errno.ENOMEM, errno.EAGAIN)  # mlock / secretmem mmap
    assert "RLIMIT_MEMLOCK soft limit is 65536 bytes" in r.evidence["error"]


def test_secretmem_counts_in_vmlck() -> None:
    skip_unless_available("secretmem")
    before = _inspect.status_field("self", "VmLck")
    with factory_for("secretmem").create_random(32) as s:
        assert _inspect.status_field("self", "VmLck") - before == s._inner_len
    assert _inspect.status_field("self", "VmLck") == before


def test_each_secret_is_its_own_vma(factory: securememory.SecretFactory) -> None:
    """Adjacent secrets never merge into one kernel VMA (an access would then split and re-merge
    it, and cost more the more secrets live): each secret's data pages are exactly one smaps
    entry, idle and during an access of its neighbour."""
    secrets = [factory.create_random(32) for _ in range(16)]
    try:
        with secrets[7].access():
            for s in secrets:
                r = s
                (m,) = _smaps(s)
                assert (m.start, m.end) == (r._inner, r._inner + r._inner_len)
    finally:
        for s in secrets:
            s.close()
