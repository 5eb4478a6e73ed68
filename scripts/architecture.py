"""The package's structure read from its code: each module's stage, concern (its docstring's first sentence) and
imports from the package. Writes the generated part of docs/architecture.md (between its markers);
tests/test_architecture.py holds the doc equal to the code and the stages in order.

    python scripts/architecture.py          # rewrite docs/architecture.md's module table
    python scripts/architecture.py --check  # exit 1 if the table is out of date
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "transfer_scaling"
DOC = ROOT / "docs" / "architecture.md"
BEGIN, END = "<!-- modules: begin (python scripts/architecture.py) -->", "<!-- modules: end -->"
STAGES = ["core", "data", "train", "evaluate", "fit", "report", "cli"]
"""From the bottom up: a module may import its own stage and the stages before it, never one after."""
SUBPACKAGES = ("data", "train", "evaluate", "fit", "report")


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
    relative imports resolved; ``from package import name`` counts the package and, if a module, the name."""
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


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def package_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (packages' own __init__ left out: they hold docstrings only)."""
    found = modules()
    return {module: {name for name in imports_of(path) if name in found and name != module
                     and not found[name].name == "__init__.py"}
            for module, path in found.items()}


def concern(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    return re.split(r"(?<!\bal)\. (?=[A-Z(])", first)[0].rstrip(".")


def module_table() -> str:
    graph, found = package_graph(), modules()
    rows = ["| stage | module | concern | imports from the package |", "|---|---|---|---|"]
    for stage in STAGES:
        for module in sorted(m for m in found if stage_of(m) == stage and found[m].name != "__main__.py"):
            short = module.removeprefix("transfer_scaling.") if module != "transfer_scaling" else "(package)"
            imported = ", ".join(sorted(m.removeprefix("transfer_scaling.") for m in graph[module])) or "-"
            rows.append(f"| {stage} | `{short}` | {concern(found[module])} | {imported} |")
    return "\n".join(rows)


def with_table(document: str) -> str:
    head, _, rest = document.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{module_table()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/architecture.md is out of date")
    args = parser.parse_args()
    document = DOC.read_text(encoding="utf-8")
    if BEGIN not in document or END not in document:
        print(f"{DOC}: no {BEGIN} ... {END} markers", file=sys.stderr)
        return 1
    current = with_table(document)
    if args.check:
        return 0 if current == document else 1
    DOC.write_text(current, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
