"""Limits and failures the kernel imposes, reported as what they are (issue 9 items 11-13, 15, 16).

The limits are real: a child process runs into ``vm.max_map_count`` or a small
``RLIMIT_MEMLOCK`` without ``CAP_IPC_LOCK``. Failures the kernel cannot be made to produce on
demand (a failing ``munmap``) are injected at the compiled core's system-call hook.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap

import pytest
from conftest import Syscalls, require, skip_unless_available

import securememory
from securememory import SecureMemoryError, _inspect, _probe, _region
from securememory._factory import factory_for
from securememory._implementations import get

MAP_WALL = """
    import importlib, json, resource, sys
    import securememory
    from securememory import MapCountError
    _, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))  # the wall to reach is the map count
    f = importlib.import_module(sys.argv[1]).SecretFactory()
    base = securememory.stats()
    made, error = [], None
    try:
        while True:
            made.append(f.create_random(32))
    except MapCountError as e:
        error = e
    st = securememory.stats()
    out = dict(made=len(made), message=str(error), errno=error.errno, live=st.live_secrets,
               mappings=st.mappings, limit=st.mappings_limit)
    for s in made:
        s.close()
    after = securememory.stats()
    out["leaked"] = [after.live_secrets - base.live_secrets, after.bytes_mapped - base.bytes_mapped,
                     after.bytes_locked - base.bytes_locked, after.mappings - base.mappings]
    print(json.dumps(out))
"""


@pytest.mark.slow  # tens of thousands of mappings
def test_map_count_wall_is_named(impl: str) -> None:
    """Item 11. Secrets until the kernel's mapping limit: a MapCountError that names
    vm.max_map_count, its value and how to raise it; ``stats()`` shows the budget; after
    closing them all nothing is left. (Before: a bare ENOMEM near 32,600 secrets.)"""
    skip_unless_available(impl)
    with open("/proc/sys/vm/max_map_count") as f:
        limit = int(f.read())
    if limit > 300_000:
        pytest.skip(f"vm.max_map_count is {limit}: too many secrets to reach it in a test")
    per_secret = 2 if not get(impl).guarded else 3
    need = limit // per_secret * 4096  # one locked page per 32-byte secret
    st = securememory.stats()
    if not st.memlock_exempt and st.memlock_hard_limit is not None and st.memlock_hard_limit < need:
        pytest.skip(
            f"reaching vm.max_map_count ({limit}) takes about {need >> 20} MiB of locked memory; "
            f"the RLIMIT_MEMLOCK hard limit is {st.memlock_hard_limit >> 20} MiB and this user "
            "lacks CAP_IPC_LOCK: the memlock wall comes first "
            "(test_low_memlock_is_a_memory_lock_error tests that one)"
        )
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MAP_WALL), get(impl).module],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert r["made"] > limit // per_secret * 0.9, r  # the wall is the mapping limit ...
    assert r["errno"] == errno.ENOMEM
    assert "vm.max_map_count" in r["message"] and str(limit) in r["message"], r["message"]
    assert "sysctl -w vm.max_map_count=" in r["message"]
    assert r["limit"] == limit and r["mappings"] > limit - 16
    assert r["live"] == r["made"]  # ... and the failed one is not counted
    # no secret, byte or lock left; the mapping count may differ by the interpreter's own heap
    # arenas (pymalloc maps 1 MiB arenas for the Secret objects and may keep some)
    assert r["leaked"][:3] == [0, 0, 0] and abs(r["leaked"][3]) <= 16, r["leaked"]


OPT_OUT = """
    import resource, securememory.guarded as g
    from securememory import crypto
    resource.setrlimit(resource.RLIMIT_CORE, (4096, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    f = g.SecretFactory(disable_core_dumps=False)  # the user's explicit opt-out
    key = f.create_random(32)
    crypto.hkdf(key, 32, b"salt", b"info").close()  # crypto's default factory
    securememory_default = __import__("securememory").SecretFactory()
    print(resource.getrlimit(resource.RLIMIT_CORE)[0])
"""


def test_core_dump_opt_out_is_respected_everywhere() -> None:
    """Item 12. An explicit ``disable_core_dumps=False`` anywhere in the process wins over every
    later default factory (crypto's included). Control: without the opt-out, the default
    factory sets the soft limit to 0."""
    pytest.importorskip("cryptography")
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(OPT_OUT)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "4096"
    control = OPT_OUT.replace("disable_core_dumps=False", "disable_core_dumps=True")
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(control)], capture_output=True, text=True
    )
    assert out.stdout.strip() == "0", out.stderr


LOW_MEMLOCK = """
    import json, securememory
    from securememory import MemoryLockError, secretmem, SecretFactory
    out = {"available": bool(secretmem.available()), "default": SecretFactory().implementation}
    made = []
    try:
        while len(made) < 64:
            made.append(secretmem.SecretFactory().create_random(32))
        out["error"] = ""
    except Exception as e:
        out["error"] = type(e).__name__ + ": " + str(e)
    out["made"] = len(made)
    print(json.dumps(out))
"""


@pytest.mark.parametrize("limit", [0, 4096, 8192, 65536])
def test_low_memlock_is_a_memory_lock_error(limit: int) -> None:
    """Item 13. Without CAP_IPC_LOCK and with a small RLIMIT_MEMLOCK, secretmem is still
    available (the kernel supports it), the default factory stays secretmem (no silent
    fallback), exactly as many secrets as the limit holds are made (the control that the
    limit, not something else, stops it), then MemoryLockError names the limit. Before:
    secretmem was reported unavailable and SecretFactory() fell back to guarded silently."""
    skip_unless_available("secretmem")
    require(_probe.unprivileged_unavailable(), "a child without CAP_IPC_LOCK")
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LOW_MEMLOCK)],
        capture_output=True,
        text=True,
        preexec_fn=lambda: _probe._unprivileged(limit),
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["available"] and r["default"] == "secretmem", r
    assert r["made"] == limit // 4096, r  # one locked page each
    assert r["error"].startswith("MemoryLockError: "), r
    assert f"RLIMIT_MEMLOCK soft limit is {limit} bytes" in r["error"], r


def test_canary_is_per_region_and_only_in_locked_pages(impl: str) -> None:
    """Item 15. Each guarded region has its own random canary, in its own locked, undumpable
    inner pages: two secrets' canaries differ, and (where the pages are readable through
    /proc/<pid>/mem, i.e. not secretmem) a scan of the child's whole memory finds a canary
    nowhere but in its region. Control: a bytearray copy the child then makes is found.
    (Before: one canary for the whole process, in a heap ``bytes`` object.)"""
    spec = get(impl)
    skip_unless_available(impl)
    if not spec.guarded:
        pytest.skip(f"{impl} memory has no canary by design")
    with factory_for(impl).create_random(32) as a, factory_for(impl).create_random(32) as b:
        canaries = []
        for s in (a, b):
            _region.make_readable(s)
            canaries.append(bytes(_region.peek(s._data - 32 + i) for i in range(16)))
            _region.make_no_access(s)
        assert canaries[0] != canaries[1] and bytes(16) not in canaries
    if spec.hidden_from_kernel:
        return  # nothing outside the kernel can read secretmem pages to compare with
    script = """
        import os, sys, importlib
        f = importlib.import_module(sys.argv[1]).SecretFactory()
        a, b = f.create_random(32), f.create_random(32)
        os.write(1, b"%d %d %d %d %d\\n" % (a._inner, b._inner, a._inner_len, a._data, b._data))
        sys.stdin.readline()  # scanned now
        from securememory import _region
        _region.make_readable(a)
        keep = bytearray(a._inner_len)  # the control: a copy of the canary's page
        for i in range(16):
            keep[i] = _region.peek(a._data - 32 + i)
        _region.make_no_access(a)
        os.write(1, b"kept\\n")
        sys.stdin.readline()
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), spec.module],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        inner_a, inner_b, inner_len, data_a, data_b = map(int, proc.stdout.readline().split())
        with open(f"/proc/{proc.pid}/mem", "rb", buffering=0) as mem:
            mem.seek(data_a - 32)  # R, the canary's random half
            c_a = mem.read(16)
            mem.seek(data_b - 32)
            c_b = mem.read(16)
        assert c_a != c_b and bytes(16) not in (c_a, c_b)
        scan = _inspect.scan_memory(proc.pid, [c_a, c_b])
        assert scan.found(c_a, outside=(inner_a, inner_a + inner_len)) == []
        assert scan.found(c_b, outside=(inner_b, inner_b + inner_len)) == []
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.stdout.readline()
        control = _inspect.scan_memory(proc.pid, [c_a])
        assert control.found(c_a, outside=(inner_a, inner_a + inner_len)) != []
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("op", ["munmap", "mprotect"])
def test_failure_while_freeing_is_raised_not_swallowed(
    factory: securememory.SecretFactory, syscalls: Syscalls, op: str
) -> None:
    """Item 16. A system call that fails while a secret is freed (munmap; mprotect to wipe)
    raises a typed error after everything that could be done was done: the secret is closed,
    nothing stays counted, and the error names the call and errno."""
    before = securememory.stats()
    s = factory.create_random(32)
    syscalls.fail(op, errno.EINVAL)
    with pytest.raises(SecureMemoryError, match=op) as e:
        s.close()
    assert e.value.errno == errno.EINVAL
    after = securememory.stats()
    assert s.closed
    assert (after.live_secrets, after.bytes_locked, after.bytes_mapped) == (
        before.live_secrets,
        before.bytes_locked,
        before.bytes_mapped,
    )


def test_failed_reprotect_at_end_of_access_fails_closed(
    factory: securememory.SecretFactory, syscalls: Syscalls
) -> None:
    """Item 16 (kept): an access whose end cannot make the pages no-access again wipes and
    closes the secret and raises, rather than leave it readable."""
    s = factory.create_random(32)
    with pytest.raises(SecureMemoryError, match="mprotect"), s.access():
        syscalls.fail("mprotect", errno.ENOMEM)
    assert s.closed
