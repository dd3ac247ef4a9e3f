"""What sharing a secret costs (issue 12), as ratios to the private secret measured in the same
run: ``python -m benchmarks.share [--rounds N] [--per-round N]``.

Rows, per implementation (median over rounds of the mean time per operation):

- ``create+close private``: ``create_random(32)`` then ``close()``, the floor of the ratios;
- ``create+close inheritable``: the same with ``inheritable=True`` (a memfd or a kept
  memfd_secret descriptor, sealed, its live marker written);
- ``send+receive+close``: ``send`` over a socketpair, ``receive`` in the same process (the
  descriptor check, a new mapping and lock), then the receiver's ``close()`` (unmap only);
- ``access received``: one ``with_bytes`` on a received secret (the live-marker check added to
  the first access) against one on a private secret.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from typing import Callable

from securememory import receive, send
from securememory._factory import factory_for
from securememory._implementations import IMPLEMENTATIONS


def _per_op(fn: Callable[[], None], rounds: int, per_round: int) -> float:
    """Median over ``rounds`` of the mean nanoseconds per call."""
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for _ in range(per_round):
            fn()
        samples.append((time.perf_counter_ns() - t0) / per_round)
    return statistics.median(samples)


def _measure(name: str, rounds: int, per_round: int) -> list[tuple[str, str, float, float]]:
    f = factory_for(name)
    a, b = socket.socketpair()
    shared = f.create_random(32, inheritable=True)
    private = f.create_random(32)
    send(a, shared)
    received = receive(b)

    def private_cycle() -> None:
        f.create_random(32).close()

    def shared_cycle() -> None:
        f.create_random(32, inheritable=True).close()

    def send_receive() -> None:
        send(a, shared)
        receive(b).close()

    def access_private() -> None:
        private.with_bytes(len)

    def access_received() -> None:
        received.with_bytes(len)

    try:
        floor = _per_op(private_cycle, rounds, per_round)
        inheritable = _per_op(shared_cycle, rounds, per_round)
        round_trip = _per_op(send_receive, rounds, per_round)
        access_floor = _per_op(access_private, rounds, per_round * 4)
        access = _per_op(access_received, rounds, per_round * 4)
    finally:
        for s in (received, shared, private):
            s.close()
        a.close()
        b.close()
    return [
        (name, "create+close private", floor, 1.0),
        (name, "create+close inheritable", inheritable, inheritable / floor),
        (name, "send+receive+close", round_trip, round_trip / floor),
        (name, "access private", access_floor, 1.0),
        (name, "access received", access, access / access_floor),
    ]


def run(rounds: int, per_round: int) -> list[tuple[str, str, float, float]]:
    """(implementation, row, ns per op, ratio to its floor) for every available one."""
    out: list[tuple[str, str, float, float]] = []
    for spec in IMPLEMENTATIONS:
        if spec.unavailable() is None:
            out.extend(_measure(spec.name, rounds, per_round))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=300)
    args = parser.parse_args()
    print(f"{'implementation':<10} {'row':<26} {'ns/op':>10} {'ratio':>7}")
    for impl, row, ns, ratio in run(args.rounds, args.per_round):
        print(f"{impl:<10} {row:<26} {ns:>10.0f} {ratio:>7.2f}")


if __name__ == "__main__":
    main()
