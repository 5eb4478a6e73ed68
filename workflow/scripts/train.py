"""Snakemake adapter: one pretraining, fine-tuning or from-scratch run through the DeepSpeed trainer."""

from pathlib import Path

from transfer_scaling.io import write_json
from transfer_scaling.logs import log_to_file
from transfer_scaling.runs import run_record
from transfer_scaling.training import train

log_to_file(snakemake.log[0])
record = run_record(
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
write_json(snakemake.output.spec, record)
train(record["trainer"], out_dir)
