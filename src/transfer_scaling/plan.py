"""The plan a valid config implies: model shapes and their N, the vocabulary, each kind of run's options (per
size), step budgets, snapshot steps and the processes of each job. Read by the config checks, the rules, the
run records and the cluster cost model alike, so each quantity is computed in one place.
"""

from __future__ import annotations

import math

TRAINING_KINDS = ("pretrain", "finetune", "scratch")
BYTE_VOCAB_SIZE = 257
"""The byte tokenizer's vocabulary: 256 byte values and the end-of-document token."""


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key, the value and what is allowed."""


def corpus_parts(corpora: dict, name: str) -> list[str]:
    """The corpora of files that ``name`` is built from: itself, or a mixture's components."""
    return list(corpora[name].get("mixture", [name]))


def used_corpora(config: dict) -> list[str]:
    """The corpora of files a study builds: the target's and the sources', mixtures resolved to their parts."""
    return sorted({part for name in (config["target"], *config["sources"]) for part in corpus_parts(config["corpora"], name)})


def non_embedding_params(shape: dict) -> int:
    """N of the scaling laws: 12 L d^2 + 13 L d + 2 d (README, "Configuration")."""
    layers, width = shape["n_layer"], shape["d_model"]
    return 12 * layers * width**2 + 13 * layers * width + 2 * width


def check_heads(d_model: int, n_head: int) -> None:
    """Attention splits d_model evenly across its heads: the one statement of the rule, which model.GPTConfig
    applies to every model built and the config check to every size before a job runs (without importing torch)."""
    if d_model % n_head:
        raise ValueError(
            f"d_model {d_model} is not divisible by n_head {n_head}; choose n_head among the divisors of d_model"
        )


def min_steps_beyond_cap(options: dict) -> bool:
    """True when min_steps (no early stop before it) exceeds max_steps (the step cap), which would end the run before
    early stopping could. The one statement of the rule: the config check applies it to every kind of run, and
    train.spec.parse_spec to each run's spec."""
    return options["min_steps"] > options["max_steps"]


def training_gpus(config: dict, kind: str) -> tuple[int, int]:
    """(GPUs per node, nodes) of one training job of ``kind``: pretraining's own (pretrain.gpus, which defaults to
    cluster.gpus_per_job, and pretrain.nodes), or cluster.gpus_per_job on one node."""
    gpus = config["cluster"]["gpus_per_job"]
    if kind != "pretrain":
        return gpus, 1
    return config["pretrain"].get("gpus", gpus), config["pretrain"]["nodes"]


def trainer_processes(config: dict, kind: str) -> tuple[int, int]:
    """(processes per node, nodes) of one training job of ``kind``: one process per GPU, or one on CPU."""
    gpus, nodes = training_gpus(config, kind)
    return max(1, gpus), nodes


def data_sizes(config: dict) -> dict[str, list[int]]:
    """Every list of training-data sizes by key: fine-tuning D_F (main study and D_p axis) and scratch D."""
    sizes = {"finetune.d_f_chars": config["finetune"]["d_f_chars"], "scratch.d_chars": config["scratch"]["d_chars"]}
    if config.get("pretraining_data"):
        sizes["pretraining_data.d_f_chars"] = config["pretraining_data"]["d_f_chars"]
    return sizes


SHAPE_KEYS = ("n_layer", "d_model", "n_head")


def vocab_size(config: dict) -> int:
    """Tokens of the study's tokenizer: a BPE's vocab_size, or the byte tokenizer's."""
    tokenizer = config["tokenizer"]
    return tokenizer["vocab_size"] if tokenizer["kind"] == "bpe" else BYTE_VOCAB_SIZE


def model_shapes(config: dict) -> dict[str, dict]:
    """Model shapes (the architecture alone) by size name, in config order."""
    return {shape["name"]: {k: shape[k] for k in SHAPE_KEYS} for shape in config["models"]}


def run_options(config: dict, kind: str, size: str | None = None) -> dict:
    """Training options of one kind of run: the shared defaults, then that kind's overrides, then (given the
    size) the size's own micro-batch, since memory per GPU depends on the model more than on the kind."""
    if kind not in TRAINING_KINDS:
        raise ConfigError(f"unknown run kind {kind!r}; expected one of {TRAINING_KINDS}")
    options = dict(config["training"])
    options.update(config.get(kind, {}).get("options", {}))
    shape = next((shape for shape in config["models"] if shape["name"] == size), {})
    if "micro_batch_size" in shape:
        options["micro_batch_size"] = shape["micro_batch_size"]
    if kind == "pretrain" and "tokens" in config.get("pretrain", {}):
        tokens_per_step = options["batch_size"] * config["context"]
        options["max_steps"] = max(1, math.ceil(config["pretrain"]["tokens"] / tokens_per_step))
        options["min_steps"] = min(options["min_steps"], options["max_steps"])
    if kind == "pretrain":
        options["snapshot_steps"] = snapshot_steps(config.get("pretrain", {}).get("snapshots"), options["max_steps"])
    return options


def snapshot_steps(snapshots: dict | None, max_steps: int) -> list[int]:
    """Geometrically spaced steps ending at ``max_steps`` (distinct after rounding), or none."""
    if not snapshots:
        return []
    count, orders = snapshots["count"], snapshots["orders"]
    exponents = [orders * (i / (count - 1) - 1) for i in range(count)]
    steps = sorted({max(1, round(max_steps * 10**exponent)) for exponent in exponents})
    if len(steps) < count:
        raise ConfigError(
            f"config key 'pretrain.snapshots': {count} points over {orders} orders of magnitude of "
            f"{max_steps} steps collide after rounding; use fewer points or more pretraining tokens"
        )
    return steps


def snapshot_tokens(config: dict) -> list[int]:
    """Tokens seen at each pretraining snapshot (names the D_p points)."""
    options = run_options(config, "pretrain")
    return [step * options["batch_size"] * config["context"] for step in options["snapshot_steps"]]


def step_budget(options: dict, train_tokens: int, n_ctx: int) -> int:
    """Step cap of a data-limited run: ``max_epochs`` passes over its data, within [min_steps, max_steps].

    A single cap for every D either wastes compute on tiny subsets or stops large-D runs while they
    still improve (calibration.md); scaling the cap with the data keeps every run data-limited.
    """
    tokens_per_step = options["batch_size"] * n_ctx
    by_epochs = math.ceil(options["max_epochs"] * train_tokens / tokens_per_step)
    return int(min(options["max_steps"], max(options["min_steps"], by_epochs, 1)))
