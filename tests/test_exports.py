"""The public surface: a name added, removed or renamed fails here until this file says so.

Everything else in the package is private (a leading underscore) and may change without notice.
"""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "securememory": {
        "CanaryError",
        "Enclave",
        "MapCountError",
        "MemoryLockError",
        "Secret",
        "SecretClosedError",
        "SecretFactory",
        "SecretReader",
        "SecureMemoryError",
        "Stats",
        "UnsupportedPlatformError",
        "catch_signals",
        "purge",
        "receive",
        "scratch",
        "send",
        "stats",
    },
    "securememory.crypto": {
        "AEAD",
        "Ed25519PrivateKey",
        "InvalidTag",
        "X25519PrivateKey",
        "argon2id",
        "constant_time_equal",
        "hkdf",
        "hmac",
    },
    "securememory.errors": {
        "CanaryError",
        "MapCountError",
        "MemoryLockError",
        "SecretClosedError",
        "SecureMemoryError",
        "UnsupportedPlatformError",
    },
    "securememory.guarded": {"SecretFactory"},
    "securememory.protectedmemory": {"SecretFactory"},
    "securememory.secretmem": {"Availability", "SecretFactory", "available"},
    "securememory.check": {"main", "run", "Report"},
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = set(getattr(module, "__all__", ()))
    if name == "securememory.check":  # a command with a small API, no __all__ of its own
        assert PUBLIC[name] <= set(dir(module))
        return
    assert exported == PUBLIC[name]
    for attr in exported:
        obj = getattr(module, attr)
        if getattr(obj, "__module__", "").startswith("securememory"):  # ours, not re-exported
            assert getattr(obj, "__doc__", None), f"{name}.{attr} has no docstring"


def test_public_names_are_not_underscored() -> None:
    for name, names in PUBLIC.items():
        assert not [n for n in names if n.startswith("_")], name
