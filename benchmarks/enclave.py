"""Sealed enclaves (issue 11): what is timed, and the envelope-encryption workload.

- ``with e.open() as v: v[0]``: enter, recombine the key, decrypt into a pool slot, read, wipe,
  exit: compared with the C floor of one ``mprotect`` pair (what any secret kept no-access
  between uses pays), alone and with a C thread spinning on the other CPU;
- ``Enclave.seal(32 bytes)``, compared with the open;
- memguard's published ``Enclave.Open`` design (two guarded, locked buffers per open), its system
  calls only, from C (``floor_memguard_opens`` in floor.c);
- envelope encryption, the job Asherah exists for: 100,000 data keys, one per record, each sealed
  in an enclave; per record, AES-256-GCM of a 1 KiB record with its key through
  ``securememory.crypto.AEAD`` (which opens the enclave), against ``cryptography``'s ``AESGCM``
  with the keys as ``bytes``.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from .timing import Op

RECORD = os.urandom(1024)
ENVELOPE_KEYS = 100_000


def unavailable() -> str | None:
    """Why enclaves cannot be benchmarked here, or ``None``."""
    try:
        import nacl  # noqa: F401
    except ImportError:
        return "PyNaCl is not installed (the 'enclave' extra)"
    return None


def crypto_unavailable() -> str | None:
    try:
        import securememory.crypto  # noqa: F401
    except ImportError as e:
        return f"securememory.crypto unavailable: {e}"
    return None


def open_read(e: Any) -> Op:
    def op() -> None:
        with e.open() as v:
            v[0]

    return op


def seal_32() -> Op:
    from securememory import Enclave

    data = bytes(range(32))
    seal = Enclave.seal

    def op() -> None:
        seal(data)

    return op


def envelope_ours(keys: list[Any]) -> Op:
    from securememory.crypto import AEAD

    cycle = itertools.cycle(keys)
    record, urandom = RECORD, os.urandom

    def op() -> None:
        AEAD(next(cycle)).encrypt(urandom(12), record, None)

    return op


def envelope_plain(keys: list[bytes]) -> Op:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    cycle = itertools.cycle(keys)
    record, urandom = RECORD, os.urandom

    def op() -> None:
        AESGCM(next(cycle)).encrypt(urandom(12), record, None)

    return op


def envelope_keys(n: int = ENVELOPE_KEYS) -> tuple[list[Any], list[bytes]]:
    """``n`` random data keys sealed in enclaves, and ``n`` other ones as ``bytes``."""
    from securememory import Enclave

    return [Enclave.random(32) for _ in range(n)], [os.urandom(32) for _ in range(n)]
