"""Builds securememory's compiled core; everything else is in pyproject.toml.

A machine without a C compiler (or without the Python headers) gets one clear message and no
package, never a package without its core.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HELP = (
    "securememory needs to compile its core (src/securememory/_backend/_native.c): install a C "
    "compiler and the Python headers, then run pip again. Debian/Ubuntu: apt-get install gcc "
    "python3-dev; Fedora: dnf install gcc python3-devel; macOS: xcode-select --install."
)


class BuildCore(build_ext):
    """build_ext that turns a missing compiler or header into :data:`HELP`."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:
            sys.exit(f"error: {HELP}\n({type(e).__name__}: {e})")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:
            sys.exit(f"error: {HELP}\n({type(e).__name__}: {e})")


setup(
    ext_modules=[
        Extension(
            "securememory._backend._native",
            ["src/securememory/_backend/_native.c"],
            depends=["src/securememory/_backend/enclave.c"],  # #included by _native.c
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
        )
    ],
    cmdclass={"build_ext": BuildCore},
)
