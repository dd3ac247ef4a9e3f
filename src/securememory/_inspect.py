"""Looking at a process from outside: its mappings and smaps, its memory, its core dumps.

Serves ``securememory check`` and the test suite, so that both prove the guarantees with the same
code. Linux only (``/proc``); nothing here touches the secrets it looks for except to compare.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Mapping:
    """One line of ``/proc/<pid>/maps``, with its smaps fields when read from ``smaps``."""

    start: int
    end: int
    perms: str  # e.g. "---p", "r--p", "rw-s"
    path: str
    fields: dict[str, int] = field(default_factory=dict)  # smaps "Xxx: N kB", in bytes
    flags: frozenset[str] = frozenset()  # smaps VmFlags

    def overlaps(self, start: int, end: int) -> bool:
        return self.start < end and start < self.end


_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


def _parse_head(line: str) -> Mapping:
    parts = line.split(None, 5)
    lo, hi = parts[0].split("-")
    return Mapping(int(lo, 16), int(hi, 16), parts[1], parts[5].strip() if len(parts) > 5 else "")


def maps(pid: int | str = "self") -> list[Mapping]:
    """The mappings of ``pid`` (``/proc/<pid>/maps``)."""
    with open(f"/proc/{pid}/maps") as f:
        return [_parse_head(line) for line in f if line.strip()]


def smaps(pid: int | str, start: int, end: int) -> list[Mapping]:
    """The smaps entries of ``pid`` that overlap ``[start, end)``, in address order."""
    out: list[Mapping] = []
    cur: Mapping | None = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if _HEADER.match(line):  # a mapping header: "lo-hi perms offset dev inode path"
                cur = _parse_head(line)
                if cur.overlaps(start, end):
                    out.append(cur)
            elif cur is None:
                continue
            elif key == "VmFlags":
                cur.flags = frozenset(rest.split())
            elif rest.strip().endswith("kB"):
                cur.fields[key] = int(rest.split()[0]) * 1024
    return out


def status_field(pid: int | str, name: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmLck``, ``VmRSS``...) in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(name)


def _find_all(data: bytes | memoryview, needle: bytes) -> Iterable[int]:
    hay = bytes(data)
    i = hay.find(needle)
    while i >= 0:
        yield i
        i = hay.find(needle, i + 1)


@dataclass
class ScanResult:
    """Where each needle was found: ``hits[needle] = [(address or offset, mapping path)]``."""

    hits: dict[bytes, list[tuple[int, str]]]
    bytes_read: int = 0
    unreadable: list[tuple[int, int, str]] = field(default_factory=list)  # (lo, hi, "path: why")

    def found(self, needle: bytes, outside: tuple[int, int] | None = None) -> list[int]:
        """Addresses of ``needle``, leaving out those inside ``outside = (start, end)``."""
        return [
            a
            for a, _ in self.hits.get(needle, [])
            if outside is None or not outside[0] <= a < outside[1]
        ]


_CHUNK = 1 << 20


def scan_memory(pid: int, needles: list[bytes]) -> ScanResult:
    """Search every mapping of ``pid`` for ``needles`` through ``/proc/<pid>/mem``.

    ``/proc/<pid>/mem`` reads no-access pages too (the kernel forces the access), but not
    ``memfd_secret`` pages (EIO): those ranges are listed in ``unreadable``. Requires the right
    to ptrace ``pid`` (same user, or root).
    """
    result = ScanResult({n: [] for n in needles})
    overlap = max(len(n) for n in needles) - 1
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for m in maps(pid):
            if m.path == "[vsyscall]":
                continue
            pos, prev_tail = m.start, b""
            while pos < m.end:
                n = min(_CHUNK, m.end - pos)
                try:
                    chunk = os.pread(fd, n, pos)
                except OSError as e:
                    result.unreadable.append((pos, pos + n, f"{m.path}: {e.strerror}"))
                    pos, prev_tail = pos + n, b""
                    continue
                if not chunk:
                    break
                result.bytes_read += len(chunk)
                data = prev_tail + chunk
                base = pos - len(prev_tail)
                for needle in needles:
                    for i in _find_all(data, needle):
                        result.hits[needle].append((base + i, m.path))
                prev_tail = chunk[-overlap:] if overlap else b""
                pos += len(chunk)
    finally:
        os.close(fd)
    for needle in needles:  # a hit in the overlap is seen twice
        result.hits[needle] = sorted(set(result.hits[needle]))
    return result


def scan_file(path: str, needles: list[bytes]) -> ScanResult:
    """Search a file (a core dump) for ``needles``; positions are file offsets."""
    result = ScanResult({n: [] for n in needles})
    with open(path, "rb") as f:
        data = f.read()
    result.bytes_read = len(data)
    for needle in needles:
        result.hits[needle] = [(i, path) for i in _find_all(data, needle)]
    return result


def core_pattern() -> str:
    """``/proc/sys/kernel/core_pattern``."""
    with open("/proc/sys/kernel/core_pattern") as f:
        return f.read().strip()


def kernel_core_unavailable() -> str | None:
    """Why a real kernel core file cannot be collected here, or ``None``."""
    try:
        pattern = core_pattern()
    except OSError as e:
        return f"cannot read core_pattern: {e}"
    if pattern.startswith("|"):
        return f"core_pattern pipes dumps to a program ({pattern.split()[0]}), not to a file"
    if "/" in pattern:
        return f"core_pattern writes to a fixed path ({pattern}); expected a file in the cwd"
    if os.geteuid() != 0 and resource.getrlimit(resource.RLIMIT_CORE)[1] == 0:
        return "the RLIMIT_CORE hard limit is 0 and only root may raise it"
    return None


def find_core(directory: str) -> str | None:
    """The core file a process that died in ``directory`` left there (``core`` or ``core.*``)."""
    pattern = core_pattern().split("%")[0] or "core"
    for name in sorted(os.listdir(directory)):
        if name.startswith(pattern):
            return os.path.join(directory, name)
    return None


def gcore_unavailable() -> str | None:
    """Why ``gcore`` cannot dump a live process here, or ``None``."""
    if shutil.which("gcore") is None:
        return "gcore not installed (Debian: apt-get install gdb)"
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = int(f.read())
    except (OSError, ValueError):
        scope = 0
    if scope >= 1 and os.geteuid() != 0:
        return f"kernel.yama.ptrace_scope is {scope}: gdb may not attach to a sibling process"
    return None


def gcore(pid: int, directory: str) -> str:
    """Dump the live process ``pid`` with gdb's ``gcore``; return the core file's path."""
    prefix = os.path.join(directory, "gcore")
    proc = subprocess.run(
        ["gcore", "-o", prefix, str(pid)], capture_output=True, text=True, timeout=120
    )
    path = f"{prefix}.{pid}"
    if proc.returncode != 0 or not os.path.exists(path):
        raise RuntimeError(f"gcore failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return path
