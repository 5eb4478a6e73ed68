"""What the GPU machine lacks, gathered here and installed there (it has no network).

``collect`` (here, with .venv's Python): the dependency closure of pyproject.toml's pins, less torch's own stack and
what the machine's image has compiled (its list below, from the device notes); pure-Python distributions are
copied from site-packages into one tar.gz each, compiled or version-specific ones are downloaded as cp312 wheels;
manifest.json names every one with its requirements.

``downloads`` (here): the pinned package files of a study's corpora, fetched into a folder laid out as the
workflow's download cache (``results/downloads/<index>/<file>``), so the device run needs no network.

``install`` (there, with its python3): each carried distribution the machine lacks, then each carried one whose
version the machine has but that a dependent's specifier refuses (datasets asking for a newer huggingface-hub),
into ``--target``, which goes first on PYTHONPATH. Nothing the machine has is replaced unless a pin needs it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Never carried: torch's own stack (the machine's CUDA build), pip tooling, and pulp (Snakemake's optional ILP
# scheduler: 36 MB of solver binaries; the device run uses --scheduler greedy).
SKIP = {"torch", "triton", "setuptools", "pip", "wheel", "pulp"}
SKIP_PREFIXES = ("nvidia-",)
# The device image's Python packages (device notes, read 2026-11-17). Compiled ones among them are used as they
# are (carrying a cp312 build of each would not fit); pure ones are carried anyway, in case a pin needs another.
DEVICE_HAS = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy
seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
TARGET_PYTHON = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
                 "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
                 "platform_machine": "x86_64", "os_name": "posix"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64")


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def skipped(name: str) -> bool:
    return canon(name) in SKIP or canon(name).startswith(SKIP_PREFIXES)


def wanted(requirement, extras: set[str], environment: dict | None) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**(environment or {}), "extra": extra}) for extra in (extras or {""}))


# ------------------------------------------------------------------------------------------- collect (here)
def closure(roots: list[str]) -> dict[str, set[str]]:
    """Distribution -> extras asked of it, over the requirements reachable from ``roots`` (markers for 3.12)."""
    import importlib.metadata as metadata
    from packaging.requirements import Requirement
    found: dict[str, set[str]] = {}
    stack = [Requirement(root) for root in roots]
    while stack:
        requirement = stack.pop()
        name = canon(requirement.name)
        if skipped(name):
            continue
        extras = set(requirement.extras)
        if name in found and extras <= found[name]:
            continue
        found[name] = found.get(name, set()) | extras
        for text in metadata.distribution(name).requires or []:
            child = Requirement(text)
            if wanted(child, found[name], TARGET_PYTHON):
                stack.append(child)
    return found


def is_pure(dist) -> bool:
    """A wheel tag of any Python 3, no ABI, any platform (py311-only code, as multiprocess ships, is not)."""
    tags = [line.split(":", 1)[1].strip() for line in (dist.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")]
    return bool(tags) and all(tag.endswith("-none-any") for tag in tags) and any(
        tag.split("-")[0] in ("py3", "py2.py3") for tag in tags)


def pack_pure(dist, out: Path) -> Path:
    """Its files (RECORD) relative to site-packages, bytecode and scripts outside it left out."""
    archive = out / f"{canon(dist.metadata['Name'])}-{dist.version}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for file in dist.files or []:
            parts = Path(str(file)).parts
            if parts[0] == ".." or "__pycache__" in parts or str(file).endswith(".pyc"):
                continue
            path = Path(dist.locate_file(file))
            if path.is_file():
                tar.add(path, arcname=str(file))
    return archive


def download_wheel(name: str, version: str, out: Path) -> Path:
    before = set(out.glob("*.whl"))
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
               "--abi", "none", *[arg for platform in PLATFORMS for arg in ("--platform", platform)],
               "--platform", "any", "-d", str(out), f"{name}=={version}"]
    subprocess.run(command, check=True)
    new = set(out.glob("*.whl")) - before
    matches = [path for path in out.glob("*.whl") if canon(path.name.split("-")[0]) == canon(name)]
    return sorted(new or matches)[0]


def collect(args: argparse.Namespace) -> int:
    import importlib.metadata as metadata
    import tomllib
    roots = [dep for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    out = args.out
    (out / "pure").mkdir(parents=True, exist_ok=True)
    (out / "wheels").mkdir(parents=True, exist_ok=True)
    manifest = {"roots": roots, "dists": {}, "on_device": [], "skipped": sorted(SKIP)}
    kept = set()
    for name, extras in sorted(closure(roots).items()):
        dist = metadata.distribution(name)
        entry = {"name": dist.metadata["Name"], "version": dist.version, "extras": sorted(extras),
                 "requires": dist.requires or []}
        if is_pure(dist):
            entry.update(kind="pure", file=str(pack_pure(dist, out / "pure").relative_to(out)))
        elif name in DEVICE_HAS:
            manifest["on_device"].append(f"{name}=={dist.version}")
            continue
        else:
            entry.update(kind="wheel", file=str(download_wheel(name, dist.version, out / "wheels").relative_to(out)))
        manifest["dists"][name] = entry
        kept.add(entry["file"])
    for stale in [*out.glob("pure/*"), *out.glob("wheels/*")]:
        if str(stale.relative_to(out)) not in kept:
            stale.unlink()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    sizes = sorted(((out / e["file"]).stat().st_size, n) for n, e in manifest["dists"].items())
    print(f"{len(manifest['dists'])} distributions carried ({sum(s for s, _ in sizes) / 2**20:.1f} MiB); "
          f"largest: {', '.join(f'{n} {s / 2**20:.1f}' for s, n in sizes[::-1][:6])} MiB; "
          f"expected on the device: {', '.join(manifest['on_device'])}")
    return 0


# ------------------------------------------------------------------------------------------- downloads (here)
def merged_config(configfiles: list[Path]) -> dict:
    import yaml
    config: dict = {}

    def merge(base: dict, update: dict) -> dict:
        for key, value in update.items():
            base[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
                else value
        return base

    for path in [ROOT / "config.yaml", *configfiles]:
        config = merge(config, yaml.safe_load(path.read_text()) or {})
    return config


def downloads(args: argparse.Namespace) -> int:
    """Fetch (or reuse, sha256-checked) every package file of the corpora the study builds."""
    from transfer_scaling.data.sources import PACKAGE_INDEXES, fetch_file, file_kind
    config = merged_config(args.configfile)
    corpora, needed, files = config["corpora"], [config["target"], *config["sources"]], []
    while needed:
        spec = corpora[needed.pop()]
        needed += list(spec.get("mixture", {}))
        files += [f for f in spec.get("files", []) if file_kind(f) in PACKAGE_INDEXES]
    for file_spec in {json.dumps(f, sort_keys=True): f for f in files}.values():  # a corpus in two mixtures: once
        path = fetch_file(file_spec, args.out)
        print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


# ------------------------------------------------------------------------------------------- install (there)
def install(args: argparse.Namespace) -> int:
    import importlib.metadata as metadata
    from packaging.requirements import Requirement
    from packaging.version import Version
    manifest = json.loads((args.carried / "manifest.json").read_text())
    carried = manifest["dists"]
    present: dict[str, str] = {}
    for dist in metadata.distributions():  # in sys.path order: the first of a name is the one imported
        if dist.metadata["Name"]:
            present.setdefault(canon(dist.metadata["Name"]), dist.version)
    chosen = {name for name in carried if name not in present}
    conflicts: list[str] = []

    def active(name: str) -> str | None:
        return carried[name]["version"] if name in chosen else present.get(name)

    def requirements(name: str) -> tuple[list[str], set[str]]:
        if name in chosen:
            return carried[name]["requires"], set(carried[name]["extras"])
        extras = set(carried[name]["extras"]) if name in carried else set()
        return metadata.distribution(name).requires or [], extras

    changed = True
    while changed:
        changed, conflicts = False, []
        needed = set(carried) | {canon(text.split("==")[0]) for text in manifest["on_device"]}
        for name in sorted(needed):
            if active(name) is None:
                continue
            texts, extras = requirements(name)
            for text in texts:
                requirement = Requirement(text)
                other = canon(requirement.name)
                if skipped(other) or not wanted(requirement, extras, None):
                    continue
                version = active(other)
                if version is not None and requirement.specifier.contains(Version(version), prereleases=True):
                    continue
                if other in carried and other not in chosen and requirement.specifier.contains(
                        Version(carried[other]["version"]), prereleases=True):
                    chosen.add(other)
                    changed = True
                else:
                    conflicts.append(f"{name} {active(name)} needs {requirement}, found {version}")
    args.target.mkdir(parents=True, exist_ok=True)
    wheels = []
    for name in sorted(chosen):
        path = args.carried / carried[name]["file"]
        if carried[name]["kind"] == "pure":
            with tarfile.open(path) as tar:
                tar.extractall(args.target, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        else:
            wheels.append(str(path))
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                        "--disable-pip-version-check", "--target", str(args.target), *wheels], check=True)
    names = ", ".join(f"{name}=={carried[name]['version']}" for name in sorted(chosen))
    print(f"installed into {args.target}: {names or 'nothing'}")
    shadowed = sorted(n for n in chosen if n in present)
    if shadowed:
        over = ", ".join(f"{name} {present[name]} -> {carried[name]['version']}" for name in shadowed)
        print(f"over the machine's own (a pin refused them): {over}")
    for conflict in conflicts:
        print(f"warning: {conflict}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("collect", help="here: copy or download what the device lacks")
    one.add_argument("--out", type=Path, required=True)
    two = commands.add_parser("downloads", help="here: the corpora's package files")
    two.add_argument("--out", type=Path, required=True)
    two.add_argument("--configfile", type=Path, nargs="*", default=[])
    three = commands.add_parser("install", help="there: install what the machine lacks")
    three.add_argument("--carried", type=Path, required=True)
    three.add_argument("--target", type=Path, required=True)
    args = parser.parse_args(argv)
    return {"collect": collect, "downloads": downloads, "install": install}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
