"""Benchmarks of securememory against the physical floor (C and bare ctypes) and its peers
(libsodium's guarded allocator through ctypes, a plain bytearray), in one run.

Run ``python -m benchmarks`` (``--quick`` for a short run, ``--out DIR`` for where report.json
and chart.png go, ``--sizes 1,10,100`` for the N of the scale measurements).
"""

from __future__ import annotations

from .suite import Config, run

__all__ = ["Config", "run"]
