"""Fit the scaling law for transfer, D_T = k * D_F^alpha * N^beta (Hernandez et al. 2021), to a runs table.

The effective data D_E of a fine-tuned model is read off the same-N from-scratch loss-vs-data curve by
monotone interpolation, as in the paper (the ``estimator`` option: or through that curve's fitted L_N, or through
the joint law's slice at N; benchmarks/estimator_choice.py compares them); the joint L(N, D) of the scratch runs is
otherwise only a diagnostic (``jointlaw``).
Every fine-tuned point keeps a status saying whether it enters the fit and, if not, why:

- ``ok``: in the low-data regime with D_T > 0 on a well-conditioned part of the scratch curve (fitted);
- ``failed``: every seed of the run failed;
- ``censored``: lower loss than the best scratch run, so D_E > the largest scratch D (a lower bound);
- ``below_range``: higher loss than the scratch run at the smallest D, so D_E < the smallest scratch D;
- ``ill_conditioned``: the scratch curve is nearly flat at D_E (|dL/dln D| below ``slope_tolerance``), so a
  loss error of 0.01 nats would move D_E by 0.01 / ``slope_tolerance`` e-folds or more;
- ``no_transfer``: D_T <= 0, the fine-tuned model is no better than scratch on D_F;
- ``high_data``: D_F > ``low_data_fraction`` * D(N), outside the regime where the power law holds.

The module is the entry point and the points table; the science lives beside it: ``scratch`` (the scratch curves,
D_E, L_N and D(N), one code path for the point estimate and every resample), ``transferlaw`` (the two fits of
k, alpha and beta), ``bootstrap`` (their intervals: a bootstrap that redraws the noise of every point, scratch
points included, and rebuilds D_E, D_T, statuses and both fits in each resample) and ``derived`` (what a law
implies, and the prediction of each source's largest size from the others). A table without fine-tuned runs
still gets its scratch curves, D(N) and joint law. Every default option is the config schema's (``FitOptions``).

Only numpy, scipy and pandas: fitting a runs table must never import torch or deepspeed.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .bootstrap import Bootstrap
from .config import SCHEMA, TRAINING_KINDS, load_schema
from .derived import (LN10, LawDraws, data_worth_of_10x_model, derived, derived_quantities, held_out_prediction,
                      ln_d_effective, ossification, parameter_resolutions, point_quantities, supports)
from .io import atomic_open, read_json, write_json
from .jointlaw import JointLawError, fit_chinchilla
from .layout import FitLayout
from .report import decision_sentence
from .scratch import ESTIMATORS, ScratchCurves, classify_point, fit_joint_laws, scratch_law_loss
from .transferlaw import fit_transfer_law

logger = logging.getLogger("transfer_scaling.fitting")

REQUIRED_COLUMNS = ("kind", "source", "n_params", "data_chars", "test_loss")
FITTED_KINDS = ("scratch", "finetune")
ACCEPTED_KINDS = TRAINING_KINDS
"""A table holds the kinds of run the pipeline trains; pretraining runs count only for compute."""
RUN_STATUSES = ("ok", "failed")
POINT_STATUSES = ("ok", "failed", "censored", "below_range", "ill_conditioned", "no_transfer", "high_data")


class FitError(ValueError):
    """The runs table cannot be fitted; the message names the column, row or N at fault."""


# ---------------------------------------------------------------------------------------------- validation


def validate_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Return a cleaned copy of ``runs`` (text stripped, status filled, numbers parsed) or raise ``FitError``.

    Nothing is dropped or counted twice without a word: a row of an unknown kind, a duplicated row or a value that
    is not a number is refused with the rows at fault (counted from 0 after the header).
    """
    missing = [column for column in REQUIRED_COLUMNS if column not in runs.columns]
    if missing:
        raise FitError(f"runs table lacks column(s) {missing}; required: {list(REQUIRED_COLUMNS)}")
    runs = runs.copy().reset_index(drop=True)
    runs["kind"] = _text(runs["kind"])
    runs["source"] = _text(runs["source"])
    runs["status"] = _text(runs["status"].fillna("ok")) if "status" in runs.columns else "ok"
    _check_kinds(runs)
    bad_status = runs.index[~runs["status"].isin(RUN_STATUSES)]
    if len(bad_status):
        row = bad_status[0]
        raise FitError(f"row {row}: status {runs.at[row, 'status']!r} is not one of {list(RUN_STATUSES)}")
    fitted = runs["kind"].isin(FITTED_KINDS)
    for column in ("n_params", "data_chars"):
        _require_positive(runs, column, fitted, "it must be a positive number")
    _require_positive(runs, "test_loss", fitted & (runs["status"] == "ok"), "a run with status ok needs a finite "
                      "positive loss (mark failed runs with status 'failed')")
    no_source = runs.index[(runs["kind"] == "finetune") & (runs["source"] == "")]
    if len(no_source):
        raise FitError(f"row {no_source[0]}: a finetune run needs a non-empty 'source'")
    _check_duplicates(runs)
    _check_scratch_coverage(runs[fitted & (runs["status"] == "ok")])
    return runs


def _text(column: pd.Series) -> pd.Series:
    """A text column with empty cells as '' and no surrounding spaces (' finetune' is finetune)."""
    return column.fillna("").astype(str).str.strip()


def _rows(index: pd.Index, shown: int = 6) -> str:
    """'row 3' or 'rows 3, 5, 9 and 12 more': the rows at fault, numbered as pandas reads the table."""
    listed = ", ".join(str(row) for row in index[:shown])
    more = f" and {len(index) - shown} more" if len(index) > shown else ""
    return f"row{'s' if len(index) > 1 else ''} {listed}{more}"


def _as_written(value: Any) -> str:
    """A cell as the user wrote it ('abc', -5.0, empty), not as numpy would print it."""
    if isinstance(value, str):
        return repr(value)
    return "empty" if pd.isna(value) else str(value)


def _check_kinds(runs: pd.DataFrame) -> None:
    unknown = runs[~runs["kind"].isin(ACCEPTED_KINDS)]
    if len(unknown):
        found = "; ".join(f"kind {kind!r} in {_rows(group.index)}"
                          for kind, group in unknown.groupby("kind", sort=False))
        raise FitError(f"{found}: unknown kind of run; accepted kinds: {list(ACCEPTED_KINDS)}")


def _require_positive(runs: pd.DataFrame, column: str, rows: pd.Series, rule: str) -> None:
    values = pd.to_numeric(runs[column], errors="coerce")
    bad = runs.index[rows & ~(np.isfinite(values) & (values > 0))]
    if len(bad):
        row = bad[0]
        raise FitError(f"row {row}: column {column!r} is {_as_written(runs.at[row, column])}; {rule}")
    runs[column] = values.astype(float)


def _check_duplicates(runs: pd.DataFrame, shown: int = 3) -> None:
    """Rows that repeat a run (same kind, source, N, D and seed) would count as extra seeds. Without a ``seed``
    column the rows of a point cannot be told apart and are taken as its seeds, as the README says."""
    if "seed" not in runs.columns:
        return
    key = ["kind", "source", "n_params", "data_chars", "seed"]
    groups = [group for _, group in runs[runs.duplicated(key, keep=False)].groupby(key, dropna=False, sort=False)]
    if groups:
        found = "; ".join(f"{_rows(group.index)} repeat one run (kind {run['kind']!r}, source {run['source']!r}, "
                          f"n_params {run['n_params']:g}, data_chars {run['data_chars']:g}, seed "
                          f"{_as_written(run['seed'])})" for group in groups[:shown] for run in [group.iloc[0]])
        more = f" (and {len(groups) - shown} more such groups)" if len(groups) > shown else ""
        raise FitError(f"duplicated rows: {found}{more}; a copy would count as an extra seed: remove it, or give "
                       "each seed its own 'seed'")


def _check_scratch_coverage(runs: pd.DataFrame) -> None:
    """Every N with fine-tuned runs needs a scratch curve (2 D at least) to read D_E off; a scratch-only N (a
    from-scratch sweep) needs none, its points still enter the joint law."""
    distinct_d = runs[runs["kind"] == "scratch"].groupby("n_params")["data_chars"].nunique()
    for n_params in sorted(runs.loc[runs["kind"] == "finetune", "n_params"].unique()):
        if n_params not in distinct_d.index:
            raise FitError(f"N = {n_params:g}: fine-tuned runs but no successful scratch run of that n_params")
        if distinct_d[n_params] < 2:
            raise FitError(f"N = {n_params:g}: scratch runs at {distinct_d[n_params]} value of data_chars; at least 2 "
                           "are needed to interpolate the scratch curve")


def average_seeds(runs: pd.DataFrame) -> pd.DataFrame:
    """Average the losses of the successful seeds of each (kind, source, N, D); keep the seed count."""
    ok = runs[runs["status"] == "ok"].copy()
    if "compute" not in ok.columns:
        ok["compute"] = run_compute(ok)
    grouped = ok.groupby(["kind", "source", "n_params", "data_chars"], as_index=False)
    return grouped.agg(test_loss=("test_loss", "mean"), loss_std=("test_loss", "std"),
                       n_seeds=("test_loss", "size"), compute=("compute", "mean"))


def run_compute(runs: pd.DataFrame) -> pd.Series:
    """Compute of each run: the ``compute`` column, else 6 * N * tokens_seen, else NaN."""
    if "compute" in runs.columns:
        return pd.to_numeric(runs["compute"], errors="coerce")
    if "tokens_seen" in runs.columns:
        return 6.0 * runs["n_params"] * pd.to_numeric(runs["tokens_seen"], errors="coerce")
    return pd.Series(np.nan, index=runs.index)


# ---------------------------------------------------------------------------------------------- points


def build_points(averaged: pd.DataFrame, runs: pd.DataFrame, curves: dict[float, ScratchCurves],
                 slope_tolerance: float) -> pd.DataFrame:
    """One row per fine-tuned (source, N, D_F): averaged loss, D_E, D_T, status and compute comparison."""
    rows = []
    finetune = averaged[averaged["kind"] == "finetune"]
    for record in finetune.itertuples(index=False):
        curve = curves[record.n_params]
        row = {"source": record.source, "n_params": record.n_params, "d_f_chars": record.data_chars,
               "test_loss": record.test_loss, "loss_std": record.loss_std, "n_seeds": record.n_seeds,
               "compute_finetune": record.compute}
        row.update(classify_point(curve, record.data_chars, record.test_loss, slope_tolerance))
        rows.append(row)
    for record in _all_failed_finetunes(runs, finetune).itertuples(index=False):
        rows.append({"source": record.source, "n_params": record.n_params, "d_f_chars": record.data_chars,
                     "n_seeds": 0, "status": "failed"})
    points = pd.DataFrame(rows, columns=list(POINT_COLUMNS)).astype(POINT_COLUMNS)
    points = _add_compute_comparison(points, averaged, runs)
    return points.sort_values(["source", "n_params", "d_f_chars"], ignore_index=True)


POINT_COLUMNS = {"source": object, "n_params": float, "d_f_chars": float, "test_loss": float, "loss_std": float,
                 "n_seeds": int, "d_effective": float, "d_transferred": float, "fraction": float, "multiplier": float,
                 "scratch_slope": float, "scratch_loss_at_d_f": float, "status": object, "compute_finetune": float}
"""The columns of the points table and their types, which hold even when a table has no fine-tuned run."""


def _all_failed_finetunes(runs: pd.DataFrame, finetune_ok: pd.DataFrame) -> pd.DataFrame:
    failed = runs[(runs["kind"] == "finetune") & (runs["status"] == "failed")]
    keys = ["source", "n_params", "data_chars"]
    failed = failed[keys].drop_duplicates()
    merged = failed.merge(finetune_ok[keys], on=keys, how="left", indicator=True)
    return merged[merged["_merge"] == "left_only"][keys]


def _add_compute_comparison(points: pd.DataFrame, averaged: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Is fine-tuning the cheaper way to its loss? Scratch compute at D_E is interpolated in log-log."""
    pretrain = runs[(runs["kind"] == "pretrain") & (runs["status"] == "ok")]
    pretrain_compute = pretrain.assign(compute=run_compute(pretrain)).groupby(["source", "n_params"])["compute"].mean()
    scratch = averaged[averaged["kind"] == "scratch"]
    equivalent, pre = [], []
    for row in points.itertuples(index=False):
        curve = scratch[scratch["n_params"] == row.n_params].sort_values("data_chars")
        usable = np.isfinite(curve["compute"]) & (curve["compute"] > 0)
        in_range = row.status not in ("censored", "below_range", "failed") and usable.sum() >= 2
        equivalent.append(_log_interp(row.d_effective, curve["data_chars"][usable], curve["compute"][usable])
                          if in_range else math.nan)
        pre.append(float(pretrain_compute.get((row.source, row.n_params), math.nan)))
    points["compute_pretrain"] = pre
    points["compute_scratch_equivalent"] = equivalent
    comparable = np.isfinite(points["compute_finetune"]) & np.isfinite(points["compute_scratch_equivalent"])
    points["finetune_cheaper"] = np.where(
        comparable, points["compute_finetune"] < points["compute_scratch_equivalent"], None)
    with_pre = comparable & np.isfinite(points["compute_pretrain"])
    points["finetune_cheaper_with_pretraining"] = np.where(
        with_pre, points["compute_finetune"] + points["compute_pretrain"] < points["compute_scratch_equivalent"], None)
    return points


def _log_interp(x: float, xs: pd.Series, ys: pd.Series) -> float:
    if not xs.iloc[0] <= x <= xs.iloc[-1]:
        return math.nan
    return float(np.exp(np.interp(np.log(x), np.log(xs.to_numpy()), np.log(ys.to_numpy()))))


# ---------------------------------------------------------------------------------------------- entry points


CONFIG_SCHEMA = load_schema(SCHEMA)["properties"]
"""The config schema's keys, where every default of the fit is stated (its ``fit`` section, and ``seed``)."""
CONFIG_NAMES = {"n_bootstrap": "bootstrap"}
"""The options that the config's ``fit`` section names otherwise."""


def _schema_default(option: str, unset: Any = None) -> Any:
    """The default that the config schema states for an option: ``seed`` at the top, the others under ``fit``;
    ``unset`` for an option that the schema does not name yet (``estimator``, until its key is added)."""
    section = CONFIG_SCHEMA if option == "seed" else CONFIG_SCHEMA["fit"]["properties"]
    name = CONFIG_NAMES.get(option, option)
    if name not in section and unset is not None:
        return unset
    return section[name]["default"]


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
    estimator: str = _schema_default("estimator", "interpolation")

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


def fit_runs(runs: pd.DataFrame, **options: Any) -> dict[str, Any]:
    """Fit every source of a runs table with ``FitOptions`` given by name; returns a JSON-ready dict (see
    ``fit_file`` for the layout).

    ``joint_law`` adds the joint-law diagnostic (a few seconds for the full start grid); ``estimator`` says how D_E
    is read off the scratch curves (``scratch.ESTIMATORS``; interpolation, the paper's way, by default).
    """
    return _fit(runs, FitOptions.named(options))[0]


def _fit(runs: pd.DataFrame, options: FitOptions) -> tuple[dict[str, Any], pd.DataFrame]:
    runs = validate_runs(runs)
    averaged = average_seeds(runs[runs["kind"].isin(FITTED_KINDS)])
    curves = {n: ScratchCurves(n, group["data_chars"].to_numpy(), group["test_loss"].to_numpy(), options.tolerance,
                               options.low_data_fraction, options.estimator)
              for n, group in averaged[averaged["kind"] == "scratch"].groupby("n_params")}
    joint = _joint_estimator(curves) if options.estimator == "joint_law" else None
    scratch = {n: curve.summary() for n, curve in curves.items()}
    points = build_points(averaged, runs, curves, options.slope_tolerance)
    bootstrap = Bootstrap(runs, curves, scratch, points, options, joint)
    sizes = _size_labels(runs)
    sources = {source: _fit_source(source, group, bootstrap, curves, scratch, sizes)
               for source, group in points.groupby("source")}
    draws = _pop_draws(sources)
    scratch_points = averaged[averaged["kind"] == "scratch"]
    result = {
        "options": asdict(options),
        "transfer_law_status": _transfer_law_status(runs),
        "bootstrap": bootstrap.summary,
        "scratch": {n_key(n): summary for n, summary in scratch.items()},
        "sources": sources,
        "points": points.to_dict(orient="records"),
        "failed_runs": runs[runs["status"] == "failed"].to_dict(orient="records"),
        "compute_by_kind": _compute_by_kind(runs),
        "joint_law": joint_law_diagnostic(scratch_points) if options.joint_law else None,
    }
    return to_jsonable(result), draws


def _joint_estimator(curves: dict[float, ScratchCurves]) -> np.ndarray | None:
    """The joint law that the ``joint_law`` estimator reads D_E through (``fit_joint_laws``), or FitError."""
    if not curves:
        return None
    try:
        return fit_joint_laws(curves)
    except JointLawError as error:
        raise FitError(f"estimator joint_law: the joint law of the scratch runs cannot be inverted ({error}); use "
                       "estimator interpolation or scratch_law") from error


def joint_law_diagnostic(scratch: pd.DataFrame) -> dict[str, Any]:
    """Chinchilla's and Kaplan's joint L(N, D) fitted to the scratch points: a diagnostic of how well one
    smooth law describes the runs, never used to compute D_E (the paper found it too poor to invert)."""
    try:
        fit = fit_chinchilla(scratch["n_params"], scratch["data_chars"], scratch["test_loss"])
    except JointLawError as error:
        return {"identifiable": False, "reason": str(error)}
    return {"identifiable": True, "n_params": scratch["n_params"].tolist(), "d_chars": scratch["data_chars"].tolist(),
            "test_loss": scratch["test_loss"].tolist(), **fit}


def _fit_source(source: str, points: pd.DataFrame, bootstrap: Bootstrap, curves: dict[float, ScratchCurves],
                scratch: dict[float, dict], sizes: dict[float, str]) -> dict[str, Any]:
    usable = points[points["status"] == "ok"]
    fits = fit_transfer_law(usable["n_params"].to_numpy(), usable["d_f_chars"].to_numpy(),
                            usable["d_transferred"].to_numpy(), bootstrap.source(source, points))
    for block in fits.values():
        if block["identifiable"]:
            block.update(parameter_resolutions(block))
            block["derived"] = derived_quantities(block, points)
    counts = points["status"].value_counts()
    return {**fits, "n_points_used": int(len(usable)),
            "n_points_excluded": {status: int(counts.get(status, 0)) for status in POINT_STATUSES if status != "ok"},
            "ossification": ossification(points),
            "held_out_prediction": held_out_prediction(points, curves, scratch, sizes, bootstrap.held_out(source))}


def _transfer_law_status(runs: pd.DataFrame) -> str:
    """"ok", or why there is nothing to fit for D_T (a from-scratch sweep: only scratch curves and joint law)."""
    finetune = runs[runs["kind"] == "finetune"]
    if finetune.empty:
        return ("nothing_to_fit: the table has no fine-tuned run (kind 'finetune'); only the scratch curves, D(N) "
                "and the joint law are reported")
    if not (finetune["status"] == "ok").any():
        return ("nothing_to_fit: every fine-tuned run failed; only the scratch curves, D(N) and the joint law are "
                "reported")
    return "ok"


def _size_labels(runs: pd.DataFrame) -> dict[float, str]:
    """The ``size`` label of each N, where the table has that column (the pipeline's does)."""
    if "size" not in runs.columns:
        return {}
    return runs.dropna(subset=["size"]).groupby("n_params")["size"].first().astype(str).to_dict()


def _pop_draws(sources: dict[str, dict]) -> pd.DataFrame:
    frames = []
    for source, fits in sources.items():
        for method in ("appendix_c", "huber"):
            draws = fits[method].pop("bootstrap_draws", None)
            if draws is not None and len(draws):
                frame = pd.DataFrame(draws, columns=["ln_k", "alpha", "beta"])
                frames.append(frame.assign(source=source, method=method))
    columns = ["source", "method", "ln_k", "alpha", "beta"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def _compute_by_kind(runs: pd.DataFrame) -> dict[str, float | None]:
    ok = runs[runs["status"] == "ok"]
    totals = ok.assign(compute=run_compute(ok)).groupby("kind")["compute"].sum(min_count=1)
    return {kind: float(value) for kind, value in totals.items()}


def n_key(n_params: float) -> str:
    """The key of an N in the fit's ``scratch`` table (12 significant digits, so distinct sizes stay distinct)."""
    return f"{float(n_params):.12g}"


def to_jsonable(value: Any) -> Any:
    """Plain Python types with NaN and infinities as None, so the JSON is strict."""
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or value is pd.NA or (isinstance(value, str)):
        return value
    return str(value)


def read_runs(runs_csv: str | os.PathLike) -> pd.DataFrame:
    path = Path(runs_csv)
    if not path.exists():
        raise FitError(f"runs table not found: {path}")
    return pd.read_csv(path, dtype={"source": str, "kind": str, "status": str}, keep_default_na=True)


def fit_file(runs_csv: str | os.PathLike, out_dir: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Fit ``runs_csv``; write ``transfer_fit.json``, ``points.csv`` and ``bootstrap.csv`` into ``out_dir``.

    ``transfer_fit.json``: options; ``transfer_law_status`` ("ok", or "nothing_to_fit: why"); ``bootstrap``
    (resampling unit, resamples, scratch cells by seed count, scratch residual spread); ``scratch`` per N (points,
    L_N fit, D(N) and its origin, the estimator and the law it inverts); ``sources`` per source (``appendix_c`` and
    ``huber`` blocks with k, alpha, beta, their 95% intervals and ``<name>_resolution``, how many resamples could
    identify them, residuals, R^2 and derived quantities, each with its ``<name>_status``, ``<name>_ci``,
    ``<name>_undefined_share`` and ``<name>_resolution``, and the ``decision`` between 10x data and a 10x model;
    point counts; ossification; ``held_out_prediction`` with the intervals of its predictions); ``points``;
    ``failed_runs``; ``compute_by_kind``; ``joint_law``. ``bootstrap.csv`` holds the identifiable bootstrap draws
    (for interval bands in the figures, and for ``advise``).
    """
    fit_options = FitOptions.named(options)
    result, draws = _fit(read_runs(runs_csv), fit_options)
    result["runs_csv"] = str(runs_csv)
    if result["transfer_law_status"] != "ok":
        logger.warning("%s", result["transfer_law_status"])
    for run in result["failed_runs"]:
        logger.warning("failed run left out of the fit: %s %s N=%g data_chars=%g (%s)", run["kind"],
                       run.get("run", run["source"]), run["n_params"], run["data_chars"],
                       run.get("stop_reason", "no stop reason"))
    layout = FitLayout(out_dir)
    write_json(layout.fit, result)
    with atomic_open(layout.points, "w", encoding="utf-8", newline="") as handle:
        pd.DataFrame(result["points"]).to_csv(handle, index=False)
    with atomic_open(layout.bootstrap, "w", encoding="utf-8", newline="") as handle:
        draws.to_csv(handle, index=False)
    return result


def load_fit(fit_json: str | os.PathLike) -> dict[str, Any]:
    path = Path(fit_json)
    if path.is_dir():
        path = FitLayout(path).fit
    if not path.exists():
        raise FitError(f"fit file not found: {path}")
    return read_json(path)


# ---------------------------------------------------------------------------------------------- advice


def primary_fit(fit: dict[str, Any], source: str) -> tuple[str, dict[str, Any]]:
    """The source's Appendix C fit (the paper's method), else its Huber fit; FitError if neither exists."""
    if source not in fit["sources"]:
        raise FitError(f"source {source!r} not in the fit; fitted sources: {sorted(fit['sources'])}")
    blocks = fit["sources"][source]
    for method in ("appendix_c", "huber"):
        if blocks[method]["identifiable"]:
            return method, blocks[method]
    raise FitError(f"source {source!r}: the law is not identifiable ({blocks['huber']['reason']})")


def advise(fit: dict[str, Any], source: str, n_params: float, d_f_chars: float,
           draws: pd.DataFrame | None = None) -> dict[str, Any]:
    """What 10x more fine-tuning data buys against a 10x larger model, in D_E and in predicted loss.

    ``draws`` are the fit's bootstrap draws (``bootstrap.csv``, read by ``load_draws``): every quantity is computed
    on each of them, and is given with its 95% interval (``<name>_ci``) and ``<name>_resolution``; one the study
    does not resolve (``derived.resolution``: undefined in a notable share of the replicates, an interval across 0
    or 1x, or wider than two orders of magnitude) is null, with the reason. Without draws nothing is resolved.
    ``answer`` says in one sentence which of the two the fit supports at this (N, D_F), or that it does not.

    Loss is predicted from the fitted scratch curve L_N of the same N, which exists only for the N that were trained
    from scratch (its interval counts the law's draws, not L_N's own error); anything outside the fitted ranges is
    listed under ``notes``.
    """
    if not (n_params > 0 and d_f_chars > 0):
        raise FitError(f"n_params = {n_params} and d_f_chars = {d_f_chars} must both be positive")
    method, block = primary_fit(fit, source)
    notes = _range_notes(fit, source, n_params, d_f_chars)
    own = None if draws is None else draws[(draws["source"] == source) & (draws["method"] == method)]
    if own is None or (own.empty and block.get("n_bootstrap_identifiable")):
        notes.append(f"no bootstrap draws of {source} ({method}) were given (bootstrap.csv beside the fit): no "
                     "quantity has an interval, so none is resolved")
        law = LawDraws(LawDraws.of_block(block).estimate, np.empty((0, 3)), 0)
    else:
        law = LawDraws.of_block(block, own[["ln_k", "alpha", "beta"]].to_numpy(float))
    answer: dict[str, Any] = {"source": source, "method": method}
    for name in ("k", "alpha", "beta"):
        answer.update({name: block[name], f"{name}_ci": block.get(f"{name}_ci")})
    answer.update(parameter_resolutions({**block, "bootstrap_draws": law.draws, "n_bootstrap": law.n_resamples}))
    options = {"current": (n_params, d_f_chars), "10x_data": (n_params, 10 * d_f_chars),
               "10x_params": (10 * n_params, d_f_chars)}
    log10_d_effective = {}
    for name, (n, d) in options.items():
        log10_d_transferred, log10_d_effective[name] = _log10_transfer(n, d)
        option = {"n_params": n, "d_f_chars": d, **law.quantity("d_transferred", log10_d_transferred, "amount"),
                  **law.quantity("d_effective", log10_d_effective[name], "amount")}
        scratch_law = _scratch_law_for(fit, n, option["d_effective"], notes)
        option["predicted_loss"] = None
        if scratch_law is not None:
            option.update(law.quantity("predicted_loss", lambda *law_: np.log10(scratch_law_loss(
                scratch_law, 10.0 ** log10_d_effective[name](*law_))), "amount"))
        answer[name] = _resolved_only(option)
    for name in ("10x_data", "10x_params"):
        answer.update(law.quantity(f"d_effective_ratio_{name}", lambda *law_: (
            log10_d_effective[name](*law_) - log10_d_effective["current"](*law_)), "ratio"))
    quantities = point_quantities(law, n_params, d_f_chars)
    for name in ("data_worth_of_10x_model_equal_d_effective", "d_effective_ratio_10x_data_to_10x_model"):
        answer.update({key: value for key, value in quantities.items() if key.startswith(name)})
    answer.update(derived("data_worth_of_10x_model_equal_d_effective", data_worth_of_10x_model, block["k"],
                          block["alpha"], block["beta"], n_params, d_f_chars))
    decision = {"n_params": n_params, "d_f_chars": d_f_chars, "supports": supports(quantities),
                **{key: value for key, value in quantities.items()
                   if key.startswith("d_effective_ratio_10x_data_to_10x_model")}}
    points = [point for point in fit["points"] if point["source"] == source]
    answer = {"answer": decision_sentence(source, decision, answer, points), **_resolved_only(answer)}
    answer["supports"] = decision["supports"]
    answer["notes"] = list(dict.fromkeys(notes))
    return to_jsonable(answer)


def _log10_transfer(n_params: float, d_f_chars: float) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """log10 D_T and log10 D_E at (N, D_F), each a function of a law (ln k, alpha, beta), element-wise."""
    ln_n, ln_d = math.log(n_params), math.log(d_f_chars)
    return (lambda ln_k, alpha, beta: (ln_k + alpha * ln_d + beta * ln_n) / LN10,
            lambda ln_k, alpha, beta: ln_d_effective(ln_k, alpha, beta, ln_n, ln_d) / LN10)


def _resolved_only(quantities: dict[str, Any]) -> dict[str, Any]:
    """The quantities with the value of each one that is not resolved set to null (its reason and interval stay),
    so that advice never prints a bare number the study does not support."""
    shown = dict(quantities)
    for key, verdict in quantities.items():
        if key.endswith("_resolution") and verdict != "resolved":
            shown[key[: -len("_resolution")]] = None
    return shown


def _range_notes(fit: dict[str, Any], source: str, n_params: float, d_f_chars: float) -> list[str]:
    used = [p for p in fit["points"] if p["source"] == source and p["status"] == "ok"]
    notes = []
    for name, value, scale in (("n_params", n_params, 10), ("d_f_chars", d_f_chars, 10)):
        observed = [p[name] for p in used]
        low, high = min(observed), max(observed)
        if not (low <= value and value * scale <= high):
            notes.append(f"extrapolating the law: {name} {value:g} (and x{scale}) outside the fitted "
                         f"range {low:g}..{high:g}")
    return notes


def _scratch_law_for(fit: dict[str, Any], n_params: float, d_effective: float | None,
                     notes: list[str]) -> dict[str, Any] | None:
    """The fitted L_N of N to predict a loss with, or None (with a note saying why)."""
    summary = fit["scratch"].get(n_key(n_params))
    if summary is None:
        notes.append(f"no scratch curve at N = {n_params:g}: loss not predicted")
        return None
    if not summary["law"]["ok"]:
        notes.append(f"the scratch fit L_N at N = {n_params:g} failed ({summary['law']['message']}): "
                     "loss not predicted")
        return None
    low, high = min(summary["d_chars"]), max(summary["d_chars"])
    if d_effective is not None and not low <= d_effective <= high:
        notes.append(f"extrapolating L_N at N = {n_params:g}: D_E = {d_effective:.3g} outside the scratch "
                     f"data {low:g}..{high:g}")
    return summary["law"]


def load_draws(fit_json: str | os.PathLike) -> pd.DataFrame | None:
    """The bootstrap draws written beside a fit (``bootstrap.csv``), for ``advise``; None where there are none."""
    path = Path(fit_json)
    path = FitLayout(path if path.is_dir() else path.parent).bootstrap
    return pd.read_csv(path) if path.exists() else None
