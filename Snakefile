"""transfer-scaling: how much data is pretraining worth? (Hernandez et al. 2021, "Scaling Laws for Transfer").

The DAG: corpora -> tokens -> pretraining per (source, N) -> fine-tuning over N x D_F and from-scratch
baselines over N x D -> evaluation of every run on the target's test split -> runs table -> D_T fit,
figures and report. This file only validates the config and includes the rule files.
"""

import os
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from transfer_scaling.config import ConfigError, load_schema, validate_config

min_version("9.0")

configfile: "config.yaml"

try:
    validate_config(config, load_schema(Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"))
except ConfigError as error:
    raise WorkflowError(f"invalid configuration: {error}") from None

# No job may reach the Hugging Face hub: corpora come from pinned package files or local data.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/corpora.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/pretraining_data.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
