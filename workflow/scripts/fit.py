"""Snakemake adapter: fit D_T = k * D_F^alpha * N^beta per source from the runs table."""

from pathlib import Path

from transfer_scaling.fitting import fit_file
from transfer_scaling.logs import log_to_file

log_to_file(snakemake.log[0])
fit_file(
    Path(snakemake.input[0]),
    Path(snakemake.output.fit).parent,
    tolerance=snakemake.params.tolerance,
    low_data_fraction=snakemake.params.low_data_fraction,
    n_bootstrap=snakemake.params.n_bootstrap,
    seed=snakemake.params.seed,
)
