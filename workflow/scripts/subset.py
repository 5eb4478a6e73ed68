"""Snakemake adapter: D characters of the target's train split, in chunks drawn by the run's seed (nested across D)."""

from pathlib import Path

from transfer_scaling.data.subsets import make_subset
from transfer_scaling.logs import log_to_file

log_to_file(snakemake.log[0])
make_subset(
    Path(snakemake.input.documents),
    Path(snakemake.input.tokenizer),
    int(snakemake.wildcards.chars),
    Path(snakemake.output.tokens),
    seed=int(snakemake.params.seed),
    chunk_chars=snakemake.params.chunk_chars,
)
