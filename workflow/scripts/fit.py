"""Snakemake adapter: fit D_T = k * D_F^alpha * N^beta per source from the runs table.

Every key of the config's ``fit`` section reaches the fit (``config_options``), the schema's defaults filled in;
the rule's ``params`` name them only so that changing one reruns the fit.
"""

from pathlib import Path

from transfer_scaling.fit.options import config_options
from transfer_scaling.fit.study import fit_file
from transfer_scaling.logs import log_to_file

log_to_file(snakemake.log[0])
fit_file(Path(snakemake.input[0]), Path(snakemake.output.fit).parent, **config_options(snakemake.config))
