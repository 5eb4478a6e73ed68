"""The fit's options, with every default read from the config schema, so that a study, the Python API and the
console script cannot disagree on one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..config import SCHEMA, load_schema
from .scratch import ESTIMATORS
from .table import FitError


CONFIG_SCHEMA = load_schema(SCHEMA)["properties"]
"""The config schema's keys, where every default of the fit is stated (its ``fit`` section, and ``seed``)."""
CONFIG_NAMES = {"n_bootstrap": "bootstrap"}
"""The options that the config's ``fit`` section names otherwise."""


def _schema_default(option: str) -> Any:
    """The default that the config schema states for an option: ``seed`` at the top, the others under ``fit``."""
    section = CONFIG_SCHEMA if option == "seed" else CONFIG_SCHEMA["fit"]["properties"]
    return section[CONFIG_NAMES.get(option, option)]["default"]


@dataclass(frozen=True)
class FitOptions:
    """The fit's hyper-parameters (the schema's ``fit`` section and ``seed`` say what each means). Every default is
    read from the schema, so that a study, the Python API and the console script cannot disagree on one."""

    tolerance: float = _schema_default("tolerance")
    low_data_fraction: float = _schema_default("low_data_fraction")
    n_bootstrap: int = _schema_default("n_bootstrap")
    seed: int = _schema_default("seed")
    slope_tolerance: float = _schema_default("slope_tolerance")
    joint_law: bool = _schema_default("joint_law")
    estimator: str = _schema_default("estimator")

    def __post_init__(self) -> None:
        if not 0 < self.tolerance < 1:
            raise FitError(f"tolerance = {self.tolerance}: must lie in (0, 1)")
        if not self.low_data_fraction > 0:
            raise FitError(f"low_data_fraction = {self.low_data_fraction}: must be positive")
        if self.n_bootstrap < 0:
            raise FitError(f"n_bootstrap = {self.n_bootstrap}: must be >= 0")
        if self.slope_tolerance < 0:
            raise FitError(f"slope_tolerance = {self.slope_tolerance}: must be >= 0")
        if self.estimator not in ESTIMATORS:
            raise FitError(f"estimator = {self.estimator!r}: must be one of {list(ESTIMATORS)}")

    @classmethod
    def named(cls, options: dict[str, Any]) -> FitOptions:
        """Options given by name, the rest at their defaults; an unknown name is refused with the allowed ones."""
        allowed = [field.name for field in fields(cls)]
        unknown = set(options) - set(allowed)
        if unknown:
            raise FitError(f"unknown fit option(s) {sorted(unknown)}; allowed: {allowed}")
        return cls(**options)


def config_options(config: dict[str, Any]) -> dict[str, Any]:
    """The options of a validated workflow config, by ``FitOptions`` name: every key of its ``fit`` section, and
    its ``seed``."""
    names = {CONFIG_NAMES.get(field.name, field.name): field.name for field in fields(FitOptions)}
    return {"seed": config["seed"], **{names[key]: value for key, value in config["fit"].items()}}


