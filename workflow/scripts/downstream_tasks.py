"""Snakemake adapter: the line-completion tasks every checkpoint is scored on (from the target test split)."""

from pathlib import Path

from transfer_scaling.evaluate.downstream import load_tasks_from_documents
from transfer_scaling.io import write_json
from transfer_scaling.logs import log_to_file

log_to_file(snakemake.log[0])
tasks = load_tasks_from_documents(Path(snakemake.input.documents), "test", n_tasks=snakemake.params.n_tasks,
                                  context_chars=snakemake.params.context_chars, seed=snakemake.params.seed)
write_json(snakemake.output[0], tasks)
