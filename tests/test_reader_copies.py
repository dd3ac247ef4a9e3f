"""Issue 9 item 10: ``SecretReader`` leaves no more copies than the objects the caller receives.

``io.RawIOBase.readline``/``readlines`` read byte by byte into fresh objects and join them,
leaving about two extra heap copies of each line (up to six of one); ``read()`` was seen to leave
48-byte runs on the C stack (spilled vector registers of the copy). A child reads a secret of
lines every way the reader offers and keeps what it got; the parent scans the child's memory
(``/proc/<pid>/mem``): each line, and each 16-byte chunk of the secret, is found exactly as many
times outside the secret's own pages as the results the child keeps hold it. Control: a plain
``bytearray`` copy the child keeps on purpose is found.
"""

from __future__ import annotations

import os

import pytest
from conftest import skip_unless_available

from securememory import _inspect, _probe

LINES = [os.urandom(20).hex().encode() + b"\n" for _ in range(12)]
DATA = b"".join(LINES)


def _chunks(data: bytes) -> list[bytes]:
    return [data[i : i + 16] for i in range(0, len(data) - 15, 16)]


@pytest.mark.parametrize("how", ["readline", "readlines", "iter", "read", "read64"])
def test_reader_leaves_only_what_it_returns(impl: str, how: str) -> None:
    skip_unless_available(impl)
    with _probe.Probe() as p:
        a = p.send(f"new {impl} {len(DATA)}", raw=DATA)
        assert a["bytes"] == DATA
        own = (a["inner"], a["inner"] + a["inner_len"])
        p.send(f"read 0 {how}")
        lines = LINES if how in ("readline", "readlines", "iter") else []
        needles = lines + _chunks(DATA)
        scan = _inspect.scan_memory(p.pid, needles)
        extra = {}
        for line in lines:  # each line lives in exactly one returned object
            n = len(scan.found(line, outside=own))
            if n != 1:
                extra[line.decode().strip()] = n
        for chunk in [] if lines else _chunks(DATA):  # each 16-byte run: once, in its result
            n = len(scan.found(chunk, outside=own))
            if n != 1:
                extra[chunk.hex()] = n
        assert not extra, f"copies beyond the returned objects ({how}): {extra}"
        p.send("control 0")  # control: a copy the child keeps on purpose is found
        again = _inspect.scan_memory(p.pid, [LINES[0]])
        assert len(again.found(LINES[0], outside=own)) >= 2
