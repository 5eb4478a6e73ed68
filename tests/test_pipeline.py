"""The smoke preset through the whole DAG: real corpora, real DeepSpeed training, real fit, figures, report;
then what users rely on Snakemake for: nothing to redo, incremental re-runs, the output cache."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import new_study, run_workflow



SMOKE = ("--configfile", "presets/smoke.yaml")
RESULTS = "results/smoke"


@pytest.fixture(scope="module")
def output_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("output-cache")


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory, output_cache) -> Path:
    """One complete smoke study, shared by the tests of this module."""
    study = new_study(tmp_path_factory.mktemp("smoke") / "study")
    started = time.monotonic()
    run_workflow(study, *SMOKE, "--cores", "2", "--cache", env={"SNAKEMAKE_OUTPUT_CACHE": str(output_cache)})
    print(f"smoke study finished in {time.monotonic() - started:.0f} s")
    return study


def _job_counts(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    counts = {}
    table = dry_run_output.split("Job stats:", 1)[1] if "Job stats:" in dry_run_output else ""
    for line in table.splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


@pytest.mark.slow
def test_smoke_study_produces_tables_fit_and_figures(smoke_study):
    results = smoke_study / RESULTS
    runs = pd.read_csv(results / "runs.csv")
    assert set(runs["kind"]) == {"pretrain", "finetune", "scratch"}
    assert len(runs) == 2 * 2 + 2 * 2 * 2 + 2 * 3  # pretrain sources x sizes, finetune x D_F, scratch x D
    assert (runs["test_loss"] > 0).all() and runs["test_loss"].notna().all()
    assert np.allclose(runs["compute"], 6 * runs["n_params"] * runs["tokens_seen"], rtol=1e-5)
    fit = json.loads((results / "fit" / "transfer_fit.json").read_text())
    assert set(fit["sources"]) == {"text", "text_code"}
    for source in fit["sources"].values():
        counted = source["n_points_used"] + sum(source["n_points_excluded"].values())
        assert counted == 2 * 2, "every fine-tuned point is either fitted or excluded with a reason"
    figures = {path.name for path in (results / "figures").iterdir()}
    assert {"loss_vs_data.png", "transferred_vs_finetune.png", "loss_vs_data.svg"} <= figures
    dp = json.loads((results / "pretraining_data" / "dp_fit.json").read_text())
    assert {group["source"] for group in dp["groups"]} == {"text", "text_code"}


@pytest.mark.slow
def test_complete_study_has_nothing_to_do(smoke_study):
    started = time.monotonic()
    result = run_workflow(smoke_study, *SMOKE, "--dry-run")
    elapsed = time.monotonic() - started
    assert "Nothing to be done" in result.stdout + result.stderr
    print(f"dry run of a complete study: {elapsed:.1f} s")


@pytest.mark.slow
def test_adding_one_d_f_runs_only_the_new_jobs(smoke_study):
    (smoke_study / "more.yaml").write_text("finetune:\n  d_f_chars: [3000, 30000, 10000]\n")
    # One --configfile with both files: a second --configfile flag would replace the first.
    result = run_workflow(smoke_study, *SMOKE, "more.yaml", "--dry-run")
    counts = _job_counts(result.stdout)
    assert counts["finetune"] == 2 * 2  # the new D_F for 2 sources x 2 sizes, nothing else retrains
    assert counts["subset"] == 1
    assert counts["evaluate"] == 4
    assert not {"pretrain", "scratch", "corpus_documents", "tokenize", "finetune_snapshot"} & set(counts)
    assert {"runs_table", "fit", "figures"} <= set(counts)


@pytest.mark.slow
def test_report_holds_figures_and_fit(smoke_study):
    report = smoke_study / "report.html"
    run_workflow(smoke_study, *SMOKE, "--report", str(report))
    html = report.read_text(errors="replace")
    assert "loss_vs_data" in html and "transfer_fit" in html


@pytest.mark.slow
def test_second_study_reuses_cached_corpora_and_pretraining(smoke_study, output_cache, tmp_path):
    other = new_study(tmp_path / "other-study")
    pretrained = f"{RESULTS}/runs/pretrain/text/s/best.safetensors"
    # The target goes before --cache, which would otherwise take it for a rule name.
    run_workflow(other, *SMOKE, "--cores", "2", pretrained, "--cache",
                 env={"SNAKEMAKE_OUTPUT_CACHE": str(output_cache)})
    output = other / pretrained
    assert output.is_symlink() and str(output_cache) in str(output.resolve())
    assert output.read_bytes() == (smoke_study / pretrained).read_bytes()
    # Snakemake creates a cached job's log file but nothing writes to it.
    for log in ("pretrain/text/s.log", "corpus_documents/text.log", "tokenize/text.log"):
        path = other / RESULTS / "logs" / log
        assert not path.exists() or path.stat().st_size == 0, f"{log}: the job ran instead of coming from cache"
    assert not (other / RESULTS / "runs.csv").exists()


@pytest.mark.slow
def test_other_studies_in_the_same_checkout_neither_read_nor_touch_the_smoke_study(smoke_study):
    """The default study and the paper preset plan in their own folders beside a complete smoke study: no check
    reads the smoke study's files (its python corpus is smaller than the paper's D_F), and none of them changes."""
    def contents():
        return {path: path.read_bytes() for path in sorted((smoke_study / RESULTS).rglob("*")) if path.is_file()}

    before = contents()
    default = run_workflow(smoke_study, "--dry-run")
    paper = run_workflow(smoke_study, "--configfile", "presets/paper.yaml", "--dry-run")
    assert _job_counts(default.stdout)["pretrain"] == 2 * 4 and "results/default/runs.csv" in default.stdout
    assert _job_counts(paper.stdout)["pretrain"] == 2 * 4 and "results/paper/runs.csv" in paper.stdout
    for plan in (default.stdout, paper.stdout):
        assert f"{RESULTS}/" not in plan
    assert len(before) > 100 and contents() == before
    assert not (smoke_study / "results/default").exists() and not (smoke_study / "results/paper").exists()


def test_paper_preset_dry_runs_cleanly(tmp_path):
    study = new_study(tmp_path / "paper")
    result = run_workflow(study, "--configfile", "presets/paper.yaml", "--dry-run")
    counts = _job_counts(result.stdout)
    assert counts["pretrain"] == 2 * 4 and counts["finetune"] == 2 * 4 * 5 and counts["scratch"] == 4 * 6
    assert not (study / "results").exists()
