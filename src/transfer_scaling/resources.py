"""What each job asks of a cluster (profiles/slurm turns it into sbatch options).

GPUs and nodes come from the config; memory and wall time from the model shape and the run's token budget, both
growing with each retry (``attempt``). Platform settings (partition, account, GPU model) live in the profiles only.
A CPU-only study (cluster.gpus_per_job 0, the default) asks for no GPU, and local runs use nothing here but threads.

Every function takes a config that ``validate_config`` has filled with the schema's defaults, and a model shape
from ``model_shapes`` (n_layer, d_model, n_head); the rule files only pick the shape and data out of a job.
"""

from __future__ import annotations

import math

from .plan import non_embedding_params, run_options, step_budget, trainer_processes, training_gpus, vocab_size

# Measured 6e10 FLOP/s per core for d_model 128 (notes/deepspeed-cpu.md); smaller models reach less.
CPU_FLOPS_PER_THREAD = 1e10
PROCESS_MB = 1200  # one Python process with torch and DeepSpeed imported
BYTES_PER_PARAM = 16  # fp32 weights, gradients and two AdamW moments
STARTUP_MINUTES = 5
RUNTIME_SAFETY = 2
EVALUATION_MINUTES = 20
# Runs estimated under this many minutes share SLURM jobs (each SLURM job costs 10-13 s of overhead).
SMALL_RUN_MINUTES = 5
SMALL_JOBS = "small_jobs"


def total_params(config: dict, shape: dict) -> int:
    """All parameters, what memory and compute scale with: N plus the token and position embeddings (the output
    head is tied to the token embedding)."""
    return non_embedding_params(shape) + (vocab_size(config) + config["context"]) * shape["d_model"]


def run_flops(config: dict, kind: str, shape: dict, train_chars: int | None) -> float:
    """Training compute (6 * params * tokens) plus the periodic validation passes, at the run's step cap.

    ``train_chars`` is a data-limited run's subset, whose characters stand in for tokens (about equal for byte
    tokens); pretraining (None) runs its whole budget.
    """
    options = run_options(config, kind)
    if kind == "pretrain":
        steps = options["max_steps"]
    else:
        steps = step_budget(options, train_chars, config["context"])
    params = total_params(config, shape)
    evaluations = steps // options["eval_interval"] + 1
    training = 6 * params * steps * options["batch_size"] * config["context"]
    return training + 2 * params * options["eval_tokens"] * evaluations


def compute_minutes(config: dict, kind: str, shape: dict, train_chars: int | None) -> float:
    """Minutes of compute at the sustained rate of the job's GPUs, or of its CPU threads."""
    gpus, nodes = training_gpus(config, kind)
    if gpus:
        rate = gpus * nodes * config["cluster"]["gpu_tflops"] * 1e12
    else:
        rate = CPU_FLOPS_PER_THREAD * config["training"]["threads"]
    return run_flops(config, kind, shape, train_chars) / rate / 60


def cpu_activation_mb(config: dict, kind: str, shape: dict) -> float:
    """Activations of one micro-batch kept for the backward pass (float32, attention scores included)."""
    per_node, nodes = trainer_processes(config, kind)
    micro_batch = run_options(config, kind)["batch_size"] // (per_node * nodes)
    n_ctx = config["context"]
    per_token = shape["n_layer"] * (16 * shape["d_model"] + 2 * shape["n_head"] * n_ctx) + 2 * vocab_size(config)
    return 4 * micro_batch * n_ctx * per_token / 2**20


def training_mb(config: dict, kind: str, shape: dict) -> float:
    """Host memory per node. On GPUs activations live in GPU memory, which SLURM does not count."""
    activations = 0 if training_gpus(config, kind)[0] else cpu_activation_mb(config, kind, shape)
    processes = trainer_processes(config, kind)[0]
    return processes * (PROCESS_MB + BYTES_PER_PARAM * total_params(config, shape) / 2**20 + activations)


def training_mem_mb(config: dict, kind: str, shape: dict, attempt: int) -> int:
    return math.ceil(training_mb(config, kind, shape) * attempt)


def training_runtime(config: dict, kind: str, shape: dict, train_chars: int | None, attempt: int) -> int:
    """Minutes: start-up plus twice the compute estimate, times the attempt, within cluster.max_runtime."""
    minutes = STARTUP_MINUTES + RUNTIME_SAFETY * compute_minutes(config, kind, shape, train_chars)
    return min(config["cluster"]["max_runtime"], math.ceil(minutes * attempt))


def training_placement(config: dict, kind: str) -> dict:
    """GPUs of one training job and, across nodes, how SLURM starts it.

    With ``mpi``, the SLURM executor runs the job's Snakemake in the batch script rather than in a one-node job
    step, so that transfer_scaling.train.launch can start one step across all nodes. The executor wants more than one
    task per node for such jobs; the launcher uses one per node.
    """
    gpus, nodes = training_gpus(config, kind)
    placement = {"gpu": gpus * nodes}
    if nodes > 1:
        placement.update(nodes=nodes, mpi="srun", tasks_per_node=max(2, gpus))
    return placement


def training_group(config: dict, kind: str, shape: dict, train_chars: int | None) -> str | None:
    """Short CPU runs share SLURM jobs with each other and with evaluations; GPU runs keep their own job."""
    if training_gpus(config, kind)[0] == 0 and compute_minutes(config, kind, shape, train_chars) <= SMALL_RUN_MINUTES:
        return SMALL_JOBS
    return None


def evaluation_mem_mb(config: dict, shape: dict, attempt: int) -> int:
    """Float32 weights, plus on CPU the logits of one batch (with their log-softmax)."""
    params_mb = 4 * total_params(config, shape) / 2**20
    logits = 8 * config["evaluation"]["batch_size"] * config["context"] * vocab_size(config)
    logits_mb = 0 if config["cluster"]["gpus_per_job"] else logits / 2**20
    return math.ceil((PROCESS_MB + params_mb + logits_mb) * attempt)


def evaluation_runtime(config: dict, attempt: int) -> int:
    return min(config["cluster"]["max_runtime"], EVALUATION_MINUTES * attempt)


def evaluation_gpus(config: dict) -> int:
    """An evaluation runs on one GPU when the study has GPUs (its forward passes scale like training's)."""
    return min(1, config["cluster"]["gpus_per_job"])


def evaluation_group(config: dict) -> str | None:
    return SMALL_JOBS if config["cluster"]["gpus_per_job"] == 0 else None
