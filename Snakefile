"""transfer-scaling: how much data is pretraining worth? (Hernandez et al. 2021, "Scaling Laws for Transfer").

The DAG: corpora -> tokens -> pretraining per (source, N) -> fine-tuning over N x D_F and from-scratch
baselines over N x D -> evaluation of every run on the target's test split -> runs table -> D_T fit,
figures and report. This file only validates the config and includes the rule files.
"""

import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from transfer_scaling.config import ConfigError, load_schema, validate_config
from transfer_scaling.data.sources import check_config_paths
from transfer_scaling.studies import check_study, write_study_record

min_version("9.0")

configfile: "config.yaml"

try:
    validate_config(config, load_schema(Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"))
    check_config_paths(config)
    # The main process checks the study's folder; the jobs it starts (SLURM steps, --cores subprocesses) trust it.
    study_notes = check_study(config) if workflow.is_main_process else []
except ConfigError as error:
    raise WorkflowError(f"invalid configuration: {error}") from None
for note in study_notes:
    print(note, file=sys.stderr)


onstart:
    write_study_record(config)  # what this folder's outputs are made from, for the next run's check

# No job may reach the Hugging Face hub: corpora come from pinned package files or local data.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# Wildcards take only values named in the config, so no path can reach outside the study's folder.
wildcard_constraints:
    corpus=_alternatives(CORPORA),
    source=_alternatives(SOURCES),
    size=_alternatives(SIZES),
    split="train|validation|test",
    chars=r"[1-9][0-9]*",
    seed=r"[0-9]+",
    tokens=r"[1-9][0-9]*",
    run=r"(pretrain/[a-z][a-z0-9_]*/[a-z0-9][a-z0-9_]*"
    r"|finetune/[a-z][a-z0-9_]*/[a-z0-9][a-z0-9_]*/d[1-9][0-9]*_seed[0-9]+"
    r"|snapshot/[a-z][a-z0-9_]*/[a-z0-9][a-z0-9_]*/p[1-9][0-9]*/d[1-9][0-9]*_seed[0-9]+"
    r"|scratch/[a-z0-9][a-z0-9_]*/d[1-9][0-9]*_seed[0-9]+)",


include: "workflow/rules/corpora.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/pretraining_data.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
