"""The public API contract, for every implementation: values, errors, lifecycle, leaks."""

from __future__ import annotations

import array
import copy
import errno
import gc
import io
import mmap
import pickle
import resource
import subprocess
import sys
import threading
import warnings

import pytest
from conftest import Syscalls

import securememory
from securememory import (
    MemoryLockError,
    SecretClosedError,
    SecureMemoryError,
    UnsupportedPlatformError,
    _inspect,
    _region,
    secretmem,
)
from securememory._region import Backing


def _leak_counters() -> tuple[int, int, int]:
    st = securememory.stats()
    return st.live_secrets, st.bytes_mapped, st.bytes_locked


def test_new_copies_and_wipes_writable_sources(factory: securememory.SecretFactory) -> None:
    data = bytes(range(40))
    sources: list[object] = [
        bytearray(data),
        memoryview(bytearray(data)),
        array.array("B", data),
    ]
    m = mmap.mmap(-1, len(data))
    m.write(data)
    sources.append(m)
    for src in sources:
        with factory.new(src) as s:
            assert len(s) == 40
            assert s.with_bytes(bytes) == data
        assert bytes(memoryview(src)) == bytes(40), type(src)  # type: ignore[arg-type]
    m.close()


def test_new_keeps_readonly_sources(factory: securememory.SecretFactory) -> None:
    with factory.new(b"\x01\x02\x03") as s:
        assert s.with_bytes(bytes) == b"\x01\x02\x03"
    ba = bytearray(b"abc")
    with factory.new(memoryview(ba).toreadonly()) as s:
        assert s.with_bytes(bytes) == b"abc"
    assert ba == b"abc"  # a read-only view cannot be wiped through


def test_new_multibyte_format(factory: securememory.SecretFactory) -> None:
    a = array.array("I", [1, 2, 3])
    with factory.new(a) as s:
        assert len(s) == 12
    assert list(a) == [0, 0, 0]


def test_source_wiped_when_creation_fails(
    factory: securememory.SecretFactory, syscalls: Syscalls
) -> None:
    """The kernel refuses the lock (EAGAIN: mlock, or the secretmem mmap that charges it) ->
    MemoryLockError, source wiped, nothing mapped or counted."""
    if factory.spec.backing is Backing.SECRETMEM:
        syscalls.fail("mmap", errno.EAGAIN, skip=1)  # the second mmap maps the secretmem file
    else:
        syscalls.fail("mlock", errno.EAGAIN)
    calls = syscalls.record()
    before = _leak_counters()
    src = bytearray(b"k" * 32)
    with pytest.raises(MemoryLockError, match="RLIMIT_MEMLOCK"):
        factory.new(src)
    syscalls.stop()
    assert src == bytes(32)
    assert _leak_counters() == before
    (first, *_) = [c for c in calls if c[0] == "mmap"]  # the region was mapped ...
    (unmap,) = [c for c in calls if c[0] == "munmap"]  # ... and all of it unmapped
    assert unmap[2] == first[2]
    assert not [m for m in _inspect.maps() if m.start <= unmap[1] < m.end]


def test_empty_source_value_error(factory: securememory.SecretFactory) -> None:
    with pytest.raises(ValueError, match="0 bytes"):
        factory.new(bytearray())


@pytest.mark.parametrize("bad", ["text", 5, None, 3.0, [1, 2], object()])
def test_new_wrong_types(factory: securememory.SecretFactory, bad: object) -> None:
    with pytest.raises(TypeError, match="bytes-like"):
        factory.new(bad)


def test_new_non_contiguous_refused_and_wiped(factory: securememory.SecretFactory) -> None:
    ba = bytearray(b"S3CR3T-S3CR3T")
    with pytest.raises(ValueError, match="contiguous"):
        factory.new(memoryview(ba)[::2])
    assert ba[::2] == bytes(7) and ba[1::2] == b"3RTSC3"  # the source items, and only they


def test_create_random(factory: securememory.SecretFactory) -> None:
    a, b = factory.create_random(32), factory.create_random(32)
    try:
        assert a.with_bytes(bytes) != b.with_bytes(bytes)
        assert a.with_bytes(bytes) != bytes(32)
    finally:
        a.close()
        b.close()
    with factory.create_random(5000) as big:  # across pages, getrandom in one call or more
        assert len(big) == 5000 and big.with_bytes(lambda v: v.nbytes) == 5000


@pytest.mark.parametrize("size", [0, -1, securememory._region.MAX_SIZE + 1])
def test_bad_sizes(factory: securememory.SecretFactory, size: int) -> None:
    with pytest.raises(ValueError, match="between 1 and"):
        factory.create_random(size)


@pytest.mark.parametrize("size", [True, 3.0, "32", None])
def test_bad_size_types(factory: securememory.SecretFactory, size: object) -> None:
    with pytest.raises(TypeError, match="size must be an int"):
        factory.create_random(size)  # type: ignore[arg-type]


def test_views_are_read_only_and_released(factory: securememory.SecretFactory) -> None:
    with factory.create_random(16) as s:
        with s.access() as view:
            assert view.readonly and view.format == "B" and view.nbytes == 16
            with pytest.raises(TypeError):
                view[0] = 1
        with pytest.raises(ValueError, match="released"):
            view[0]
        kept = s.with_bytes(lambda v: v)
        with pytest.raises(ValueError, match="released"):
            bytes(kept)


def test_with_bytes_returns_result_and_propagates(factory: securememory.SecretFactory) -> None:
    with factory.new(b"abc") as s:
        assert s.with_bytes(lambda v: v[1]) == ord("b")
        empty: dict[int, int] = {}
        with pytest.raises(KeyError):
            s.with_bytes(lambda v: empty[v[0]])
        assert s.with_bytes(bytes) == b"abc"  # still usable, and no-access again
        assert s._count == 0


def test_nested_access(factory: securememory.SecretFactory) -> None:
    with factory.new(b"xyz") as s:
        with s.access() as a, s.access() as b:
            assert bytes(a) == bytes(b) == b"xyz"
            assert s._count == 2
        assert s._count == 0
        acc = s.access()
        with acc, pytest.raises(RuntimeError, match="already entered"):
            acc.__enter__()


def test_close_is_idempotent_and_everything_after_raises(
    factory: securememory.SecretFactory,
) -> None:
    before = _leak_counters()
    s = factory.new(b"secret")
    s.close()
    s.close()
    assert s.closed
    assert _leak_counters() == before
    for use in (
        lambda: s.with_bytes(bytes),
        lambda: s.access().__enter__(),
        lambda: len(s),
        s.reader,
    ):
        with pytest.raises(SecretClosedError):
            use()
    assert "closed" in repr(s)


def test_close_inside_access_raises_without_deadlock(factory: securememory.SecretFactory) -> None:
    with factory.new(b"abc") as s:
        with pytest.raises(SecureMemoryError, match="inside an access"):
            s.with_bytes(lambda v: s.close())
        assert not s.closed
        assert s.with_bytes(bytes) == b"abc"


def test_context_manager_closes(factory: securememory.SecretFactory) -> None:
    with factory.new(b"abc") as s:
        assert not s.closed
    assert s.closed


def test_repr_bool_pickle_copy(factory: securememory.SecretFactory) -> None:
    with factory.new(b"topsecretvalue") as s:
        for text in (repr(s), str(s), f"{s}"):
            assert "topsecret" not in text and factory.implementation in text
        assert bool(s) is True
        with pytest.raises(TypeError, match="pickled or copied"):
            pickle.dumps(s)
        with pytest.raises(TypeError, match="pickled or copied"):
            copy.copy(s)
        with pytest.raises(TypeError, match="pickled or copied"):
            copy.deepcopy(s)
        assert not hasattr(s, "__dict__")


def test_reader(factory: securememory.SecretFactory) -> None:
    data = bytes(range(100))
    with factory.new(data) as s:
        r = s.reader()
        assert isinstance(r, io.RawIOBase) and r.readable() and r.seekable()
        buf = bytearray(30)
        assert r.readinto(buf) == 30 and buf == data[:30]
        assert r.read(10) == data[30:40]
        assert r.tell() == 40
        r.seek(-5, io.SEEK_END)
        assert r.read() == data[95:]
        assert r.read() == b"" and r.readinto(buf) == 0
        r.seek(0)
        assert io.BufferedReader(r).read() == data
        with pytest.raises(ValueError):
            r.seek(-1)


def test_gc_of_unclosed_secret_wipes_and_warns(factory: securememory.SecretFactory) -> None:
    before = _leak_counters()
    s = factory.new(b"abc")
    assert _leak_counters()[0] == before[0] + 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del s
        gc.collect()
    assert _leak_counters() == before
    (w,) = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert "test_api.py" in str(w.message) and "never closed" in str(w.message)


def test_stats() -> None:
    factory = securememory.SecretFactory()
    st0 = securememory.stats()
    with factory.create_random(32):
        st = securememory.stats()
        assert st.live_secrets == st0.live_secrets + 1
        assert st.total_created == st0.total_created + 1
        assert st.bytes_locked - st0.bytes_locked == 4096
        assert st.bytes_mapped - st0.bytes_mapped == 3 * 4096
        soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        assert st.memlock_limit == (None if soft == resource.RLIM_INFINITY else soft)
        assert st.memlock_hard_limit == (None if hard == resource.RLIM_INFINITY else hard)
        if st.memlock_exempt:
            assert st.memlock_available is None
        else:
            assert st.memlock_available is not None
    assert securememory.stats().live_secrets == st0.live_secrets


def test_default_factory_picks_strongest() -> None:
    f = securememory.SecretFactory()
    assert isinstance(f, securememory.SecretFactory)
    assert f.implementation == ("secretmem" if secretmem.available() else "guarded")
    with f.create_random(8) as s:
        assert s.implementation == f.implementation


def test_secretmem_availability_is_explained() -> None:
    avail = secretmem.available()
    assert bool(avail) == avail.ok
    assert avail.ok or avail.reason


def test_secretmem_unavailable_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import securememory._implementations as table

    monkeypatch.setattr(table, "secretmem_unavailable", lambda: "kernel too old (injected)")
    assert not secretmem.available()
    with pytest.raises(UnsupportedPlatformError, match="kernel too old"):
        secretmem.SecretFactory()
    assert securememory.SecretFactory().implementation == "guarded"


def test_mprotect_failure_fails_closed(
    factory: securememory.SecretFactory, syscalls: Syscalls
) -> None:
    """If the region cannot be made readable, the secret is wiped, freed and closed."""
    before = _leak_counters()
    s = factory.create_random(32)
    syscalls.fail("mprotect", errno.ENOMEM)  # what mprotect gives when VMAs run out
    with pytest.raises(SecureMemoryError, match="Cannot allocate memory") as e:
        s.with_bytes(bytes)
    assert e.value.errno == errno.ENOMEM
    assert s.closed and _leak_counters() == before


def test_core_dumps_disabled_by_first_factory() -> None:
    """In a fresh interpreter: RLIMIT_CORE soft becomes 0; the opt-out leaves it alone."""
    code = (
        "import resource, securememory.guarded as g\n"
        "resource.setrlimit(resource.RLIMIT_CORE, (4096, resource.getrlimit(4)[1]))\n"
        "g.SecretFactory(disable_core_dumps={flag})\n"
        "print(resource.getrlimit(resource.RLIMIT_CORE)[0])\n"
    )
    for flag, expected in (("True", "0"), ("False", "4096")):
        out = subprocess.run(
            [sys.executable, "-c", code.format(flag=flag)], capture_output=True, text=True
        )
        assert out.stdout.strip() == expected, out.stderr


def test_exit_wipes_live_secrets() -> None:
    """At interpreter exit every open secret is wiped: the core's own record of its calls, read
    by an atexit hook registered before securememory's (so it runs after it)."""
    code = (
        "import atexit\n"
        "calls = []\n"
        "atexit.register(lambda: print(sorted({c[0] for c in calls if c[2] >= 32})))\n"
        "import securememory\n"
        "from securememory._backend import _native\n"
        "s = securememory.SecretFactory().create_random(32)\n"
        "_native.trace(calls)\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", code],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['mprotect', 'wipe']"  # made writable, wiped, left mapped
    assert "ResourceWarning" not in out.stderr


def test_forked_child_exits_cleanly(factory: securememory.SecretFactory) -> None:
    """A forked child that exits normally runs the exit wipe on its copy without an error."""
    code = (
        "import os, sys, {module} as m\n"
        "s = m.SecretFactory().create_random(32)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    sys.exit(0)  # atexit runs here, in the child\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status))\n"
    )
    module = factory.spec.module
    out = subprocess.run(
        [sys.executable, "-c", code.format(module=module)], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == "0", out.stderr
    assert "Exception" not in out.stderr and "Error" not in out.stderr, out.stderr


def _perms(s: securememory.Secret) -> str:
    (m,) = _inspect.smaps("self", s._inner, s._inner + 1)
    return m.perms


def test_access_left_from_another_thread(factory: securememory.SecretFactory) -> None:
    """An access context entered in one thread and left in another is uncounted correctly."""
    with factory.create_random(16) as s:
        ctx = s.access()
        ctx.__enter__()
        t = threading.Thread(target=ctx.__exit__, args=(None, None, None))
        t.start()
        t.join()
        assert s._count == 0 and not s._holders()
        assert _perms(s).startswith("---")
    assert s.closed


def test_free_releases_pages_even_if_they_cannot_be_wiped(
    factory: securememory.SecretFactory, syscalls: Syscalls
) -> None:
    """mprotect refused when close makes the pages writable to wipe them: close raises, yet the
    mapping is gone and nothing stays counted."""
    before = _leak_counters()
    s = factory.create_random(32)
    base = s._base
    syscalls.fail("mprotect", errno.ENOMEM)
    with pytest.raises(SecureMemoryError, match="Cannot allocate memory"):
        s.close()
    assert s.closed and _leak_counters() == before
    assert not [m for m in _inspect.maps() if m.start <= base < m.end]


@pytest.mark.parametrize("how", ["close", "gc", "canary", "failed-create"])
def test_wipe_comes_before_unmap(
    factory: securememory.SecretFactory, how: str, syscalls: Syscalls
) -> None:
    """The order of the calls that end a region, recorded by the core as they pass to the
    kernel: the whole inner range is zeroed, then the whole mapping unmapped (which unlocks it).
    A wipe removed or moved after the unmap fails this test."""
    region: securememory.Secret | None = None
    if how == "failed-create":
        # a guarded region draws its canary first; the data's fill is the next draw
        syscalls.fail("getrandom", errno.EIO, skip=1 if factory.spec.guarded else 0)
        calls = syscalls.record()
        with pytest.raises(SecureMemoryError, match="getrandom"):
            factory.create_random(32)
    else:
        s = factory.create_random(32)
        region = s
        inner, inner_len, base, mapped = s._inner, s._inner_len, s._base, s._mapped
        calls = syscalls.record()
        if how == "close":
            s.close()
        elif how == "gc":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                del s, region
                gc.collect()
        else:
            if s._canary_len == 0:
                pytest.skip("protected memory has no canary")
            _region.make_writable(s)
            _region.poke(s._data - 1, _region.peek(s._data - 1) ^ 0xFF)
            _region.make_no_access(s)
            calls.clear()
            with pytest.raises(securememory.CanaryError):
                s.close()
    syscalls.stop()
    names = [c[0] for c in calls if c[0] in ("wipe", "munmap")]
    assert names == ["wipe", "munmap"], calls
    wipe, unmap = [c for c in calls if c[0] in ("wipe", "munmap")]
    if how != "failed-create":
        assert wipe[1:3] == (inner, inner_len)
        assert unmap[1:3] == (base, mapped)
    else:
        guard_pages = 1 if not factory.spec.guarded else 2
        assert wipe[2] == unmap[2] - guard_pages * 4096


@pytest.mark.parametrize("where", ["before-data", "random-start", "first-byte", "middle"])
def test_canary_checked_at_access_end_and_close(
    factory: securememory.SecretFactory, where: str
) -> None:
    """A byte changed in the canary: its random part (the 32 bytes right before the data, where
    an underflow lands first) is checked when the last access ends; the zeros in front of it
    (from the first byte of the inner pages) when the secret is freed. Either way the secret is
    wiped and closed before ``CanaryError`` is raised."""
    if not factory.spec.guarded:
        pytest.skip(f"{factory.implementation} memory has no canary by design")
    s = factory.create_random(32)
    at = {
        "before-data": s._data - 1,
        "random-start": s._data - 32,
        "first-byte": s._inner,
        "middle": s._inner + 2048,
    }[where]
    _region.make_writable(s)
    _region.poke(at, _region.peek(at) ^ 0xFF)
    _region.make_no_access(s)
    if where in ("first-byte", "middle"):
        assert s.with_bytes(len) == 32  # an access end does not read the middle of the page
        with pytest.raises(securememory.CanaryError):
            s.close()
    else:
        with pytest.raises(securememory.CanaryError):
            s.with_bytes(len)
    assert s.closed


def test_canary_found_by_the_last_access_of_a_closing_secret_is_raised(
    factory: securememory.SecretFactory,
) -> None:
    """The last access to end frees a closing secret and checks its whole canary there: a change
    in the middle of it is raised from that access's end (and from the waiting close()), not
    only recorded."""
    if not factory.spec.guarded:
        pytest.skip(f"{factory.implementation} memory has no canary by design")
    import threading

    s = factory.create_random(32)
    at = s._inner + 2048
    _region.make_writable(s)
    _region.poke(at, _region.peek(at) ^ 0xFF)
    _region.make_no_access(s)
    closer_error: list[BaseException] = []

    def close() -> None:
        try:
            s.close()
        except BaseException as e:
            closer_error.append(e)

    t = threading.Thread(target=close)
    with pytest.raises(securememory.CanaryError), s.access():  # raised as the access ends
        t.start()
        while s._state != 2:  # closing: the closer is waiting for this access
            t.join(0.001)
    t.join(10)
    assert s.closed
    assert [type(e) for e in closer_error] == [securememory.CanaryError]
