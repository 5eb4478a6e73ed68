"""Snakemake adapter: test loss of a run's best checkpoint on the target's test split."""

from pathlib import Path

from transfer_scaling.evaluate.heldout import evaluate
from transfer_scaling.io import write_json
from transfer_scaling.logs import log_to_file

log_to_file(snakemake.log[0])
write_json(
    snakemake.output[0],
    evaluate(Path(snakemake.input.weights), Path(snakemake.input.model), Path(snakemake.input.test),
             batch_size=snakemake.params.batch_size),
)
