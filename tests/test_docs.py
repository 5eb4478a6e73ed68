"""The README documents every configuration key the schema accepts."""

from conftest import ROOT, SCHEMA
from transfer_scaling.config import load_schema


def _keys(schema: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, sub in schema.get("properties", {}).items():
        keys.append(prefix + name)
        keys += _keys(sub, prefix + name + ".")
    return keys


def test_every_config_key_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    schema = load_schema(SCHEMA)
    missing = [key for key in _keys(schema) if key.split(".")[-1] not in readme]
    assert not missing, f"README.md does not document: {missing}"
