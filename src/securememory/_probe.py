"""A child process that holds secrets on command, for the live proofs (``check`` and the tests).

The parent (:class:`Probe`) sends one command per line on the child's stdin; the child answers
one JSON line on stdout, preceded by a ``RAW n`` line and n raw bytes when it hands out a secret.
Secret bytes leave the child only as raw writes from an access view (``os.write(1, view)``): they
never become a Python object in the child, so a scan of the child's memory finds only copies the
library made.

Commands (``ID`` is the number ``make`` answered):

- ``make IMPL SIZE``: ``create_random(SIZE)``; answers the region's addresses, then the bytes.
- ``new IMPL SIZE``: reads SIZE raw bytes from stdin into a bytearray, ``new(bytearray)``.
- ``read ID HOW``: reads the whole secret through its reader (``readline``, ``readlines``,
  ``iter``, ``read``, ``read64``) and keeps what came back.
- ``control ID``: keeps a plain ``bytearray`` copy of the secret (the control for every scan).
- ``hold ID`` / ``release ID``: begin / end an access held open by a background thread.
- ``close ID``, ``drop ID`` (delete the last reference, ``gc.collect()``, report warnings).
- ``peek ID`` / ``peek_in_access ID``: read the first byte at the data address as a buggy
  program would (outside an access this kills the child with SIGSEGV).
- ``stale_view ID`` / ``stale_slice ID [close]``: keep the view (a slice of it) past the
  access (and the close), use it.
- ``fork ID``: fork twice. The first grandchild reports whether the library refused to use the
  secret there and whether it can make and use a secret of its own; the second reads the
  secret's pages directly (the signal that killed it, or what it saw). Then the secret's bytes
  are sent again, to show the parent's copy is intact.
- ``overflow ID`` / ``underflow ID``: write one byte past the end (SIGSEGV on guard page) or
  just before the data (the canary), then close.
- ``seal ID``: seal the secret into an enclave (``Secret.seal``), then close the secret;
  ``seal_control``: keep a plain copy of that enclave's plaintext (the control);
  ``seal_many N``: N more 32-byte enclaves (``Enclave.random``), with VmLck and the mapping count
  before and after; ``enclave_key``: the keyring's range and the key's halves (raw, straight from
  the keyring).
- ``core``: raise ``RLIMIT_CORE`` and abort, leaving a kernel core file in the cwd.
- ``stats``, ``exit``.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import warnings
from typing import IO, Any

from . import _process
from ._enclave import Enclave, enclave_stats, reveal_key_halves
from ._factory import factory_for
from ._process import stats
from ._secret import Secret
from .errors import MemoryLockError, SecureMemoryError

SIZE_32 = 32


class _Child:
    def __init__(self) -> None:
        self.secrets: dict[int, Secret] = {}
        self.controls: list[bytearray] = []
        self.holds: dict[int, tuple[threading.Thread, threading.Event]] = {}
        self.kept: list[memoryview] = []
        self.kept_reads: list[bytes] = []
        self.ids = itertools.count()  # an id is never reused, even after a drop
        self.enclaves: list[Enclave] = []

    def reply(self, **answer: Any) -> None:
        os.write(1, json.dumps(answer).encode() + b"\n")

    @staticmethod
    def send_bytes(s: Secret) -> None:
        # the bytes go out from inside the access; the answer only once it has ended, so the
        # parent never looks at the child while the pages are still readable
        s.with_bytes(lambda view: os.write(1, b"RAW %d\n" % view.nbytes) + os.write(1, view))

    def add(self, s: Secret) -> None:
        key = next(self.ids)
        self.secrets[key] = s
        self.send_bytes(s)
        self.reply(
            id=key,
            data=s._data,
            size=s._size,
            inner=s._inner,
            inner_len=s._inner_len,
            base=s._base,
            mapped=s._mapped,
        )

    def run(self, line: str) -> None:
        cmd, *args = line.split()
        getattr(self, "do_" + cmd)(*args)

    def do_make(self, impl: str, size: str) -> None:
        self.add(factory_for(impl).create_random(int(size)))

    def do_new(self, impl: str, size: str) -> None:
        buf = bytearray(int(size))
        got = 0
        while got < len(buf):
            got += os.readv(0, [memoryview(buf)[got:]])
        self.add(factory_for(impl).new(buf))

    def do_read(self, key: str, how: str) -> None:
        """Read the whole secret through its reader (``readline``, ``readlines``, ``iter``,
        ``read`` or ``read64``) and keep what came back, as a user would."""
        r = self.secrets[int(key)].reader()
        if how == "readline":
            out = list(iter(r.readline, b""))
        elif how == "readlines":
            out = r.readlines()
        elif how == "iter":
            out = list(r)
        elif how == "read":
            out = [r.read()]
        else:
            out = list(iter(lambda: r.read(64), b""))
        self.kept_reads.extend(out)
        self.reply(count=len(out))

    def do_control(self, key: str) -> None:
        self.controls.append(self.secrets[int(key)].with_bytes(bytearray))
        self.reply(ok=True)

    def do_hold(self, key: str) -> None:
        entered, leave = threading.Event(), threading.Event()
        s = self.secrets[int(key)]

        def hold() -> None:
            with s.access():
                entered.set()
                leave.wait()

        thread = threading.Thread(target=hold, daemon=True)
        thread.start()
        entered.wait()
        self.holds[int(key)] = (thread, leave)
        self.reply(ok=True)

    def do_release(self, key: str) -> None:
        thread, leave = self.holds.pop(int(key))
        leave.set()
        thread.join()  # the access has ended when the answer goes out
        self.reply(ok=True)

    def do_close(self, key: str) -> None:
        self.secrets[int(key)].close()
        self.reply(ok=True)

    def do_drop(self, key: str) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del self.secrets[int(key)]
            gc.collect()
        self.reply(warnings=[f"{w.category.__name__}: {w.message}" for w in caught])

    def do_peek(self, key: str) -> None:
        self.reply(byte=_process.peek(self.secrets[int(key)]._data) >= 0)

    def do_peek_in_access(self, key: str) -> None:
        s = self.secrets[int(key)]
        with s.access():
            self.do_peek(key)

    def do_stale_view(self, key: str) -> None:
        view = self.secrets[int(key)].with_bytes(lambda v: v)
        try:
            view[0]
        except ValueError as e:
            self.reply(raised=f"ValueError: {e}")
        else:
            self.reply(raised=None)

    def do_stale_slice(self, key: str, then: str = "") -> None:
        s = self.secrets[int(key)]
        part = s.with_bytes(lambda v: v[1:])
        self.kept.append(part)
        if then == "close":  # the range is quarantined, not unmapped: still no-access
            s.close()
        self.reply(byte=part[0] >= 0)  # SIGSEGV here: the slice points at no-access pages

    def do_fork(self, key: str) -> None:
        s = self.secrets[int(key)]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the grandchild, which never returns
            try:
                os.close(r)
                try:
                    s.with_bytes(len)
                    os.write(w, b"u")  # the library let the child use the parent's secret
                except SecureMemoryError:
                    os.write(w, b"r")  # refused, as it should be
                s.close()  # inert here: nothing of the parent's is touched
                own = factory_for(s.implementation).create_random(32)
                os.write(w, b"o" if own.with_bytes(len) == 32 else b"x")
                own.close()
            finally:
                os._exit(0)
        os.close(w)
        seen = b""
        while chunk := os.read(r, 2):  # until the grandchild exits
            seen += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - a bug in the child: read the pages directly
            try:
                _process.peek(s._data)
            finally:
                os._exit(0)
        _, touched = os.waitpid(pid, 0)
        self.send_bytes(s)  # the parent's secret, after both children
        self.reply(
            refused=seen[:1] == b"r",
            own_secret=seen[1:2] == b"o",
            exit_status=os.waitstatus_to_exitcode(status),
            signal=os.WTERMSIG(touched) if os.WIFSIGNALED(touched) else None,
        )

    def _poke(self, key: str, offset: int) -> None:
        s = self.secrets[int(key)]
        _process.make_writable(s)  # a buggy C extension writing where it should not
        _process.poke(s._data + offset, 0x41)
        _process.make_no_access(s)
        try:
            s.close()
        except Exception as e:
            self.reply(error=f"{type(e).__name__}: {e}", closed=s.closed)
        else:
            self.reply(error=None, closed=s.closed)

    def do_overflow(self, key: str) -> None:
        self._poke(key, self.secrets[int(key)]._size)

    def do_underflow(self, key: str) -> None:
        self._poke(key, -1)

    def do_fill(self, impl: str, size: str) -> None:
        """Create secrets until the kernel refuses to lock one; report what was left behind."""
        factory, made = factory_for(impl), []
        try:
            while True:
                before = stats()
                made.append(factory.create_random(int(size)))
        except MemoryLockError as e:
            after = stats()
            self.reply(
                made=len(made),
                error=str(e),
                errno=e.errno,
                before=before.__dict__,
                after=after.__dict__,
                vmlck=_process.memlock_budget().locked,
            )
        finally:
            for s in made:
                s.close()

    def do_seal(self, key: str) -> None:
        s = self.secrets[int(key)]
        self.enclaves.append(s.seal())
        s.close()
        self.reply(ok=True, enclaves=len(self.enclaves))

    def do_seal_control(self) -> None:
        with self.enclaves[-1].open() as view:
            self.controls.append(bytearray(view))
        self.reply(ok=True)

    def do_seal_many(self, n: str) -> None:
        from ._inspect import maps, status_field

        before = (status_field("self", "VmLck"), len(maps()))
        self.enclaves.extend(Enclave.random(SIZE_32) for _ in range(int(n)))
        after = (status_field("self", "VmLck"), len(maps()))
        st = enclave_stats()
        self.reply(
            vmlck=[before[0], after[0]],
            mappings=[before[1], after[1]],
            keyring_locked=st.locked_bytes,
            secretmem=st.secretmem,
            enclaves=len(self.enclaves),
        )

    def do_enclave_key(self) -> None:
        os.write(1, b"RAW 64\n")
        reveal_key_halves(1)
        st = enclave_stats()
        self.reply(start=st.keyring_address, length=st.locked_bytes, secretmem=st.secretmem)

    def do_core(self) -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)
        os.abort()

    def do_stats(self) -> None:
        self.reply(**stats().__dict__)

    def do_exit(self) -> None:
        self.reply(ok=True)
        sys.exit(0)


def serve(child: _Child) -> None:
    """The child's loop: one command per stdin line, until ``exit`` or EOF. Tests that add
    commands serve a subclass of :class:`_Child` with it."""
    with open(0, "rb", buffering=0, closefd=False) as stdin:  # unbuffered: raw input stays
        for line in iter(stdin.readline, b""):
            try:
                child.run(line.decode())
            except Exception as e:
                child.reply(error=f"{type(e).__name__}: {e}")


def main() -> None:
    serve(_Child())


class ProbeDied(Exception):
    """The child died before answering; ``signal`` is the signal that killed it, if any."""

    def __init__(self, returncode: int | None) -> None:
        self.returncode = returncode
        self.signal = -returncode if returncode is not None and returncode < 0 else None
        name = signal.Signals(self.signal).name if self.signal else f"exit {returncode}"
        super().__init__(f"probe child died ({name})")


def unprivileged_unavailable() -> str | None:
    """Why a child without ``CAP_IPC_LOCK`` cannot be started here, or ``None``."""
    if os.geteuid() != 0:
        return None  # an ordinary user never had the capability
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "import securememory._process as p; print(p.memlock_budget().exempt)",
            ],
            preexec_fn=lambda: _unprivileged(_process.PAGE_SIZE),
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.SubprocessError as e:
        return f"cannot start a child without CAP_IPC_LOCK: {e}"
    if out.stdout.strip() != "False":
        return f"the child kept CAP_IPC_LOCK: {out.stderr.strip()[-300:]}"
    return None


def _unprivileged(memlock: int) -> None:
    """In a forked child before exec: a small ``RLIMIT_MEMLOCK`` and, as root, no CAP_IPC_LOCK.

    ``memlock`` is capped at the current hard limit: only ``CAP_SYS_RESOURCE`` may raise it, and
    a process already held to a small limit (a user, or root without the capability) keeps it.
    """
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    if hard != resource.RLIM_INFINITY:
        memlock = min(memlock, hard)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (memlock, memlock))
    if os.geteuid() == 0:
        _process.drop_ipc_lock_capability()


class Probe:
    """The parent's handle on a probe child. Use as a context manager."""

    def __init__(
        self,
        cwd: str | None = None,
        memlock: int | None = None,
        *,
        script: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        r"""Start a child in ``cwd``; with ``memlock``, the child runs with that
        ``RLIMIT_MEMLOCK`` and without ``CAP_IPC_LOCK`` (dropped from the bounding set, as root).
        ``script`` runs that file instead of this module (a test's child that :func:`serve`\ s
        more commands); ``env`` is added to the environment.
        """
        preexec_fn = None if memlock is None else lambda: _unprivileged(memlock)
        argv = (
            [sys.executable, "-m", "securememory._probe"]
            if script is None
            else [
                sys.executable,
                os.path.abspath(script),
            ]
        )
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=cwd,
            env=None if env is None else {**os.environ, **env},
            preexec_fn=preexec_fn,
        )
        self.pid = self.proc.pid

    def send(self, line: str, raw: bytes = b"") -> dict[str, Any]:
        """Send a command (and raw bytes after it); return the answer, with ``bytes`` if any."""
        stdin, stdout = self._pipes()
        try:
            stdin.write(line.encode() + b"\n" + raw)
            stdin.flush()
        except BrokenPipeError:
            raise ProbeDied(self.proc.wait()) from None
        head = stdout.readline()
        raw_bytes = None
        if head.startswith(b"RAW "):
            raw_bytes = stdout.read(int(head.split()[1]))
            head = stdout.readline()
        if not head:
            raise ProbeDied(self.proc.wait())
        answer: dict[str, Any] = json.loads(head)
        if raw_bytes is not None:
            answer["bytes"] = raw_bytes
        if answer.get("error") and set(answer) == {"error"}:
            raise RuntimeError(f"probe command {line!r} failed: {answer['error']}")
        return answer

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        return self.proc.stdin, self.proc.stdout

    def wait(self, timeout: float = 60) -> int:
        """Wait for the child; return its return code (``-signal`` if killed)."""
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in self._pipes():
            pipe.close()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    main()
