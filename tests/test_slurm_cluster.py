"""Real SLURM execution on the local one-node cluster: Snakemake's SLURM executor with the project's
profiles, fake GPUs as GRES, and the SIGTERM a trainer gets from ``scancel --signal=TERM``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slurm_cluster import SlurmCluster, slurm_cluster, wait_until  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SNAKEMAKE = Path(sys.executable).with_name("snakemake")
WORKFLOW_TIMEOUT_S = 300

TWO_RULES = """
rule all:
    input: "b.txt"

rule a:
    output: "a.txt"
    shell: "echo ${{SLURM_JOB_ID:-none}} > {output}"

rule b:
    input: "a.txt"
    output: "b.txt"
    shell: "cat {input} > {output} && echo ${{SLURM_JOB_ID:-none}} >> {output}"
"""

GPU_RULE = """
rule gpu:
    output: "gpu.txt"
    resources: gpu=1
    shell: "echo ${{SLURM_JOB_ID:-none}} ${{CUDA_VISIBLE_DEVICES:-unset}} > {output}"
"""

# The job step traps SIGTERM the way the trainer will: finish cleanly (here: write a file) and exit 0.
TRAPPING_STEP = """#!/bin/bash
trap 'echo "$SLURM_JOB_ID" > term.txt; exit 0' TERM
echo started > started.txt
sleep 300 &
wait $!
"""


def run_snakemake(cluster: SlurmCluster, workdir: Path, snakefile: str) -> None:
    """Run ``snakefile`` in ``workdir`` through the slurm + slurm-local profiles; fail with its log."""
    (workdir / "Snakefile").write_text(snakefile)
    result = subprocess.run([str(SNAKEMAKE), *cluster.snakemake_args()], cwd=workdir, env=cluster.env(),
                            capture_output=True, text=True, timeout=WORKFLOW_TIMEOUT_S)
    assert result.returncode == 0, f"snakemake failed ({result.returncode}):\n{result.stderr[-6000:]}"


def test_workflow_jobs_run_as_slurm_jobs(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    run_snakemake(slurm_cluster, tmp_path, TWO_RULES)
    job_a = (tmp_path / "a.txt").read_text().split()
    job_ids = (tmp_path / "b.txt").read_text().split()
    assert job_ids[0] == job_a[0] and "none" not in job_ids
    assert job_ids[0] != job_ids[1]
    assert slurm_cluster.job_states(job_ids) == {job_id: "COMPLETED" for job_id in job_ids}


def test_gpu_rule_gets_a_fake_gpu(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    run_snakemake(slurm_cluster, tmp_path, GPU_RULE)
    job_id, visible_devices = (tmp_path / "gpu.txt").read_text().split()
    assert visible_devices in {"0", "1"}
    alloc = slurm_cluster.run("sacct", "-n", "-X", "-P", "-o", "State,AllocTRES", "-j", job_id).strip()
    assert alloc.startswith("COMPLETED|") and "gres/gpu=1" in alloc


def test_scancel_signal_term_reaches_the_job_step(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    (tmp_path / "step.sh").write_text(TRAPPING_STEP)
    job_id = slurm_cluster.run(
        "sbatch", "--parsable", f"--partition={slurm_cluster.partition}", "--mem=100", "--time=5",
        f"--chdir={tmp_path}", f"--output={tmp_path / 'slurm.out'}", "--wrap", "srun bash step.sh",
    ).strip()
    wait_until((tmp_path / "started.txt").exists, 60, f"job {job_id} to start its step")
    slurm_cluster.run("scancel", "--signal=TERM", job_id)
    wait_until((tmp_path / "term.txt").exists, 30, f"job {job_id} to trap SIGTERM")
    assert (tmp_path / "term.txt").read_text().strip() == job_id
    wait_until(lambda: slurm_cluster.job_states([job_id]).get(job_id) == "COMPLETED", 60,
               f"job {job_id} to end COMPLETED after handling SIGTERM")
