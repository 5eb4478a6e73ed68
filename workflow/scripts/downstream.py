"""Snakemake adapter: line-completion BLEU, chrF and exact match of a run's best checkpoint."""

from pathlib import Path

from transfer_scaling.evaluate.downstream import evaluate_downstream
from transfer_scaling.io import read_json, write_json
from transfer_scaling.logs import log_to_file

log_to_file(snakemake.log[0])
write_json(
    snakemake.output[0],
    evaluate_downstream(Path(snakemake.input.weights), Path(snakemake.input.model), Path(snakemake.input.tokenizer),
                        read_json(snakemake.input.tasks), batch_size=snakemake.params.batch_size,
                        max_new_tokens=snakemake.params.max_new_tokens),
)
