"""Snakemake adapter: build one corpus's split documents (or a mixture of corpora)."""

from pathlib import Path

from transfer_scaling.data.corpora import build_documents, build_mixture
from transfer_scaling.logs import log_to_file

log_to_file(snakemake.log[0])
spec = snakemake.params.spec
if "mixture" in spec:
    build_mixture(
        snakemake.wildcards.corpus,
        spec["mixture"],
        {name: Path(snakemake.input[name]) for name in spec["mixture"]},
        Path(snakemake.output.documents),
        Path(snakemake.output.meta),
        Path(snakemake.params.cache_dir),
    )
else:
    build_documents(
        snakemake.wildcards.corpus,
        spec,
        snakemake.params.splits,
        Path(snakemake.output.documents),
        Path(snakemake.output.meta),
        Path(snakemake.params.download_dir),
        Path(snakemake.params.cache_dir),
    )
