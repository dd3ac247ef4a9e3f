"""multiprocessing with every start method (issue 12): a Secret passed as a ``Process``
argument, a ``Pool`` initializer argument, a ``Pool`` task argument and a
``ProcessPoolExecutor`` task argument arrives as a Secret over the same pages; 8 pool workers
each use it; a scan of every worker's memory finds the key only in the secret's shared pages
(under secretmem: nowhere readable), while a plain ``bytes`` control passed the same way is
found in every worker.

The program is ``share_programs.py mp`` (the multiprocessing recipe of docs/topics/sharing.rst),
run as a separate process; this test process, which alone holds the key as bytes, scans it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import multiprocessing
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest
from conftest import require, skip_unless_available

from securememory._inspect import maps, scan_memory

pytest.importorskip("cryptography", reason="the workers use securememory.crypto.hmac")
PROGRAMS = pathlib.Path(__file__).with_name("share_programs.py")
MESSAGE = b"shared across processes"
SHARED_PATHS = ("/secretmem", "/memfd:securememory")


def _root() -> str | None:
    return None if os.geteuid() == 0 else "scanning other processes' memory needs root"


def scan_worker(pid: int, key: bytes, decoy: bytes) -> dict[str, object]:
    """Where ``key`` and ``decoy`` are in ``pid``'s memory, and which shared pages it maps."""
    shared = [m for m in maps(pid) if m.path.startswith(SHARED_PATHS)]
    result = scan_memory(pid, [key, decoy])
    outside = [(hex(a), path) for a, path in result.hits[key] if not path.startswith(SHARED_PATHS)]
    return {
        "key_outside_shared": outside,
        "key_inside_shared": len(result.hits[key]) - len(outside),
        "decoy": len(result.hits[decoy]),
        "shared_maps": len(shared),
        "unreadable_secretmem": any("/secretmem" in why for _, _, why in result.unreadable),
        "bytes_read": result.bytes_read,
    }


def run_program(args: list[str], key: bytes, decoy: bytes) -> tuple[Any, dict[int, Any], Any]:
    """Run a program of ``PROGRAMS`` (``args``, then the decoy in hex); it reads the key from its
    stdin straight into a secret (``from_fd(0, 32)``) and prints its workers' results. Each
    worker is scanned while it runs; a newline lets the program end. Returns (what it printed
    first, the scan of each worker, what it printed last); the program must exit 0."""
    proc = subprocess.Popen(
        [sys.executable, str(PROGRAMS), *args, decoy.hex()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(key)
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())
        scans = {pid: scan_worker(pid, key, decoy) for pid in first["workers"]}
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        last = json.loads(proc.stdout.readline())
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)
    assert proc.returncode == 0
    return first, scans, last


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
@pytest.mark.parametrize("impl", ["secretmem", "guarded"])
def test_multiprocessing_passes_secrets(method: str, impl: str) -> None:
    skip_unless_available(impl)
    require(_root(), "worker memory scan")
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"start method {method} unavailable here")
    key, decoy = os.urandom(32), os.urandom(32)
    first, scans, last = run_program(["mp", method, impl], key, decoy)
    want = hmac.new(key, MESSAGE, hashlib.sha256).hexdigest()
    # 1 Process + 4 executor tasks + 8 pool workers + 1 pool task, each used the passed secret
    assert len(first["tags"]) == 14 and all(tag == want for _, tag in first["tags"])
    assert len(first["workers"]) == 8 and first["decoy_len"] == [32] * 8
    assert last == {"parent_tag_after": want, "live": 0}
    for pid, scan in scans.items():
        assert scan["decoy"], f"control: the plain decoy must be found in worker {pid}: {scan}"
        assert scan["key_outside_shared"] == [], f"worker {pid}: {scan}"
        assert scan["shared_maps"], f"worker {pid} does not map the shared pages: {scan}"
        if impl == "secretmem":
            assert scan["key_inside_shared"] == 0 and scan["unreadable_secretmem"], scan
        else:  # the memfd fallback: readable through /proc/<pid>/mem, the weaker guarantee
            assert scan["key_inside_shared"], scan


@pytest.mark.parametrize("impl", ["secretmem", "guarded"])
def test_celery_style_prefork_pool(impl: str) -> None:
    """Celery's prefork pool (billiard, fork): a key made at import time, before the pool forks,
    with inheritable=True, is used by 4 workers; same scan, same control."""
    skip_unless_available(impl)
    require(_root(), "worker memory scan")
    pytest.importorskip("billiard", reason="Celery's pool (pip install billiard)")
    key, decoy = os.urandom(32), os.urandom(32)
    first, scans, last = run_program(["prefork", impl], key, decoy)
    assert last == {"live": 0}
    want = hmac.new(key, MESSAGE, hashlib.sha256).hexdigest()
    assert len(first["workers"]) == 4 and all(tag == want for _, tag in first["tags"])
    for pid, scan in scans.items():
        assert scan["decoy"], f"control: the plain decoy must be found in worker {pid}: {scan}"
        assert scan["key_outside_shared"] == [] and scan["shared_maps"], scan
        if impl == "secretmem":
            assert scan["key_inside_shared"] == 0 and scan["unreadable_secretmem"], scan
        else:
            assert scan["key_inside_shared"], scan
