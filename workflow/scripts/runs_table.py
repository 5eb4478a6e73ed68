"""Snakemake adapter: results/runs.csv, one row per run."""

from pathlib import Path

from transfer_scaling.logs import log_to_file
from transfer_scaling.runs import collect_runs, write_runs_table

log_to_file(snakemake.log[0])
write_runs_table(collect_runs(snakemake.params.runs), Path(snakemake.output[0]))
