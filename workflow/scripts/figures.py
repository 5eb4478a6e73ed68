"""Snakemake adapter: the study's figures (PNG and SVG)."""

from pathlib import Path

from transfer_scaling.logs import log_to_file
from transfer_scaling.report.figures import make_figures

log_to_file(snakemake.log[0])
make_figures(Path(snakemake.input.runs), Path(snakemake.input.fit), Path(snakemake.output[0]),
             draws_csv=Path(snakemake.input.bootstrap))
