"""Snakemake adapter: the tokenizer shared by every corpus (byte-level, or a BPE trained on the corpora)."""

from pathlib import Path

from transfer_scaling.logs import log_to_file
from transfer_scaling.data.tokenizer import train_tokenizer

log_to_file(snakemake.log[0])
train_tokenizer(snakemake.params.spec, [Path(p) for p in snakemake.input], Path(snakemake.output[0]))
