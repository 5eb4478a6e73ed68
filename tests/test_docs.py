"""The README's configuration table documents every key the schema accepts, with the schema's default."""

import json
import re

from conftest import ROOT, SCHEMA
from transfer_scaling.config import load_schema


def schema_keys(schema: dict, prefix: str = "") -> dict[str, dict]:
    """Every key under ``properties``, dotted, with its sub-schema."""
    keys = {}
    for name, sub in schema.get("properties", {}).items():
        keys[prefix + name] = sub
        keys.update(schema_keys(sub, prefix + name + "."))
    return keys


def readme_rows() -> list[tuple[list[str], str, str]]:
    """Rows of the README's Configuration table as (full key names, default cell, meaning cell). A row may
    name several keys: a name without a dot shares the section of the row's first name."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if not line.startswith("| `") or len(cells) != 3:
            continue
        names = re.findall(r"`([^`]+)`", cells[0])
        parent = names[0].rpartition(".")[0]
        rows.append(([name if "." in name or not parent else f"{parent}.{name}" for name in names], cells[1], cells[2]))
    return rows


def shown(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def rows_by_key(rows):
    return {name: row for row in rows for name in row[0]}


def test_readme_rows_parse():
    rows = readme_rows()
    assert len(rows) > 30
    assert (["training.lr", "training.min_lr_ratio", "training.warmup_steps"], "0.002, 0.1, 20") == rows_by_key(rows)[
        "training.min_lr_ratio"][:2]


def test_every_config_key_is_in_the_readme_table():
    keys = schema_keys(load_schema(SCHEMA))
    documented = rows_by_key(readme_rows())
    missing = []
    for key, sub in keys.items():
        if key in documented or "properties" in sub or any(name.startswith(key + ".") for name in documented):
            continue
        parent = key.rpartition(".")[0]
        # Keys of a small mapping (e.g. pretrain.snapshots: {count, orders}) may be described in its row.
        if not (parent in documented and key.rpartition(".")[2] in documented[parent][2]):
            missing.append(key)
    assert not missing, f"README.md's Configuration table does not document: {missing}"
    unknown = sorted(name for name in documented if name.split(".")[0] in keys and name not in keys
                     and "<" not in name)
    assert not unknown, f"README.md documents keys the schema does not have: {unknown}"


def test_readme_defaults_are_the_schema_defaults():
    keys = schema_keys(load_schema(SCHEMA))
    wrong = []
    for names, default_cell, _ in readme_rows():
        subs = [keys.get(name, {}) for name in names]
        if all("default" in sub for sub in subs):
            expected = ", ".join(shown(sub["default"]) for sub in subs)
            if default_cell != expected:
                wrong.append(f"{', '.join(names)}: README says {default_cell!r}, the schema {expected!r}")
    assert not wrong, "\n".join(wrong)
