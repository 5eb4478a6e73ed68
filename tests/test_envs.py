"""The conda environment files pin exactly what pyproject.toml pins."""

import re
import tomllib
from pathlib import Path

import yaml

import transfer_scaling

ROOT = Path(__file__).resolve().parents[1]


def _pins(requirements):
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", requirement.strip())
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_every_dependency_is_pinned_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][^\s;]*", requirement), f"not an exact pin: {requirement}"
    assert "torch==2.13.0" in project["dependencies"]


def test_conda_envs_match_pyproject():
    project_pins = _pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    env_files = sorted((ROOT / "envs").glob("*.yaml"))
    assert env_files
    for env_file in env_files:
        env = yaml.safe_load(env_file.read_text())
        pip_section = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
        assert _pins(pip_section) == project_pins, f"{env_file.name} drifted from pyproject.toml"
        assert "python=3.11" in env["dependencies"]


def test_package_version_matches_pyproject():
    """Every run's params carry the package version, so a release that changes what runs write (e.g. the
    summary's fields) never reuses cached or finished runs of another version."""
    assert transfer_scaling.__version__ == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
