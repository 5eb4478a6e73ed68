"""The console script: fit, advise and figures end to end, one-line errors, no torch on the fitting path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_fitting import synthetic_runs
from test_jointlaw import CHINCHILLA_CSV, chinchilla_points

from transfer_scaling import cli

SCRIPT = shutil.which("transfer-scaling", path=str(Path(sys.executable).parent))
NO_TORCH = ("import sys, runpy; sys.argv = ['transfer-scaling'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('transfer_scaling.cli', run_name='__main__')\n"
            "finally:\n    assert not {'torch', 'deepspeed'} & set(sys.modules), 'torch imported'\n")


@pytest.fixture
def runs_csv(tmp_path: Path) -> Path:
    path = tmp_path / "runs.csv"
    synthetic_runs().to_csv(path, index=False)
    return path


def test_fit_subprocess_never_imports_torch(runs_csv, tmp_path):
    done = subprocess.run([sys.executable, "-c", NO_TORCH, "fit", str(runs_csv), "--out", str(tmp_path / "fit"),
                           "--bootstrap", "200", "--no-joint-law"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["sources"]["text"]["n_points_used"] == 25
    assert abs(summary["sources"]["text"]["huber"]["alpha"] - 0.18) < 0.03
    assert (tmp_path / "fit" / "transfer_fit.json").exists() and (tmp_path / "fit" / "points.csv").exists()


@pytest.mark.slow
def test_console_script_fit_advise_and_errors(runs_csv, tmp_path):
    assert SCRIPT, "the transfer-scaling console script is not installed in the venv"
    fit = subprocess.run([SCRIPT, "fit", str(runs_csv), "--out", str(tmp_path / "fit"), "--bootstrap", "100",
                          "--no-joint-law"], capture_output=True, text=True, timeout=60)
    assert fit.returncode == 0, fit.stderr
    advice = subprocess.run([SCRIPT, "advise", str(tmp_path / "fit" / "transfer_fit.json"), "--source", "text",
                             "--n-params", "1e6", "--d-f-chars", "1e4"], capture_output=True, text=True, timeout=60)
    assert advice.returncode == 0, advice.stderr
    assert json.loads(advice.stdout)["10x_params"]["d_effective"] > json.loads(advice.stdout)["current"]["d_effective"]
    missing = subprocess.run([SCRIPT, "fit", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "x")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and missing.stderr.startswith("error: runs table not found")


def test_fit_reads_d_effective_by_the_estimator_asked_for(runs_csv, tmp_path, capsys):
    """``--estimator`` reaches the fit (the Python API's ``estimator``); the default is the paper's interpolation."""
    cli.main(["fit", str(runs_csv), "--out", str(tmp_path / "default"), "--bootstrap", "20", "--no-joint-law"])
    cli.main(["fit", str(runs_csv), "--out", str(tmp_path / "law"), "--bootstrap", "20", "--no-joint-law",
              "--estimator", "scratch_law"])
    capsys.readouterr()
    fits = {name: json.loads((tmp_path / name / "transfer_fit.json").read_text()) for name in ("default", "law")}
    assert fits["default"]["options"]["estimator"] == "interpolation"
    assert fits["law"]["options"]["estimator"] == "scratch_law"
    assert fits["law"]["sources"]["text"]["appendix_c"]["alpha"] != fits["default"]["sources"]["text"]["appendix_c"][
        "alpha"]


@pytest.mark.slow
def test_in_process_fit_and_figures(runs_csv, tmp_path, capsys):
    cli.main(["fit", str(runs_csv), "--out", str(tmp_path / "fit"), "--bootstrap", "50", "--no-joint-law"])
    cli.main(["figures", str(runs_csv), "--fit", str(tmp_path / "fit"), "--out", str(tmp_path / "figures")])
    printed = capsys.readouterr().out
    assert str(tmp_path / "figures" / "loss_vs_data.png") in printed


def test_fitting_modules_never_import_torch():
    """In a fresh interpreter (other tests of the session may have imported torch into this one)."""
    code = ("import sys, transfer_scaling.cli, transfer_scaling.fit.study, transfer_scaling.fit.jointlaw, "
            "transfer_scaling.report.figures; print(sorted({'torch', 'deepspeed', 'snakemake'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit"], "error: transfer-scaling fit: the following arguments are required"),
        (["advise", "missing.json", "--source", "text", "--n-params", "1e6", "--d-f-chars", "1e4"],
         "error: fit file not found"),
        (["fit", "RUNS", "--out", "OUT", "--tolerance", "2"], "error: tolerance = 2.0: must lie in (0, 1)"),
        (["fit", "RUNS", "--out", "OUT", "--estimator", "spline"],
         "error: transfer-scaling fit: argument --estimator: invalid choice: 'spline'"),
    ],
)
def test_errors_are_one_line_with_status_2(argv, message, runs_csv, tmp_path, capsys):
    argv = [str(runs_csv) if a == "RUNS" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


@pytest.fixture
def chinchilla_runs_csv(tmp_path: Path) -> Path:
    """The real Chinchilla runs below 1.5e19 FLOP as a runs table: scratch rows only, one D per N."""
    n, d, loss = chinchilla_points(max_flop=1.5e19)
    path = tmp_path / "chinchilla_runs.csv"
    pd.DataFrame({"kind": "scratch", "n_params": n, "data_chars": d, "test_loss": loss, "status": "ok"}).to_csv(
        path, index=False)
    return path


def test_joint_law_of_a_chinchilla_style_table(chinchilla_runs_csv, tmp_path, capsys):
    """A table with no fine-tuned runs and one D per N gets its joint law, flagged degenerate (E at 0)."""
    cli.main(["joint-law", str(chinchilla_runs_csv), "--out", str(tmp_path / "law"), "--bootstrap", "50"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_points"] == 58 and summary["degenerate"] and summary["at_bounds"] == ["E"]
    assert summary["E"] == "not identified (degenerate fit)" and not summary["identifiable"]
    low, high = summary["beta"]["ci"]
    assert low <= summary["beta"]["value"] <= high
    law = json.loads((tmp_path / "law" / "joint_law.json").read_text())
    assert law["degenerate"] and law["n_bootstrap"] == 50 and len(law["test_loss"]) == 58
    assert {Path(path).name for path in summary["figures"]} == {"joint_law.png", "joint_law.svg"}
    assert (tmp_path / "law" / "joint_law.png").stat().st_size > 5000


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("chinchilla_raw", "error: runs table lacks column(s) ['kind', 'n_params', 'data_chars', 'test_loss']"),
        ("finetune_only", "error: no from-scratch run with status ok among 2 rows"),
        ("bad_loss", "error: row 1: column 'test_loss' is 'nan?'"),
        ("one_size", "error: 3 points over 1 N and 3 D: a joint law needs >= 5 points"),
    ],
)
def test_joint_law_refuses_bad_tables_in_one_line(table, message, tmp_path, capsys):
    rows = {
        "finetune_only": [("finetune", 1e6, 1e4, 2.0), ("finetune", 1e7, 1e4, 1.9)],
        "bad_loss": [("scratch", 1e6, 1e4, 2.0), ("scratch", 1e6, 1e5, "nan?")],
        "one_size": [("scratch", 1e6, d, 3.0 - i / 10) for i, d in enumerate((1e4, 1e5, 1e6))],
    }
    path = CHINCHILLA_CSV if table == "chinchilla_raw" else tmp_path / "runs.csv"
    if table != "chinchilla_raw":
        pd.DataFrame(rows[table], columns=["kind", "n_params", "data_chars", "test_loss"]).to_csv(path, index=False)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["joint-law", str(path), "--out", str(tmp_path / "law"), "--bootstrap", "0"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "law").exists()
