"""Snakemake adapter: the study's answer (reStructuredText) for the first page of the report."""

from transfer_scaling.logs import log_to_file
from transfer_scaling.report.answer import write_answer

log_to_file(snakemake.log[0])
write_answer(snakemake.input.fit, snakemake.input.figures, snakemake.output[0], snakemake.params.target)
