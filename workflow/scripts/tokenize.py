"""Snakemake adapter: the token arrays of a corpus's three splits."""

from pathlib import Path

from transfer_scaling.data.subsets import tokenize_split
from transfer_scaling.logs import log_to_file

log_to_file(snakemake.log[0])
for split in ("train", "validation", "test"):
    tokenize_split(Path(snakemake.input.documents), split, Path(snakemake.input.tokenizer), Path(snakemake.output[split]))
