"""The conda environment files pin exactly what pyproject.toml pins; setup.sh accepts the Pythons it admits."""

import os
import re
import subprocess
import tomllib
from pathlib import Path

import yaml
from packaging.specifiers import SpecifierSet

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


def _setup_sh_pythons():
    match = re.search(r"^SUPPORTED_PYTHONS=\(([^)]*)\)$", (ROOT / "scripts" / "setup.sh").read_text(), re.M)
    assert match, "scripts/setup.sh no longer lists SUPPORTED_PYTHONS"
    return match.group(1).split()


def test_setup_sh_accepts_exactly_what_requires_python_admits():
    """setup.sh refuses any Python outside its list and pip refuses any outside requires-python: a version in
    one only either fails setup on a Python the pins support or builds a .venv pip then refuses to install into."""
    requires = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    admitted = [f"3.{minor}" for minor in range(40) if f"3.{minor}" in requires]
    assert "3.39" not in admitted, "requires-python needs an upper bound: each new Python is checked first"
    assert _setup_sh_pythons() == admitted
    for env_file in sorted((ROOT / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        python = next(dep for dep in env["dependencies"] if str(dep).startswith("python="))
        assert python.removeprefix("python=") in admitted, f"{env_file.name} pins a Python setup.sh refuses"


def test_setup_sh_names_the_supported_pythons_when_refusing(tmp_path):
    """A wrong interpreter must stop setup before it builds .venv, with a message that says what to use."""
    fake = tmp_path / "python-fake"
    fake.write_text("#!/bin/sh\necho 3.10\n")
    fake.chmod(0o755)
    result = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], env={**os.environ, "PYTHON": str(fake)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    for version in _setup_sh_pythons():
        assert f"python{version}" in result.stderr


def test_package_version_matches_pyproject():
    """Every run's params carry the package version, so a release that changes what runs write (e.g. the
    summary's fields) never reuses cached or finished runs of another version."""
    assert transfer_scaling.__version__ == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
