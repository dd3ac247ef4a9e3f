"""Many threads, one secret, a close in the middle: no crash, only SecretClosedError."""

from __future__ import annotations

import threading
import time

import securememory
from securememory import SecretClosedError


def test_eight_threads_with_concurrent_close(factory: securememory.SecretFactory) -> None:
    """8 threads each make at least 10,000 accesses, then a close lands while they go on: each
    thread's run ends with SecretClosedError and nothing else."""
    before = securememory.stats()
    s = factory.create_random(32)
    expected = s.with_bytes(bytes)
    threads_n, per_thread = 8, 10_000
    done = [0] * threads_n
    errors: list[BaseException] = []
    closed_seen = [False] * threads_n
    deadline = time.monotonic() + 120

    def work(i: int) -> None:
        while time.monotonic() < deadline:
            try:
                if not s.with_bytes(lambda v: v == expected):
                    errors.append(AssertionError("wrong bytes read"))
                    return
                done[i] += 1
            except SecretClosedError:
                closed_seen[i] = True
                return
            except BaseException as e:  # anything else is a failure
                errors.append(e)
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    while min(done) < per_thread and time.monotonic() < deadline and not errors:
        time.sleep(0.01)
    s.close()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert min(done) >= per_thread
    assert s.closed and all(closed_seen)
    after = securememory.stats()
    assert (after.live_secrets, after.bytes_locked) == (before.live_secrets, before.bytes_locked)


def test_all_accesses_finish_without_close(factory: securememory.SecretFactory) -> None:
    with factory.create_random(32) as s:
        counts = [0] * 4

        def work(i: int) -> None:
            for _ in range(2_000):
                with s.access() as v:
                    counts[i] += v.nbytes == 32

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert counts == [2_000] * 4
        assert s._count == 0 and not s._holders()


def test_close_waits_for_running_access(factory: securememory.SecretFactory) -> None:
    s = factory.create_random(32)
    inside, closed = threading.Event(), threading.Event()
    observed: list[bool] = []

    def reader() -> None:
        with s.access() as v:
            inside.set()
            closed.wait(0.3)  # close() must not finish while we are here
            observed.append(not closed.is_set() and v.nbytes == 32)

    t = threading.Thread(target=reader)
    t.start()
    inside.wait()
    s.close()
    closed.set()
    t.join()
    assert observed == [True] and s.closed
