"""Validation of the workflow configuration, before any job runs.

The JSON schema (workflow/schemas/config.schema.yaml) types every key; this module turns the first
violation into one readable message (key, value, what is allowed), fills the schema's defaults, and
adds the cross-field checks a schema cannot express. A bad config therefore fails in seconds with
nothing written, instead of hours later inside a job.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

TRAINING_KINDS = ("pretrain", "finetune", "scratch")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key, the value and what is allowed."""


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
    """Checks that involve several keys at once."""
    corpora = config["corpora"]
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
            if not math.isclose(sum(weights.values()), 1.0, abs_tol=1e-6):
                raise ConfigError(
                    f"config key 'corpora.{name}.mixture': weights sum to {sum(weights.values()):g}, must sum to 1"
                )
    if config["target"] not in corpora:
        raise ConfigError(
            f"config key 'target': {config['target']!r} is not a corpus; defined corpora: {', '.join(sorted(corpora))}"
        )
    for source in config["sources"]:
        if source not in corpora:
            raise ConfigError(
                f"config key 'sources': {source!r} is not a corpus; defined corpora: {', '.join(sorted(corpora))}"
            )
        if source == config["target"]:
            raise ConfigError(f"config key 'sources': {source!r} is the target itself; transfer needs another corpus")
    names = [shape["name"] for shape in config["models"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"config key 'models': model names must be unique, got {names}")
    for index, shape in enumerate(config["models"]):
        if shape["d_model"] % shape["n_head"]:
            raise ConfigError(
                f"config key 'models.{index}' ({shape['name']}): d_model {shape['d_model']} "
                f"is not divisible by n_head {shape['n_head']}"
            )
    for kind in TRAINING_KINDS:
        options = run_options(config, kind)
        if options["min_steps"] > options["max_steps"]:
            raise ConfigError(
                f"config key '{kind}.options': min_steps {options['min_steps']} exceeds max_steps {options['max_steps']}"
            )
    pretrain = run_options(config, "pretrain")
    if pretrain["snapshot_steps"] and pretrain["patience"] * pretrain["eval_interval"] < pretrain["max_steps"]:
        raise ConfigError(
            "config key 'pretrain.snapshots': snapshots need pretraining to run its whole budget, but "
            f"early stopping could end it after patience {pretrain['patience']} x eval_interval "
            f"{pretrain['eval_interval']} steps < {pretrain['max_steps']}; raise pretrain.options.patience"
        )
    dp_axis = config.get("pretraining_data")
    if dp_axis:
        unknown = [size for size in dp_axis["sizes"] if size not in names]
        if unknown:
            raise ConfigError(f"config key 'pretraining_data.sizes': {unknown} are not model names; defined: {names}")
        if not pretrain["snapshot_steps"]:
            raise ConfigError("config key 'pretraining_data': needs pretrain.snapshots (the D_p points)")
        if dp_axis["n_fit"] > len(pretrain["snapshot_steps"]):
            raise ConfigError(
                f"config key 'pretraining_data.n_fit': {dp_axis['n_fit']} exceeds the "
                f"{len(pretrain['snapshot_steps'])} pretraining snapshots"
            )
    if len(config["scratch"]["d_chars"]) < 2:
        raise ConfigError("config key 'scratch.d_chars': needs at least two values per N to interpolate D_E")


def check_target_size(config: dict, target_train_chars: int) -> None:
    """Every D_F and scratch D must fit in the target's training split (known once it is built)."""
    for key, values in (("finetune.d_f_chars", config["finetune"]["d_f_chars"]),
                        ("scratch.d_chars", config["scratch"]["d_chars"])):
        too_big = [v for v in values if v > target_train_chars]
        if too_big:
            raise ConfigError(
                f"config key '{key}': {too_big} exceed the target {config['target']!r}'s "
                f"{target_train_chars} training characters"
            )


def model_shapes(config: dict) -> dict[str, dict]:
    """Model shapes by size name, in config order."""
    return {shape["name"]: {k: v for k, v in shape.items() if k != "name"} for shape in config["models"]}


def run_options(config: dict, kind: str) -> dict:
    """Training options of one kind of run: the shared defaults, then that kind's overrides."""
    if kind not in TRAINING_KINDS:
        raise ConfigError(f"unknown run kind {kind!r}; expected one of {TRAINING_KINDS}")
    options = dict(config["training"])
    options.update(config.get(kind, {}).get("options", {}))
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
