"""Snakemake adapter: results/pretraining_data/runs.csv, one row per run fine-tuned from a snapshot."""

from pathlib import Path

from transfer_scaling.logs import log_to_file
from transfer_scaling.runs import collect_snapshot_runs, write_runs_table

log_to_file(snakemake.log[0])
write_runs_table(collect_snapshot_runs(snakemake.params.runs),
                 Path(snakemake.output[0]))
