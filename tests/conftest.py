"""Shared fixtures: every guarantee test runs against every implementation the host offers."""

from __future__ import annotations

import os

import pytest

import securememory
from securememory import secretmem
from securememory._probe import factory_for

IMPLEMENTATIONS = ("protected", "guarded", "secretmem")


def skip_unless_available(impl: str) -> None:
    """Skip, with the host's reason, an implementation this host cannot run."""
    if impl == "secretmem":
        avail = secretmem.available()
        if not avail:
            if os.environ.get("CI") == "true":
                pytest.fail(f"secretmem must run in CI: {avail.reason}")
            pytest.skip(f"secretmem unavailable: {avail.reason}")


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    skip_unless_available(name)
    return name


@pytest.fixture
def factory(impl: str) -> securememory.SecretFactory:
    return factory_for(impl)


def require(reason: str | None, what: str) -> None:
    """Skip with ``reason`` when the host lacks something; in CI (root, gdb installed) fail."""
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} must run in CI: {reason}")
    pytest.skip(f"{what}: {reason}")
