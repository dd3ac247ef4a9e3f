"""Secrets across processes on purpose (issue 12): ``inheritable=True`` over ``fork``,
``send``/``receive`` over an ``AF_UNIX`` socket, who wipes, what each process locks, bad input.

Each guarantee is observed on the real system (the child's reads, ``/proc/self/fd``,
``/proc/self/maps``, ``VmLck``, an ``exec``'d program's descriptors), each with a control that
shows the observation can fail. Anything that forks runs the child's part in the child and
reports through a pipe; the child always ends with ``os._exit``.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import json
import mmap
import os
import pickle
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import pytest
from conftest import IMPLEMENTATIONS, require, skip_unless_available

import securememory
from securememory import SecretClosedError, SecureMemoryError, _probe, receive, send
from securememory._factory import factory_for
from securememory._inspect import maps, smaps, status_field

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="memfd and SCM_RIGHTS here are Linux"
)

KEY = bytes(range(1, 33))


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@contextmanager
def nothing_left() -> Iterator[None]:
    """Descriptors, mappings and live secrets are the same after the block as before. Mappings
    that are not the interpreter's own heap growth are compared (a new private read-write
    anonymous mapping is the allocator's arena, seen on 3.9: not something a secret leaves)."""

    def ours() -> list[tuple[str, str]]:
        return sorted((m.perms, m.path) for m in maps() if (m.perms, m.path) != ("rw-p", ""))

    fds, before, live = _fds(), ours(), securememory.stats().live_secrets
    yield
    assert _fds() - fds == set(), "a descriptor was left open"
    assert ours() == before, "a mapping was left behind"
    assert securememory.stats().live_secrets == live


def in_child(work: Callable[[], Any]) -> Any:
    """Run ``work`` in a forked child; return what it returned (JSON), or raise what it raised
    (by name and message)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            out = {"ok": work()}
        except BaseException as e:
            out = {"error": type(e).__name__, "message": str(e)}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0, f"child status {status}"
    return json.loads(data)


# -- fork -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_inheritable_secret_is_usable_in_a_forked_child(impl: str) -> None:
    """The child reads the same bytes through its own view, locked in its own VmLck; the control
    (the default) refuses in the child."""
    skip_unless_available(impl)
    f = factory_for(impl)
    shared = f.new(bytearray(KEY), inheritable=True)
    private = f.new(bytearray(KEY))

    def child() -> dict[str, Any]:
        before = status_field("self", "VmLck")
        data = shared.with_bytes(bytes)
        after = status_field("self", "VmLck")
        return {
            "data": data.hex(),
            "locked": after - before,
            "stats": securememory.stats().bytes_locked,
        }

    got = in_child(child)["ok"]
    assert bytes.fromhex(got["data"]) == KEY
    assert got["locked"] >= shared._inner_len  # the child locked its own view
    assert got["stats"] == shared._inner_len
    control = in_child(lambda: private.with_bytes(bytes).hex())
    assert control["error"] == "SecureMemoryError" and "inheritable=True" in control["message"]
    # the child shares the pages, not a copy: what the creator's close does, the child sees
    shared.close()
    private.close()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_child_shares_the_pages_not_a_copy(impl: str) -> None:
    """A child that mapped its view before the creator closed fails cleanly at its next access
    (SecretClosedError, not zeros); the control, read before the close, saw the key."""
    skip_unless_available(impl)
    s = factory_for(impl).new(bytearray(KEY), inheritable=True)
    r, w = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        first = s.with_bytes(bytes) == KEY
        os.write(w, b"1")
        os.read(r2, 1)  # the parent closed it
        try:
            s.with_bytes(bytes)
            later = "read"
        except SecretClosedError:
            later = "closed"
        except BaseException as e:
            later = type(e).__name__
        os.write(w, json.dumps({"first": first, "later": later}).encode())
        os._exit(0)
    os.read(r, 1)
    s.close()
    os.write(w2, b"1")
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = json.loads(f.read())
    os.waitpid(pid, 0)
    os.close(r2)
    os.close(w2)
    assert out == {"first": True, "later": "closed"}


def test_descriptor_is_not_inherited_by_an_exec_program(
    factory: securememory.SecretFactory,
) -> None:
    """An exec'd program sees no descriptor of the secret's file; the control passes it on
    purpose (``pass_fds``) and the same check sees it."""
    s = factory.create_random(32, inheritable=True)
    probe = textwrap.dedent(
        """
        import os
        names = [os.readlink(f"/proc/self/fd/{n}") for n in os.listdir("/proc/self/fd")
                 if os.path.exists(f"/proc/self/fd/{n}")]
        print(sum("secretmem" in n or "memfd:securememory" in n for n in names))
        """
    )
    run = [sys.executable, "-c", probe]
    assert subprocess.run(run, capture_output=True, text=True, close_fds=False).stdout == "0\n"
    fd = s._dup_fd()
    try:
        os.set_inheritable(fd, True)
        shown = subprocess.run(run, capture_output=True, text=True, pass_fds=(fd,)).stdout
    finally:
        os.close(fd)
    assert shown == "1\n"
    s.close()


# -- send / receive -------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_send_receive_same_pages_who_wipes(impl: str) -> None:
    """The receiver gets a Secret over the same pages; its close only unmaps its view (the
    creator still reads the key); the creator's close wipes for everyone and the receiver's
    next access raises SecretClosedError. Nothing is left open in either role."""
    skip_unless_available(impl)
    f = factory_for(impl)
    a, b = socket.socketpair()
    with nothing_left():
        s = f.new(bytearray(KEY), inheritable=True)
        with nothing_left():
            send(a, s)
            r1 = receive(b)
            assert r1.implementation == impl and len(r1) == 32
            assert r1.with_bytes(bytes) == KEY
            r1.close()  # only unmaps this view
        assert s.with_bytes(bytes) == KEY
        send(a, s)
        r2 = receive(b)
        assert r2.with_bytes(bytes) == KEY  # control: readable while the creator keeps it
        s.close()
        with pytest.raises(SecretClosedError, match=r"closed.*by the process that created it"):
            r2.with_bytes(bytes)
        r2.close()
    a.close()
    b.close()


def test_receiver_locks_its_own_view(factory: securememory.SecretFactory) -> None:
    """What each process pays: the receiving process's VmLck grows by the inner pages when it
    maps its view and shrinks back when it closes it (the creator's lock is its own)."""
    s = factory.create_random(4096 * 3, inheritable=True)
    a, b = socket.socketpair()

    def child() -> list[int]:
        base = status_field("self", "VmLck")
        r = receive(b)
        held = status_field("self", "VmLck")
        r.close()
        return [held - base, status_field("self", "VmLck") - base]

    send(a, s)
    grown, after = in_child(child)["ok"]
    assert grown >= s._inner_len and after == 0
    s.close()
    a.close()
    b.close()


CREATOR = """
import os, signal, socket, sys
from securememory import send
from securememory._factory import factory_for
impl, fd, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sock = socket.socket(fileno=fd)
s = factory_for(impl).new(bytearray(range(1, 33)), inheritable=True)
send(sock, s)
sock.recv(1)  # the receiver has read it
if how == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(0)  # a normal exit: the library's atexit wipe runs
"""


def test_creator_exit_wipes_for_everyone_but_sigkill_does_not(impl: str) -> None:
    """The creator exits normally: its exit wipe wipes the shared pages, the receiver's next
    access raises. The creator is killed: nothing wipes; the receiver keeps reading the key until
    it closes its view (the control that the first outcome is the exit wipe's doing)."""
    skip_unless_available(impl)
    outcomes: dict[str, object] = {}
    for how in ("exit", "kill"):
        a, b = socket.socketpair()
        proc = subprocess.Popen(
            [sys.executable, "-c", CREATOR, impl, str(a.fileno()), how], pass_fds=(a.fileno(),)
        )
        a.close()
        got = receive(b)
        assert got.with_bytes(bytes) == KEY
        b.send(b"1")
        proc.wait(timeout=60)
        try:
            outcomes[how] = got.with_bytes(bytes) == KEY
        except SecretClosedError:
            outcomes[how] = "closed"
        got.close()
        b.close()
    assert outcomes == {"exit": "closed", "kill": True}


def test_plain_pickle_still_refuses(factory: securememory.SecretFactory) -> None:
    s = factory.create_random(16, inheritable=True)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(s)
    s.close()


def test_multiprocessing_pickler_refuses_a_private_secret(
    factory: securememory.SecretFactory,
) -> None:
    """multiprocessing's pickler passes a shareable secret (the control: unpickled, it is a
    Secret over the same pages) and refuses a private one with TypeError naming the fix; plain
    pickle refuses both."""
    from multiprocessing.reduction import ForkingPickler

    shared, private = factory.create_random(16, inheritable=True), factory.create_random(16)
    back = pickle.loads(ForkingPickler.dumps(shared))  # fetches its descriptor: nothing kept
    assert isinstance(back, securememory.Secret) and back.with_bytes(bytes) == shared.with_bytes(
        bytes
    )
    back.close()
    with pytest.raises(TypeError, match="inheritable=True"):
        ForkingPickler.dumps(private)
    for s in (shared, private):
        with pytest.raises(TypeError):
            pickle.dumps(s)
        s.close()


def test_a_private_secret_cannot_be_sent(factory: securememory.SecretFactory) -> None:
    """Decision: a secret made without inheritable=True has private anonymous pages (secretmem:
    no descriptor kept); send() refuses, naming the fix, and sends nothing."""
    s = factory.create_random(16)
    a, b = socket.socketpair()
    with nothing_left(), pytest.raises(SecureMemoryError, match="inheritable=True"):
        send(a, s)
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(1)  # nothing was sent
    s.close()
    with pytest.raises(SecretClosedError):
        send(a, s)
    a.close()
    b.close()


def test_received_secret_can_be_forwarded(factory: securememory.SecretFactory) -> None:
    s = factory.new(bytearray(KEY), inheritable=True)
    a, b = socket.socketpair()
    send(a, s)
    first = receive(b)
    send(b, first)
    second = receive(a)
    assert second.with_bytes(bytes) == KEY
    s.close()
    with pytest.raises(SecretClosedError):
        second.with_bytes(bytes)
    first.close()
    second.close()
    a.close()
    b.close()


# -- bad input -------------------------------------------------------------------------------------


def _send_fds(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], anc)


def _valid_header(impl: str, size: int) -> bytes:
    from securememory._share import _HEAD, _MAGIC

    return _HEAD.pack(_MAGIC, 0, impl.encode(), size)


def _memfd(size: int, seals: int) -> int:
    fd = os.memfd_create("securememory", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def test_bad_sockets() -> None:
    s = factory_for("guarded").create_random(16, inheritable=True)
    inet = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with nothing_left():
        with pytest.raises(ValueError, match="AF_UNIX"):
            send(inet, s)
        with pytest.raises(ValueError, match="AF_UNIX"):
            receive(inet)
        with pytest.raises(TypeError, match="socket"):
            receive(3)  # type: ignore[arg-type]
        a, b = socket.socketpair()
        with pytest.raises(TypeError, match="Secret"):
            send(a, b"key")  # type: ignore[arg-type]
        a.close()
        b.close()
    inet.close()
    s.close()


def test_bad_messages_are_refused_and_leave_nothing() -> None:
    """No descriptor, several, a regular file, a pipe, an unsealed memfd, a memfd of the wrong
    size, a memfd with no live marker, a bad header, a peer that hangs up mid-message or before
    any: a clear error each, and every descriptor that came is closed."""
    skip_unless_available("guarded")
    size = 32
    inner = factory_for("guarded").spec.layout(size).inner_len
    hdr = _valid_header("guarded", size)
    cases: list[tuple[str, Callable[[socket.socket], None], type[BaseException], str]] = []

    def with_fd(make: Callable[[], int], data: bytes = hdr) -> Callable[[socket.socket], None]:
        def go(sock: socket.socket) -> None:
            fd = make()
            try:
                _send_fds(sock, data, [fd])
            finally:
                os.close(fd)

        return go

    def regular() -> int:
        fd = os.open("/proc/self/exe", os.O_RDONLY)
        return fd

    def pipe() -> int:
        r, w = os.pipe()
        os.close(w)
        return r

    cases += [
        ("no descriptor", lambda s: _send_fds(s, hdr, []), SecureMemoryError, "no descriptor"),
        ("a regular file", with_fd(regular), ValueError, "not a securememory secret"),
        ("a pipe", with_fd(pipe), ValueError, "not a memory file"),
        ("unsealed memfd", with_fd(lambda: _memfd(inner, 0)), ValueError, "sealed"),
        ("wrong size", with_fd(lambda: _memfd(inner * 2, SEALS)), ValueError, "bytes"),
        ("no marker", with_fd(lambda: _memfd(inner, SEALS)), SecretClosedError, "no secur"),
        (
            "bad header",
            with_fd(lambda: _memfd(inner, SEALS), b"x" * 32),
            SecureMemoryError,
            "bad header",
        ),
        (
            "secretmem claimed",
            with_fd(lambda: _memfd(inner, SEALS), _valid_header("secretmem", size)),
            ValueError,
            "memfd_secret",
        ),
    ]

    def two(sock: socket.socket) -> None:
        fds = [_memfd(inner, SEALS), _memfd(inner, SEALS)]
        _send_fds(sock, hdr, fds)
        for fd in fds:
            os.close(fd)

    cases.append(("two descriptors", two, SecureMemoryError, "2 descriptors"))
    for bad_size in (0, 1 << 40):  # a hostile size: refused before mapping, its fd closed
        cases.append(
            (
                f"size {bad_size}",
                with_fd(lambda: _memfd(inner, SEALS), _valid_header("guarded", bad_size)),
                ValueError,
                "size must be",
            )
        )

    def hang_up(sock: socket.socket) -> None:
        fd = _memfd(inner, SEALS)
        _send_fds(sock, hdr[:10], [fd])
        os.close(fd)
        sock.close()

    cases.append(("hang-up mid-message", hang_up, SecureMemoryError, "10 of 32 bytes"))
    cases.append(("hang-up before", lambda s: s.close(), EOFError, "closed the connection"))

    seen = []
    for name, peer, exc, match in cases:
        a, b = socket.socketpair()
        with nothing_left():
            peer(a)
            with pytest.raises(exc, match=match):
                receive(b)
        seen.append(name)
        a.close()
        b.close()
    assert len(seen) == len(cases)
    # control: the same plumbing with a real secret's message is accepted
    s = factory_for("guarded").new(bytearray(KEY), inheritable=True)
    a, b = socket.socketpair()
    send(a, s)
    got = receive(b)
    assert got.with_bytes(bytes) == KEY
    got.close()
    s.close()
    a.close()
    b.close()


# -- asyncio ---------------------------------------------------------------------------------------


def test_received_secret_keeps_per_task_access_and_aclose(impl: str) -> None:
    """A received secret keeps issue 9's per-task semantics: another task's close() is refused
    while a task holds an access across an await; ``await aclose()`` waits for it, then only
    unmaps this process's view (the creator still reads the key)."""
    skip_unless_available(impl)
    s = factory_for(impl).new(bytearray(KEY), inheritable=True)
    a, b = socket.socketpair()
    send(a, s)
    got = receive(b)

    async def main() -> tuple[bool, bool]:
        entered, release = asyncio.Event(), asyncio.Event()

        async def holder() -> bytes:
            with got.access() as v:
                entered.set()
                await release.wait()
                return bytes(v)

        task = asyncio.create_task(holder())
        await entered.wait()
        with pytest.raises(SecureMemoryError, match="aclose"):
            got.close()
        refused_left_open = not got.closed
        asyncio.get_running_loop().call_later(0.02, release.set)
        await got.aclose()
        return refused_left_open, await task == KEY

    assert asyncio.run(main()) == (True, True)
    assert got.closed
    assert s.with_bytes(bytes) == KEY
    s.close()
    a.close()
    b.close()


def test_each_process_view_is_locked_and_undumpable(impl: str) -> None:
    """The receiving process's and a forked child's view of the shared pages: smaps shows them
    locked (``lo``, ``Locked:`` the whole inner pages), excluded from dumps (``dd``) and
    no-access when idle; the control, the same file mapped plainly, shows neither flag."""
    skip_unless_available(impl)
    s = factory_for(impl).new(bytearray(KEY), inheritable=True)
    a, b = socket.socketpair()
    send(a, s)
    got = receive(b)

    def view_flags(secret: securememory.Secret) -> dict[str, Any]:
        (m,) = smaps("self", secret._inner, secret._inner + secret._inner_len)
        return {
            "flags": sorted(m.flags & {"lo", "dd"}),
            "locked": m.fields.get("Locked", 0) > 0,  # proportional: shared by every mapper
            "perms": m.perms,
        }

    want = {"flags": ["dd", "lo"], "locked": True, "perms": "---s"}
    assert view_flags(got) == want

    def child() -> dict[str, Any]:
        s.with_bytes(len)  # maps and locks the child's own view
        return view_flags(s)

    assert in_child(child)["ok"] == want
    if impl != "secretmem":  # control: a plain mapping of the same file has neither flag
        fd = got._dup_fd()
        try:
            with mmap.mmap(fd, got._inner_len, prot=mmap.PROT_READ):
                plain = [
                    m
                    for m in smaps("self", 0, 1 << 64)
                    if m.perms == "r--s" and "memfd:securememory" in m.path
                ]
                assert plain and not any(m.flags & {"lo", "dd"} for m in plain)
        finally:
            os.close(fd)
    got.close()
    s.close()
    a.close()
    b.close()


LOW_MEMLOCK_RECEIVER = """
import json, os, socket, sys
import securememory
from securememory import receive
sock = socket.socket(fileno=int(sys.argv[1]))
def fds_now():
    return len(os.listdir("/proc/self/fd"))
fds = fds_now()
got, results = [], []
for _ in range(4):
    try:
        got.append(receive(sock))
        results.append("ok")
    except securememory.MemoryLockError as e:
        results.append(f"MemoryLockError: {e}")
after_refusals = [fds_now() - fds - len(got), securememory.stats().live_secrets]
got.pop().close()
got.append(receive(sock))  # room again: the limit, not something else, refused
readable = all(len(s.with_bytes(bytes)) == 32 for s in got)
for s in got:
    s.close()
print(json.dumps({"results": results, "after_refusals": after_refusals, "readable": readable,
                  "end": [fds_now() - fds, securememory.stats().live_secrets]}))
"""


@pytest.mark.parametrize("impl", ["secretmem", "guarded"])
def test_each_receiver_pays_its_own_memlock(impl: str) -> None:
    """A receiver without CAP_IPC_LOCK and an RLIMIT_MEMLOCK of two pages maps two received
    secrets (one locked page each, its own budget, whatever the creator has locked), and the third
    is a MemoryLockError that leaves no descriptor or secret behind; after closing one, one more
    fits (the control: it is the receiver's limit that refused)."""
    skip_unless_available(impl)
    require(_probe.unprivileged_unavailable(), "a child without CAP_IPC_LOCK")
    f = factory_for(impl)
    secrets = [f.create_random(32, inheritable=True) for _ in range(5)]
    a, b = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-c", LOW_MEMLOCK_RECEIVER, str(b.fileno())],
        pass_fds=(b.fileno(),),
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: _probe._unprivileged(8192),
    )
    b.close()
    for s in secrets:
        send(a, s)
    out, _ = proc.communicate(timeout=60)
    a.close()
    assert proc.returncode == 0
    r = json.loads(out)
    assert r["results"][:2] == ["ok", "ok"], r
    assert all(
        x.startswith("MemoryLockError: ") and "RLIMIT_MEMLOCK" in x for x in r["results"][2:]
    )
    assert r["after_refusals"] == [0, 2] and r["readable"] and r["end"] == [0, 0], r
    for s in secrets:
        s.close()
