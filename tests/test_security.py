"""Security: no pickle reaches code execution, no wildcard value reaches outside results/<study>/, and no
config string reaches a shell."""

from __future__ import annotations

import argparse
import ast
import re
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import ROOT, new_study, run_workflow
from test_training import make_spec, write_bytes_tokens
from transfer_scaling.train.checkpoints import CheckpointError
from transfer_scaling.io import directory_manifest, read_json, write_json
from transfer_scaling.train.loop import TrainingInterrupted
from transfer_scaling.train.run import train

PACKAGE = ROOT / "src" / "transfer_scaling"
WORKFLOW_FILES = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]


class CreatesFile:
    """A pickle payload: unpickling it calls ``open(path, "w")``, creating the file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def plant(path: Path, payload: object) -> None:
    """Add ``payload`` to a checkpoint file, keeping everything DeepSpeed expects in it."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    torch.save({**state, "note": payload}, path)


@pytest.mark.slow
def test_planted_pickle_in_a_checkpoint_is_refused_and_never_runs(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = {"train": write_bytes_tokens(tmp_path / "train.bin", [argparse.__file__]),
            "val": write_bytes_tokens(tmp_path / "val.bin", [textwrap.__file__])}
    spec = make_spec(data, max_steps=8, eval_interval=4, checkpoint_interval=4)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train({**spec, "stop_after_steps": 4}, run)
    marker = run / "checkpoint" / "complete.json"
    tag_dir = run / "checkpoint" / read_json(marker)["tag"]
    created = tmp_path / "pwned"
    plant(tag_dir / "mp_rank_00_model_states.pt", CreatesFile(created))
    # The attacker can write the directory, so the manifest is forged too: only the allow-list stands.
    write_json(marker, {**read_json(marker), "sha256": directory_manifest(tag_dir)})

    with pytest.raises(CheckpointError, match=r"mp_rank_00_model_states\.pt holds a pickled object outside the "
                                              r"allow-list .*(open|GLOBAL).*could run arbitrary code"):
        train(spec, run)
    assert not created.exists(), "the planted pickle ran"

    torch.load(tag_dir / "mp_rank_00_model_states.pt", weights_only=False)
    assert created.exists(), "the payload is inert, so the test above proves nothing"


def calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def call_name(call: ast.Call) -> str:
    return ast.unparse(call.func)


def keyword(call: ast.Call, name: str) -> str | None:
    return next((ast.unparse(k.value) for k in call.keywords if k.arg == name), None)


def test_package_never_unpickles_untrusted_data() -> None:
    """Weights go through safetensors; the one torch.load (checkpoint verification) is weights_only=True."""
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for call in calls(ast.parse(path.read_text(encoding="utf-8"))):
            name = call_name(call)
            where = f"{path.name}:{call.lineno} {name}"
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load"):
                offences.append(where)
            elif name == "torch.load" and keyword(call, "weights_only") != "True":
                offences.append(f"{where} without weights_only=True")
            elif name in ("np.load", "numpy.load") and keyword(call, "allow_pickle") not in (None, "False"):
                offences.append(f"{where} with allow_pickle")
    assert offences == []


def test_no_config_string_reaches_a_shell() -> None:
    """Rules run Python through script: (values arrive as objects, never as shell words), and the package
    starts subprocesses from argument lists only."""
    shell_rules = [f"{path.name}:{number}" for path in WORKFLOW_FILES
                   for number, line in enumerate(path.read_text().splitlines(), 1)
                   if re.match(r"\s+(shell|run):", line)]
    assert shell_rules == []
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "workflow" / "scripts").glob("*.py")):
        for call in calls(ast.parse(path.read_text(encoding="utf-8"))):
            name = call_name(call)
            if name in ("os.system", "os.popen") or keyword(call, "shell") not in (None, "False"):
                offences.append(f"{path.name}:{call.lineno} {name}")
    assert offences == []


RESULTS = "results/smoke"
"""The smoke study's folder (presets/smoke.yaml: study: smoke), in a study directory."""
TRAVERSALS = [
    f"{RESULTS}/runs/scratch/../../../outside/eval.json",
    f"{RESULTS}/runs/pretrain/../x/eval.json",
    f"{RESULTS}/corpora/../x/tokens/test.bin",
    f"{RESULTS}/subsets/python/seed0/../../x/3000.bin",
    f"{RESULTS}/runs/finetune/text/s/d3000_seed0/../../../../../../etc/eval.json",
    "/tmp/outside/eval.json",
]


@pytest.mark.slow
def test_path_traversal_targets_match_no_rule(tmp_path: Path) -> None:
    study = new_study(tmp_path / "study")
    smoke = ("--configfile", "presets/smoke.yaml")
    run_workflow(study, f"{RESULTS}/runs/scratch/s/d3000_seed0/eval.json", "-n", *smoke)
    for target in TRAVERSALS:
        result = run_workflow(study, target, "-n", *smoke, check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"{target} matched a rule:\n{output[-3000:]}"
        assert "MissingRuleException" in output or "No rule to produce" in output, output[-3000:]
