"""What the jobs ask of a cluster: memory and time grow with the model and with each retry, GPUs follow the config."""

from __future__ import annotations

import pytest

from test_config import study_config
from transfer_scaling.plan import model_shapes, non_embedding_params
from transfer_scaling.train.model import GPT, GPTConfig
from transfer_scaling.resources import (
    SMALL_JOBS, evaluation_gpus, evaluation_group, evaluation_mem_mb, evaluation_runtime, total_params,
    training_group, training_mem_mb, training_placement, training_runtime, vocab_size,
)

PRESETS = {"default": (), "paper": ("paper",)}
GPU_STUDY = {"cluster": {"gpus_per_job": 2}, "pretrain": {"gpus": 4, "nodes": 2}}


@pytest.fixture(scope="module")
def configs() -> dict[str, dict]:
    return {name: study_config(*overlays) for name, overlays in PRESETS.items()}


def requests(config: dict, kind: str, size: str, chars: int | None, attempt: int) -> tuple:
    """(mem_mb, runtime, group) of one job, as the rules ask for them ('evaluate' for an evaluation)."""
    shape = model_shapes(config)[size]
    if kind == "evaluate":
        return evaluation_mem_mb(config, shape, attempt), evaluation_runtime(config, attempt), evaluation_group(config)
    group = None if kind == "pretrain" else training_group(config, kind, shape, chars)
    return training_mem_mb(config, kind, shape, attempt), training_runtime(config, kind, shape, chars, attempt), group


# Computed by the cost model of workflow/rules/common.smk before it moved to transfer_scaling.resources.
EXPECTED = [
    # preset, kind, size, D chars, attempt, mem_mb, runtime (minutes), group
    ("default", "pretrain", "xs", None, 1, 1233, 7, None),
    ("default", "pretrain", "l", None, 1, 1302, 48, None),
    ("default", "pretrain", "l", None, 2, 2603, 96, None),
    ("default", "finetune", "l", 10_000, 1, 1302, 13, SMALL_JOBS),
    ("default", "finetune", "l", 100_000, 1, 1302, 84, None),
    ("default", "finetune", "s", 100_000, 2, 2482, 28, SMALL_JOBS),
    ("default", "scratch", "m", 1_000_000, 1, 1274, 40, None),
    ("default", "scratch", "xs", 1_000_000, 2, 2465, 18, SMALL_JOBS),
    ("default", "evaluate", "l", None, 1, 1218, 20, SMALL_JOBS),
    ("default", "evaluate", "xs", None, 3, 3649, 60, SMALL_JOBS),
    ("paper", "pretrain", "n19m", None, 1, 7558, 660, None),
    ("paper", "pretrain", "n19m", None, 2, 15115, 1319, None),
    ("paper", "pretrain", "n302m", None, 1, 26457, 2880, None),
    ("paper", "finetune", "n3m", 10_000_000, 1, 1449, 43, None),
    ("paper", "finetune", "n302m", 10_000_000, 2, 13229, 1623, None),
    ("paper", "scratch", "n85m", 100_000_000, 1, 3099, 2830, None),
    ("paper", "scratch", "n3m", 10_000_000_000, 2, 2898, 1949, None),
    ("paper", "evaluate", "n302m", None, 1, 2554, 20, None),
    ("paper", "evaluate", "n19m", None, 2, 2745, 40, None),
]


@pytest.mark.parametrize("preset,kind,size,chars,attempt,mem_mb,runtime,group", EXPECTED)
def test_requests_of_the_presets(configs, preset, kind, size, chars, attempt, mem_mb, runtime, group):
    assert requests(configs[preset], kind, size, chars, attempt) == (mem_mb, runtime, group)


@pytest.mark.parametrize("kind,chars", [("pretrain", None), ("finetune", 100_000), ("scratch", 1_000_000)])
def test_memory_and_time_grow_with_n_and_with_each_attempt(configs, kind, chars):
    config = configs["default"]
    shapes = model_shapes(config)
    by_n = sorted(shapes, key=lambda size: non_embedding_params(shapes[size]))
    mem_mb, runtime, _ = zip(*(requests(config, kind, size, chars, 1) for size in by_n))
    assert list(mem_mb) == sorted(set(mem_mb)) and list(runtime) == sorted(set(runtime)), "not rising with N"
    for size in shapes:
        first, second = requests(config, kind, size, chars, 1), requests(config, kind, size, chars, 2)
        assert second[0] > first[0] and second[1] > first[1]


def test_gpu_requests_follow_the_config():
    config = study_config(GPU_STUDY)
    assert training_placement(config, "pretrain") == {"gpu": 8, "nodes": 2, "mpi": "srun", "tasks_per_node": 4}
    assert training_placement(config, "finetune") == training_placement(config, "scratch") == {"gpu": 2}
    assert evaluation_gpus(config) == 1
    shape = model_shapes(config)["xs"]
    assert training_group(config, "finetune", shape, 3000) is None, "a GPU run shared a SLURM job"
    assert evaluation_group(config) is None
    assert training_placement(study_config({"cluster": {"gpus_per_job": 2}}), "pretrain") == {"gpu": 2}


def test_cpu_only_study_asks_for_no_gpu(configs):
    config = configs["default"]
    for kind in ("pretrain", "finetune", "scratch"):
        assert training_placement(config, kind) == {"gpu": 0}
    assert evaluation_gpus(config) == 0


def test_time_request_is_capped_at_max_runtime():
    config = study_config({"cluster": {"max_runtime": 30}})
    shape = model_shapes(config)["l"]
    assert training_runtime(config, "pretrain", shape, None, 1) == 30
    assert training_runtime(config, "scratch", shape, 1_000_000, 3) == 30
    assert evaluation_runtime(config, 2) == 30
    assert training_runtime(config, "finetune", model_shapes(config)["xs"], 3000, 1) < 30


@pytest.mark.parametrize("tokenizer", [{"kind": "byte"}, {"kind": "bpe", "vocab_size": 1000, "train_chars": 10**5}])
def test_total_params_counts_the_model(tokenizer):
    config = study_config({"tokenizer": tokenizer})
    for shape in model_shapes(config).values():
        model = GPT(GPTConfig(**shape, n_ctx=config["context"], vocab_size=vocab_size(config)))
        assert total_params(config, shape) == sum(p.numel() for p in model.parameters())
