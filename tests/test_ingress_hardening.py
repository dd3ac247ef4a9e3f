"""Issue 9 items 5, 6 and 9: ingress that fails leaves nothing behind, and trusts no stream.

- Item 5: a stream whose ``readinto`` raises (``socket.timeout`` after some bytes) must leave no
  view of the new secret behind, even while the caller keeps the exception (and its traceback,
  whose frames hold the buffer ``readinto`` was given): ``stats().bytes_quarantined`` and the
  process's mapping count (``/proc/self/maps``) return to their base over 500 failures. Control: a
  stream that stashes a view of its buffer (where the library cannot reach it) is seen to leave a
  quarantined range, so the measurement can fail.
- Item 6: ``readinto`` returning a negative count, more than it was asked for, or a non-int is a
  clear error at once (it looped forever, or gave a secret padded with zeros).
- Item 9: every kind of source ``new()`` accepts is either copied exactly or refused with a
  ``ValueError`` that says why, and a writable source is wiped either way (strided ctypes views
  with a non-byte format raised ``NotImplementedError`` and were left unwiped).
"""

from __future__ import annotations

import array
import ctypes
import gc
import io
import socket
import sys
from typing import Any, Callable

import pytest

import securememory
from securememory import stats

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")

ROUNDS = 500


def _map_count() -> int:
    with open("/proc/self/maps", "rb") as f:
        return sum(1 for _ in f)


def _usage() -> tuple[int, int, int, int]:
    s = stats()
    return s.live_secrets, s.bytes_mapped, s.bytes_locked, s.bytes_quarantined


class _Timeout(io.RawIOBase):
    """A socket-like raw stream: hands out some bytes, then raises ``socket.timeout``. Its
    ``readinto`` frame keeps what a real one keeps: the buffer, and a view made of it."""

    def __init__(self, stash: list[memoryview] | None = None) -> None:
        super().__init__()
        self.calls = 0
        self.stash = stash

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.calls += 1
        view = memoryview(buffer)  # a view derived from the buffer, left in the frame
        if self.stash is not None:
            self.stash.append(view)  # out of the library's reach: the region is quarantined
        if self.calls > 1:
            raise socket.timeout("timed out")
        n = min(5, view.nbytes)
        view[:n] = b"12345"[:n]
        return n


def _fail_many(
    factory: securememory.SecretFactory, stash: list[memoryview] | None, until: bytes | None = None
) -> list[Any]:
    kept: list[Any] = []
    for _ in range(ROUNDS):
        try:
            factory.from_stream(_Timeout(stash), 32, until=until)
        except socket.timeout as e:
            kept.append(e)  # a caller that logs or re-raises later keeps the traceback
    return kept


@pytest.mark.parametrize("until", [None, b"\n"], ids=["exact", "line"])
def test_failed_stream_leaves_no_view_even_with_the_traceback_kept(
    factory: securememory.SecretFactory, until: bytes | None
) -> None:
    base, maps = _usage(), _map_count()
    kept = _fail_many(factory, None, until)
    assert len(kept) == ROUNDS
    while_kept = stats().bytes_quarantined - base[3]
    assert while_kept == 0, f"{while_kept / ROUNDS:.0f} bytes quarantined per failure"
    assert _map_count() <= maps + 2, "mappings left behind by failed ingress"
    del kept
    gc.collect()
    assert _usage() == base
    assert _map_count() <= maps + 2


def test_control_a_stashed_view_is_seen(factory: securememory.SecretFactory) -> None:
    """Control: a view the stream keeps where the library cannot reach it does keep the range
    quarantined (no-access), and the measurement above sees it; freed when the view goes."""
    base = _usage()
    stash: list[memoryview] = []
    kept = _fail_many(factory, stash)
    assert stats().bytes_quarantined - base[3] > 0
    del kept
    assert stats().bytes_quarantined - base[3] > 0  # still held by the stash
    stash.clear()
    gc.collect()  # the kept tracebacks and _fail_many's frame form a cycle
    assert _usage() == base


class _Lying(io.RawIOBase):
    """A stream whose ``readinto`` writes a byte and returns ``answer``; it stops a loop."""

    def __init__(self, answer: object) -> None:
        super().__init__()
        self.answer, self.calls = answer, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> Any:
        self.calls += 1
        assert self.calls < 100, "from_stream kept calling readinto: it loops on a bad count"
        with memoryview(buffer) as v:
            v[0] = 0x41
        return self.answer


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (-1, OSError),
        (-5, OSError),
        (33, OSError),
        (1 << 40, OSError),
        (2.0, TypeError),
        ("3", TypeError),
        (True, TypeError),
    ],
)
def test_bad_readinto_counts_are_refused_at_once(
    factory: securememory.SecretFactory, answer: object, error: type[Exception]
) -> None:
    base = _usage()
    stream = _Lying(answer)
    with pytest.raises(error, match="readinto"):
        factory.from_stream(stream, 32)
    assert stream.calls == 1
    assert _usage() == base
    with pytest.raises(error, match="readinto"):  # the line reader checks it the same way
        factory.from_stream(_Lying(answer), 32, until=b"\n")
    assert _usage() == base


# ---------------------------------------------------------------------------------------------
# item 9: every kind of source
# ---------------------------------------------------------------------------------------------


class _Pair(ctypes.Structure):
    _fields_ = [("a", ctypes.c_uint32), ("b", ctypes.c_uint32)]


class _BigPair(ctypes.BigEndianStructure):
    _fields_ = [("a", ctypes.c_uint32), ("b", ctypes.c_uint32)]


def _byte_order(order: str) -> type[ctypes.c_uint32]:
    """``c_uint32.__ctype_be__`` / ``__ctype_le__``: there at run time on every CPython, but
    typeshed declares them only from 3.11, so mypy on 3.9 and 3.10 calls them missing."""
    swapped: type[ctypes.c_uint32] = getattr(ctypes.c_uint32, f"__ctype_{order}__")
    return swapped


U32 = ctypes.c_uint32 * 8
U32_BE = _byte_order("be") * 8
U32_LE = _byte_order("le") * 8
CHARS = ctypes.c_char * 32

SOURCES: dict[str, Callable[[], Any]] = {
    "bytearray": lambda: bytearray(range(1, 33)),
    "memoryview": lambda: memoryview(bytearray(range(1, 33))),
    "array.array I": lambda: array.array("I", range(1, 9)),
    "ctypes c_char": lambda: CHARS.from_buffer_copy(bytes(range(1, 33))),
    "ctypes c_uint32 <I": lambda: U32_LE(*range(1, 9)),
    "ctypes c_uint32 native": lambda: U32(*range(1, 9)),
    "ctypes c_uint32 >I": lambda: U32_BE(*range(1, 9)),
    "ctypes c_uint32 scalar": lambda: ctypes.c_uint32(0x01020304),
    "ctypes Structure": lambda: _Pair(0x01020304, 0x05060708),
    "ctypes BigEndianStructure": lambda: _BigPair(0x01020304, 0x05060708),
    "ctypes array of Structure": lambda: (_Pair * 4)(*[_Pair(i, i + 1) for i in range(1, 5)]),
    "ctypes 2-d array": lambda: ((ctypes.c_uint16 * 4) * 4).from_buffer_copy(bytes(range(1, 33))),
}


def _raw(obj: Any) -> bytes:
    """The raw bytes of a C-contiguous buffer, whatever its format."""
    with memoryview(obj) as v:
        return bytes(v.cast("B"))


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_every_contiguous_source_is_copied_and_wiped(
    factory: securememory.SecretFactory, kind: str
) -> None:
    base = _usage()
    source = SOURCES[kind]()
    want = _raw(source)
    assert any(want)
    with factory.new(source) as s:
        assert s.with_bytes(bytes) == want
    assert not any(_raw(source)), f"{kind}: the source was not wiped"
    assert _usage() == base


def test_read_only_sources_are_copied(factory: securememory.SecretFactory) -> None:
    data = bytes(range(1, 33))
    with factory.new(data) as s, factory.new(memoryview(data)) as t:
        assert s.with_bytes(bytes) == t.with_bytes(bytes) == data
    with pytest.raises(ValueError, match="C-contiguous"):  # read-only and strided: refused
        factory.new(memoryview(data)[::2])


STRIDED: dict[str, Callable[[], tuple[Any, memoryview]]] = {}


def _strided(make: Callable[[], Any]) -> Callable[[], tuple[Any, memoryview]]:
    def build() -> tuple[Any, memoryview]:
        owner = make()
        return owner, memoryview(owner)[::2]

    return build


for _name in (
    "bytearray",
    "array.array I",
    "ctypes c_char",
    "ctypes c_uint32 <I",
    "ctypes c_uint32 >I",
    "ctypes c_uint32 native",
    "ctypes array of Structure",
):
    STRIDED[_name + " [::2]"] = _strided(SOURCES[_name])


@pytest.mark.parametrize("kind", sorted(STRIDED))
def test_strided_sources_are_refused_and_wiped(
    factory: securememory.SecretFactory, kind: str
) -> None:
    """A view that is not C-contiguous: ``ValueError`` naming why, and every item it covers
    wiped (the items between them are not the source's and are left alone)."""
    base = _usage()
    owner, view = STRIDED[kind]()
    before = _raw(owner)
    with pytest.raises(ValueError, match="C-contiguous"):
        factory.new(view)
    after = _raw(owner)
    assert view.strides is not None and view.shape is not None
    step, item = view.strides[0], view.itemsize
    covered = {i * step + k for i in range(view.shape[0]) for k in range(item)}
    assert all(after[i] == 0 for i in covered), f"{kind}: the items of the view were not wiped"
    assert all(after[i] == before[i] for i in range(len(before)) if i not in covered)
    assert _usage() == base


def test_bad_sources_are_typed_errors(factory: securememory.SecretFactory) -> None:
    base = _usage()
    with pytest.raises(TypeError, match="str"):
        factory.new("a string")
    with pytest.raises(TypeError, match="bytes-like"):
        factory.new(12345)
    with pytest.raises(ValueError, match="0 bytes"):
        factory.new(bytearray())
    assert _usage() == base
