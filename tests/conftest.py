"""Shared fixtures: every guarantee test runs against every implementation the host offers."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import securememory
from securememory._backend import _native
from securememory._factory import factory_for
from securememory._implementations import IMPLEMENTATIONS as _TABLE
from securememory._implementations import get

IMPLEMENTATIONS = tuple(i.name for i in _TABLE)


def skip_unless_available(impl: str) -> None:
    """Skip, with the host's reason, an implementation this host cannot run (fail in CI)."""
    reason = get(impl).unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{impl} must run in CI: {reason}")
        pytest.skip(f"{impl} unavailable: {reason}")


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    skip_unless_available(name)
    return name


@pytest.fixture
def factory(impl: str) -> securememory.SecretFactory:
    return factory_for(impl)


class Syscalls:
    """The compiled core's test hook: make the (skip+1)th next call of one system call fail with
    an errno, as the kernel would, or record every call. The only kind of mock the suite uses."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, int]] = []

    def fail(self, op: str, errno: int, skip: int = 0) -> None:
        _native.inject(op, errno, skip)

    def record(self) -> list[tuple[str, int, int, int]]:
        self.calls.clear()
        _native.trace(self.calls)
        return self.calls

    def stop(self) -> None:
        _native.inject(None)
        _native.trace(None)


@pytest.fixture
def syscalls() -> Iterator[Syscalls]:
    s = Syscalls()
    try:
        yield s
    finally:
        s.stop()


def require(reason: str | None, what: str) -> None:
    """Skip with ``reason`` when the host lacks something; in CI (root, gdb installed) fail."""
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} must run in CI: {reason}")
    pytest.skip(f"{what}: {reason}")
