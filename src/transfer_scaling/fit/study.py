"""Fit the scaling law for transfer, D_T = k * D_F^alpha * N^beta (Hernandez et al. 2021), to a runs table:
the points table, the fits, their bootstrap and what they imply, written as transfer_fit.json.

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

The module is the entry point and the points table; the table's checks are ``table``'s, the options
``options``'s, and the science lives beside it: ``scratch`` (the scratch curves,
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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..io import atomic_open, read_json, read_table, write_json
from ..layout import FitLayout
from .bootstrap import Bootstrap
from .derived import derived_quantities, held_out_prediction, ossification, parameter_resolutions
from .jointlaw import JointLawError, fit_chinchilla
from .options import FitOptions
from .scratch import ScratchCurves, classify_point, fit_joint_laws
from .table import FITTED_KINDS, POINT_STATUSES, FitError, average_seeds, read_runs, run_compute, validate_runs
from .transferlaw import fit_transfer_law

logger = logging.getLogger("transfer_scaling.fitting")


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


def load_draws(fit_json: str | os.PathLike) -> pd.DataFrame | None:
    """The bootstrap draws written beside a fit (``bootstrap.csv``), for ``advise``; None where there are none."""
    path = Path(fit_json)
    path = FitLayout(path if path.is_dir() else path.parent).bootstrap
    return read_table(path) if path.exists() else None
