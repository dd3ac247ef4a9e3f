"""Issue 13 ingress: ``from_stream(..., until=)``, ``from_stdin()`` and ``from_env()``.

The heap proofs run a child that takes a secret from its standard input (a pipe) or from its
environment, then waits while the parent scans its whole memory (``/proc/<pid>/mem``) for the
value: it must be found nowhere outside the secret's own pages, nor in ``/proc/<pid>/environ``.
Controls: the same child reading the value the ordinary way (``sys.stdin.buffer.readline()``,
``os.environ.pop()``) and dropping it is seen to leave copies, so the scan can fail.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from typing import Any

import pytest

import securememory
from securememory import _inspect, stats

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

VAR = "SECUREMEMORY_TEST_SECRET"


def _usage() -> tuple[int, int, int, int]:
    s = stats()
    return s.live_secrets, s.bytes_mapped, s.bytes_locked, s.bytes_quarantined


# ---------------------------------------------------------------------------------------------
# from_stream(until=)
# ---------------------------------------------------------------------------------------------


class _Bytes(io.RawIOBase):
    """A raw stream over some bytes that counts how far it was read."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data, self.pos = data, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with memoryview(buffer) as v:
            n = min(v.nbytes, len(self.data) - self.pos)
            v[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def test_stream_line_stops_at_the_delimiter_and_reads_no_further(
    factory: securememory.SecretFactory,
) -> None:
    base = _usage()
    stream = _Bytes(b"s3cr3t-value\nnext line\n")
    with factory.from_stream(stream, 64, until=b"\n") as s:
        assert s.with_bytes(bytes) == b"s3cr3t-value"
        assert len(s) == 12
    assert stream.pos == 13  # the delimiter consumed, nothing after it
    with factory.from_stream(stream, 64, until=b"\n") as s:
        assert s.with_bytes(bytes) == b"next line"
    with factory.from_stream(_Bytes(b"no newline at end"), 64, until=b"\n") as s:
        assert s.with_bytes(bytes) == b"no newline at end"
    with factory.from_stream(_Bytes(b"a:b"), 64, until=b":") as s:
        assert s.with_bytes(bytes) == b"a"
    with factory.from_stream(_Bytes(b"x" * 16), 16, until=b"\n") as s:  # exactly the maximum
        assert s.with_bytes(bytes) == b"x" * 16
    assert _usage() == base


def test_stream_line_bad_input_leaves_nothing(factory: securememory.SecretFactory) -> None:
    base = _usage()
    with pytest.raises(ValueError, match="longer than the maximum of 16 bytes"):
        factory.from_stream(_Bytes(b"y" * 40 + b"\n"), 16, until=b"\n")
    with pytest.raises(ValueError, match="empty line"):
        factory.from_stream(_Bytes(b"\nrest"), 16, until=b"\n")
    with pytest.raises(EOFError):
        factory.from_stream(_Bytes(b""), 16, until=b"\n")
    with pytest.raises(ValueError, match="one byte"):
        factory.from_stream(_Bytes(b"abc"), 16, until=b"\r\n")
    with pytest.raises(ValueError, match="one byte"):
        factory.from_stream(_Bytes(b"abc"), 16, until="\n")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        factory.from_stream(_Bytes(b"abc"), 0, until=b"\n")
    assert _usage() == base


# ---------------------------------------------------------------------------------------------
# from_stdin, in this process, with sys.stdin on a pipe
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def stdin_pipe(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``sys.stdin`` on the read end of a pipe; yields the write end's fd (closed at the end)."""
    r, w = os.pipe()
    with open(r, encoding="ascii", closefd=True) as stdin:  # a text wrapper, as sys.stdin is
        monkeypatch.setattr(sys, "stdin", stdin)
        try:
            yield w
        finally:
            with contextlib.suppress(OSError):
                os.close(w)


def test_stdin_reads_a_line_and_leaves_the_rest(
    factory: securememory.SecretFactory, stdin_pipe: int
) -> None:
    base = _usage()
    os.write(stdin_pipe, b"from-the-vault\nthe rest")
    os.close(stdin_pipe)
    with factory.from_stdin() as s:
        assert s.with_bytes(bytes) == b"from-the-vault"
    assert os.read(sys.stdin.fileno(), 100) == b"the rest"  # not over-read
    assert _usage() == base


def test_stdin_eof_without_newline_and_read_all(
    factory: securememory.SecretFactory, stdin_pipe: int
) -> None:
    os.write(stdin_pipe, b"no-trailing-newline")
    os.close(stdin_pipe)
    with factory.from_stdin() as s:
        assert s.with_bytes(bytes) == b"no-trailing-newline"


def test_stdin_until_none_reads_to_the_end(
    factory: securememory.SecretFactory, stdin_pipe: int
) -> None:
    os.write(stdin_pipe, b"line one\nline two\n")
    os.close(stdin_pipe)
    with factory.from_stdin(until=None) as s:
        assert s.with_bytes(bytes) == b"line one\nline two\n"


@pytest.mark.parametrize(
    ("fed", "error", "match"),
    [
        (b"", EOFError, "standard input ended"),  # a closed pipe with nothing in it
        (b"\n", ValueError, "empty line"),
        (b"z" * 100 + b"\n", ValueError, "longer than the maximum of 32 bytes"),
    ],
)
def test_stdin_bad_input_leaves_nothing(
    factory: securememory.SecretFactory,
    stdin_pipe: int,
    fed: bytes,
    error: type[Exception],
    match: str,
) -> None:
    base = _usage()
    os.write(stdin_pipe, fed)
    os.close(stdin_pipe)
    with pytest.raises(error, match=match):
        factory.from_stdin(max_size=32)
    assert _usage() == base


def test_stdin_on_a_terminal_reads_one_line(
    factory: securememory.SecretFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal (canonical mode) the line typed is read, the next one left unread."""
    master, slave = os.openpty()
    try:
        with open(slave, "rb", buffering=0, closefd=False) as stdin:
            monkeypatch.setattr(sys, "stdin", stdin)
            os.write(master, b"typed-key\nnext\n")
            with factory.from_stdin() as s:
                assert s.with_bytes(bytes) == b"typed-key"
            assert os.read(slave, 100) == b"next\n"
    finally:
        os.close(master)
        os.close(slave)


def test_stdin_missing_or_closed(
    factory: securememory.SecretFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _usage()
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(OSError, match="no standard input"):
        factory.from_stdin()
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stdin", closed)
    with pytest.raises(OSError, match="no standard input"):
        factory.from_stdin()
    r, w = os.pipe()
    os.close(w)
    with open(r, "rb", buffering=0) as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
    # closed after it was installed: fileno() refuses
    with pytest.raises(OSError, match="no standard input"):
        factory.from_stdin()
    assert _usage() == base


# ---------------------------------------------------------------------------------------------
# from_env, in this process
# ---------------------------------------------------------------------------------------------


def _c_environment() -> bytes:
    """The C environment as a child started without ``env=`` inherits it (not os.environ)."""
    out = subprocess.run(["env", "-0"], capture_output=True, check=True, timeout=60)
    return out.stdout


def test_env_moves_the_value_out_of_every_environment(
    factory: securememory.SecretFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _usage()
    value = os.urandom(24).hex()
    monkeypatch.setenv(VAR, value)
    assert f"{VAR}={value}".encode() in _c_environment()  # control: visible before
    with factory.from_env(VAR) as s:
        assert s.with_bytes(bytes) == value.encode()
    assert VAR not in os.environ
    assert os.environb.get(VAR.encode()) is None
    assert VAR.encode() + b"=" not in _c_environment()
    assert _usage() == base


def test_env_keeps_a_value_someone_else_holds(
    factory: securememory.SecretFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Python ``bytes`` is wiped only when nobody else holds it: a reference the program
    took stays intact (documented as a copy that remains)."""
    value = os.urandom(24).hex().encode()
    monkeypatch.setenv(VAR, value.decode())
    held = os.environb[VAR.encode()]
    with factory.from_env(VAR) as s:
        assert s.with_bytes(bytes) == value
    assert held == value


def test_env_bad_input_leaves_nothing(
    factory: securememory.SecretFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _usage()
    monkeypatch.delenv(VAR, raising=False)
    with pytest.raises(KeyError, match="not set"):
        factory.from_env(VAR)
    monkeypatch.setenv(VAR, "")
    with pytest.raises(ValueError, match="empty"):
        factory.from_env(VAR)
    assert os.environ[VAR] == ""  # an empty variable is left as it is
    with pytest.raises(ValueError, match="invalid"):
        factory.from_env("A=B")
    with pytest.raises(ValueError, match="invalid"):
        factory.from_env("")
    with pytest.raises(TypeError):
        factory.from_env(VAR.encode())  # type: ignore[arg-type]
    assert _usage() == base


# ---------------------------------------------------------------------------------------------
# heap proofs: a child takes the secret, the parent scans all of its memory
# ---------------------------------------------------------------------------------------------

_CHILD = r"""
import json, os, sys
from securememory._factory import factory_for
mode, impl, control_fd = sys.argv[1], sys.argv[2], int(sys.argv[3])
report = {}
secret = None
if mode == "env":
    secret = factory_for(impl).from_env(sys.argv[4])
elif mode == "stdin":
    secret = factory_for(impl).from_stdin()
    report["rest"] = os.read(0, 100).hex()
elif mode == "env-control":  # what a program does without the library
    value = os.environ.pop(sys.argv[4])
    del value
elif mode == "stdin-control":
    line = sys.stdin.buffer.readline()
    del line
if secret is not None:
    report["own"] = [secret._inner, secret._inner + secret._inner_len]
sys.stdout.write(json.dumps(report) + "\n")
sys.stdout.flush()
os.read(control_fd, 1)  # scanned meanwhile
if secret is not None:
    sys.stdout.write(secret.with_bytes(bytes).hex() + "\n")
    sys.stdout.flush()
"""


def _scan_child(
    mode: str, impl: str, value: bytes, *, env: dict[str, str] | None = None, stdin: bytes = b""
) -> tuple[dict[str, Any], dict[bytes, list[int]], bytes, bytes | None]:
    """Run the child, scan it while it waits; return its report, the hits of the value and its
    16-byte pieces outside the secret's pages, its /proc/<pid>/environ, what the secret held."""
    r, w = os.pipe()
    child_env = {k: v for k, v in os.environ.items() if k != VAR}
    child_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, mode, impl, str(r), VAR],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=child_env,
        pass_fds=(r,),
    )
    os.close(r)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
        report = json.loads(proc.stdout.readline())
        own = tuple(report.get("own", (0, 0)))
        needles = [value] + [value[i : i + 16] for i in range(0, len(value) - 15, 8)]
        scan = _inspect.scan_memory(proc.pid, needles)
        hits = {n: scan.found(n, outside=(own[0], own[1])) for n in needles}
        with open(f"/proc/{proc.pid}/environ", "rb") as f:
            environ = f.read()
        os.write(w, b"g")
        line = proc.stdout.readline().strip()
        held = bytes.fromhex(line.decode()) if line else None
        assert proc.wait(60) == 0
    finally:
        os.close(w)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return report, hits, environ, held


@pytest.mark.parametrize("length", [48, 1200])  # a pymalloc block; a malloc chunk (a PEM key)
def test_env_leaves_no_copy_in_the_process(impl: str, length: int) -> None:
    from conftest import skip_unless_available

    skip_unless_available(impl)
    value = os.urandom(length // 2).hex().encode()
    _, hits, environ, held = _scan_child("env", impl, value, env={VAR: value.decode()})
    assert held == value
    assert not any(hits.values()), {n.decode(): h for n, h in hits.items() if h}
    assert value not in environ
    assert VAR.encode() + b"=" in environ  # the name stays in the block; its value is zeroed


def test_control_env_pop_leaves_copies() -> None:
    """Control: ``os.environ.pop()`` leaves the value in the initial environment block (and in
    /proc/<pid>/environ); the scan finds it."""
    value = os.urandom(24).hex().encode()
    _, hits, environ, _ = _scan_child("env-control", "guarded", value, env={VAR: value.decode()})
    assert hits[value]
    assert value in environ


def test_stdin_leaves_no_copy_in_the_process(impl: str) -> None:
    from conftest import skip_unless_available

    skip_unless_available(impl)
    value = os.urandom(24).hex().encode()
    report, hits, _, held = _scan_child("stdin", impl, value, stdin=value + b"\nafter")
    assert held == value
    assert bytes.fromhex(report["rest"]) == b"after"
    assert not any(hits.values()), {n.decode(): h for n, h in hits.items() if h}


def test_control_stdin_readline_leaves_copies() -> None:
    """Control: ``sys.stdin.buffer.readline()`` leaves the line in the reader's buffer."""
    value = os.urandom(24).hex().encode()
    _, hits, _, _ = _scan_child("stdin-control", "guarded", value, stdin=value + b"\nafter")
    assert hits[value]
