"""The package's architecture, as tests: stages as subpackages, each importing only stages below it, no import
circles, and the walls the workflow relies on (the fit and the report never load torch or DeepSpeed, the data stage
never loads torch, nothing loads Snakemake). docs/architecture.md describes the same layout."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "src" / "transfer_scaling"
STAGES = ["core", "data", "train", "evaluate", "fit", "report", "cli"]
"""From the bottom up: a module may import its own stage and the stages before it, never one after."""
SUBPACKAGES = {"data", "train", "evaluate", "fit", "report"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in SUBPACKAGES:
        return parts[1]
    return "cli" if module == "transfer_scaling.cli" else "core"


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (a lazy import is still a dependency),
    relative imports resolved; ``from package import module`` counts as the module."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {module: {name for name in imports_of(path) if name in MODULES and name != module}
         for module, path in MODULES.items()}


def test_every_module_sits_in_a_known_stage() -> None:
    top_level = sorted(m for m in MODULES if m.count(".") == 1 and stage_of(m) == "core" and m.split(".")[1]
                       not in SUBPACKAGES)
    assert {stage_of(m) for m in MODULES} <= set(STAGES)
    assert top_level, "the shared core is empty"


def test_no_stage_imports_a_later_one() -> None:
    upward = [f"{module} -> {imported}" for module, imported_set in GRAPH.items() for imported in sorted(imported_set)
              if STAGES.index(stage_of(imported)) > STAGES.index(stage_of(module))]
    assert upward == []


def test_no_import_circles() -> None:
    """Depth-first search for a back edge; the error names one circle."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for imported in sorted(GRAPH[module]):
            if state.get(imported) == 1:
                return stack[stack.index(imported):] + [imported]
            if imported not in state and (circle := visit(imported)):
                return circle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state:
            circle = visit(module)
            assert circle is None, " -> ".join(circle)


def third_party(stage: str) -> set[str]:
    return {name.split(".")[0] for module, path in MODULES.items() if stage_of(module) == stage
            for name in imports_of(path)}


@pytest.mark.parametrize("stage,forbidden", [("fit", {"torch", "deepspeed"}), ("report", {"torch", "deepspeed"}),
                                             ("data", {"torch", "deepspeed"}), ("core", {"torch", "deepspeed"})])
def test_stage_names_no_heavy_dependency(stage: str, forbidden: set[str]) -> None:
    assert third_party(stage) & forbidden == set()


def test_nothing_imports_snakemake() -> None:
    assert [m for m, path in MODULES.items() if "snakemake" in {n.split(".")[0] for n in imports_of(path)}] == []


def test_fit_report_and_data_load_without_torch_at_run_time() -> None:
    """What the static check cannot see: a third-party package that loads torch by itself (``datasets`` may)."""
    modules = [m for m in MODULES if stage_of(m) in ("core", "data", "fit", "report") and not m.endswith("__main__")]
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted({'torch', 'deepspeed', 'snakemake'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_modules_and_classes_stay_readable() -> None:
    """No module over 450 lines and no class over 200: each file can be read at once."""
    long_modules = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450}
    long_classes = {f"{m}.{node.name}": node.end_lineno - node.lineno + 1 for m, p in MODULES.items()
                    for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
                    if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 200}
    assert long_modules == {} and long_classes == {}
