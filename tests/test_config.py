"""Bad configurations are refused before any job runs, with one message naming the key and the value."""

from __future__ import annotations

import copy
import time

import pytest
import yaml

from conftest import ROOT, SCHEMA, new_study, run_workflow
from transfer_scaling.config import ConfigError, check_target_size, load_schema, validate_config
from transfer_scaling.plan import model_shapes, run_options, step_budget
from transfer_scaling.data.sources import check_config_paths


@pytest.fixture(scope="module")
def schema():
    return load_schema(SCHEMA)


with open(ROOT / "config.yaml", encoding="utf-8") as _handle:
    DEFAULTS = yaml.safe_load(_handle)
MISSING = "/nonexistent/transfer-scaling/corpus"
DOCS = ROOT / "docs"


@pytest.fixture()
def default_config():
    return copy.deepcopy(DEFAULTS)


def _set(config: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


_DELETE = object()

# (key, bad value, fragment the message must contain)
BAD_CONFIGS = [
    ("target", "java", "'target': 'java' is not a corpus"),
    ("sources", ["text", "nope"], "'nope' is not a corpus"),
    ("sources", ["python"], "is the target itself"),
    ("sources", [], "config key 'sources'"),
    ("models.0.d_model", 25, "d_model 25 is not divisible by n_head 2"),
    ("models.0.n_layer", 0, "config key 'models.0.n_layer': value 0"),
    ("models.1.name", "xs", "model names must be unique"),
    ("models.0.width", 3, "unknown key(s) 'width'"),
    ("context", 4, "config key 'context': value 4"),
    ("training.lr", -0.1, "config key 'training.lr': value -0.1"),
    ("training.lr", "fast", "config key 'training.lr': value 'fast'"),
    ("training.precision", "fp8", "value 'fp8' is not one of ['fp32', 'bf16']"),
    ("training.zero_stage", 4, "config key 'training.zero_stage'"),
    ("training.batch_size", 0, "config key 'training.batch_size'"),
    ("training.min_steps", 5000, "min_steps 5000 exceeds max_steps"),
    ("training.betas", [0.9], "config key 'training.betas'"),
    ("finetune.d_f_chars", [], "config key 'finetune.d_f_chars'"),
    ("finetune.d_f_chars", [1000, -5], "config key 'finetune.d_f_chars.1': value -5"),
    ("scratch.d_chars", [1000], "config key 'scratch.d_chars'"),
    ("scratch", _DELETE, "'scratch' is a required property"),
    ("tokenizer.vocab_size", 4096, "vocab_size and train_chars apply to kind bpe only"),
    ("tokenizer.kind", "wordpiece", "value 'wordpiece' is not one of ['byte', 'bpe']"),
    ("corpora.text.files.0.sha256", "abc", "config key 'corpora.text.files.0"),
    ("corpora.text.files.0.index", "cran", "config key 'corpora.text.files.0"),
    ("corpora.text_code.mixture", {"text": 0.5, "code": 0.4}, "weights sum to 0.9, must sum to 1"),
    ("corpora.text_code.mixture", {"text": 0.5, "go": 0.5}, "component 'go' is not a corpus"),
    ("corpora.Text", {"mixture": {"text": 0.5, "code": 0.5}}, "config key 'corpora'"),
    ("splits.test", 0.9, "config key 'splits.test': value 0.9"),
    ("fit.bootstrap", 10, "config key 'fit.bootstrap': value 10"),
    ("fit.tolerance", 2, "config key 'fit.tolerance': value 2"),
    ("seeds", [0, 0], "config key 'seeds'"),
    ("unknown_key", 1, "unknown key(s) 'unknown_key'"),
    # Faults the config reveals on its own (issue 11, item 4): refused when the Snakefile is parsed, not in a job.
    ("corpora.python.files", [{"local": MISSING}],
     f"config key 'corpora.python.files.0': local corpus path '{MISSING}' does not exist"),
    ("corpora.python.files", [{"local": f"{DOCS}/*.nothing"}], f"local corpus path '{DOCS}/*.nothing' does not exist"),
    ("corpora.python.files", [{"local": str(DOCS), "include": ["*.nothing"]}],
     f"config key 'corpora.python.files.0': local '{DOCS}': no file matches include=['*.nothing']"),
    ("corpora.python.files", [{"huggingface": MISSING}],
     f"config key 'corpora.python.files.0': huggingface dataset '{MISSING}': local dataset path does not exist"),
    ("corpora.text_code.mixture", {"text_code": 0.5, "text": 0.5}, "component 'text_code' is itself a mixture"),
    ("corpora.text.files", DEFAULTS["corpora"]["python"]["files"],
     "config key 'sources': 'text' has the same documents as the target 'python'"),
    ("corpora.text_code.mixture", {"text": 0.5, "python": 0.5},
     "'text_code' (through 'python') has the same documents as the target 'python'"),
    ("corpora.python", {"mixture": {"text": 0.5, "code": 0.5}},
     "'text' has the same documents as the target 'python' (through 'text')"),
    ("corpora.text_code", {"files": DEFAULTS["corpora"]["text"]["files"]},
     "config key 'sources': 'text' and 'text_code' are the same corpus under two names"),
    ("models.2", {"name": "m", "n_layer": 2, "d_model": 32, "n_head": 4},
     "config key 'models.2' (m): N = 25472 non-embedding parameters, as models.1 (s)"),
    ("finetune.d_f_chars", [3000, 3000], "config key 'finetune.d_f_chars': value [3000, 3000]"),
    ("scratch.d_chars", [3000, 3000, 10000], "config key 'scratch.d_chars': value [3000, 3000, 10000]"),
    ("pretraining_data.sizes", ["m", "m"], "config key 'pretraining_data.sizes': value ['m', 'm']"),
    ("pretraining_data.sizes", ["xl"], "config key 'pretraining_data.sizes': ['xl'] are not model names"),
    ("finetune.options", {"thread": 2}, "config key 'finetune.options': unknown key(s) 'thread'"),
    ("finetune.options", {"threads": 2}, "config key 'finetune.options.threads': 2 would be ignored"),
    ("pretrain.options.max_steps", 500, "config key 'pretrain.options.max_steps': 500 would be ignored"),
    ("scratch.options", {"min_steps": 10, "max_steps": 5},
     "config key 'scratch.options.min_steps': min_steps 10 exceeds max_steps 5 of scratch runs"),
    ("finetune.options", {"warmup_steps": 3000},
     "config key 'finetune.options.warmup_steps': warmup_steps 3000 is not below max_steps 3000 of finetune runs"),
    ("training.warmup_steps", 2000,
     "config key 'training.warmup_steps': warmup_steps 2000 is not below max_steps 1465 of pretrain runs"),
    ("training.eval_interval", 5000,
     "config key 'training.eval_interval': eval_interval 5000 exceeds max_steps 3000 of finetune runs"),
    ("training.eval_tokens", 64,
     "config key 'training.eval_tokens': eval_tokens 64 is below one context window of 128 tokens"),
    ("pretrain.gpus", 3,
     "config key 'training.batch_size': batch_size 32 is not divisible by the 3 trainer processes of a pretrain job"),
    ("training.micro_batch_size", 12,
     "config key 'training.micro_batch_size': micro_batch_size 12 does not divide the 32 sequences each of the 1 "
     "trainer processes of a pretrain job takes of batch_size 32 (size xs); choose a divisor of 32"),
    ("models.3.micro_batch_size", 5,
     "config key 'models.3.micro_batch_size': micro_batch_size 5 does not divide the 32 sequences"),
    ("finetune.options", {"micro_batch_size": 0}, "config key 'finetune.options.micro_batch_size': value 0"),
    ("training.loss_chunk_tokens", -1, "config key 'training.loss_chunk_tokens': value -1"),
    ("training.compile", "yes", "config key 'training.compile': value 'yes'"),
    ("pretraining_data.max_new_tokens", 128,
     "config key 'pretraining_data.max_new_tokens': 128 leaves no room for a prompt"),
    ("finetune.d_f_chars", [100, 3000],
     "config key 'finetune.d_f_chars': [100] hold fewer characters than one context window of 128 tokens"),
    ("context", 4096,
     "config key 'finetune.d_f_chars': [3000] hold fewer characters than one context window of 4096 tokens"),
    ("finetune.d_f_chars", [3000, 2000000],
     "config key 'finetune.d_f_chars': [2000000] exceed the largest scratch D 1000000"),
    ("scratch.d_chars", [3000, 30000],
     "config key 'finetune.d_f_chars': [100000] exceed the largest scratch D 30000"),
    ("pretraining_data.d_f_chars", [3000000],
     "config key 'pretraining_data.d_f_chars': [3000000] exceed the largest scratch D 1000000"),
    ("fit.low_data_fraction", 0.001,
     "config key 'fit.low_data_fraction': 0.001 x the largest scratch D 1000000 = 1000 is below every D_F"),
    ("splits", {"validation": 0.5, "test": 0.5},
     "config key 'splits': validation 0.5 + test 0.5 = 1 leave no documents for train"),
]


def test_default_config_is_valid(default_config, schema):
    config = validate_config(default_config, schema)
    assert config["evaluation"]["batch_size"] > 0
    assert len(model_shapes(config)) >= 3


@pytest.mark.parametrize("key,value,message", BAD_CONFIGS, ids=[f"{k}={v!r}" for k, v, _ in BAD_CONFIGS])
def test_bad_config_names_key_and_value(default_config, schema, key, value, message):
    """Refused by the checks the Snakefile runs before any job: the schema, the cross-key rules, the local paths."""
    _set(default_config, key, value)
    with pytest.raises(ConfigError) as error:
        check_config_paths(validate_config(default_config, schema))
    assert message in str(error.value)


def test_d_f_above_target_size_is_refused(default_config, schema):
    config = validate_config(default_config, schema)
    with pytest.raises(ConfigError, match=r"'finetune.d_f_chars': \[100000\] exceed the target 'python'"):
        check_target_size(config, target_train_chars=50_000)


def test_presets_are_valid():
    for preset in sorted((ROOT / "presets").glob("*.yaml")):
        study_config(preset.stem)


def study_config(*overlays: str | dict) -> dict:
    """config.yaml with each overlay (a preset's name, or a mapping) merged in as ``--configfile`` does, validated
    and filled with the schema's defaults: the config a study's jobs see."""
    config = copy.deepcopy(DEFAULTS)
    for overlay in overlays:
        if isinstance(overlay, str):
            with open(ROOT / "presets" / f"{overlay}.yaml", encoding="utf-8") as handle:
                overlay = yaml.safe_load(handle)
        _merge(config, overlay)
    return validate_config(config, load_schema(SCHEMA))


def _merge(base: dict, overlay: dict) -> None:
    """Snakemake's --configfile semantics: mappings merge key by key, everything else replaces."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def test_micro_batch_of_a_size_overrides_the_kinds_and_stays_out_of_the_shape():
    config = study_config({"training": {"micro_batch_size": 16}, "scratch": {"options": {"micro_batch_size": 8}},
                           "models": [{"name": "s", "n_layer": 2, "d_model": 32, "n_head": 2},
                                      {"name": "m", "n_layer": 2, "d_model": 64, "n_head": 4},
                                      {"name": "l", "n_layer": 2, "d_model": 112, "n_head": 4, "micro_batch_size": 4}]})
    assert model_shapes(config)["l"] == {"n_layer": 2, "d_model": 112, "n_head": 4}
    assert run_options(config, "finetune", "s")["micro_batch_size"] == 16
    assert run_options(config, "scratch", "s")["micro_batch_size"] == 8
    assert run_options(config, "scratch", "l")["micro_batch_size"] == run_options(config, "pretrain", "l")[
        "micro_batch_size"] == 4
    assert run_options(config, "finetune")["micro_batch_size"] == 16


def test_pretraining_budget_sets_steps(default_config, schema):
    config = validate_config(default_config, schema)
    options = run_options(config, "pretrain")
    tokens_per_step = options["batch_size"] * config["context"]
    assert options["max_steps"] * tokens_per_step >= config["pretrain"]["tokens"]
    assert (options["max_steps"] - 1) * tokens_per_step < config["pretrain"]["tokens"]


def test_step_budget_scales_with_data():
    options = {"batch_size": 10, "max_epochs": 4, "min_steps": 50, "max_steps": 1000}
    assert step_budget(options, train_tokens=100, n_ctx=10) == 50  # floor
    assert step_budget(options, train_tokens=10_000, n_ctx=10) == 400  # 4 epochs of 100-token steps
    assert step_budget(options, train_tokens=10**6, n_ctx=10) == 1000  # cap


@pytest.mark.slow
def test_bad_config_stops_workflow_fast_and_writes_nothing(tmp_path):
    study = new_study(tmp_path / "study")
    (study / "bad.yaml").write_text("training: {lr: -1}\n")
    started = time.monotonic()
    result = run_workflow(study, "-n", "--configfile", "bad.yaml", check=False)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "config key 'training.lr': value -1" in result.stdout + result.stderr
    assert not (study / "results").exists()
    print(f"bad config refused in {elapsed:.1f} s")


@pytest.mark.slow
def test_missing_local_corpus_stops_dry_run_and_writes_nothing(tmp_path):
    """A relative local path is resolved from the study directory, when the Snakefile is parsed."""
    study = new_study(tmp_path / "study")
    (study / "local.yaml").write_text("corpora:\n  python:\n    files: [{local: data/python}]\n")
    result = run_workflow(study, "-n", "--configfile", "local.yaml", check=False)
    assert result.returncode != 0
    assert (f"config key 'corpora.python.files.0': local corpus path 'data/python' does not exist "
            f"(resolved from {study})") in result.stdout + result.stderr
    assert not (study / "results").exists()


def test_local_corpus_that_exists_is_valid(default_config, schema):
    default_config["corpora"]["python"]["files"] = [{"local": str(DOCS), "include": ["*.md"]},
                                                    {"local": f"{DOCS}/*.md"}]
    check_config_paths(validate_config(default_config, schema))
