"""Property tests (hypothesis) of every public entry point with wrong types, sizes and states.

Each example checks the error type and that nothing is left behind (live secrets, bytes mapped and
locked are back where they were).
"""

from __future__ import annotations

import io
from typing import Any, Callable

import pytest
from conftest import IMPLEMENTATIONS, skip_unless_available
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import securememory
from securememory import SecretClosedError
from securememory._factory import factory_for
from securememory._region import MAX_SIZE

settings.register_profile(
    "securememory", max_examples=60, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile("securememory")


def _counters() -> tuple[int, int, int]:
    s = securememory.stats()
    return s.live_secrets, s.bytes_mapped, s.bytes_locked


def _factories() -> list[securememory.SecretFactory]:
    out = []
    for impl in IMPLEMENTATIONS:
        try:
            skip_unless_available(impl)
        except pytest.skip.Exception:
            continue
        out.append(factory_for(impl))
    return out


FACTORIES = _factories()
factories = st.sampled_from(FACTORIES)

not_bytes_like = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(),
    st.lists(st.integers(0, 255)),
    st.dictionaries(st.text(), st.integers()),
    st.tuples(st.integers()),
)
not_int = st.one_of(st.none(), st.booleans(), st.floats(), st.text(), st.binary())
bad_sizes = st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_SIZE + 1))


@given(factories, st.binary(min_size=1, max_size=9000))
def test_new_roundtrip_any_bytes(factory: securememory.SecretFactory, data: bytes) -> None:
    before = _counters()
    src = bytearray(data)
    with factory.new(src) as s:
        assert len(s) == len(data)
        assert s.with_bytes(bytes) == data
        assert s.reader().read() == data
    assert src == bytes(len(data))
    assert _counters() == before


@given(factories, not_bytes_like)
def test_new_rejects_non_buffers(factory: securememory.SecretFactory, bad: object) -> None:
    before = _counters()
    with pytest.raises(TypeError):
        factory.new(bad)
    assert _counters() == before


@given(factories, st.one_of(bad_sizes, not_int))
def test_create_random_rejects(factory: securememory.SecretFactory, size: Any) -> None:
    before = _counters()
    with pytest.raises((TypeError, ValueError)) as e:
        factory.create_random(size)
    assert "size must be" in str(e.value)
    assert _counters() == before


@given(factories, st.integers(1, 20000))
def test_create_random_sizes(factory: securememory.SecretFactory, size: int) -> None:
    before = _counters()
    with factory.create_random(size) as s:
        assert s.with_bytes(lambda v: v.nbytes) == size
    assert _counters() == before


@given(factories, st.integers(1, 64), st.binary(max_size=64))
def test_from_stream_exact_or_short(
    factory: securememory.SecretFactory, size: int, content: bytes
) -> None:
    before = _counters()
    stream = io.BytesIO(content)
    if len(content) >= size:
        with factory.from_stream(stream, size) as s:
            assert s.with_bytes(bytes) == content[:size]
    else:
        with pytest.raises(ValueError, match=f"got {len(content)} before EOF"):
            factory.from_stream(stream, size)
    assert _counters() == before


@given(factories, st.one_of(not_int, bad_sizes))
def test_from_fd_rejects_bad_sizes(factory: securememory.SecretFactory, size: Any) -> None:
    before = _counters()
    with pytest.raises((TypeError, ValueError)):
        factory.from_fd(0, size)
    assert _counters() == before


CLOSED_USES: list[Callable[[securememory.Secret], object]] = [
    lambda s: s.with_bytes(bytes),
    lambda s: s.access().__enter__(),
    lambda s: s.reader(),
    len,
]


@given(factories, st.sampled_from(CLOSED_USES), st.integers(1, 3))
def test_every_use_after_close_raises(
    factory: securememory.SecretFactory,
    use: Callable[[securememory.Secret], object],
    closes: int,
) -> None:
    s = factory.create_random(8)
    for _ in range(closes):
        s.close()
    with pytest.raises(SecretClosedError):
        use(s)


@given(factories, st.integers(1, 5))
def test_nested_access_depth(factory: securememory.SecretFactory, depth: int) -> None:
    with factory.create_random(8) as s:

        def nest(n: int) -> int:
            if n == 0:
                return s._count
            return s.with_bytes(lambda v: nest(n - 1))

        assert nest(depth) == depth
        assert s._count == 0
