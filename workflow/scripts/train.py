"""Snakemake adapter: one pretraining, fine-tuning or from-scratch run through the DeepSpeed trainer."""

from pathlib import Path

from transfer_scaling.io import write_json
from transfer_scaling.logs import log_to_file
from transfer_scaling.runs import trainer_spec
from transfer_scaling.training import train

log_to_file(snakemake.log[0])
spec = trainer_spec(
    snakemake.params.spec,
    train=Path(snakemake.input.train),
    validation=Path(snakemake.input.validation),
    tokenizer=Path(snakemake.input.tokenizer),
    init_from=Path(snakemake.input.init) if "init" in snakemake.input.keys() else None,
    threads=snakemake.threads,
    source=getattr(snakemake.wildcards, "source", None),
    size=snakemake.wildcards.size,
)
out_dir = Path(snakemake.output.summary).parent
write_json(snakemake.output.spec, spec)
train(spec, out_dir)
