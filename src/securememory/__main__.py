"""``securememory`` / ``python -m securememory``: the command line."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``securememory <command>``; the only command is ``check``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "check":
        print(
            "usage: securememory check [--json] [--implementation NAME]\n"
            "  prove every guarantee of every implementation on this host",
            file=sys.stderr,
        )
        return 2
    from .check import main as check_main

    return check_main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
