"""The real pipeline on the local SLURM cluster, through profiles/slurm + profiles/slurm-local: the smoke
study gives the same runs table as a local run, a training job asking for a GPU gets a (fake) GRES GPU,
and a training job signalled through SLURM resumes from its checkpoint to the same losses."""

from __future__ import annotations

import csv
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch

from conftest import SNAKEMAKE, ROOT, new_study, run_workflow
from slurm_cluster import SlurmCluster, slurm_cluster, wait_until  # noqa: F401  (fixture)
from test_training import read_metrics, without_timing
from transfer_scaling.io import read_json
from transfer_scaling.train.run import INTERRUPTED_EXIT_CODE, train

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SMOKE = ("--configfile", "presets/smoke.yaml")
RESULTS = "results/smoke"
"""The smoke study's folder (presets/smoke.yaml: study: smoke; long_scratch.yaml keeps it), in a study directory."""
# The transfer-scaling study: runs table, D_T fit and figures (the D_p axis is left to the local tests).
STUDY_TARGETS = (f"{RESULTS}/runs.csv", f"{RESULTS}/fit/transfer_fit.json", f"{RESULTS}/figures")
WALL_TIME_COLUMNS = {"wall_seconds"}
PIPELINE_TIMEOUT_S = 1800

# A from-scratch run long enough to be signalled mid-way, checkpointing every 20 steps.
LONG_SCRATCH = """
scratch:
  d_chars: [3000, 30000]
  options: {max_steps: 1000, min_steps: 1000, patience: 1000, eval_interval: 100, checkpoint_interval: 20,
            max_epochs: 100000}
"""
# --configfile takes every argument up to the next option: targets go first.
LONG_SCRATCH_CONFIG = ("--configfile", "presets/smoke.yaml", "long_scratch.yaml")
SIGNALLED_RUN = f"{RESULTS}/runs/scratch/s/d30000_seed0"
GPU_RUN = f"{RESULTS}/runs/scratch/s/d3000_seed0"
RUN_INPUTS = (f"{RESULTS}/subsets/python/seed0/3000.bin", f"{RESULTS}/subsets/python/seed0/30000.bin",
              f"{RESULTS}/corpora/python/tokens/validation.bin", f"{RESULTS}/tokenizer/tokenizer.json")


def sacct_jobs(cluster: SlurmCluster, study: Path, since: datetime) -> list[dict[str, str]]:
    """Every SLURM job submitted for ``study`` (by its working directory) since ``since``, in job id order."""
    fields = ["JobID", "State", "WorkDir", "AllocTRES", "Comment"]
    out = cluster.run("sacct", "-n", "-X", "-P", "-S", since.strftime("%Y-%m-%dT%H:%M:%S"),
                      "-o", ",".join(fields))
    jobs = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]
    return sorted((job for job in jobs if Path(job["WorkDir"]) == study), key=lambda job: int(job["JobID"]))


def read_table(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def timed_run(study: Path, *args: str, env: dict | None = None) -> float:
    started = time.monotonic()
    run_workflow(study, *args, env=env, timeout=PIPELINE_TIMEOUT_S)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def local_smoke(tmp_path_factory) -> Path:
    study = new_study(tmp_path_factory.mktemp("local-smoke"))
    elapsed = timed_run(study, *STUDY_TARGETS, *SMOKE)
    print(f"\nsmoke study, local run: {elapsed:.0f} s")
    return study


@pytest.fixture(scope="module")
def slurm_smoke(slurm_cluster: SlurmCluster, tmp_path_factory) -> tuple[Path, list[dict[str, str]]]:  # noqa: F811
    """The smoke study through SLURM; returns it and its SLURM jobs."""
    study = new_study(tmp_path_factory.mktemp("slurm-smoke"))
    since = datetime.now()
    elapsed = timed_run(study, *STUDY_TARGETS, *slurm_cluster.snakemake_args(), *SMOKE, env=slurm_cluster.env())
    jobs = sacct_jobs(slurm_cluster, study, since)
    print(f"\nsmoke study through SLURM: {elapsed:.0f} s in {len(jobs)} SLURM jobs")
    return study, jobs


def test_smoke_study_through_slurm_matches_a_local_run(local_smoke: Path, slurm_smoke) -> None:
    study, _ = slurm_smoke
    local, cluster = (read_table(path / RESULTS / "runs.csv") for path in (local_smoke, study))
    assert [row["run"] for row in cluster] == [row["run"] for row in local]
    for ours, theirs in zip(cluster, local):
        kept = set(ours) - WALL_TIME_COLUMNS
        assert {k: ours[k] for k in kept} == {k: theirs[k] for k in kept}, ours["run"]
    local_points, cluster_points = (read_table(path / RESULTS / "fit/points.csv") for path in (local_smoke, study))
    assert cluster_points == local_points


def test_smoke_jobs_completed_and_short_jobs_shared_slurm_jobs(slurm_smoke) -> None:
    study, jobs = slurm_smoke
    assert jobs and {job["State"] for job in jobs} == {"COMPLETED"}, jobs
    assert all("gres/gpu" not in job["AllocTRES"] for job in jobs), "a CPU-only study asked for a GPU"
    runs = len(read_table(study / RESULTS / "runs.csv"))
    evaluated_runs = runs * 2  # each run is a training job and an evaluation
    assert len(jobs) < evaluated_runs, f"{len(jobs)} SLURM jobs for {runs} runs: no grouping"


@pytest.fixture(scope="module")
def run_study(tmp_path_factory) -> Path:
    """A study whose from-scratch runs are long, with their inputs built locally."""
    study = new_study(tmp_path_factory.mktemp("runs"))
    (study / "long_scratch.yaml").write_text(LONG_SCRATCH)
    run_workflow(study, *RUN_INPUTS, *LONG_SCRATCH_CONFIG)
    return study


def start_slurm_run(cluster: SlurmCluster, study: Path, run: str, *args: str) -> subprocess.Popen:
    """Snakemake making one run through SLURM, in the background."""
    command = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "-d", str(study), f"{run}/summary.json",
               *cluster.snakemake_args(), *args, *LONG_SCRATCH_CONFIG]
    return subprocess.Popen(command, cwd=study, env=cluster.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_training_job_asking_for_a_gpu_gets_a_gres_gpu(
        slurm_cluster: SlurmCluster, run_study: Path) -> None:  # noqa: F811
    """SLURM gives the job a fake GPU and sets CUDA_VISIBLE_DEVICES; the CPU-only torch here cannot use it,
    and the trainer says so instead of training on the CPU unnoticed."""
    since = datetime.now()
    workflow = start_slurm_run(slurm_cluster, run_study, GPU_RUN, "--set-resources", "scratch:gpu=1")
    output, _ = workflow.communicate(timeout=PIPELINE_TIMEOUT_S)
    assert workflow.returncode != 0, output[-3000:]
    (job,) = sacct_jobs(slurm_cluster, run_study, since)
    assert "scratch" in job["Comment"] and "gres/gpu=1" in job["AllocTRES"], job
    log = (run_study / RESULTS / "logs/scratch/s/d3000_seed0.log").read_text()
    assert f"SLURM job {job['JobID']}" in log
    assert "CUDA_VISIBLE_DEVICES='0' asks for GPU(s)" in log or "CUDA_VISIBLE_DEVICES='1' asks for GPU(s)" in log


def job_of(cluster: SlurmCluster, study: Path) -> str:
    """The id of the one running SLURM job working in ``study``."""
    out = cluster.run("squeue", "-h", "-t", "RUNNING", "-o", "%i|%Z")
    ids = [line.split("|")[0] for line in out.splitlines() if Path(line.split("|")[1]) == study]
    assert len(ids) == 1, f"expected one running job in {study}, squeue shows {out!r}"
    return ids[0]


def test_training_job_signalled_through_slurm_resumes_to_the_same_losses(
        slurm_cluster: SlurmCluster, run_study: Path, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = run_study / SIGNALLED_RUN
    since = datetime.now()
    workflow = start_slurm_run(slurm_cluster, run_study, SIGNALLED_RUN, "--restart-times", "1")
    try:
        wait_until((run_dir / "checkpoint/complete.json").exists, 300, "the run's first checkpoint")
        slurm_cluster.run("scancel", "--signal=TERM", job_of(slurm_cluster, run_study))
        output, _ = workflow.communicate(timeout=PIPELINE_TIMEOUT_S)
    finally:
        workflow.kill()
    assert workflow.returncode == 0, output[-6000:]

    jobs = sacct_jobs(slurm_cluster, run_study, since)
    assert [job["State"] for job in jobs] == ["FAILED", "COMPLETED"], f"{jobs}\n{output[-3000:]}"
    failed_log = next((run_study / ".snakemake/slurm_logs").rglob(f"{jobs[0]['JobID']}.log")).read_text()
    assert f"returned non-zero exit status {INTERRUPTED_EXIT_CODE}" in failed_log, failed_log[-3000:]
    log = (run_study / RESULTS / "logs/scratch/s/d30000_seed0.log").read_text()
    assert "resumed from checkpoint" in log, log[-3000:]

    spec = read_json(run_dir / "spec.json")["trainer"]
    monkeypatch.chdir(run_study)  # the spec's data paths are relative to the study
    torch.set_num_threads(1)
    uninterrupted = train(spec, tmp_path / "uninterrupted")
    assert without_timing(read_json(run_dir / "summary.json")) == without_timing(uninterrupted)
    assert read_metrics(run_dir) == read_metrics(tmp_path / "uninterrupted")
