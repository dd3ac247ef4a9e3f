"""Ingress: secrets read straight into locked pages (``from_fd``, ``from_stream``, ``from_file``,
``from_prompt``), and the ``scratch`` buffer.

"Straight into the pages" is checked where it happens: every buffer the library hands to
``os.readv`` or ``readinto`` is looked up in ``/proc/self/smaps`` at the moment of the call and
must lie in the new secret's data range (or, for the prompt, in locked, undumpable scratch
memory). The heap scans of these paths are in ``test_heap_proof.py``.
"""

from __future__ import annotations

import ctypes
import errno
import io
import json
import os
import pty
import select
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import pytest
from conftest import Syscalls

import securememory
from securememory import _inspect, scratch, stats

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")


def _address(view: Any) -> int:
    """The address of a writable buffer's first byte."""
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def _usage() -> tuple[int, int, int]:
    s = stats()
    return s.live_secrets, s.bytes_mapped, s.bytes_locked


def _flags_at(addr: int) -> frozenset[str]:
    entries = _inspect.smaps("self", addr, addr + 1)
    assert entries, f"{addr:#x} is not mapped"
    return entries[0].flags


def _mapped(addr: int, size: int) -> bool:
    return any(m.overlaps(addr, addr + size) for m in _inspect.maps("self"))


class _Spy:
    """Records where the library's reads land: (address, length, smaps flags at that moment)."""

    def __init__(self) -> None:
        self.reads: list[tuple[int, int, frozenset[str]]] = []

    def record(self, buffers: Any) -> None:
        for b in buffers:
            with memoryview(b) as v:
                if v.nbytes:
                    addr = _address(v)
                    self.reads.append((addr, v.nbytes, _flags_at(addr)))

    def inside(self, lo: int, size: int) -> bool:
        return bool(self.reads) and all(lo <= a and a + n <= lo + size for a, n, _ in self.reads)


@pytest.fixture
def readv_spy(monkeypatch: pytest.MonkeyPatch) -> _Spy:
    spy = _Spy()
    real = os.readv

    def readv(fd: int, buffers: Any) -> int:
        spy.record(buffers)
        return real(fd, buffers)

    monkeypatch.setattr(os, "readv", readv)
    return spy


# ---------------------------------------------------------------------------------------------
# from_fd / from_stream / from_file
# ---------------------------------------------------------------------------------------------


def test_from_fd_reads_exactly_size_into_the_pages(
    factory: securememory.SecretFactory, readv_spy: _Spy
) -> None:
    """Partial reads are continued; every read lands in the secret's locked pages; the bytes
    after ``size`` stay in the pipe."""
    data = os.urandom(40)
    r, w = os.pipe()
    try:

        def feed() -> None:  # two writes: the reader sees a short read first
            os.write(w, data[:10])
            threading.Event().wait(0.05)
            os.write(w, data[10:])

        t = threading.Thread(target=feed)
        t.start()
        with factory.from_fd(r, 32) as s:
            t.join()
            assert s.with_bytes(bytes) == data[:32]
            assert readv_spy.inside(s._data, 32)
            assert all("lo" in flags for _, _, flags in readv_spy.reads)
        assert os.read(r, 100) == data[32:]
    finally:
        os.close(r)
        os.close(w)


def test_from_fd_short_input_names_the_count_and_leaves_nothing(
    factory: securememory.SecretFactory,
) -> None:
    before = _usage()
    r, w = os.pipe()
    os.write(w, b"0123456789")
    os.close(w)
    try:
        with pytest.raises(ValueError, match=r"expected 32 bytes .* got 10 before EOF"):
            factory.from_fd(r, 32)
    finally:
        os.close(r)
    assert _usage() == before


def test_from_fd_argument_errors(factory: securememory.SecretFactory) -> None:
    with pytest.raises(TypeError):
        factory.from_fd("0", 32)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        factory.from_fd(True, 32)
    with pytest.raises(ValueError):
        factory.from_fd(0, 0)


class _Chunky(io.RawIOBase):
    """A raw stream that hands out at most 5 bytes per ``readinto`` and records where."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data, self.pos, self.spy = data, 0, _Spy()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.spy.record([buffer])
        with memoryview(buffer) as v:
            n = min(5, v.nbytes, len(self.data) - self.pos)
            v[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def test_from_stream_reads_exactly_size_into_the_pages(
    factory: securememory.SecretFactory,
) -> None:
    data = os.urandom(40)
    stream = _Chunky(data)
    with factory.from_stream(stream, 32) as s:
        assert s.with_bytes(bytes) == data[:32]
        assert stream.spy.inside(s._data, 32)
        assert len(stream.spy.reads) == 7  # 6 * 5 + 2
        assert all("lo" in flags for _, _, flags in stream.spy.reads)
    assert stream.pos == 32


def test_from_stream_short_input_and_bad_streams(factory: securememory.SecretFactory) -> None:
    before = _usage()
    with pytest.raises(ValueError, match="got 12 before EOF"):
        factory.from_stream(_Chunky(b"x" * 12), 32)
    assert _usage() == before

    class NonBlocking(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> None:
            return None

    with pytest.raises(ValueError, match="non-blocking"):
        factory.from_stream(NonBlocking(), 32)
    with pytest.raises(TypeError, match="readinto"):
        factory.from_stream(b"not a stream", 32)
    assert _usage() == before


def test_from_stream_unbuffered_file(factory: securememory.SecretFactory, tmp_path: Any) -> None:
    data = os.urandom(64)
    path = tmp_path / "key"
    path.write_bytes(data)
    with open(path, "rb", buffering=0) as f, factory.from_stream(f, 48) as s:
        assert s.with_bytes(bytes) == data[:48]
        assert f.tell() == 48


def test_from_file_whole_and_prefix(
    factory: securememory.SecretFactory, tmp_path: Any, readv_spy: _Spy
) -> None:
    data = os.urandom(48)
    path = tmp_path / "key"
    path.write_bytes(data)
    with factory.from_file(path) as s:
        assert len(s) == 48
        assert s.with_bytes(bytes) == data
        assert readv_spy.inside(s._data, 48)
    with factory.from_file(str(path), 16) as s:
        assert s.with_bytes(bytes) == data[:16]


def test_from_file_errors_leave_nothing(factory: securememory.SecretFactory, tmp_path: Any) -> None:
    before = _usage()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        factory.from_file(empty)
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    with pytest.raises(ValueError, match="got 3 before EOF"):
        factory.from_file(short, 32)
    with pytest.raises(FileNotFoundError):
        factory.from_file(tmp_path / "missing")
    assert _usage() == before


# ---------------------------------------------------------------------------------------------
# scratch
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def zero_spy(syscalls: Syscalls) -> list[tuple[str, int, int, int]]:
    """Every wipe and unmap the core makes, as (op, address, length, arg), in order."""
    return syscalls.record()


def _assert_scratch_gone(addr: int, calls: list[tuple[str, int, int, int]]) -> None:
    ends = [(op, a, n) for op, a, n, _ in calls if op in ("wipe", "munmap")]
    wipes = [i for i, (op, a, n) in enumerate(ends) if op == "wipe" and a <= addr < a + n]
    unmaps = [i for i, (op, a, n) in enumerate(ends) if op == "munmap" and a <= addr < a + n]
    assert wipes, "the scratch pages were not wiped"
    assert unmaps and wipes[0] < unmaps[0], "the scratch pages were not wiped, then unmapped"
    assert ends[wipes[0]][1] <= addr and addr + 100 <= ends[wipes[0]][1] + ends[wipes[0]][2]
    assert not _mapped(addr, 100), "the scratch pages are still mapped"


def test_scratch_is_locked_then_wiped_and_unmapped(
    zero_spy: list[tuple[str, int, int, int]],
) -> None:
    before = _usage()
    kept: list[memoryview] = []
    with scratch(100) as buf:
        addr = _address(buf)
        assert {"lo", "dd"} <= _flags_at(addr)
        buf[:] = b"\xaa" * 100
        kept.append(buf)
    _assert_scratch_gone(addr, zero_spy)
    assert _usage() == before
    with pytest.raises(ValueError):  # the yielded view is released
        kept[0][0]


def test_scratch_wipes_on_exception(zero_spy: list[tuple[str, int, int, int]]) -> None:
    before = _usage()
    addr = 0
    with pytest.raises(RuntimeError, match="boom"), scratch(100) as buf:
        addr = _address(buf)
        buf[:] = b"\xbb" * 100
        raise RuntimeError("boom")
    _assert_scratch_gone(addr, zero_spy)
    assert _usage() == before


# ---------------------------------------------------------------------------------------------
# from_prompt, in this process, on a pseudo-terminal passed as tty=
# ---------------------------------------------------------------------------------------------

PROMPT = "Passphrase: "


class _Terminal:
    """A pseudo-terminal; ``prompt()`` runs ``from_prompt`` on its slave in a thread while this
    side plays the user: waits for the prompt, types, collects what the screen showed."""

    def __init__(self, master: int, slave: int) -> None:
        self.master, self.slave = master, slave
        self.attrs = termios.tcgetattr(slave)

    def _read(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return b""
        buf = bytearray(4096)
        return bytes(buf[: os.readv(self.master, [buf])])  # not os.read: tests may patch it

    def prompt(
        self, typed: bytes, make: Callable[[], securememory.Secret]
    ) -> tuple[bytes | BaseException, bytes]:
        """Run ``make`` (a from_prompt call) in a thread, type ``typed`` once the prompt is up;
        return the secret's bytes (or the exception) and what the terminal showed."""
        out: list[bytes | BaseException] = []

        def run() -> None:
            try:
                with make() as s:
                    out.append(s.with_bytes(bytes))
            except BaseException as e:
                out.append(e)

        t = threading.Thread(target=run)
        t.start()
        shown = b""
        while PROMPT.encode() not in shown:
            chunk = self._read(10)
            assert chunk, f"no prompt; the screen shows {shown!r}"
            shown += chunk
        os.write(self.master, typed)
        t.join(10)
        assert not t.is_alive(), "from_prompt did not return"
        while chunk := self._read(0.1):
            shown += chunk
        return out[0], shown


@contextmanager
def _terminal() -> Iterator[_Terminal]:
    master, slave = os.openpty()
    try:
        yield _Terminal(master, slave)
    finally:
        os.close(master)
        os.close(slave)


@pytest.fixture
def term() -> Iterator[_Terminal]:
    with _terminal() as t:
        yield t


def test_prompt_reads_the_line_echo_off(
    factory: securememory.SecretFactory, term: _Terminal
) -> None:
    """Exactly the bytes typed (UTF-8, spaces), no newline; echo off; terminal restored."""
    before = _usage()
    typed = "pässwörd with spaces ☃".encode()
    got, shown = term.prompt(typed + b"\n", lambda: factory.from_prompt(PROMPT, tty=term.slave))
    assert got == typed
    assert shown == PROMPT.encode() + b"\r\n"  # the prompt, then the newline it writes itself
    assert termios.tcgetattr(term.slave) == term.attrs
    assert _usage() == before


def test_control_echo_shows_when_on(term: _Terminal) -> None:
    """Control for the echo checks: on the same terminal with echo on, what is typed shows."""
    os.write(term.master, b"visible\n")
    assert os.read(term.slave, 100) == b"visible\n"
    assert b"visible" in term._read(1)


def test_prompt_line_editing_is_the_kernels(
    factory: securememory.SecretFactory, term: _Terminal
) -> None:
    """Canonical mode: the erase character (DEL) is applied by the kernel, not read."""
    erase = bytes([termios.tcgetattr(term.slave)[6][termios.VERASE][0]])
    got, _ = term.prompt(b"abcX" + erase + b"d\n", lambda: factory.from_prompt(tty=term.slave))
    assert got == b"abcd"


def test_prompt_reads_byte_by_byte_into_locked_scratch(
    factory: securememory.SecretFactory,
    term: _Terminal,
    readv_spy: _Spy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One ``readv`` of one byte per character, each into locked, undumpable memory;
    ``os.read`` (which would make a ``bytes``) is never used on the terminal."""
    real_read = os.read

    def read(fd: int, n: int) -> bytes:
        assert fd != term.slave, "os.read on the terminal: the passphrase became a bytes object"
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", read)
    got, _ = term.prompt(b"secret!\n", lambda: factory.from_prompt(tty=term.slave))
    assert got == b"secret!"
    mine = [r for r in readv_spy.reads if r[1] == 1]
    assert len(mine) == len(b"secret!\n")
    assert all({"lo", "dd"} <= flags for _, _, flags in mine)


def test_prompt_empty_eof_and_too_long(
    factory: securememory.SecretFactory, term: _Terminal
) -> None:
    before = _usage()
    got, _ = term.prompt(b"\n", lambda: factory.from_prompt(tty=term.slave))
    assert isinstance(got, ValueError) and "empty" in str(got)
    eof = bytes([term.attrs[6][termios.VEOF][0]])
    got, _ = term.prompt(eof, lambda: factory.from_prompt(tty=term.slave))
    assert isinstance(got, EOFError)
    got, _ = term.prompt(b"x" * 20 + b"\n", lambda: factory.from_prompt(tty=term.slave, max_size=8))
    assert isinstance(got, ValueError) and "max_size=8" in str(got)
    got, _ = term.prompt(b"y" * 8 + b"\n", lambda: factory.from_prompt(tty=term.slave, max_size=8))
    assert got == b"y" * 8  # the long line was drained: this is the next line, whole
    assert termios.tcgetattr(term.slave) == term.attrs
    assert _usage() == before


def test_prompt_refuses_what_is_not_a_terminal(factory: securememory.SecretFactory) -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(OSError, match=r"not a terminal.*from_fd") as info:
            factory.from_prompt(tty=r)
        assert info.value.errno == errno.ENOTTY
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(OSError, match="cannot open"):
        factory.from_prompt(tty="/nonexistent/tty")
    with pytest.raises(ValueError):
        factory.from_prompt(tty=0, max_size=0)
    with pytest.raises(TypeError):
        factory.from_prompt(tty=0, max_size=True)
    with pytest.raises(TypeError):
        factory.from_prompt(b"bytes prompt", tty=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        factory.from_prompt(tty=True)


# ---------------------------------------------------------------------------------------------
# from_prompt in a child whose controlling terminal is a real pty (/dev/tty)
# ---------------------------------------------------------------------------------------------

_CHILD = r"""
import json, os, signal, sys, termios
from securememory import SecretFactory, stats
# a parent started in the background by a non-interactive shell ignores SIGINT, and the child
# would inherit that: ^C must raise KeyboardInterrupt here whatever runs the tests
signal.signal(signal.SIGINT, signal.default_int_handler)
report, prompt = int(sys.argv[1]), sys.argv[2]
result = {}
try:
    secret = SecretFactory().from_prompt(prompt)
except KeyboardInterrupt:
    result["interrupted"] = True
else:
    secret.with_bytes(lambda v: os.write(report, b"%d\n" % v.nbytes) + os.write(report, v))
    secret.close()
result["echo"] = bool(termios.tcgetattr(0)[3] & termios.ECHO)
s = stats()
result["usage"] = [s.live_secrets, s.bytes_mapped, s.bytes_locked]
os.write(report, json.dumps(result).encode() + b"\n")
"""


def _run_on_controlling_terminal(keys: bytes) -> tuple[bytes | None, dict[str, Any], bytes]:
    """Fork a child on a new pty (its controlling terminal), let it call ``from_prompt()``
    with no ``tty``; type ``keys`` once the prompt shows. Return the secret's bytes (if any),
    the child's report and everything the terminal showed."""
    r, w = os.pipe()
    os.set_inheritable(w, True)
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs at once
        try:
            os.execv(sys.executable, [sys.executable, "-c", _CHILD, str(w), PROMPT])
        finally:
            os._exit(127)
    os.close(w)
    shown = b""
    try:
        while PROMPT.encode() not in shown:
            ready, _, _ = select.select([master], [], [], 30)
            assert ready, f"no prompt; the terminal shows {shown!r}"
            shown += os.read(master, 4096)
        os.write(master, keys)
        with os.fdopen(r, "rb") as report:
            first = report.readline()
            secret = None
            if not first.startswith(b"{"):
                secret = report.read(int(first))
                first = report.readline()
        while True:
            ready, _, _ = select.select([master], [], [], 1)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    return secret, json.loads(first), shown


def test_prompt_on_the_controlling_terminal() -> None:
    """``from_prompt()`` opens /dev/tty; the typed passphrase is not echoed; the secret holds it."""
    secret, report, shown = _run_on_controlling_terminal(b"correct horse\n")
    assert secret == b"correct horse"
    assert b"correct horse" not in shown
    assert report["echo"] is True  # restored
    assert report["usage"] == [0, 0, 0]


def test_prompt_interrupted_restores_the_terminal() -> None:
    """^C while typing: KeyboardInterrupt, echo back on, nothing left in secure memory."""
    secret, report, shown = _run_on_controlling_terminal(b"half a pass" + bytes([3]))
    assert secret is None
    assert report["interrupted"] is True
    assert report["echo"] is True
    assert report["usage"] == [0, 0, 0]
    assert b"half a pass" not in shown


def test_prompt_without_a_controlling_terminal() -> None:
    """No /dev/tty (a new session with no terminal): a clear OSError, not a hang."""
    code = (
        "from securememory import SecretFactory\n"
        "try:\n    SecretFactory().from_prompt()\n"
        "except OSError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "no controlling terminal" in out.stdout, out.stdout + out.stderr
