"""Programs the sharing tests run as real, separate processes (issue 12); not a test module.

    python share_programs.py mp <start method> <implementation>   (the key on stdin)
    python share_programs.py broker <implementation> <socket path> <clients>  (keys on stdin)
    python share_programs.py client <socket path>
    python share_programs.py prefork <implementation> <decoy hex>   (the key on stdin)

Each is also a recipe of docs/topics/sharing.rst: ``mp`` is the multiprocessing recipe (Pool
with an initializer, a Process argument, a ProcessPoolExecutor task, a Pool task argument),
``broker``/``client`` the secret-broker recipe, ``prefork`` the Celery-style prefork pool
recipe (billiard, Celery's pool: a module-level key inherited by forked workers). They read
keys from stdin straight into secrets (``from_fd``), so no copy of a key is ever in their heap,
and talk JSON lines on stdout.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import securememory
from securememory import Secret, receive, send
from securememory._factory import factory_for
from securememory.crypto import hmac

MESSAGE = b"shared across processes"
KEY_SIZE = 32
N_SECRETS = 100


def emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def shared_mappings() -> int:
    """Mappings of a shareable secret's file in this process."""
    with open("/proc/self/maps") as f:
        return sum("secretmem" in line or "memfd:securememory" in line for line in f)


def leak_state() -> dict[str, int]:
    st = securememory.stats()
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "shared_maps": shared_mappings(),
        "live": st.live_secrets,
        "locked": st.bytes_locked,
    }


# -- multiprocessing ------------------------------------------------------------------------------

_worker_key: Secret | None = None
_worker_barrier: Any = None
_kept: list[bytes] = []  # the control: a plain key a worker holds, as code that skips this does


def _init(key: Secret, barrier: Any) -> None:
    """Pool initializer: the worker keeps the secret it was given for its whole life."""
    global _worker_key, _worker_barrier
    _worker_key, _worker_barrier = key, barrier


def _pool_task(decoy: bytes) -> tuple[int, str, int]:
    assert _worker_key is not None
    _worker_barrier.wait(60)  # the 8 tasks run in 8 different workers
    _kept.append(decoy)
    return os.getpid(), hmac(_worker_key, MESSAGE).hex(), len(decoy)


def _use_and_close(key: Secret) -> tuple[int, str]:
    """A task that gets the secret as its argument, uses it, closes its view."""
    with key:
        return os.getpid(), hmac(key, MESSAGE).hex()


def _process_main(key: Secret, conn: Any) -> None:
    with key:
        conn.send((os.getpid(), hmac(key, MESSAGE).hex(), type(key).__name__))
    conn.close()


def run_mp(method: str, impl: str) -> None:
    ctx: Any = multiprocessing.get_context(method)
    key = factory_for(impl).from_fd(0, KEY_SIZE, inheritable=True)
    tags: list[tuple[int, str]] = []
    # Process: the secret is an argument (pickled by multiprocessing for spawn and forkserver,
    # inherited over fork)
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_process_main, args=(key, child))
    p.start()
    pid, tag, kind = parent.recv()
    p.join(60)
    assert kind == "Secret" and p.exitcode == 0, (kind, p.exitcode)
    tags.append((pid, tag))
    # ProcessPoolExecutor: the secret is a task argument
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        tags.extend(f.result(60) for f in [ex.submit(_use_and_close, key) for _ in range(4)])
    # Pool of 8 workers with the secret given to each at start; a task argument too
    barrier = ctx.Barrier(8)
    pool = ctx.Pool(8, initializer=_init, initargs=(key, barrier))
    decoy = bytes.fromhex(sys.argv[4])  # a plain bytes control the scan must find
    results = pool.map(_pool_task, [decoy] * 8, chunksize=1)
    tags.extend((pid, tag) for pid, tag, _ in results)
    tags.append(pool.apply(_use_and_close, (key,)))
    workers = sorted({pid for pid, _, _ in results})
    emit({"tags": tags, "workers": workers, "decoy_len": [n for _, _, n in results]})
    sys.stdin.readline()  # the test scanned the workers
    pool.close()
    pool.join()
    ok_after = hmac(key, MESSAGE).hex()
    key.close()
    emit({"parent_tag_after": ok_after, "live": securememory.stats().live_secrets})


# -- a Celery-style prefork pool -------------------------------------------------------------------

PREFORK_KEY: Secret | None = None  # made at import time in Celery: before the pool forks
PREFORK_DECOY = b""


def _prefork_task(n: int) -> tuple[int, str]:
    assert PREFORK_KEY is not None
    _worker_barrier.wait(60)
    return os.getpid(), hmac(PREFORK_KEY, MESSAGE).hex()


def _prefork_init(barrier: Any) -> None:
    global _worker_barrier
    _worker_barrier = barrier


def run_prefork(impl: str, decoy_hex: str) -> None:
    import billiard  # type: ignore[import-untyped, import-not-found, unused-ignore]  # Celery's fork of multiprocessing, its prefork pool

    global PREFORK_KEY, PREFORK_DECOY
    PREFORK_KEY = factory_for(impl).from_fd(0, KEY_SIZE, inheritable=True)
    PREFORK_DECOY = bytes.fromhex(decoy_hex)  # the control, a plain key every worker inherits
    ctx = billiard.get_context("fork")
    barrier = ctx.Barrier(4)
    pool = ctx.Pool(4, initializer=_prefork_init, initargs=(barrier,))
    results = pool.map(_prefork_task, range(4), chunksize=1)
    emit({"tags": results, "workers": sorted({pid for pid, _ in results})})
    sys.stdin.readline()
    pool.terminate()
    pool.join()
    PREFORK_KEY.close()
    emit({"live": securememory.stats().live_secrets})


# -- broker and clients ----------------------------------------------------------------------------


def run_broker(impl: str, path: str, clients: int) -> None:
    factory = factory_for(impl)
    keys = [factory.from_fd(0, KEY_SIZE, inheritable=True) for _ in range(N_SECRETS)]
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(clients)
    emit({"listening": path})
    conns = [server.accept()[0] for _ in range(clients)]
    for conn in conns:
        for key in keys:
            send(conn, key)
    for conn in conns:
        assert conn.recv(1) == b"u"  # the client used every secret, kept one open
    for key in keys:
        key.close()  # wipes for every client
    for conn in conns:
        conn.sendall(b"c")
    for conn in conns:
        assert conn.recv(1) == b"d"
        conn.close()
    server.close()
    os.unlink(path)
    emit({"broker": leak_state()})


def run_client(path: str) -> None:
    hmac(factory_for("guarded").create_random(KEY_SIZE), MESSAGE)  # warm up the crypto library
    base = leak_state()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    got = [receive(sock) for _ in range(N_SECRETS)]
    held = leak_state()
    tags = [hmac(s, MESSAGE).hex() for s in got]
    for s in got[1:]:
        s.close()
    one_left = leak_state()
    sock.sendall(b"u")
    assert sock.recv(1) == b"c"  # the broker closed every secret
    try:
        got[0].with_bytes(bytes)
        later = "read"
    except securememory.SecretClosedError:
        later = "SecretClosedError"
    got[0].close()
    sock.sendall(b"d")
    sock.close()
    emit(
        {
            "tags": tags,
            "later": later,
            "base": base,
            "held": held,
            "one_left": one_left,
            "end": leak_state(),
            "implementation": got[0].implementation,
        }
    )


def main() -> None:
    role = sys.argv[1]
    if role == "mp":
        run_mp(sys.argv[2], sys.argv[3])
    elif role == "broker":
        run_broker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif role == "client":
        run_client(sys.argv[2])
    elif role == "prefork":
        run_prefork(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
