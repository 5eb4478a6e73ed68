"""Helpers shared by the rule files (names of runs, input functions, the parameters of each job).

Every hyper-parameter reaches a job through ``params:``, so changing one number re-runs exactly the
jobs it touches (params are one of Snakemake's re-run triggers).
"""

import functools
import re

import transfer_scaling
from transfer_scaling import resources as job_resources
from transfer_scaling.config import check_target_size
from transfer_scaling.plan import model_shapes, run_options, snapshot_tokens
from transfer_scaling.io import read_json
from transfer_scaling.layout import FitLayout, RunLayout
from transfer_scaling.runs import run_names
from transfer_scaling.studies import SHARED_DATASETS_CACHE, SHARED_DOWNLOADS, study_dir

RESULTS = str(study_dir(config))
"""This study's folder, results/<study>/: every output path below lies in it."""
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
RUNS = f"{RESULTS}/runs"
"""Every run directory lies below here; the tables name a run by its path relative to it."""
RUNS_TABLE = f"{RESULTS}/runs.csv"

CORPORA = list(config["corpora"])
TARGET = config["target"]
SOURCES = config["sources"]
MODELS = model_shapes(config)
SIZES = list(MODELS)
D_F_CHARS = config["finetune"]["d_f_chars"]
D_SCRATCH_CHARS = config["scratch"]["d_chars"]
SEEDS = config["seeds"]
SNAPSHOT_TOKENS = snapshot_tokens(config)
FIT = FitLayout(f"{RESULTS}/fit")


def _alternatives(names):
    return "|".join(re.escape(name) for name in names)


def run_file(run_dir, name):
    """A file of a run directory (a wildcard pattern or a path), as Snakemake takes it: a string."""
    return str(getattr(RunLayout(run_dir), name))


def _strings(paths):
    return {name: str(path) for name, path in paths.items()}


def run_outputs(run_dir):
    """Named outputs of a training run (named, so the output cache can store several files)."""
    return _strings(RunLayout(run_dir).training_outputs())


def pretrain_outputs():
    """A pretraining run's files plus its D_p snapshots (weights after a given number of tokens)."""
    layout = RunLayout(pretrain_dir())
    snapshots = {name: path for tokens in SNAPSHOT_TOKENS for name, path in layout.snapshot_outputs(tokens).items()}
    return {**run_outputs(pretrain_dir()), **_strings(snapshots)}


def any_run_dir():
    """Any run directory, for the jobs that evaluate every kind of run alike."""
    return f"{RUNS}/{{run}}"


def pretrain_dir():
    return f"{RUNS}/pretrain/{{source}}/{{size}}"


def finetune_dir():
    return f"{RUNS}/finetune/{{source}}/{{size}}/d{{chars}}_seed{{seed}}"


def snapshot_finetune_dir():
    return f"{RUNS}/snapshot/{{source}}/{{size}}/p{{tokens}}/d{{chars}}_seed{{seed}}"


def scratch_dir():
    return f"{RUNS}/scratch/{{size}}/d{{chars}}_seed{{seed}}"


def documents_dir(corpus):
    return f"{RESULTS}/corpora/{corpus}/documents"


def tokens_file(corpus, split):
    return f"{RESULTS}/corpora/{corpus}/tokens/{split}.bin"


def subset_file(corpus, chars, seed):
    """D characters drawn in chunks from the train split; the seed picks the draw (nested across D)."""
    return f"{RESULTS}/subsets/{corpus}/seed{seed}/{chars}.bin"


TOKENIZER = f"{RESULTS}/tokenizer/tokenizer.json"

# Once the target is built, every D must fit in its training split: refuse the config before any job runs.
if os.path.exists(f"{RESULTS}/corpora/{TARGET}/documents.json"):
    try:
        check_target_size(config, read_json(f"{RESULTS}/corpora/{TARGET}/documents.json")["splits"]["train"]["chars"])
    except ConfigError as error:
        raise WorkflowError(f"invalid configuration: {error}") from None


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


def run_settings(kind, wildcards):
    """A run's settings: everything that defines it except file paths, which come from the rule's input. The
    training job joins them with those paths into the run record (``transfer_scaling.runs.run_record``)."""
    seed = int(wildcards.seed) if hasattr(wildcards, "seed") else config["seed"]
    return {
        "kind": kind,
        "model": model_shape(wildcards.size),
        "options": run_options(config, kind, wildcards.size),
        "seed": seed,
        "package_version": transfer_scaling.__version__,
    }


pretrain_settings = functools.partial(run_settings, "pretrain")
finetune_settings = functools.partial(run_settings, "finetune")
scratch_settings = functools.partial(run_settings, "scratch")


# ---------------------------------------------------------------- evaluation and analysis


def pretrain_runs():
    return expand(pretrain_dir(), source=SOURCES, size=SIZES)


def finetune_runs():
    return expand(finetune_dir(), source=SOURCES, size=SIZES, chars=D_F_CHARS, seed=SEEDS)


def scratch_runs():
    return expand(scratch_dir(), size=SIZES, chars=D_SCRATCH_CHARS, seed=SEEDS)


def all_runs():
    return pretrain_runs() + finetune_runs() + scratch_runs()


def run_records(runs=None, extra=()):
    """Per run: its run record, evaluation, summary and model description (and ``extra`` files), in one order."""
    runs = all_runs() if runs is None else runs
    names = ("record", "eval", "summary", "model", *extra)
    return {f"{name}_files": [run_file(run, name) for run in runs] for name in names}


DP_AXIS = config.get("pretraining_data")


def snapshot_runs():
    """Fine-tuning runs from every pretraining snapshot, for the sizes and D_F of the D_p axis."""
    if not DP_AXIS:
        return []
    return expand(
        snapshot_finetune_dir(),
        source=SOURCES, size=DP_AXIS["sizes"], tokens=SNAPSHOT_TOKENS, chars=DP_AXIS["d_f_chars"], seed=SEEDS,
    )


def snapshot_run_records():
    return run_records(snapshot_runs(), extra=("downstream",))


def final_outputs():
    outputs = [RUNS_TABLE, str(FIT.fit), f"{RESULTS}/figures", str(FIT.answer)]
    if DP_AXIS:
        outputs += [f"{RESULTS}/pretraining_data/dp_fit.json"]
    return outputs


# ---- cluster resources
# What each job asks of a cluster, computed by transfer_scaling.resources from the config; these wrappers only pick
# the model shape and the training data out of a job's wildcards.


def _train_chars(wildcards):
    """Characters of a data-limited run's subset; None for pretraining, which runs its token budget."""
    return int(wildcards.chars) if hasattr(wildcards, "chars") else None


def training_resources(kind):
    """Requests of one kind of training job: memory and time per job and attempt, GPUs and nodes per kind."""

    def mem_mb(wildcards, attempt):
        return job_resources.training_mem_mb(config, kind, MODELS[wildcards.size], attempt)

    def runtime(wildcards, attempt):
        return job_resources.training_runtime(config, kind, MODELS[wildcards.size], _train_chars(wildcards), attempt)

    return {"mem_mb": mem_mb, "runtime": runtime, **job_resources.training_placement(config, kind)}


def training_group(kind):
    def group(wildcards):
        return job_resources.training_group(config, kind, MODELS[wildcards.size], _train_chars(wildcards))

    return group


def evaluated_size(run):
    """The size named in a run path: pretrain/{source}/{size}, finetune/{source}/{size}/..., scratch/{size}/..."""
    parts = run.split("/")
    return parts[1] if parts[0] == "scratch" else parts[2]


def evaluation_resources():
    def mem_mb(wildcards, attempt):
        return job_resources.evaluation_mem_mb(config, MODELS[evaluated_size(wildcards.run)], attempt)

    def runtime(wildcards, attempt):
        return job_resources.evaluation_runtime(config, attempt)

    return {"mem_mb": mem_mb, "runtime": runtime, "gpu": job_resources.evaluation_gpus(config)}


def evaluation_group():
    return job_resources.evaluation_group(config)
