"""Snakemake adapter: laws over D_p, their held-out check, the alignment verdict, D_T per D_p, figures."""

from pathlib import Path

from transfer_scaling.fit.dplaw import write_dp_analysis
from transfer_scaling.logs import log_to_file
from transfer_scaling.report.figures import make_dp_figures

log_to_file(snakemake.log[0])
write_dp_analysis(Path(snakemake.input.runs), Path(snakemake.input.transfer_fit), snakemake.params.n_fit,
                  Path(snakemake.output.fit))
make_dp_figures(Path(snakemake.input.runs), Path(snakemake.output.fit), Path(snakemake.output.figures))
