"""Validation of the workflow configuration, before any job runs.

The JSON schema (workflow/schemas/config.schema.yaml) types every key; this module turns the first
violation into one readable message (key, value, what is allowed), fills the schema's defaults, and
adds the checks a schema cannot express, across keys (the local files the corpora name are checked by
data.sources.check_config_paths). A bad config therefore fails in seconds with nothing written, instead of hours
later inside a job. What a valid config implies for each run is plan.py's.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from .plan import (TRAINING_KINDS, ConfigError, check_heads, corpus_parts, data_sizes, min_steps_beyond_cap,
                   non_embedding_params, run_options, trainer_processes)

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
"""The schema of the checkout the package is installed from (editable: scripts/setup.sh, envs/)."""


def load_schema(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _key_path(error: ValidationError) -> str:
    parts = [str(part) for part in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _describe(error: ValidationError) -> str:
    """One line for the most specific schema violation."""
    best = error
    while best.context:
        best = min(best.context, key=lambda e: (-len(e.absolute_path), e.message))
    key = _key_path(best)
    if best.validator == "additionalProperties":
        allowed = sorted(best.schema.get("properties", {}))
        extra = sorted(set(best.instance) - set(allowed))
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"config key '{key}': unknown key(s) {', '.join(map(repr, extra))}{hint}"
    if best.validator == "enum":
        return f"config key '{key}': value {best.instance!r} is not one of {best.validator_value}"
    if best.validator == "not" and "description" in best.schema:
        return f"config key '{key}': {best.schema['description']} (got {best.instance!r})"
    if best.validator == "required":
        return f"config key '{key}': {best.message}"
    return f"config key '{key}': value {best.instance!r} is invalid: {best.message}"


def _fill_defaults(instance: Any, schema: dict) -> None:
    """Set schema defaults of missing keys, recursively through ``properties`` (not through $ref)."""
    if not isinstance(instance, dict):
        return
    for key, subschema in schema.get("properties", {}).items():
        if key not in instance and "default" in subschema:
            instance[key] = copy.deepcopy(subschema["default"])
        if key in instance:
            _fill_defaults(instance[key], subschema)


def validate_config(config: dict, schema: dict) -> dict:
    """Return ``config`` with defaults filled, or raise ConfigError naming the problem."""
    if not isinstance(config, dict):
        raise ConfigError("the config must be a mapping of keys to values")
    errors = sorted(Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(_describe(errors[0]))
    _fill_defaults(config, schema)
    check_cross_fields(config)
    return config


def check_cross_fields(config: dict) -> None:
    """Every fault the config reveals on its own (names, settings that contradict each other or make runs
    meaningless), so that it stops the workflow when the Snakefile is parsed rather than inside a job. The local
    files it names are the data stage's to check (data.sources.check_config_paths, also called then)."""
    _check_mixtures(config["corpora"])
    _check_target_and_sources(config)
    _check_models(config["models"])
    for kind in TRAINING_KINDS:
        _check_overrides_reach_jobs(config, kind)
        _check_schedule(config, kind)
        _check_batches(config, kind)
    _check_snapshots(config)
    _check_pretraining_data(config)
    _checkdata_sizes(config)
    _check_splits(config["splits"])


def _check_mixtures(corpora: dict) -> None:
    """A mixture is built from the documents of corpora of files, by fractions of its characters."""
    for name, spec in corpora.items():
        if "mixture" in spec:
            weights = spec["mixture"]
            for component in weights:
                if component not in corpora:
                    raise ConfigError(
                        f"config key 'corpora.{name}.mixture': component {component!r} is not a corpus; "
                        f"defined corpora: {', '.join(sorted(corpora))}"
                    )
                if "mixture" in corpora[component]:
                    raise ConfigError(
                        f"config key 'corpora.{name}.mixture': component {component!r} is itself a mixture; "
                        "mix corpora made of files only"
                    )
            try:
                check_mixture_weights(weights)
            except ValueError as error:
                raise ConfigError(f"config key 'corpora.{name}.mixture': {error}") from None


def check_mixture_weights(weights: dict) -> None:
    """A mixture takes each component's fraction of its characters, so the fractions must add up to the whole. The
    one statement of the rule, for the config check and for corpora.build_mixture."""
    if not isinstance(weights, dict) or not weights:
        raise ValueError("weights must map component corpora to fractions")
    bad = {c: w for c, w in weights.items() if not isinstance(w, (int, float)) or not 0 < w <= 1}
    if bad:
        raise ValueError(f"weights {bad} must be fractions in (0, 1]")
    if not math.isclose(sum(weights.values()), 1.0, abs_tol=1e-6):
        raise ValueError(f"weights sum to {sum(weights.values()):g}, must sum to 1")


def _content(spec: dict) -> str:
    """What decides a corpus's documents, comparable across names (its description does not count)."""
    return json.dumps({**spec, "description": None, "cleaner": spec.get("cleaner", "plain")}, sort_keys=True)


def _named(corpus: str, part: str) -> str:
    return repr(corpus) if corpus == part else f"{corpus!r} (through {part!r})"


def _check_target_and_sources(config: dict) -> None:
    corpora, target = config["corpora"], config["target"]
    if target not in corpora:
        raise ConfigError(
            f"config key 'target': {target!r} is not a corpus; defined corpora: {', '.join(sorted(corpora))}"
        )
    for source in config["sources"]:
        if source not in corpora:
            raise ConfigError(
                f"config key 'sources': {source!r} is not a corpus; defined corpora: {', '.join(sorted(corpora))}"
            )
        if source == target:
            raise ConfigError(f"config key 'sources': {source!r} is the target itself; transfer needs another corpus")
        _check_source_apart_from_target(corpora, source, target)
    _check_sources_differ(corpora, config["sources"])


def _check_source_apart_from_target(corpora: dict, source: str, target: str) -> None:
    """Pretraining on the target's own documents (a copy under another name, or in a mixture) is no transfer."""
    target_parts = {_content(corpora[part]): part for part in corpus_parts(corpora, target)}
    for part in corpus_parts(corpora, source):
        shared = target_parts.get(_content(corpora[part]))
        if shared is not None:
            raise ConfigError(
                f"config key 'sources': {_named(source, part)} has the same documents as the target "
                f"{_named(target, shared)}; transfer needs a source without the target's documents"
            )


def _check_sources_differ(corpora: dict, sources: list[str]) -> None:
    """Two names for one corpus would pretrain, fine-tune and fit the same source twice."""
    seen: dict[str, str] = {}
    for source in sources:
        earlier = seen.setdefault(_content(corpora[source]), source)
        if earlier != source:
            raise ConfigError(
                f"config key 'sources': {earlier!r} and {source!r} are the same corpus under two names"
            )


def _check_models(models: list[dict]) -> None:
    names = [shape["name"] for shape in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"config key 'models': model names must be unique, got {names}")
    by_n: dict[int, int] = {}
    for index, shape in enumerate(models):
        try:
            check_heads(shape["d_model"], shape["n_head"])
        except ValueError as error:
            raise ConfigError(f"config key 'models.{index}' ({shape['name']}): {error}") from None
        n = non_embedding_params(shape)
        first = by_n.setdefault(n, index)
        if first != index:
            raise ConfigError(
                f"config key 'models.{index}' ({shape['name']}): N = {n} non-embedding parameters, as "
                f"models.{first} ({models[first]['name']}); the fit tells sizes apart by N, so each needs its own"
            )


def _option_key(config: dict, kind: str, name: str) -> str:
    """The key a run option of ``kind`` comes from: that kind's override, or the shared default."""
    return f"{kind}.options.{name}" if name in config.get(kind, {}).get("options", {}) else f"training.{name}"


def _check_overrides_reach_jobs(config: dict, kind: str) -> None:
    """A per-kind value that the jobs would never see is refused, not silently dropped."""
    overrides = config.get(kind, {}).get("options", {})
    if "threads" in overrides:
        raise ConfigError(
            f"config key '{kind}.options.threads': {overrides['threads']} would be ignored: every training job "
            f"runs with training.threads ({config['training']['threads']}) threads; set training.threads instead"
        )
    if kind == "pretrain" and "max_steps" in overrides and "tokens" in config["pretrain"]:
        raise ConfigError(
            f"config key 'pretrain.options.max_steps': {overrides['max_steps']} would be ignored: pretrain.tokens "
            f"({config['pretrain']['tokens']}) sets pretraining's max_steps; keep one of the two"
        )


def _check_schedule(config: dict, kind: str) -> None:
    """Step settings of one kind of run that contradict its step cap or its context window. Fine-tuning and
    from-scratch runs are data-limited: early stopping on validation loss is what ends them at their best."""
    options = run_options(config, kind)
    cap = f"max_steps {options['max_steps']} of {kind} runs"
    problems = (
        ("min_steps", min_steps_beyond_cap(options), f"exceeds {cap}"),
        ("warmup_steps", options["warmup_steps"] >= options["max_steps"],
         f"is not below {cap}: the run would end before its learning rate peaks"),
        ("eval_interval", kind != "pretrain" and options["eval_interval"] > options["max_steps"],
         f"exceeds {cap}: no validation between the first and the last step, so the run could not stop early "
         "on its data (pretraining, which runs its whole budget, may evaluate at the end only)"),
        ("eval_tokens", options["eval_tokens"] < config["context"],
         f"is below one context window of {config['context']} tokens (key 'context')"),
    )
    for name, bad, why in problems:
        if bad:
            raise ConfigError(f"config key '{_option_key(config, kind, name)}': {name} {options[name]} {why}")


def _check_batches(config: dict, kind: str) -> None:
    """Each trainer process takes an equal share of the global batch, in micro-batches that divide it."""
    batch_size = run_options(config, kind)["batch_size"]
    per_node, nodes = trainer_processes(config, kind)
    processes = per_node * nodes
    if batch_size % processes:
        raise ConfigError(
            f"config key '{_option_key(config, kind, 'batch_size')}': batch_size {batch_size} is not divisible by "
            f"the {processes} trainer processes of a {kind} job ({per_node} per node x {nodes} node(s), "
            "from cluster.gpus_per_job, pretrain.gpus and pretrain.nodes)"
        )
    share = batch_size // processes
    for index, shape in enumerate(config["models"]):
        micro = run_options(config, kind, shape["name"])["micro_batch_size"]
        if micro is not None and share % min(micro, share):
            key = (f"models.{index}.micro_batch_size" if "micro_batch_size" in shape
                   else _option_key(config, kind, "micro_batch_size"))
            raise ConfigError(
                f"config key '{key}': micro_batch_size {micro} does not divide the {share} sequences each of the "
                f"{processes} trainer processes of a {kind} job takes of batch_size {batch_size} (size "
                f"{shape['name']}); choose a divisor of {share}"
            )


def _check_snapshots(config: dict) -> None:
    pretrain = run_options(config, "pretrain")
    if pretrain["snapshot_steps"] and pretrain["patience"] * pretrain["eval_interval"] < pretrain["max_steps"]:
        raise ConfigError(
            "config key 'pretrain.snapshots': snapshots need pretraining to run its whole budget, but "
            f"early stopping could end it after patience {pretrain['patience']} x eval_interval "
            f"{pretrain['eval_interval']} steps < {pretrain['max_steps']}; raise pretrain.options.patience"
        )


def _check_pretraining_data(config: dict) -> None:
    dp_axis = config.get("pretraining_data")
    if not dp_axis:
        return
    names = [shape["name"] for shape in config["models"]]
    unknown = [size for size in dp_axis["sizes"] if size not in names]
    if unknown:
        raise ConfigError(f"config key 'pretraining_data.sizes': {unknown} are not model names; defined: {names}")
    snapshot_steps = run_options(config, "pretrain")["snapshot_steps"]
    if not snapshot_steps:
        raise ConfigError("config key 'pretraining_data': needs pretrain.snapshots (the D_p points)")
    if dp_axis["n_fit"] > len(snapshot_steps):
        raise ConfigError(
            f"config key 'pretraining_data.n_fit': {dp_axis['n_fit']} exceeds the "
            f"{len(snapshot_steps)} pretraining snapshots"
        )
    if dp_axis["max_new_tokens"] >= config["context"]:
        raise ConfigError(
            f"config key 'pretraining_data.max_new_tokens': {dp_axis['max_new_tokens']} leaves no room for a "
            f"prompt in the context window of {config['context']} tokens (key 'context'); it must be below it"
        )


def _checkdata_sizes(config: dict) -> None:
    """Data sizes that no run can train on, and fine-tuned points the scratch curves cannot read."""
    if len(config["scratch"]["d_chars"]) < 2:
        raise ConfigError("config key 'scratch.d_chars': needs at least two values per N to interpolate D_E")
    context = config["context"]
    for key, values in data_sizes(config).items():
        short = [value for value in values if value < context]
        if short:
            raise ConfigError(
                f"config key '{key}': {short} hold fewer characters than one context window of {context} tokens "
                "(key 'context'); a run needs more than n_ctx tokens"
            )
    _check_scratch_covers_finetuning(config)


def _check_scratch_covers_finetuning(config: dict) -> None:
    """D_E of a fine-tuned point is read off the scratch curve: with positive transfer it exceeds D_F, so a D_F
    beyond the largest scratch D is always censored; a D_F above low_data_fraction x that D is always
    high_data, and if every D_F is, no point can enter the fit."""
    largest = max(config["scratch"]["d_chars"])
    for key, values in data_sizes(config).items():
        beyond = [value for value in values if value > largest]
        if beyond and key != "scratch.d_chars":
            raise ConfigError(
                f"config key '{key}': {beyond} exceed the largest scratch D {largest} (scratch.d_chars); their D_E "
                "would lie beyond the scratch curve (censored), so D_T could never be measured there"
            )
    fraction, d_f = config["fit"]["low_data_fraction"], config["finetune"]["d_f_chars"]
    if min(d_f) > fraction * largest:
        raise ConfigError(
            f"config key 'fit.low_data_fraction': {fraction} x the largest scratch D {largest} = "
            f"{fraction * largest:g} is below every D_F {sorted(d_f)} (finetune.d_f_chars): every point would be "
            "high_data and none could be fitted"
        )


def _check_splits(splits: dict) -> None:
    total = splits["validation"] + splits["test"]
    if total >= 1:
        raise ConfigError(
            f"config key 'splits': validation {splits['validation']} + test {splits['test']} = {total:g} leave "
            "no documents for train; the sum must be below 1"
        )


def check_target_size(config: dict, target_train_chars: int) -> None:
    """Every D_F and scratch D must fit in the target's training split (known once it is built)."""
    for key, values in data_sizes(config).items():
        too_big = [v for v in values if v > target_train_chars]
        if too_big:
            raise ConfigError(
                f"config key '{key}': {too_big} exceed the target {config['target']!r}'s "
                f"{target_train_chars} training characters"
            )


