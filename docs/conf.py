"""Sphinx configuration of the securememory docs.

Build (warnings are errors) and run every example (doctest)::

    sphinx-build -W -b html docs docs/_build/html
    sphinx-build -W -b doctest docs docs/_build/doctest

``tests/test_docs.py`` runs both; ``tests/test_recipes.py`` runs each recipe's code, taken from
these pages, against real servers.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))
try:  # the installed package (its compiled core is built there)
    import securememory
except ImportError:  # a checkout whose core was built in place (setup.py build_ext --inplace)
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))
    import securememory

project = "securememory"
author = "the securememory authors"
copyright = "the securememory authors"
release = securememory.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "implementations_table",  # docs/_ext: the guarantees table, generated from the one table
]
# No intersphinx: CI has no network. References to the standard library and to cryptography
# are written as literals or listed below.

exclude_patterns = ["_build"]
root_doc = "index"
nitpicky = True
# An annotation naming SecretFactory matches it in every module that re-exports it (the
# implementation modules); the resolver in docs/_ext picks securememory.SecretFactory. Missing
# references still fail the build.
suppress_warnings = ["ref.python"]
nitpick_ignore_regex = [
    # Names outside this project (no intersphinx, so Sphinx cannot resolve them).
    ("py:class", r"(io|os|socket|typing|collections\.abc|types|dataclasses|concurrent)\..*"),
    ("py:class", r"cryptography\..*"),
    ("py:exc", r"cryptography\..*"),
    ("py:class", r"(memoryview|bytes|bytearray|int|str|bool|object|float|T|Buffer)"),
    ("py:class", r"(Callable|Any|Iterator|Literal|Status|TracebackType|PathLike)"),
    ("py:func", r"hmac\.compare_digest"),
    ("py:exc", r"(TypeError|ValueError|OSError|EOFError|KeyboardInterrupt|ImportError)"),
    # Private modules the docstrings name for readers of the source.
    ("py:mod", r"securememory\._.*"),
    ("py:data", r"securememory\._.*"),
    ("py:class", r"securememory\._.*"),
    # The same private names unqualified: Python 3.9 cannot evaluate an `X | None` annotation,
    # so Sphinx there keeps the annotation's text.
    ("py:class", r"_[A-Z]\w*"),
]

autodoc_default_options = {
    "members": True,
    "undoc-members": False,
}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
add_module_names = False

doctest_global_setup = """
import securememory
from securememory import SecretFactory
"""

html_theme = "alabaster"
html_title = f"securememory {release}"
html_static_path: list[str] = []
