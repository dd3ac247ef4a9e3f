"""Child process: how many 32-byte secrets fit in this process's ``RLIMIT_MEMLOCK``.

Run by :func:`benchmarks.scale.memlock_capacity` with the limit set and (as root) ``CAP_IPC_LOCK``
dropped from the bounding set before ``exec``. Prints one JSON object on stdout.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any

import securememory
from securememory import _inspect

from .ours import factory_for
from .peers import Sodium

CAP = 1 << 20  # stop counting here: the limit is not being applied


def _vmlck() -> int:
    return _inspect.status_field("self", "VmLck")


def count_secrets(impl: str) -> dict[str, Any]:
    """Create secrets until :class:`securememory.MemoryLockError`; close them all again."""
    factory = factory_for(impl)
    live: list[securememory.Secret] = []
    out: dict[str, Any] = {}
    try:
        while len(live) < CAP:
            live.append(factory.create_random(32))
    except securememory.MemoryLockError as e:
        out["stopped_by"] = f"MemoryLockError: {str(e).split(':')[0]}"
    except Exception as e:
        out["stopped_by"] = f"{type(e).__name__}: {e}"
    else:
        out["stopped_by"] = f"cap of {CAP} secrets reached: the limit was not applied"
    out["count"] = len(live)
    out["locked_at_stop"] = _vmlck()
    for s in live:
        s.close()
    return out


def count_sodium() -> dict[str, Any]:
    """libsodium ignores a failed ``mlock``: count the allocations until ``VmLck`` stops
    growing, then a few more to show that ``sodium_malloc`` goes on, unlocked."""
    sodium = Sodium.load()
    if isinstance(sodium, str):
        return {"skipped": sodium}
    ptrs: list[int] = []
    locked, grew = _vmlck(), 0
    while len(ptrs) < CAP:
        p = sodium.malloc(32)
        if not p:
            break
        ptrs.append(p)
        now = _vmlck()
        if now > locked:
            locked, grew = now, len(ptrs)
        elif len(ptrs) - grew >= 100:
            break
    out = {
        "count": grew,
        "locked_at_stop": locked,
        "stopped_by": (
            f"VmLck stopped growing; sodium_malloc went on returning memory "
            f"({len(ptrs) - grew} more allocations, not locked)"
        ),
    }
    for p in ptrs:
        sodium.free(p)
    return out


def main(argv: list[str]) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    st = securememory.stats()
    report: dict[str, Any] = {
        "rlimit_memlock": [soft, hard],
        "memlock_exempt": st.memlock_exempt,
        "counts": {},
    }
    for impl in argv:
        report["counts"][impl] = count_sodium() if impl == "libsodium" else count_secrets(impl)
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
