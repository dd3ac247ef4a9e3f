"""A real ``gunicorn --preload`` server (issue 12; the gunicorn and uvicorn-worker recipes of
docs/topics/sharing.rst): the master loads the key into a shareable secret, 4 forked workers
(sync, gthread, and uvicorn's ASGI worker) answer 2,000 requests on loopback with an HMAC under
it, all correct. A scan of the master's and every worker's memory finds the key only in the
secret's shared pages (under secretmem: nowhere readable through ``/proc/<pid>/mem``), while the
control, the same kind of key loaded as ``bytes``, is found in every worker. Stopping the server
leaves no worker behind.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import importlib.util
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import require, skip_unless_available
from test_share_mp import scan_worker

pytest.importorskip("cryptography", reason="the app uses securememory.crypto.hmac")
GUNICORN = shutil.which("gunicorn", path=os.path.dirname(sys.executable))
REQUESTS = 2000
WORKERS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie runs nothing
    except FileNotFoundError:
        return True


def _get(port: int, n: int) -> tuple[int, bytes, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", f"/?req={n}")
        resp = conn.getresponse()
        return resp.status, resp.read(), int(resp.getheader("X-Pid") or 0)
    finally:
        conn.close()


UVICORN = "uvicorn.workers.UvicornWorker"


def _uvicorn_missing() -> str | None:
    if importlib.util.find_spec("uvicorn") is None:
        return "uvicorn is not installed (pip install uvicorn)"
    return None


@pytest.mark.parametrize(
    ("impl", "worker_class"),
    [
        ("secretmem", "sync"),
        ("secretmem", "gthread"),
        ("secretmem", UVICORN),
        ("guarded", "sync"),
        ("guarded", "gthread"),
    ],
)
def test_gunicorn_preload_workers_share_the_key(
    impl: str, worker_class: str, tmp_path: pathlib.Path
) -> None:
    skip_unless_available(impl)
    require(None if GUNICORN else "gunicorn is not installed (the test extra)", "gunicorn")
    if worker_class == UVICORN:
        require(_uvicorn_missing(), "the uvicorn worker recipe")
    require(None if os.geteuid() == 0 else "scanning workers' memory needs root", "scan")
    assert GUNICORN is not None
    key, decoy = os.urandom(32), os.urandom(32)
    (tmp_path / "key").write_bytes(key)
    (tmp_path / "decoy").write_bytes(decoy)
    port = _free_port()
    env = dict(
        os.environ,
        SHARE_IMPL=impl,
        SHARE_KEY_FILE=str(tmp_path / "key"),
        SHARE_DECOY_FILE=str(tmp_path / "decoy"),
    )
    cmd = [
        GUNICORN,
        "--preload",
        "-w",
        str(WORKERS),
        "-k",
        worker_class,
        "--threads",
        "4",
        "-b",
        f"127.0.0.1:{port}",
        "--chdir",
        str(pathlib.Path(__file__).parent),
        "--log-level",
        "warning",
        "share_wsgi:asgi" if worker_class == UVICORN else "share_wsgi:app",
    ]
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while True:  # up when it accepts and all workers are forked
            assert server.poll() is None, server.communicate()[1]
            workers = _children(server.pid)
            try:
                if len(workers) == WORKERS and _get(port, -1)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not come up"
            time.sleep(0.1)
        with ThreadPoolExecutor(8) as ex:
            answers = list(ex.map(lambda n: _get(port, n), range(REQUESTS)))
        wrong = [
            n
            for n, (status, body, _) in enumerate(answers)
            if status != 200
            or body.decode() != hmac.new(key, f"req={n}".encode(), hashlib.sha256).hexdigest()
        ]
        served = {pid for _, _, pid in answers}
        assert wrong == [] and len(answers) == REQUESTS
        assert served <= set(workers) and len(served) >= 2, (served, workers)
        scans = {pid: scan_worker(pid, key, decoy) for pid in [server.pid, *workers]}
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in workers), "a worker outlived the server"
    for pid, scan in scans.items():
        assert scan["key_outside_shared"] == [], f"process {pid}: {scan}"
        assert scan["decoy"], f"control: the plain key must be found in process {pid}: {scan}"
        if pid in served:
            assert scan["shared_maps"], scan  # a worker that served maps its own view
        if impl == "secretmem":
            assert scan["key_inside_shared"] == 0, scan
            if scan["shared_maps"]:
                assert scan["unreadable_secretmem"], scan
        elif scan["shared_maps"]:  # the memfd fallback: readable as root, the weaker guarantee
            assert scan["key_inside_shared"], scan
