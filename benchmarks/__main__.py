"""``python -m benchmarks``: run the suite, print the table and the targets, write the report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import report as R
from .suite import FULL_SIZES, Config, run


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("sizes must be positive integers")
    return sizes


def parse_args(argv: Sequence[str] | None) -> Config:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer, shorter rounds (under a minute)")
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="output directory")
    p.add_argument(
        "--sizes",
        type=_sizes,
        default=FULL_SIZES,
        help="N live secrets for the scale measurements (default 1,10,100,1000,10000)",
    )
    p.add_argument("--rounds", type=int, help="rounds per measurement (default 41, quick 7)")
    p.add_argument("--round-ms", type=float, help="target time of one round (default 20, quick 3)")
    p.add_argument("--no-memlock-child", action="store_true", help="skip the 8 MiB child")
    p.add_argument("--no-chart", action="store_true", help="do not write chart.png")
    p.add_argument(
        "--no-pin", action="store_true", help="do not pin the two threads of a case to two CPUs"
    )
    p.add_argument("-q", "--silent", action="store_true", help="no progress lines on stderr")
    a = p.parse_args(argv)
    if a.rounds is not None and a.rounds < 1:
        p.error("--rounds must be at least 1")
    if a.round_ms is not None and a.round_ms <= 0:
        p.error("--round-ms must be positive")
    kw: dict[str, Any] = {}
    if a.silent:
        kw["log"] = lambda s: None
    return Config(
        quick=a.quick,
        out=a.out,
        sizes=a.sizes,
        rounds=a.rounds,
        round_ms=a.round_ms,
        memlock_child=not a.no_memlock_child,
        chart=not a.no_chart,
        pin=not a.no_pin,
        **kw,
    )


def render(report: dict[str, Any]) -> str:
    """The printed form of a report: table, memory per secret, memlock capacity, targets."""
    meta = report["meta"]
    out = [
        f"securememory benchmarks ({meta['mode']} mode, {meta['rounds']} rounds, "
        f"{meta['secret_bytes']}-byte secret, Python {meta['python']}, {meta['cpus']} CPUs)",
        "x floor: median / median of the C floor (for ctypes rows: of the same call from C); "
        "x peer: median / median of libsodium through ctypes",
        "",
        R.table(report["results"]),
    ]
    if report["footprint"]:
        out += ["", "memory per secret (securememory.stats() deltas):"]
        for f in report["footprint"]:
            out.append(
                f"  {f['implementation']:<10} N={f['n']:<6} "
                f"mapped {f['bytes_mapped_per_secret']:,.0f} B, "
                f"locked {f['bytes_locked_per_secret']:,.0f} B"
            )
    mem = report["memlock_child"]
    if mem.get("counts"):
        out += [
            "",
            f"largest N in {mem['limit_bytes'] >> 20} MiB RLIMIT_MEMLOCK ({mem['method']}):",
        ]
        for impl, c in mem["counts"].items():
            if "count" in c:
                out.append(f"  {impl:<10} {c['count']:>7}  ({c['stopped_by']})")
            else:
                out.append(f"  {impl:<10} skipped: {c.get('skipped', '?')}")
    if report["skipped"]:
        out += ["", "skipped:"] + [f"  {s['what']}: {s['reason']}" for s in report["skipped"]]
    out += ["", R.targets_text(report["targets"]), "", f"took {meta['seconds']} s"]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    report = run(config)
    print(render(report))
    print(
        f"wrote {config.out / 'report.json'}"
        + (f" and {config.out / 'chart.png'}" if (config.out / "chart.png").exists() else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
