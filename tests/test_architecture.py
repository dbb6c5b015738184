"""The pipeline walks one way: text -> spec -> torch modules -> fixed-step graph -> ONNX.

An AST walk over every ``import`` in ``odespec/`` (module level and inside functions alike: a
lazy import is still a dependency) keeps the rules of the brief:

- ``spec/`` imports no torch and nothing downstream (compile, export, train, api, cli);
- ``solvers/`` knows nothing of spec, layers, compile, export, train;
- ``layers/`` imports nothing of compile, export, train;
- ``export/`` and ``train/`` do not import each other;
- ``data_contract`` imports no torch and nothing of the pipeline (validate, train and run read by it);
- nothing imports ``cli`` (the console script and ``python -m odespec`` call it from outside).

``python tests/test_architecture.py`` prints the package import graph these rules are checked on.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "odespec"

#: (importing part, forbidden parts, why)
RULES = [
    ("spec", {"torch", "compile", "export", "train", "api", "cli"}, "spec/ is text -> frozen objects: no torch, nothing downstream"),
    ("solvers", {"spec", "layers", "compile", "export", "train", "api", "cli"}, "solvers/ knows nothing of specs, layers, compile, export or train"),
    ("layers", {"compile", "export", "train", "api", "cli"}, "layers/ owns a layer's parts, not the pipeline's later stages"),
    ("export", {"train", "cli"}, "export/ and train/ do not import each other"),
    ("train", {"export", "cli"}, "export/ and train/ do not import each other"),
    ("compile", {"export", "train", "cli"}, "compile/ is upstream of export and train"),
    ("api", {"cli"}, "nothing imports cli"),
    ("errors", {"spec", "solvers", "layers", "compile", "export", "train", "api", "cli", "torch"}, "errors are the root"),
    ("data_contract", {"torch", "spec", "solvers", "layers", "compile", "export", "train", "api", "cli"},
     "the data contract is numpy only: validate, train and run all read files by it"),
]
# the console-script entry point runs the CLI; it is the one module allowed to import it
ENTRY_POINTS = {"__main__"}


def part_of(module: Path) -> str:
    """The package part a file belongs to: ``spec``, ``solvers``, ... or a top-level module's name."""
    rel = module.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported(tree: ast.AST, module: Path) -> set[str]:
    """Dotted names of every module ``tree`` imports (relative imports resolved)."""
    names: set[str] = set()
    package = ["odespec", *module.relative_to(ROOT).parent.parts]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def target_part(name: str) -> str | None:
    """The part an imported dotted name lands in (``torch`` for torch), or None if neither."""
    head, *rest = name.split(".")
    if head == "torch":
        return "torch"
    if head != "odespec" or not rest:
        return None
    candidate = ROOT / rest[0]
    return rest[0] if candidate.is_dir() or candidate.with_suffix(".py").is_file() else None


def import_graph() -> dict[str, dict[str, set[str]]]:
    """part -> imported part -> the files (relative to odespec/) that import it."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in sorted(ROOT.rglob("*.py")):
        src = part_of(path)
        for name in _imported(ast.parse(path.read_text(encoding="utf-8")), path):
            dst = target_part(name)
            if dst is not None and dst != src:
                graph[src][dst].add(str(path.relative_to(ROOT)))
    return graph


@pytest.mark.parametrize("part, forbidden, why", RULES, ids=[r[0] for r in RULES])
def test_import_rules(part, forbidden, why):
    edges = import_graph().get(part, {})
    broken = {dst: sorted(files) for dst, files in edges.items() if dst in forbidden}
    assert not broken, f"{why}; found: {broken}"


def test_nothing_imports_cli():
    importers = {src for src, edges in import_graph().items() if "cli" in edges} - ENTRY_POINTS
    assert not importers


def test_the_walk_sees_lazy_and_relative_imports(tmp_path):
    """The rules would be toothless if imports inside functions or relative ones were missed."""
    code = "def f():\n    import torch\n    from ..train import loop\n    from odespec.export.run import x\n"
    names = _imported(ast.parse(code), ROOT / "spec" / "fake.py")
    assert {"torch", "odespec.train", "odespec.export.run"} <= names
    assert {target_part(n) for n in names} >= {"torch", "train", "export"}


if __name__ == "__main__":  # the graph the rules are checked on, for a reader or a closing note
    for src, edges in sorted(import_graph().items()):
        sys.stdout.write(f"{src:10} -> {', '.join(sorted(edges))}\n")
