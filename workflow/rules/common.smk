"""Helpers shared by the rule files (names of runs, input functions, the parameters of each job).

Every hyper-parameter reaches a job through ``params:``, so changing one number re-runs exactly the
jobs it touches (params are one of Snakemake's re-run triggers).
"""

import functools
import re

import transfer_scaling
from transfer_scaling.config import check_target_size, model_shapes, run_options, snapshot_tokens
from transfer_scaling.io import SIDECAR_SUFFIX, read_json

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
WEIGHTS = "best.safetensors"
RUN_FILES = ("spec.json", WEIGHTS, WEIGHTS + SIDECAR_SUFFIX, "model.json", "summary.json", "metrics.jsonl")


def _alternatives(names):
    return "|".join(re.escape(name) for name in names)


def run_outputs(run_dir):
    """Named outputs of a training run (named, so the output cache can store several files)."""
    return {name.replace(".safetensors.", "_").split(".")[0]: f"{run_dir}/{name}" for name in RUN_FILES}


def pretrain_outputs():
    """A pretraining run's files plus its D_p snapshots (weights after a given number of tokens)."""
    run_dir = pretrain_dir()
    snapshots = {}
    for tokens in SNAPSHOT_TOKENS:
        weights = f"{run_dir}/snapshots/tokens{tokens}.safetensors"
        snapshots[f"snapshot_{tokens}"] = weights
        snapshots[f"snapshot_{tokens}_sha256"] = weights + SIDECAR_SUFFIX
    return {**run_outputs(run_dir), **snapshots}


def pretrain_dir():
    return f"{RESULTS}/runs/pretrain/{{source}}/{{size}}"


def finetune_dir():
    return f"{RESULTS}/runs/finetune/{{source}}/{{size}}/d{{chars}}_seed{{seed}}"


def snapshot_finetune_dir():
    return f"{RESULTS}/runs/snapshot/{{source}}/{{size}}/p{{tokens}}/d{{chars}}_seed{{seed}}"


def scratch_dir():
    return f"{RESULTS}/runs/scratch/{{size}}/d{{chars}}_seed{{seed}}"


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


pretrain_spec = functools.partial(run_spec, "pretrain")
finetune_spec = functools.partial(run_spec, "finetune")
scratch_spec = functools.partial(run_spec, "scratch")


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


def run_records(runs=None, extra=()):
    """Per run: its spec, evaluation, summary and model description (and ``extra`` files), in one order."""
    runs = all_runs() if runs is None else runs
    names = ("spec", "eval", "summary", "model", *extra)
    return {f"{name}_files": [f"{run}/{name}.json" for run in runs] for name in names}


DP_AXIS = config.get("pretraining_data")


def snapshot_runs():
    """Fine-tuning runs from every pretraining snapshot, for the sizes and D_F of the D_p axis."""
    if not DP_AXIS:
        return []
    return expand(
        f"{RESULTS}/runs/snapshot/{{source}}/{{size}}/p{{tokens}}/d{{chars}}_seed{{seed}}",
        source=SOURCES, size=DP_AXIS["sizes"], tokens=SNAPSHOT_TOKENS, chars=DP_AXIS["d_f_chars"], seed=SEEDS,
    )


def snapshot_run_records():
    return run_records(snapshot_runs(), extra=("downstream",))


def final_outputs():
    outputs = [f"{RESULTS}/runs.csv", f"{RESULTS}/fit/transfer_fit.json", f"{RESULTS}/figures",
               f"{RESULTS}/fit/answer.rst"]
    if DP_AXIS:
        outputs += [f"{RESULTS}/pretraining_data/dp_fit.json"]
    return outputs


# ---- cluster resources
# What each job asks of a cluster (profiles/slurm turns it into sbatch options). GPUs and nodes come from
# the config, memory and wall time from the model shape and the run's token budget, both growing with each
# retry. Platform settings (partition, account, GPU model) live in the profiles only. A CPU-only study
# (cluster.gpus_per_job 0, the default) asks for no GPU, and local runs use nothing here but threads.

import math

from transfer_scaling.config import step_budget
from transfer_scaling.tokenizer import BYTE_VOCAB_SIZE

CLUSTER = config.get("cluster", {})
GPUS_PER_JOB = CLUSTER.get("gpus_per_job", 0)
GPU_TFLOPS = CLUSTER.get("gpu_tflops", 50)
MAX_RUNTIME = CLUSTER.get("max_runtime", 1440)
PRETRAIN_GPUS = config.get("pretrain", {}).get("gpus", GPUS_PER_JOB)
PRETRAIN_NODES = config.get("pretrain", {}).get("nodes", 1)

# Measured 6e10 FLOP/s per core for d_model 128 (notes/deepspeed-cpu.md); smaller models reach less.
CPU_FLOPS_PER_THREAD = 1e10
PROCESS_MB = 1200  # one Python process with torch and DeepSpeed imported
BYTES_PER_PARAM = 16  # fp32 weights, gradients and two AdamW moments
STARTUP_MINUTES = 5
RUNTIME_SAFETY = 2
# Runs estimated under this many minutes share SLURM jobs (each SLURM job costs 10-13 s of overhead).
SMALL_RUN_MINUTES = 5
SMALL_JOBS = "small_jobs"


def vocab_size():
    tokenizer = config.get("tokenizer", {})
    return tokenizer["vocab_size"] if tokenizer.get("kind") == "bpe" else BYTE_VOCAB_SIZE


def total_params(size):
    """All parameters (N = 12 L d^2 + 13 L d + 2 d, plus the embeddings): what memory and compute scale with."""
    shape = model_shape(size)
    layers, width = shape["n_layer"], shape["d_model"]
    return 12 * layers * width**2 + 13 * layers * width + 2 * width + (vocab_size() + shape["n_ctx"]) * width


def training_gpus(kind):
    """GPUs per node of one training job."""
    return PRETRAIN_GPUS if kind == "pretrain" else GPUS_PER_JOB


def training_nodes(kind):
    return PRETRAIN_NODES if kind == "pretrain" else 1


def training_processes(kind):
    """Trainer processes per node: one per GPU, one on CPU."""
    return max(1, training_gpus(kind))


def run_flops(kind, wildcards):
    """Training compute (6 * params * tokens) plus the periodic validation passes, at the run's step cap."""
    options = run_options(config, kind)
    if kind == "pretrain":
        steps = options["max_steps"]
    else:  # data-limited: characters stand in for tokens (about equal for byte tokens)
        steps = step_budget(options, int(wildcards.chars), config["context"])
    params = total_params(wildcards.size)
    evaluations = steps // options["eval_interval"] + 1
    training = 6 * params * steps * options["batch_size"] * config["context"]
    return training + 2 * params * options["eval_tokens"] * evaluations


def compute_minutes(kind, wildcards):
    gpus = training_gpus(kind) * training_nodes(kind)
    rate = gpus * GPU_TFLOPS * 1e12 if gpus else CPU_FLOPS_PER_THREAD * config["training"]["threads"]
    return run_flops(kind, wildcards) / rate / 60


def cpu_activation_mb(kind, size):
    """Activations of one micro-batch kept for the backward pass (float32, attention scores included)."""
    shape = model_shape(size)
    micro_batch = run_options(config, kind)["batch_size"] // (training_processes(kind) * training_nodes(kind))
    per_token = shape["n_layer"] * (16 * shape["d_model"] + 2 * shape["n_head"] * shape["n_ctx"]) + 2 * vocab_size()
    return 4 * micro_batch * shape["n_ctx"] * per_token / 2**20


def training_mb(kind, size):
    """Host memory per node. On GPUs activations live in GPU memory, which SLURM does not count."""
    activations = 0 if training_gpus(kind) else cpu_activation_mb(kind, size)
    return training_processes(kind) * (PROCESS_MB + BYTES_PER_PARAM * total_params(size) / 2**20 + activations)


def training_resources(kind):
    """Requests of one kind of training job: GPUs and nodes from the config, memory and time from the run."""
    gpus, nodes = training_gpus(kind), training_nodes(kind)

    def mem_mb(wildcards, attempt):
        return math.ceil(training_mb(kind, wildcards.size) * attempt)

    def runtime(wildcards, attempt):
        minutes = STARTUP_MINUTES + RUNTIME_SAFETY * compute_minutes(kind, wildcards)
        return min(MAX_RUNTIME, math.ceil(minutes * attempt))

    resources = {"mem_mb": mem_mb, "runtime": runtime, "gpu": gpus * nodes}
    if nodes > 1:
        # With `mpi`, the SLURM executor runs the job's Snakemake in the batch script rather than in a one-node
        # job step, so that transfer_scaling.launch can start one step across all nodes. The executor wants
        # more than one task per node for such jobs; the launcher uses one per node.
        resources.update(nodes=nodes, mpi="srun", tasks_per_node=max(2, gpus))
    return resources


def training_group(kind):
    """Short CPU runs share SLURM jobs with each other and with evaluations; GPU runs keep their own job."""

    def group(wildcards):
        if training_gpus(kind) == 0 and compute_minutes(kind, wildcards) <= SMALL_RUN_MINUTES:
            return SMALL_JOBS
        return None

    return group


def evaluated_size(run):
    """The size named in a run path: pretrain/{source}/{size}, finetune/{source}/{size}/..., scratch/{size}/..."""
    parts = run.split("/")
    return parts[1] if parts[0] == "scratch" else parts[2]


def evaluation_mem_mb(wildcards, attempt):
    """Float32 weights, plus on CPU the logits of one batch (with their log-softmax)."""
    params_mb = 4 * total_params(evaluated_size(wildcards.run)) / 2**20
    logits = 8 * config["evaluation"]["batch_size"] * config["context"] * vocab_size()
    logits_mb = 0 if GPUS_PER_JOB else logits / 2**20
    return math.ceil((PROCESS_MB + params_mb + logits_mb) * attempt)


def evaluation_runtime(wildcards, attempt):
    return min(MAX_RUNTIME, 20 * attempt)


def evaluation_resources():
    """An evaluation runs on one GPU when the study has GPUs (its forward passes scale like training's)."""
    return {"mem_mb": evaluation_mem_mb, "runtime": evaluation_runtime, "gpu": min(1, GPUS_PER_JOB)}


def evaluation_group():
    return SMALL_JOBS if GPUS_PER_JOB == 0 else None
