"""The modules keep to their layers: every import points down (issue 15).

The layers are the ones ``docs/explanation/architecture.md`` shows, drawn from
``docs/diagrams.py``'s ``LAYERS``: a module imports only modules of its own layer or of the
layers below, so that options flow one way, from the command and the context down to the
primitives.  Imports are read from the source (module level, inside functions, and
``__import__("daemonctx....")``), ``TYPE_CHECKING`` blocks included: a type that points up is a
design that points up.  The package's ``__init__`` (lazy re-exports of every public name) is
exempt.  Every module must be placed in a layer, and open with a docstring saying what it owns.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "daemonctx"


def _layers() -> dict[str, int]:
    spec = importlib.util.spec_from_file_location("diagrams", REPO / "docs" / "diagrams.py")
    assert spec is not None and spec.loader is not None
    diagrams = importlib.util.module_from_spec(spec)
    sys.modules["diagrams"] = diagrams  # its dataclasses look themselves up there
    try:
        spec.loader.exec_module(diagrams)
    finally:
        del sys.modules["diagrams"]
    layer = {name.rstrip("/"): depth for depth, (_, modules) in enumerate(diagrams.LAYERS)
             for name, _ in modules}
    layer.update({name: layer[host] for name, host in diagrams.COMPANIONS.items()})
    return layer


def _module_name(path: Path) -> str:
    """``supervisor`` for every file of the subpackage, else the module's own name."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, first component below daemonctx) of every daemonctx import in ``tree``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "daemonctx":
                continue
            targets = [alias.name for alias in node.names] if len(parts) == 1 else [parts[1]]
            found.extend((node.lineno, target) for target in targets)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[1]) for alias in node.names
                         if alias.name.startswith("daemonctx."))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "__import__" and node.args
              and isinstance(node.args[0], ast.Constant)
              and str(node.args[0].value).startswith("daemonctx.")):
            found.append((node.lineno, str(node.args[0].value).split(".")[1]))
    return found


def test_every_module_has_a_layer_and_says_what_it_owns() -> None:
    layer = _layers()
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        assert name in layer, f"{path.relative_to(REPO)} is in no layer of docs/diagrams.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstring = ast.get_docstring(tree)
        assert docstring and len(docstring.split()) >= 5, \
            f"{path.relative_to(REPO)} does not open with a docstring saying what it owns"


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    layer = _layers()
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if name == "__init__":
            continue  # the public names, re-exported lazily from everywhere
        for line, target in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if target in layer and target != name and layer[target] < layer[name]:
                upward.append(f"{path.relative_to(REPO)}:{line}: {name} imports {target}")
    assert not upward, upward
