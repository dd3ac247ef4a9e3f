"""A view used after its access ended never yields secret bytes.

The view handed to an access is released at its end: using it raises ``ValueError``. A slice or
other view derived from it cannot be released by the library; it points at no-access pages, so
reading it kills the process with SIGSEGV (tested in a child). If such a view is still alive at
``close()``, the address range is wiped and then kept reserved as no-access (quarantined) rather
than unmapped, so the stale view can never read memory the kernel hands out later.
"""

from __future__ import annotations

import weakref

import pytest

import securememory
from securememory import _inspect, _probe


def test_stale_view_raises(impl: str) -> None:
    with _probe.Probe() as p:
        p.send(f"make {impl} 32")
        a = p.send("stale_view 0")
    assert a["raised"].startswith("ValueError") and "released" in a["raised"]


@pytest.mark.parametrize("then", ["", "close"])
def test_stale_slice_dies_with_sigsegv(impl: str, then: str) -> None:
    with _probe.Probe() as p:
        p.send(f"make {impl} 32")
        assert p.send("peek_in_access 0")["byte"] is True  # control: in access it reads
        with pytest.raises(_probe.ProbeDied) as died:
            p.send(f"stale_slice 0 {then}")
    assert died.value.signal == 11


def test_close_with_live_slice_quarantines(factory: securememory.SecretFactory) -> None:
    before = securememory.stats()
    s = factory.create_random(64)
    r = s
    part = s.with_bytes(lambda v: v[8:16])
    s.close()
    after = securememory.stats()
    assert after.bytes_quarantined - before.bytes_quarantined == r._mapped
    assert (after.bytes_locked, after.live_secrets) == (before.bytes_locked, before.live_secrets)
    (m,) = [m for m in _inspect.maps() if m.start <= r._data < m.end]
    assert m.perms == "---p" and m.path == ""  # fresh no-access memory, secretmem file gone
    (sm,) = _inspect.smaps("self", r._inner, r._inner + 1)
    assert sm.fields["Locked"] == 0 and sm.fields["Rss"] == 0  # the wiped pages are released
    with factory.create_random(64) as other:  # the range is never handed out again
        assert not r._base <= other._data < r._base + r._mapped
    del part


def test_close_without_live_views_unmaps(factory: securememory.SecretFactory) -> None:
    before = securememory.stats()
    s = factory.create_random(64)
    data = s._data
    assert s.with_bytes(lambda v: bytes(v[:4])) is not None  # the slice is gone at once
    s.close()
    assert securememory.stats().bytes_quarantined == before.bytes_quarantined
    assert not [m for m in _inspect.maps() if m.start <= data < m.end]


@pytest.mark.parametrize("how", ["with_bytes", "access"])
def test_weakref_callback_on_a_view_runs_after_the_access_ended(
    factory: securememory.SecretFactory, how: str
) -> None:
    """A weak reference's callback on the view is Python code (and a chance for a signal
    handler to run): it runs once the access has ended, never inside its end."""
    s = factory.create_random(32)

    def state() -> tuple[int, str]:
        (m,) = [m for m in _inspect.maps() if m.start <= s._data < m.end]
        return len(s._holders()), m.perms[:3]

    during: list[tuple[int, str]] = []
    after: list[tuple[int, str]] = []
    refs: list[weakref.ref[memoryview]] = []

    def action(view: memoryview) -> None:
        during.append(state())  # control: the probe sees an access
        refs.append(weakref.ref(view, lambda _: after.append(state())))

    if how == "with_bytes":
        s.with_bytes(action)
    else:
        with s.access() as v:
            action(v)
            del v  # only the access holds it now, as in with_bytes
    try:
        assert during == [(1, "r--")]
        assert after == [(0, "---")]
    finally:
        s.close()
