"""The layers, read from the source: each module imports only its own layer and the one below.

    backend (_backend: the only code that knows the compiled core or a system call)
    -> region (_region: layout, protection intent, lock, wipe)
    -> secret (_secret, _process, _implementations: access counting, lifecycle, process state)
    -> factories and tools (_factory, the implementation modules, crypto, check, _probe, _prompt)
    -> the public package (__init__, __main__: names re-exported from the layers above the region)

Leaves that know nothing of secrets (errors, _inspect, _ingress) may be imported anywhere. A new
module must be placed here, so its layer is a decision, not an accident.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "src" / "securememory"

LEAVES = {"errors", "_inspect", "_ingress"}
LAYER = {
    "_backend": 1,
    "_region": 2,
    "_secret": 3,
    "_process": 3,
    "_implementations": 3,
    "_enclave": 3,
    "_factory": 4,
    "_prompt": 4,
    "_probe": 4,
    "_share": 4,
    "check": 4,
    "crypto": 4,
    "guarded": 4,
    "protectedmemory": 4,
    "secretmem": 4,
    "__init__": 5,
    "__main__": 5,
}
IMPLEMENTATION_NAMES = {"secretmem", "guarded", "protected"}


def _modules() -> list[tuple[str, pathlib.Path]]:
    """(top-level module of the package, file) for every Python file in it."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        out.append((rel.parts[0], path))
    return out


def _imports(path: pathlib.Path) -> set[str]:
    """Top-level modules of the package (and ctypes) imported by the file, however spelled."""
    tree = ast.parse(path.read_text(), str(path))
    depth = len(path.relative_to(PACKAGE).parts) - 1  # 0 for a module at the top of the package
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "securememory" and len(parts) > 1:
                    found.add(parts[1])
                elif parts[0] == "ctypes":
                    found.add("ctypes")
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 0:
                parts = mod.split(".")
                if parts[0] == "ctypes":
                    found.add("ctypes")
                if parts[0] != "securememory":
                    continue
                rest = parts[1:]
            else:
                if node.level - 1 > depth:
                    raise AssertionError(f"{path}: relative import beyond the package")
                here = list(path.relative_to(PACKAGE).parts[:-1])
                base = here[: len(here) - (node.level - 1)]
                rest = base + (mod.split(".") if mod else [])
            if rest:
                found.add(rest[0])
            else:  # from . import a, b
                found.update(alias.name for alias in node.names)
    return found


def test_every_module_has_a_layer() -> None:
    unknown = {m for m, _ in _modules()} - set(LAYER) - LEAVES
    assert not unknown, f"place these modules in a layer: {sorted(unknown)}"


@pytest.mark.parametrize("module,path", _modules(), ids=lambda x: str(x))
def test_imports_reach_only_the_layer_below(module: str, path: pathlib.Path) -> None:
    imported = _imports(path) - {module}
    if module in LEAVES:
        assert not (imported - LEAVES - {"ctypes"}) and "ctypes" not in imported, imported
        return
    layer = LAYER[module]
    allowed = {m for m, n in LAYER.items() if n in (layer, layer - 1)} | LEAVES
    if layer == 5:  # the public package re-exports from every layer above the region
        allowed = {m for m, n in LAYER.items() if n >= 3} | LEAVES
    wrong = imported - allowed - {"ctypes"}
    assert not wrong, f"{path.name} (layer {layer}) reaches past the layer below: {sorted(wrong)}"
    if "ctypes" in imported:
        assert module == "_backend", f"only the backend may use ctypes, not {path.name}"


def test_the_layer_test_can_fail(tmp_path: pathlib.Path) -> None:
    """Control: the import reader sees each way of spelling an import."""
    sample = PACKAGE / "crypto" / "_mac.py"
    assert {"_secret"} <= _imports(sample)
    assert "_backend" in _imports(PACKAGE / "_region.py")
    assert {"_process", "_region"} <= _imports(PACKAGE / "_secret.py")


def test_implementations_are_told_apart_only_by_the_table() -> None:
    """No ``x == "secretmem"`` (or any implementation's name) outside the one table."""
    offenders = []
    for _, path in _modules():
        if path.name == "_implementations.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for side in [node.left, *node.comparators]:
                    if isinstance(side, ast.Constant) and side.value in IMPLEMENTATION_NAMES:
                        offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders
