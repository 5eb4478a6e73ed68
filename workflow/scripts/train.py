"""Snakemake adapter: one pretraining, fine-tuning or from-scratch run through the DeepSpeed trainer.

One process trains here, in the job's own process; a job given several GPUs or nodes starts the trainer on
each of them through transfer_scaling.train.launch, which reads the trainer spec from the run record. Either way a
stop on SIGTERM/SIGUSR1 exits with code 75 after a checkpoint, and the retried job resumes from it.
"""

import logging
import os
import sys
from pathlib import Path

from transfer_scaling.io import write_json
from transfer_scaling.train.launch import launch_logged
from transfer_scaling.layout import RunLayout
from transfer_scaling.logs import log_to_file
from transfer_scaling.runs import run_record
from transfer_scaling.train.run import train_to_exit_code

log_to_file(snakemake.log[0])
record = run_record(
    snakemake.params.run_settings,
    train=Path(snakemake.input.train),
    validation=Path(snakemake.input.validation),
    tokenizer=Path(snakemake.input.tokenizer),
    init_from=Path(snakemake.input.init) if hasattr(snakemake.input, "init") else None,
    threads=snakemake.threads,
    source=getattr(snakemake.wildcards, "source", None),
    size=snakemake.wildcards.size,
    d_p_tokens=int(snakemake.wildcards.tokens) if hasattr(snakemake.wildcards, "tokens") else None,
)
run_dir = RunLayout.holding(snakemake.output.record).directory
write_json(snakemake.output.record, record)
nodes = snakemake.resources.get("nodes", 1)
processes_per_node = max(1, snakemake.resources.get("gpu", 0) // nodes)
logging.getLogger("transfer_scaling.train").info(
    "%d process(es) per node on %d node(s); CUDA_VISIBLE_DEVICES=%s; SLURM job %s", processes_per_node, nodes,
    os.environ.get("CUDA_VISIBLE_DEVICES", "unset"), os.environ.get("SLURM_JOB_ID", "none"))
if nodes * processes_per_node > 1:
    sys.exit(launch_logged(Path(snakemake.output.record), run_dir, processes_per_node, Path(snakemake.log[0])))
sys.exit(train_to_exit_code(record["trainer"], run_dir))
