"""Helpers shared by the rule files: names of runs, input functions and the parameters of each job.

Every hyper-parameter reaches a job through ``params:``, so changing one number re-runs exactly the
jobs it touches (params are one of Snakemake's re-run triggers).
"""

import re

import transfer_scaling
from transfer_scaling.config import model_shapes, run_options, snapshot_tokens

RESULTS = "results"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"

CORPORA = list(config["corpora"])
TARGET = config["target"]
SOURCES = config["sources"]
MODELS = model_shapes(config)
SIZES = list(MODELS)
D_F_CHARS = config["finetune"]["d_f_chars"]
D_SCRATCH_CHARS = config["scratch"]["d_chars"]
SEEDS = config["seeds"]
SNAPSHOT_TOKENS = snapshot_tokens(config)
RUN_FILES = ("spec.json", "best.safetensors", "model.json", "summary.json", "metrics.jsonl")


def _alternatives(names):
    return "|".join(re.escape(name) for name in names)


# Wildcards take only values named in the config, so no path can reach outside results/.
wildcard_constraints:
    corpus=_alternatives(CORPORA),
    source=_alternatives(SOURCES),
    size=_alternatives(SIZES),
    split="train|validation|test",
    chars=r"[1-9][0-9]*",
    seed=r"[0-9]+",
    run=r"(pretrain/[a-z][a-z0-9_]*/[a-z0-9][a-z0-9_]*"
    r"|finetune/[a-z][a-z0-9_]*/[a-z0-9][a-z0-9_]*/d[1-9][0-9]*_seed[0-9]+"
    r"|scratch/[a-z0-9][a-z0-9_]*/d[1-9][0-9]*_seed[0-9]+)",


def run_outputs(run_dir):
    """Named outputs of a training run (named, so the output cache can store several files)."""
    return {name.split(".")[0]: f"{run_dir}/{name}" for name in RUN_FILES}


def pretrain_outputs():
    """A pretraining run's files plus its D_p snapshots (weights after a given number of tokens)."""
    run_dir = pretrain_dir()
    snapshots = {f"snapshot_{tokens}": f"{run_dir}/snapshots/tokens{tokens}.safetensors" for tokens in SNAPSHOT_TOKENS}
    return {**run_outputs(run_dir), **snapshots}


def pretrain_dir():
    return f"{RESULTS}/runs/pretrain/{{source}}/{{size}}"


def finetune_dir():
    return f"{RESULTS}/runs/finetune/{{source}}/{{size}}/d{{chars}}_seed{{seed}}"


def scratch_dir():
    return f"{RESULTS}/runs/scratch/{{size}}/d{{chars}}_seed{{seed}}"


def documents_dir(corpus):
    return f"{RESULTS}/corpora/{corpus}/documents"


def tokens_file(corpus, split):
    return f"{RESULTS}/corpora/{corpus}/tokens/{split}.bin"


def subset_file(corpus, chars):
    return f"{RESULTS}/subsets/{corpus}/{chars}.bin"


TOKENIZER = f"{RESULTS}/tokenizer/tokenizer.json"


# ---------------------------------------------------------------- corpora


def corpus_inputs(wildcards):
    """A mixture depends on its components' documents; a corpus of local files on those files."""
    spec = config["corpora"][wildcards.corpus]
    if "mixture" in spec:
        return {name: documents_dir(name) for name in spec["mixture"]}
    return {}


def corpus_params(wildcards):
    return config["corpora"][wildcards.corpus]


def tokenizer_inputs(wildcards):
    """A byte-level tokenizer needs no data; a BPE is trained on every corpus the study uses."""
    if config["tokenizer"]["kind"] == "byte":
        return []
    return [documents_dir(name) for name in sorted(set(SOURCES) | {TARGET})]


# ---------------------------------------------------------------- training


def model_shape(size):
    return {**MODELS[size], "n_ctx": config["context"]}


def run_spec(kind, wildcards):
    """Everything that defines a run except file paths, which come from the rule's input."""
    seed = int(wildcards.seed) if hasattr(wildcards, "seed") else config["seed"]
    return {
        "kind": kind,
        "model": model_shape(wildcards.size),
        "options": run_options(config, kind),
        "seed": seed,
        "package_version": transfer_scaling.__version__,
    }


def pretrain_spec(wildcards):
    return run_spec("pretrain", wildcards)


def finetune_spec(wildcards):
    return run_spec("finetune", wildcards)


def scratch_spec(wildcards):
    return run_spec("scratch", wildcards)


# ---------------------------------------------------------------- evaluation and analysis


def pretrain_runs():
    return expand(f"{RESULTS}/runs/pretrain/{{source}}/{{size}}", source=SOURCES, size=SIZES)


def finetune_runs():
    return expand(
        f"{RESULTS}/runs/finetune/{{source}}/{{size}}/d{{chars}}_seed{{seed}}",
        source=SOURCES, size=SIZES, chars=D_F_CHARS, seed=SEEDS,
    )


def scratch_runs():
    return expand(
        f"{RESULTS}/runs/scratch/{{size}}/d{{chars}}_seed{{seed}}", size=SIZES, chars=D_SCRATCH_CHARS, seed=SEEDS
    )


def all_runs():
    return pretrain_runs() + finetune_runs() + scratch_runs()


def run_records():
    """Per run: its evaluation, summary and model description, in one order."""
    runs = all_runs()
    return {
        "evals": [f"{run}/eval.json" for run in runs],
        "summaries": [f"{run}/summary.json" for run in runs],
        "models": [f"{run}/model.json" for run in runs],
    }


def final_outputs():
    return [f"{RESULTS}/runs.csv", f"{RESULTS}/fit/transfer_fit.json", f"{RESULTS}/figures"]
