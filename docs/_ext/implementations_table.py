"""The ``implementations-table`` directive: the guarantees of each implementation, generated
from the one table (``securememory._implementations.IMPLEMENTATIONS``) and the proofs of
``securememory check`` (``securememory.check.PROOFS``), so the page cannot drift from the code.

Each row names the ``check`` proof and the test that observe the guarantee on the host.
``tests/test_docs.py`` reads the built page back and compares it with the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive

from securememory import check
from securememory._implementations import DEFAULT_ORDER, IMPLEMENTATIONS, Implementation

SIZE = 32  # the secret size of the cost row (the size ``securememory check`` uses)


@dataclass(frozen=True)
class Row:
    """One guarantee: its label, whether an implementation has it, the proof and the test."""

    label: str
    has: Callable[[Implementation], bool]
    proof: str  # the name of a securememory.check proof
    test: str  # the test in tests/ that observes it


def _always(_: Implementation) -> bool:
    return True


ROWS: tuple[Row, ...] = (
    Row(
        "pages locked in RAM (``mlock``; secretmem: by the kernel)",
        _always,
        "locked in RAM",
        "test_guarantees.py::test_locked",
    ),
    Row(
        "no access (``PROT_NONE``) when idle, read-only during an access",
        _always,
        "no access when idle",
        "test_guarantees.py::test_idle_read_dies_and_access_read_works",
    ),
    Row(
        "not in a kernel core file (``MADV_DONTDUMP``, ``RLIMIT_CORE`` 0)",
        _always,
        "not in a kernel core file",
        "test_guarantees.py::test_kernel_core_file_excludes_secret",
    ),
    Row(
        "not in a ``gcore`` dump",
        _always,
        "not in a gcore dump",
        "test_guarantees.py::test_gcore_excludes_secret",
    ),
    Row(
        "wiped on ``close()``",
        _always,
        "wiped after close",
        "test_guarantees.py::test_no_copy_after_close_or_gc",
    ),
    Row(
        "wiped when garbage collected (with a ``ResourceWarning``)",
        _always,
        "wiped after GC",
        "test_guarantees.py::test_no_copy_after_close_or_gc",
    ),
    Row(
        "not mapped in a forked child (``MADV_DONTFORK``); refused there",
        _always,
        "hidden from forked child",
        "test_guarantees.py::test_forked_child_cannot_see_secret",
    ),
    Row(
        "guard pages around the data and a per-region canary before it",
        lambda impl: impl.guarded,
        "guard pages and canary",
        "test_guarantees.py::test_guard_pages_and_canary",
    ),
    Row(
        "out of the kernel's direct map: not readable through ``/proc/<pid>/mem`` or ptrace",
        lambda impl: impl.hidden_from_kernel,
        "out of the direct map",
        "test_guarantees.py::test_secretmem_out_of_direct_map",
    ),
    Row(
        "over ``RLIMIT_MEMLOCK``: ``MemoryLockError``, nothing leaked",
        _always,
        "memlock budget enforced",
        "test_guarantees.py::test_memlock_refusal_leaks_nothing",
    ),
    Row(
        "sealed into an ``Enclave`` (``secret.seal()``): plaintext and key in no dump or scan",
        _always,
        "sealed in an enclave",
        "test_enclave_proof.py::test_live_scan_finds_no_plaintext_and_no_key",
    ),
)


def cells() -> tuple[list[str], list[list[str]]]:
    """The table as text: the header and the rows (what the page shows, and what the tests
    compare with the built page)."""
    header = ["guarantee", *(impl.name for impl in IMPLEMENTATIONS), "proof (``check``)", "test"]
    body = [
        [row.label, *("yes" if row.has(i) else "no" for i in IMPLEMENTATIONS), row.proof, row.test]
        for row in ROWS
    ]
    cost = [f"{i.layout(SIZE).mapped} / {i.layout(SIZE).locked}" for i in IMPLEMENTATIONS]
    body.append(
        [f"bytes mapped / locked by one {SIZE}-byte secret", *cost, "per secret", "(layout)"]
    )
    body.append(
        [
            "``SecretFactory()`` picks it (the first the kernel supports, in this order)",
            *(
                str(DEFAULT_ORDER.index(i) + 1) if i in DEFAULT_ORDER else "never"
                for i in IMPLEMENTATIONS
            ),
            "default",
            "test_api.py::test_default_factory_picks_strongest",
        ]
    )
    body.append(["module", *(f"``{i.module}``" for i in IMPLEMENTATIONS), "", ""])
    return header, body


def _cell(text: str) -> nodes.entry:
    entry = nodes.entry()
    para = nodes.paragraph()
    parts = text.split("``")
    for k, part in enumerate(parts):
        if part:
            para += nodes.literal(part, part) if k % 2 else nodes.Text(part)
    entry += para
    return entry


class ImplementationsTable(Directive):
    """``.. implementations-table::``: the guarantees table, from the code."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        header, body = cells()
        table = nodes.table(classes=["implementations-table"])
        group = nodes.tgroup(cols=len(header))
        table += group
        for _ in header:
            group += nodes.colspec(colwidth=1)
        thead = nodes.thead()
        group += thead
        head_row = nodes.row()
        for text in header:
            head_row += _cell(text)
        thead += head_row
        tbody = nodes.tbody()
        group += tbody
        for line in body:
            row = nodes.row()
            for text in line:
                row += _cell(text)
            tbody += row
        return [table]


def proofs_missing() -> list[str]:
    """Proofs of ``securememory check`` that no row of the table names."""
    named = {row.proof for row in ROWS}
    return [p.name for p in check.PROOFS if p.name not in named]


PACKAGES = ("securememory", "securememory.crypto")


def resolve_short_name(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Docstrings name the public classes briefly (``Secret``, ``InvalidTag``, ``Secret.access``):
    resolve such a Python reference to ``securememory.<name>`` or ``securememory.crypto.<name>``
    when that object is documented. Anything else stays unresolved (and fails the build)."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "").lstrip(".~")
    domain = env.get_domain("py")
    for package in PACKAGES:
        full = f"{package}.{target}"
        if full in domain.objects:
            node["reftarget"] = full
            return domain.resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], full, node, contnode
            )
    return None


def setup(app: Any) -> dict[str, Any]:
    missing = proofs_missing()
    if missing:
        raise RuntimeError(f"the guarantees table names no row for these proofs: {missing}")
    app.add_directive("implementations-table", ImplementationsTable)
    app.connect("missing-reference", resolve_short_name)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
