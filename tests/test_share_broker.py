"""A secret broker (issue 12; the broker recipe of docs/topics/sharing.rst): one process sends
100 secrets to each of 8 clients over a Unix socket; each client uses them (HMACs all correct)
and closes 99; the broker's close wipes; the one a client kept then raises SecretClosedError at
its next access; nothing leaks in any process (descriptors in /proc/self/fd, mappings of the
shared files, stats()). The control for the leak counts: while the clients hold the secrets the
same counts show 100 descriptors and 100 mappings more.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest
from conftest import skip_unless_available

pytest.importorskip("cryptography", reason="the clients use securememory.crypto.hmac")
PROGRAMS = pathlib.Path(__file__).with_name("share_programs.py")
MESSAGE = b"shared across processes"
CLIENTS = 8
SECRETS = 100


@pytest.mark.parametrize("impl", ["secretmem", "guarded", "protected"])
def test_broker_sends_100_secrets_to_8_clients(impl: str) -> None:
    skip_unless_available(impl)
    keys = [os.urandom(32) for _ in range(SECRETS)]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "broker.sock")
        broker = subprocess.Popen(
            [sys.executable, str(PROGRAMS), "broker", impl, path, str(CLIENTS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert broker.stdin is not None and broker.stdout is not None
        broker.stdin.write(b"".join(keys))
        broker.stdin.close()
        assert json.loads(broker.stdout.readline()) == {"listening": path}
        clients = [
            subprocess.Popen(
                [sys.executable, str(PROGRAMS), "client", path], stdout=subprocess.PIPE
            )
            for _ in range(CLIENTS)
        ]
        outs = [json.loads(c.communicate(timeout=120)[0].splitlines()[-1]) for c in clients]
        final = json.loads(broker.stdout.readline())
        broker.wait(timeout=60)
    assert broker.returncode == 0 and all(c.returncode == 0 for c in clients)
    want = [hmac.new(k, MESSAGE, hashlib.sha256).hexdigest() for k in keys]
    for out in outs:
        assert out["implementation"] == impl
        assert out["tags"] == want
        assert out["later"] == "SecretClosedError"
        base, held, one_left, end = out["base"], out["held"], out["one_left"], out["end"]
        # control: the counts see every received secret (its descriptor, mapping, lock)
        assert held["fds"] - base["fds"] == SECRETS + 1  # + the socket
        assert held["shared_maps"] - base["shared_maps"] == SECRETS
        assert held["live"] - base["live"] == SECRETS and held["locked"] > base["locked"]
        assert one_left["shared_maps"] - base["shared_maps"] == 1
        assert end == base, out
    assert final["broker"]["live"] == 0 and final["broker"]["shared_maps"] == 0
    assert final["broker"]["locked"] == 0
