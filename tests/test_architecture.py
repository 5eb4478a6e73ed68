"""The package's architecture, as tests: stages as subpackages, each importing only stages below it, no import
circles, and the walls the workflow relies on (the fit and the report never load torch or DeepSpeed, the data stage
never loads torch, nothing loads Snakemake). scripts/architecture.py reads the structure from the code and writes
docs/architecture.md's module table from it."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import architecture  # noqa: E402  (scripts/architecture.py)

MODULES = architecture.modules()
GRAPH = architecture.package_graph()
STAGES = architecture.STAGES
stage_of = architecture.stage_of


def test_every_module_sits_in_a_stage_and_the_core_is_not_empty() -> None:
    assert {stage_of(m) for m in MODULES} <= set(STAGES)
    assert {stage_of(m) for m in MODULES} == set(STAGES)


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
            for name in architecture.imports_of(path)}


@pytest.mark.parametrize("stage", ["core", "data", "fit", "report"])
def test_stage_names_neither_torch_nor_deepspeed(stage: str) -> None:
    assert third_party(stage) & {"torch", "deepspeed"} == set()


def test_nothing_imports_snakemake() -> None:
    assert [m for m, path in MODULES.items() if "snakemake" in {n.split(".")[0] for n in architecture.imports_of(path)}] == []


def test_core_data_fit_and_report_load_without_torch_at_run_time() -> None:
    """What the static check cannot see: a third-party package that loads torch by itself (``datasets`` may)."""
    light = [m for m in MODULES if stage_of(m) in ("core", "data", "fit", "report") and not m.endswith("__main__")]
    code = (f"import importlib, sys\nfor m in {light!r}: importlib.import_module(m)\n"
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


def test_architecture_doc_lists_the_modules_as_they_are() -> None:
    document = architecture.DOC.read_text(encoding="utf-8")
    assert architecture.with_table(document) == document, "run: python scripts/architecture.py"
