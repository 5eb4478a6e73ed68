"""Fit the scaling law for transfer, D_T = k * D_F^alpha * N^beta (Hernandez et al. 2021), to a runs table.

The effective data D_E of a fine-tuned model is read off the same-N from-scratch loss-vs-data curve by
monotone interpolation, as in the paper; a fitted joint L(N, D) is only a diagnostic (``jointlaw``).
Every fine-tuned point keeps a status saying whether it enters the fit and, if not, why:

- ``ok``: in the low-data regime with D_T > 0 on a well-conditioned part of the scratch curve (fitted);
- ``failed``: every seed of the run failed;
- ``censored``: lower loss than the best scratch run, so D_E > the largest scratch D (a lower bound);
- ``below_range``: higher loss than the scratch run at the smallest D, so D_E < the smallest scratch D;
- ``ill_conditioned``: the scratch curve is nearly flat at D_E (|dL/dln D| below ``slope_tolerance``), so a
  loss error of 0.01 nats would move D_E by half an e-fold or more;
- ``no_transfer``: D_T <= 0, the fine-tuned model is no better than scratch on D_F;
- ``high_data``: D_F > ``low_data_fraction`` * D(N), outside the regime where the power law holds.

The intervals of k, alpha and beta come from a bootstrap over runs, scratch runs included (``bootstrap_points``):
each resample rebuilds the scratch curves, D_E, D_T, statuses and both fits, so the error that one scratch curve
shares with all the points read off it is counted. With one run per scratch D, a resample also thins the D grid,
which makes these intervals conservative (wider than the replicate-to-replicate spread).

Only numpy, scipy and pandas: fitting a runs table must never import torch or deepspeed.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.interpolate import PchipInterpolator
from scipy.optimize import brentq, least_squares

from .io import atomic_open, read_json, write_json
from .jointlaw import JointLawError, fit_chinchilla

logger = logging.getLogger("transfer_scaling.fitting")

REQUIRED_COLUMNS = ("kind", "source", "n_params", "data_chars", "test_loss")
FITTED_KINDS = ("scratch", "finetune")
RUN_STATUSES = ("ok", "failed")
POINT_STATUSES = ("ok", "failed", "censored", "below_range", "ill_conditioned", "no_transfer", "high_data")
DEFAULT_SLOPE_TOLERANCE = 0.02
HUBER_TUNING = 1.345
MIN_HUBER_DELTA = 1e-3
PARAMETERS = ("k", "alpha", "beta")


class FitError(ValueError):
    """The runs table cannot be fitted; the message names the column, row or N at fault."""


# ---------------------------------------------------------------------------------------------- validation


def validate_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Return a cleaned copy of ``runs`` (status filled, source as text) or raise ``FitError``."""
    missing = [column for column in REQUIRED_COLUMNS if column not in runs.columns]
    if missing:
        raise FitError(f"runs table lacks column(s) {missing}; required: {list(REQUIRED_COLUMNS)}")
    runs = runs.copy().reset_index(drop=True)
    runs["kind"] = runs["kind"].astype(str)
    runs["source"] = runs["source"].fillna("").astype(str)
    runs["status"] = runs["status"].fillna("ok").astype(str) if "status" in runs.columns else "ok"
    bad_status = runs.index[~runs["status"].isin(RUN_STATUSES)]
    if len(bad_status):
        row = bad_status[0]
        raise FitError(f"row {row}: status {runs.at[row, 'status']!r} is not one of {list(RUN_STATUSES)}")
    for column in ("n_params", "data_chars"):
        _require_positive(runs, column, runs["kind"].isin(FITTED_KINDS))
    ok_fitted = runs["kind"].isin(FITTED_KINDS) & (runs["status"] == "ok")
    runs["test_loss"] = pd.to_numeric(runs["test_loss"], errors="coerce")
    bad_loss = runs.index[ok_fitted & ~(np.isfinite(runs["test_loss"]) & (runs["test_loss"] > 0))]
    if len(bad_loss):
        row = bad_loss[0]
        raise FitError(f"row {row}: column 'test_loss' is {runs.at[row, 'test_loss']!r}; a run with status ok "
                       "needs a finite positive loss (mark failed runs with status 'failed')")
    no_source = runs.index[(runs["kind"] == "finetune") & (runs["source"] == "")]
    if len(no_source):
        raise FitError(f"row {no_source[0]}: a finetune run needs a non-empty 'source'")
    _check_scratch_coverage(runs[ok_fitted])
    return runs


def _require_positive(runs: pd.DataFrame, column: str, rows: pd.Series) -> None:
    values = pd.to_numeric(runs[column], errors="coerce")
    bad = runs.index[rows & ~(np.isfinite(values) & (values > 0))]
    if len(bad):
        row = bad[0]
        raise FitError(f"row {row}: column {column!r} is {runs.at[row, column]!r}; it must be a positive number")
    runs[column] = values.astype(float)


def _check_scratch_coverage(runs: pd.DataFrame) -> None:
    scratch = runs[runs["kind"] == "scratch"]
    distinct_d = scratch.groupby("n_params")["data_chars"].nunique()
    for n_params in sorted(runs.loc[runs["kind"] == "finetune", "n_params"].unique()):
        if n_params not in distinct_d.index:
            raise FitError(f"N = {n_params:g}: fine-tuned runs but no successful scratch run of that n_params")
    for n_params, count in distinct_d.items():
        if count < 2:
            raise FitError(f"N = {n_params:g}: scratch runs at {count} value of data_chars; at least 2 are needed "
                           "to interpolate the scratch curve")


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


# ---------------------------------------------------------------------------------------------- scratch curves


@dataclass
class ScratchCurve:
    """The same-N from-scratch loss-vs-data curve, reduced to its monotone envelope.

    Early-stopped runs on more data should never be worse; where they are (noise, a plateau), the running
    minimum over increasing D is the best loss known to be reachable, and only its strictly decreasing
    points are interpolated (PCHIP in ln D, which keeps the curve monotone between them).
    """

    n_params: float
    d_chars: np.ndarray
    test_loss: np.ndarray

    def __post_init__(self) -> None:
        order = np.argsort(self.d_chars)
        self.d_chars = np.asarray(self.d_chars, float)[order]
        self.test_loss = np.asarray(self.test_loss, float)[order]
        envelope = np.minimum.accumulate(self.test_loss)
        keep = np.r_[True, envelope[1:] < envelope[:-1]]
        self.env_log_d = np.log(self.d_chars[keep])
        self.env_loss = envelope[keep]
        self._pchip = PchipInterpolator(self.env_log_d, self.env_loss) if keep.sum() >= 2 else None

    @property
    def best_loss(self) -> float:
        return float(self.env_loss[-1])

    @property
    def worst_loss(self) -> float:
        return float(self.env_loss[0])

    def loss_at(self, d_chars: float) -> float:
        """Envelope loss at ``d_chars``; NaN outside the scratch data (no extrapolation)."""
        log_d = math.log(d_chars)
        if not self.d_chars[0] <= d_chars <= self.d_chars[-1]:
            return math.nan
        if self._pchip is None or log_d >= self.env_log_d[-1]:
            return float(self.env_loss[-1] if log_d >= self.env_log_d[-1] else self.env_loss[0])
        return float(self._pchip(log_d))

    def effective_data(self, loss: float) -> tuple[float, float, str]:
        """(D_E, local slope |dL/dln D|, range status) for a loss; status is ok, censored or below_range.

        The slope is the secant of the envelope segment that brackets the loss: it measures how far a small
        loss error moves D_E, and unlike the PCHIP derivative it does not vanish at the curve's ends.
        """
        if loss < self.best_loss:
            return float(self.d_chars[-1]), math.nan, "censored"
        if loss > self.worst_loss:
            return float(self.d_chars[0]), math.nan, "below_range"
        if self._pchip is None:
            return float(math.exp(self.env_log_d[0])), 0.0, "ok"
        segment = int(np.clip(np.searchsorted(-self.env_loss, -loss, side="left") - 1, 0, len(self.env_loss) - 2))
        x0, x1 = self.env_log_d[segment], self.env_log_d[segment + 1]
        slope = (self.env_loss[segment] - self.env_loss[segment + 1]) / (x1 - x0)
        if loss == self.env_loss[segment]:
            log_d = x0
        elif loss == self.env_loss[segment + 1]:
            log_d = x1
        else:
            log_d = brentq(lambda x: float(self._pchip(x)) - loss, x0, x1, xtol=1e-12)
        return float(math.exp(log_d)), float(slope), "ok"


SCRATCH_LAW_STARTS = tuple((exponent, share) for exponent in (0.1, 0.3, 1.0) for share in (0.5, 0.9, 0.99))
LN_A_BOUND, MIN_EXPONENT, MAX_EXPONENT = 50.0, 1e-3, 3.0


def fit_scratch_law(d_chars: np.ndarray, test_loss: np.ndarray) -> dict[str, Any]:
    """Fit L_N(D) = L_inf + A / D^a by bounded least squares on ln L from several starts.

    Returns ``{"ok": bool, "message", "l_inf", "a_coef", "exponent", "rms_log_residual"}``.
    """
    d = np.asarray(d_chars, float)
    loss = np.asarray(test_loss, float)
    if np.unique(d).size < 3:
        return {"ok": False, "message": f"{np.unique(d).size} distinct D; 3 parameters need at least 3"}
    log_d, log_loss = np.log(d), np.log(loss)
    lowest = float(loss.min())

    def residuals(theta: np.ndarray) -> np.ndarray:
        l_inf, ln_a, exponent = theta
        return np.log(l_inf + np.exp(ln_a - exponent * log_d)) - log_loss

    lower, upper = np.array([0.0, -LN_A_BOUND, MIN_EXPONENT]), np.array([lowest, LN_A_BOUND, MAX_EXPONENT])
    best = None
    for exponent, share in SCRATCH_LAW_STARTS:
        l_inf = share * lowest
        start = np.array([l_inf, math.log(loss[0] - l_inf) + exponent * log_d[0], exponent])
        result = least_squares(residuals, np.clip(start, lower, upper), bounds=(lower, upper))
        if result.success and (best is None or result.cost < best.cost):
            best = result
    if best is None:
        return {"ok": False, "message": "least squares did not converge from any start"}
    l_inf, ln_a, exponent = (float(v) for v in best.x)
    return {"ok": True, "message": "", "l_inf": l_inf, "a_coef": math.exp(ln_a), "exponent": exponent,
            "rms_log_residual": float(np.sqrt(np.mean(best.fun**2)))}


def scratch_law_loss(law: dict[str, Any], d_chars: float) -> float:
    return law["l_inf"] + law["a_coef"] * d_chars ** (-law["exponent"])


def converged_data(law: dict[str, Any], tolerance: float) -> Any:
    """D(N): the data at which L_N(D) comes within ``tolerance`` (relative) of L_inf; inf if L_inf = 0.

    Element-wise when the law's values are arrays (the bootstrap's batched fits).
    """
    l_inf = np.asarray(law["l_inf"], float)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        d_converged = (law["a_coef"] / (tolerance * l_inf)) ** (1.0 / np.asarray(law["exponent"], float))
    return np.where(l_inf > 0, d_converged, np.inf)


def scratch_summary(curve: ScratchCurve, tolerance: float, low_data_fraction: float) -> dict[str, Any]:
    """Scratch points, L_N fit and the low-data limit of one N.

    If L_N cannot be fitted, or its D(N) lies beyond the largest scratch D (an extrapolation the data cannot
    check), D(N) falls back to the largest scratch D: a conservative limit, since the curve was still
    measurably above L_inf there.
    """
    law = fit_scratch_law(curve.d_chars, curve.test_loss)
    largest = float(curve.d_chars[-1])
    if not law["ok"]:
        d_converged, source = largest, f"largest scratch D (L_N fit failed: {law['message']})"
    else:
        fitted = float(converged_data(law, tolerance))
        if fitted > largest:
            d_converged = largest
            source = f"largest scratch D (the fit's D(N) = {fitted:.3g} is beyond the data)"
        else:
            d_converged, source = fitted, "L_N fit"
    return {"n_params": curve.n_params, "d_chars": curve.d_chars.tolist(), "test_loss": curve.test_loss.tolist(),
            "law": law, "d_converged": d_converged, "d_converged_source": source,
            "low_data_limit": low_data_fraction * d_converged}


# ---------------------------------------------------------------------------------------------- points


def classify_point(curve: ScratchCurve, d_f_chars: float, test_loss: float, low_data_limit: float,
                   slope_tolerance: float) -> dict[str, Any]:
    """D_E, D_T and the status of one fine-tuned point (see the module docstring for the statuses)."""
    d_effective, slope, range_status = curve.effective_data(test_loss)
    d_transferred = d_effective - d_f_chars
    status = str(point_status(range_status, slope, d_transferred, d_f_chars, low_data_limit, slope_tolerance))
    fraction = d_transferred / d_effective if d_transferred > 0 else math.nan
    return {"d_effective": d_effective, "d_transferred": d_transferred, "scratch_slope": slope,
            "fraction": fraction, "multiplier": d_effective / d_f_chars,
            "scratch_loss_at_d_f": curve.loss_at(d_f_chars), "status": status}


def point_status(range_status: Any, slope: Any, d_transferred: Any, d_f_chars: Any, low_data_limit: Any,
                 slope_tolerance: float) -> np.ndarray:
    """Status of fine-tuned points from their range status (ok, censored, below_range) and D_E; arrays
    broadcast, so the point estimate and every bootstrap resample classify points by the same rules."""
    conditions = [np.asarray(range_status) != "ok", np.asarray(slope) < slope_tolerance,
                  np.asarray(d_transferred) <= 0, np.asarray(d_f_chars) > low_data_limit]
    return np.select(conditions, [np.asarray(range_status), "ill_conditioned", "no_transfer", "high_data"], "ok")


def build_points(averaged: pd.DataFrame, runs: pd.DataFrame, curves: dict[float, ScratchCurve],
                 scratch: dict[float, dict], slope_tolerance: float) -> pd.DataFrame:
    """One row per fine-tuned (source, N, D_F): averaged loss, D_E, D_T, status and compute comparison."""
    rows = []
    finetune = averaged[averaged["kind"] == "finetune"]
    for record in finetune.itertuples(index=False):
        curve = curves[record.n_params]
        row = {"source": record.source, "n_params": record.n_params, "d_f_chars": record.data_chars,
               "test_loss": record.test_loss, "loss_std": record.loss_std, "n_seeds": record.n_seeds,
               "compute_finetune": record.compute}
        row.update(classify_point(curve, record.data_chars, record.test_loss,
                                  scratch[record.n_params]["low_data_limit"], slope_tolerance))
        rows.append(row)
    for record in _all_failed_finetunes(runs, finetune).itertuples(index=False):
        rows.append({"source": record.source, "n_params": record.n_params, "d_f_chars": record.data_chars,
                     "n_seeds": 0, "status": "failed"})
    points = pd.DataFrame(rows, columns=POINT_COLUMNS)
    points["n_seeds"] = points["n_seeds"].astype(int)
    points = _add_compute_comparison(points, averaged, runs)
    return points.sort_values(["source", "n_params", "d_f_chars"], ignore_index=True)


POINT_COLUMNS = ["source", "n_params", "d_f_chars", "test_loss", "loss_std", "n_seeds", "d_effective",
                 "d_transferred", "fraction", "multiplier", "scratch_slope", "scratch_loss_at_d_f", "status",
                 "compute_finetune"]


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


# ---------------------------------------------------------------------------------------------- the law


def transferred_data(k: float, alpha: float, beta: float, n_params: Any, d_f_chars: Any) -> Any:
    """D_T = k * D_F^alpha * N^beta."""
    return k * np.power(d_f_chars, alpha) * np.power(n_params, beta)


def _group_matrix(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniques, inverse = np.unique(values, return_inverse=True)
    return uniques, np.eye(uniques.size)[inverse]


def appendix_c_regression(ln_n: np.ndarray, ln_d_f: np.ndarray, logit_f: np.ndarray,
                          weights: np.ndarray) -> np.ndarray:
    """Appendix C, batched over rows of ``weights`` (B, n) and of ``logit_f`` (n or B, n): returns (B, 3) of
    (ln k, alpha, beta), NaN rows where a resample cannot identify them.

    Per D_F, logit(f) = c(D_F) + beta ln N with one slope shared by all D_F (within-group regression);
    then c(D_F) = ln k + (alpha - 1) ln D_F across D_F, each D_F weighted equally.
    """
    group_ln_d_f, groups = _group_matrix(ln_d_f)
    totals = weights @ groups
    present = totals > 0
    safe = np.where(present, totals, 1.0)
    mean_x = (weights * ln_n) @ groups / safe
    mean_y = (weights * logit_f) @ groups / safe
    dx = ln_n - mean_x @ groups.T
    dy = logit_f - mean_y @ groups.T
    sxx = (weights * dx * dx).sum(axis=1)
    beta = (weights * dx * dy).sum(axis=1) / np.where(sxx > 1e-12, sxx, np.nan)
    intercepts = mean_y - beta[:, None] * mean_x
    count = present.sum(axis=1)
    z_mean = (present * group_ln_d_f).sum(axis=1) / np.maximum(count, 1)
    dz = np.where(present, group_ln_d_f - z_mean[:, None], 0.0)
    szz = (dz * dz).sum(axis=1)
    c_mean = np.where(present, intercepts, 0.0).sum(axis=1) / np.maximum(count, 1)
    slope = (dz * np.where(present, intercepts - c_mean[:, None], 0.0)).sum(axis=1) / np.where(szz > 1e-12, szz, np.nan)
    ln_k = c_mean - slope * z_mean
    return np.column_stack([ln_k, slope + 1.0, beta])


def huber_regression(design: np.ndarray, target: np.ndarray, weights: np.ndarray, delta: float,
                     iterations: int = 100) -> np.ndarray:
    """Huber-loss linear regression by IRLS, batched over rows of ``weights`` (B, n) and of ``target`` (n or
    B, n); NaN rows where the weighted design is rank-deficient. Same minimiser as least_squares(loss='huber',
    f_scale=delta).
    """
    target = np.broadcast_to(target, weights.shape)
    coef = _weighted_lstsq(design, target, weights)
    for _ in range(iterations):
        residual = target - np.nan_to_num(coef) @ design.T
        robust = weights * np.minimum(1.0, delta / np.maximum(np.abs(residual), 1e-300))
        updated = _weighted_lstsq(design, target, robust)
        if np.allclose(updated, coef, rtol=0, atol=1e-12, equal_nan=True):
            break
        coef = updated
    return coef


def _weighted_lstsq(design: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    gram = np.einsum("bn,ni,nj->bij", weights, design, design)
    moment = np.einsum("bn,ni,bn->bi", weights, design, np.broadcast_to(target, weights.shape))
    scale = np.maximum(np.abs(gram).max(axis=(1, 2)), 1e-300)
    full_rank = np.linalg.matrix_rank(gram / scale[:, None, None], tol=1e-10) == design.shape[1]
    safe = np.where(full_rank[:, None, None], gram, np.eye(design.shape[1]))
    coef = np.linalg.solve(safe, moment[..., None])[..., 0]
    coef[~full_rank] = np.nan
    return coef


def not_identifiable_reason(n_params: np.ndarray, d_f_chars: np.ndarray) -> str | None:
    """Why (k, alpha, beta) cannot be fitted to these points, or None."""
    if len(n_params) < 3:
        return f"{len(n_params)} usable point(s); at least 3 are needed"
    if np.unique(n_params).size < 2:
        return f"a single N ({n_params[0]:g}) among the usable points: beta is not identifiable"
    if np.unique(d_f_chars).size < 2:
        return f"a single D_F ({d_f_chars[0]:g}) among the usable points: alpha is not identifiable"
    return None


def fit_transfer_law(n_params: np.ndarray, d_f_chars: np.ndarray, d_transferred: np.ndarray,
                     resamples: PointResamples) -> dict[str, dict]:
    """Both fits of D_T = k D_F^alpha N^beta to the usable points, with percentile intervals over the
    bootstrap resamples of runs (``bootstrap_points``).

    The Huber scale delta is set once from the point estimate's residuals and kept for every resample.
    """
    reason = not_identifiable_reason(n_params, d_f_chars)
    if reason is None and np.unique(d_f_chars).size == len(d_f_chars):
        reason = "no D_F has runs at two N: the shared slope of Appendix C is not identifiable"
    ln_n, ln_d_f, ln_d_t = np.log(n_params), np.log(d_f_chars), np.log(d_transferred)
    n = len(ln_n)
    design = np.column_stack([np.ones(n), ln_d_f, ln_n])
    boot_ln_n, boot_ln_d_f = np.log(resamples.n_params), np.log(resamples.d_f_chars)
    boot_design = np.column_stack([np.ones(boot_ln_n.size), boot_ln_d_f, boot_ln_n])
    results = {}
    appendix_reason = reason
    huber_reason = not_identifiable_reason(n_params, d_f_chars)
    if appendix_reason is None:
        estimate = appendix_c_regression(ln_n, ln_d_f, ln_d_t - ln_d_f, np.ones((1, n)))[0]
        draws = appendix_c_regression(boot_ln_n, boot_ln_d_f, resamples.ln_d_transferred - boot_ln_d_f,
                                      resamples.weights)
        results["appendix_c"] = _law_block(estimate, draws, design, ln_d_t, {})
    else:
        results["appendix_c"] = {"identifiable": False, "reason": appendix_reason}
    if huber_reason is None:
        ols = _weighted_lstsq(design, ln_d_t, np.ones((1, n)))[0]
        residual = ln_d_t - design @ ols
        mad = float(np.median(np.abs(residual - np.median(residual))))
        delta = max(HUBER_TUNING * 1.4826 * mad, MIN_HUBER_DELTA)
        estimate = huber_regression(design, ln_d_t, np.ones((1, n)), delta)[0]
        draws = huber_regression(boot_design, resamples.ln_d_transferred, resamples.weights, delta)
        results["huber"] = _law_block(estimate, draws, design, ln_d_t, {"huber_delta": delta})
    else:
        results["huber"] = {"identifiable": False, "reason": huber_reason}
    return results


def _law_block(estimate: np.ndarray, draws: np.ndarray, design: np.ndarray, ln_d_t: np.ndarray,
               extra: dict) -> dict[str, Any]:
    if not np.all(np.isfinite(estimate)):
        return {"identifiable": False, "reason": "the points are collinear in (ln N, ln D_F)"}
    ln_k, alpha, beta = (float(v) for v in estimate)
    residuals = ln_d_t - design @ estimate
    total = float(((ln_d_t - ln_d_t.mean()) ** 2).sum())
    good = draws[np.all(np.isfinite(draws), axis=1)]
    block = {"identifiable": True, "k": math.exp(ln_k), "ln_k": ln_k, "alpha": alpha, "beta": beta,
             "residuals_ln_d_transferred": residuals.tolist(),
             "r_squared": 1.0 - float((residuals**2).sum()) / total if total > 0 else math.nan,
             "n_bootstrap": int(len(draws)), "n_bootstrap_identifiable": int(len(good)), **extra}
    for index, name in enumerate(("ln_k", "alpha", "beta")):
        interval = np.percentile(good[:, index], [2.5, 97.5]).tolist() if len(good) else [math.nan, math.nan]
        block[f"{name}_ci"] = interval
    block["k_ci"] = [math.exp(v) for v in block["ln_k_ci"]]
    block["bootstrap_draws"] = good
    return block


# ---------------------------------------------------------------------------------------------- bootstrap over runs


@dataclass
class PointResamples:
    """One source's fine-tuned points in every bootstrap resample (rows of ``weights``, ``ln_d_transferred``).

    A point's weight is its number of drawn runs over its number of runs (1 on average, as in the point
    estimate), 0 where no run was drawn or the point is not fitted in that resample; its ln D_T is 0 there.
    """

    n_params: np.ndarray
    d_f_chars: np.ndarray
    weights: np.ndarray
    ln_d_transferred: np.ndarray


def bootstrap_points(runs: pd.DataFrame, points: pd.DataFrame,
                     options: FitOptions) -> tuple[dict[str, PointResamples], int]:
    """Resample runs, not points, so that the error a scratch curve shares with all its points is counted.

    In each resample, the scratch runs of each N are drawn with replacement within that N, and the fine-tuned
    runs of each source with replacement; seeds are runs, and the drawn runs of one (N, D) are averaged.
    A scratch draw that covers a single D value is redrawn (a curve needs two), so the intervals are
    conditional on every N keeping a curve; the number of redraws is returned. Scratch curves, low-data
    limits, D_E, D_T and statuses are then recomputed per resample, as in the point estimate.
    """
    rng = np.random.default_rng(options.seed)
    ok = runs[(runs["status"] == "ok") & runs["kind"].isin(FITTED_KINDS)]
    curves, redraws = {}, 0
    for n_params, group in ok[ok["kind"] == "scratch"].groupby("n_params"):
        d_chars, d_index = np.unique(group["data_chars"].to_numpy(), return_inverse=True)
        counts, redrawn = _scratch_counts(rng, d_index, d_chars.size, options.n_bootstrap)
        redraws += redrawn
        test_loss = _resampled_means(counts, group["test_loss"].to_numpy(), d_index, d_chars.size)[0]
        curves[n_params] = ScratchResamples(d_chars, test_loss, options.tolerance, options.low_data_fraction)
    finetune = ok[ok["kind"] == "finetune"]
    resamples = {source: _resample_source(rng, group, finetune[finetune["source"] == source], curves, options)
                 for source, group in points.groupby("source")}
    return resamples, redraws


def _draw_counts(rng: np.random.Generator, n_runs: int, n_resamples: int) -> np.ndarray:
    """How often each run is drawn in each resample (rows) when ``n_runs`` runs are drawn with replacement."""
    if n_runs == 0:
        return np.zeros((n_resamples, 0), int)
    return rng.multinomial(n_runs, np.full(n_runs, 1.0 / n_runs), size=n_resamples)


def _scratch_counts(rng: np.random.Generator, d_index: np.ndarray, n_d: int,
                    n_resamples: int) -> tuple[np.ndarray, int]:
    """Draws of one N's scratch runs (``d_index``: the D value of each run); draws covering one D are redrawn."""
    counts = _draw_counts(rng, d_index.size, n_resamples)
    onehot = np.eye(n_d)[d_index]
    redraws = 0
    while True:
        single = ((counts @ onehot) > 0).sum(axis=1) < 2
        if not single.any():
            return counts, redraws
        redraws += int(single.sum())
        counts[single] = _draw_counts(rng, d_index.size, int(single.sum()))


def _resampled_means(counts: np.ndarray, values: np.ndarray, group: np.ndarray,
                     n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per resample, the mean value of the drawn runs of each group (NaN where none was drawn) and their number."""
    onehot = np.eye(n_groups)[group]
    drawn = counts @ onehot
    with np.errstate(invalid="ignore"):
        return (counts * values) @ onehot / drawn, drawn


def _resample_source(rng: np.random.Generator, points: pd.DataFrame, runs: pd.DataFrame,
                     curves: dict[float, ScratchResamples], options: FitOptions) -> PointResamples:
    """Draw one source's fine-tuned runs and read each resampled point off its N's resampled scratch curve."""
    cells = points[points["status"] != "failed"].reset_index(drop=True)
    keys = cells[["n_params", "d_f_chars"]].rename(columns={"d_f_chars": "data_chars"}).reset_index()
    cell_of_run = runs[["n_params", "data_chars"]].merge(keys, how="left")["index"].to_numpy()
    counts = _draw_counts(rng, len(runs), options.n_bootstrap)
    test_loss, drawn = _resampled_means(counts, runs["test_loss"].to_numpy(), cell_of_run, len(cells))
    d_f_chars = cells["d_f_chars"].to_numpy(float)
    d_effective, slope, limit = (np.full(test_loss.shape, np.nan) for _ in range(3))
    range_status = np.full(test_loss.shape, "ok", dtype=object)
    for n_params, columns in cells.groupby("n_params").indices.items():
        curve = curves[n_params]
        found = curve.effective_data(test_loss[:, columns])
        d_effective[:, columns], slope[:, columns], range_status[:, columns] = found
        limit[:, columns] = curve.low_data_limit[:, None]
    d_transferred = d_effective - d_f_chars
    status = point_status(range_status.astype(str), slope, d_transferred, d_f_chars, limit, options.slope_tolerance)
    fitted = (status == "ok") & (drawn > 0)
    return PointResamples(cells["n_params"].to_numpy(float), d_f_chars,
                          np.where(fitted, drawn / cells["n_seeds"].to_numpy(), 0.0),
                          np.log(np.where(fitted, d_transferred, 1.0)))


class ScratchResamples:
    """The scratch curves of one N in every resample: ``ScratchCurve`` and ``scratch_summary`` vectorised.

    ``test_loss`` is (resamples, D values) on the grid ``d_chars``, NaN where a resample drew no run at that D.
    Same envelope, same PCHIP (scipy's derivatives), same secant slope, the same L_N objective (``fit_scratch_laws``)
    and the same D(N) fallback, so the resample that draws every run once reproduces the point estimate's D_E and
    statuses (tested).
    """

    def __init__(self, d_chars: np.ndarray, test_loss: np.ndarray, tolerance: float, low_data_fraction: float):
        log_d = np.log(d_chars)
        present = np.isfinite(test_loss)
        running = np.minimum.accumulate(np.where(present, test_loss, np.inf), axis=1)
        keep = present & (running < np.column_stack([np.full(len(running), np.inf), running[:, :-1]]))
        order = np.argsort(~keep, axis=1, kind="stable")
        self.knots = keep.sum(axis=1)
        self.env_log_d = np.take_along_axis(np.where(keep, log_d, np.nan), order, axis=1)
        self.env_loss = np.take_along_axis(np.where(keep, test_loss, np.nan), order, axis=1)
        self.derivatives = _pchip_derivatives(self.env_log_d, self.env_loss, self.knots)
        largest = d_chars[d_chars.size - 1 - np.argmax(present[:, ::-1], axis=1)]
        law = fit_scratch_laws(log_d, test_loss)
        fitted = np.where(law["ok"], converged_data(law, tolerance), np.inf)
        self.low_data_limit = low_data_fraction * np.minimum(fitted, largest)

    def effective_data(self, test_loss: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(D_E, secant slope, range status) for losses (resamples, points); D_E and slope NaN out of range."""
        rows = np.arange(len(test_loss))[:, None]
        last = (self.knots - 1)[:, None]
        range_status = np.where(test_loss < self.env_loss[rows, last], "censored",
                                np.where(test_loss > self.env_loss[:, :1], "below_range", "ok"))
        above = (self.env_loss[:, None, :] > test_loss[:, :, None]).sum(axis=2)
        segment = np.clip(above - 1, 0, np.maximum(last - 1, 0))
        following = np.minimum(segment + 1, last)
        x0, y0, d0 = (values[rows, segment] for values in (self.env_log_d, self.env_loss, self.derivatives))
        x1, y1, d1 = (values[rows, following] for values in (self.env_log_d, self.env_loss, self.derivatives))
        width = x1 - x0
        single = width == 0
        with np.errstate(invalid="ignore", divide="ignore"):
            log_d = x0 + width * _invert_hermite(y0, y1, d0 * width, d1 * width, test_loss)
            slope = np.where(single, 0.0, (y0 - y1) / width)
        in_range = range_status == "ok"
        return (np.where(in_range, np.exp(np.where(single, x0, log_d)), np.nan), np.where(in_range, slope, np.nan),
                range_status)


def _pchip_derivatives(x: np.ndarray, y: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Knot derivatives of scipy's ``PchipInterpolator`` through each row's first ``knots`` points (x, y padded
    with NaN after them): weighted harmonic means inside, the one-sided shape-preserving rule at both ends,
    and a straight line through two knots."""
    n_columns = x.shape[1]
    x, y = (np.pad(a, ((0, 0), (0, max(0, 3 - n_columns))), constant_values=np.nan) for a in (x, y))
    rows = np.arange(len(x))
    with np.errstate(invalid="ignore", divide="ignore"):
        h = np.diff(x, axis=1)
        m = np.diff(y, axis=1) / h
        w1, w2 = 2 * h[:, 1:] + h[:, :-1], h[:, 1:] + 2 * h[:, :-1]
        flat = (np.sign(m[:, 1:]) != np.sign(m[:, :-1])) | (m[:, 1:] == 0) | (m[:, :-1] == 0)
        interior = np.where(flat, 0.0, (w1 + w2) / (w1 / m[:, :-1] + w2 / m[:, 1:]))
        last, before = np.maximum(knots - 2, 0), np.maximum(knots - 3, 0)
        derivatives = np.column_stack([_pchip_edge(h[:, 0], h[:, 1], m[:, 0], m[:, 1]), interior,
                                       np.full(len(x), np.nan)])
        derivatives[rows, np.maximum(knots - 1, 0)] = _pchip_edge(h[rows, last], h[rows, before], m[rows, last],
                                                                  m[rows, before])
    two = knots == 2
    derivatives[two, 0] = derivatives[two, 1] = m[two, 0]
    return derivatives[:, :n_columns]


def _pchip_edge(h0: np.ndarray, h1: np.ndarray, m0: np.ndarray, m1: np.ndarray) -> np.ndarray:
    """End derivative: the one-sided three-point estimate, zeroed or capped where it would break monotonicity."""
    d = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    same_sign = np.sign(d) == np.sign(m0)
    overshoot = same_sign & (np.sign(m0) != np.sign(m1)) & (np.abs(d) > 3 * np.abs(m0))
    return np.where(same_sign, np.where(overshoot, 3 * m0, d), 0.0)


def _invert_hermite(y0: np.ndarray, y1: np.ndarray, m0: np.ndarray, m1: np.ndarray, target: np.ndarray,
                    iterations: int = 60) -> np.ndarray:
    """t in [0, 1] where the cubic Hermite segment (values y0, y1; tangents m0, m1 per unit t) equals target.

    PCHIP segments of a decreasing envelope decrease monotonically, so bisection finds the only root.
    """
    low, high = np.zeros(np.shape(target)), np.ones(np.shape(target))
    for _ in range(iterations):
        t = 0.5 * (low + high)
        value = (y0 * (2 * t**3 - 3 * t**2 + 1) + m0 * (t**3 - 2 * t**2 + t) + y1 * (3 * t**2 - 2 * t**3)
                 + m1 * (t**3 - t**2))
        above = value > target
        low, high = np.where(above, t, low), np.where(above, high, t)
    return 0.5 * (low + high)


def fit_scratch_laws(log_d: np.ndarray, test_loss: np.ndarray, iterations: int = 300) -> dict[str, np.ndarray]:
    """``fit_scratch_law`` for many curves at once (rows of ``test_loss`` on the grid ``log_d``, NaN = no point).

    Same residuals, bounds and starts, minimised by Levenberg-Marquardt with steps clipped to the bounds: one
    scipy fit per resampled curve (about 20 ms) would make a thousand resamples take minutes.
    Returns arrays ``ok`` (at least 3 points), ``l_inf``, ``a_coef``, ``exponent``.
    """
    present = np.isfinite(test_loss)
    n_curves, n_starts = len(test_loss), len(SCRATCH_LAW_STARTS)
    lowest = np.nanmin(np.where(present, test_loss, np.inf), axis=1)
    first = np.argmax(present, axis=1)
    first_loss, first_log_d = test_loss[np.arange(n_curves), first], log_d[first]
    theta = np.concatenate([
        np.column_stack([share * lowest, np.log(first_loss - share * lowest) + exponent * first_log_d,
                         np.full(n_curves, exponent)]) for exponent, share in SCRATCH_LAW_STARTS])
    lower = np.tile([0.0, -LN_A_BOUND, MIN_EXPONENT], (n_starts * n_curves, 1))
    upper = np.column_stack([np.tile(lowest, n_starts), np.tile([LN_A_BOUND, MAX_EXPONENT], (n_starts * n_curves, 1))])
    mask = np.tile(present, (n_starts, 1))
    log_loss = np.tile(np.log(np.where(present, test_loss, 1.0)), (n_starts, 1))
    theta, cost = _levenberg_marquardt(np.clip(theta, lower, upper), lower, upper, log_d, log_loss, mask, iterations)
    best = np.argmin(cost.reshape(n_starts, n_curves), axis=0)
    l_inf, ln_a, exponent = theta.reshape(n_starts, n_curves, 3)[best, np.arange(n_curves)].T
    return {"ok": present.sum(axis=1) >= 3, "l_inf": l_inf, "a_coef": np.exp(ln_a), "exponent": exponent}


def _scratch_law_residuals(theta: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray,
                           mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Residuals ln(L_inf + e^(ln A - a ln D)) - ln L (0 where masked) and their Jacobian in (L_inf, ln A, a)."""
    power = np.exp(theta[:, 1:2] - theta[:, 2:3] * log_d)
    total = theta[:, 0:1] + power
    residual = np.where(mask, np.log(total) - log_loss, 0.0)
    jacobian = np.stack([1.0 / total, power / total, -log_d * power / total], axis=2) * mask[..., None]
    return residual, jacobian


def _levenberg_marquardt(theta: np.ndarray, lower: np.ndarray, upper: np.ndarray, log_d: np.ndarray,
                         log_loss: np.ndarray, mask: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Batched Levenberg-Marquardt on the scratch-law residuals within bounds: a parameter on a bound that the
    gradient pushes outward is held there for the step (an active set); iterates only unconverged problems."""
    residual, jacobian = _scratch_law_residuals(theta, log_d, log_loss, mask)
    cost = (residual**2).sum(axis=1)
    damping = np.full(len(theta), 1e-3)
    active = np.arange(len(theta))
    for _ in range(iterations):
        if active.size == 0:
            break
        jac, res, current = jacobian[active], residual[active], theta[active]
        gradient = (jac.transpose(0, 2, 1) @ res[..., None])[..., 0]
        pinned = ((current <= lower[active]) & (gradient > 0)) | ((current >= upper[active]) & (gradient < 0))
        free = (~pinned)[:, :, None] & (~pinned)[:, None, :]
        gram = jac.transpose(0, 2, 1) @ jac
        scale = np.diagonal(gram, axis1=1, axis2=2) + 1e-12 * np.trace(gram, axis1=1, axis2=2)[:, None]
        damped = np.where(free, gram + damping[active, None, None] * np.eye(3) * scale[:, None, :], np.eye(3))
        step = np.linalg.solve(damped, np.where(pinned, 0.0, -gradient)[..., None])[..., 0]
        candidate = np.clip(current + step, lower[active], upper[active])
        new_residual, new_jacobian = _scratch_law_residuals(candidate, log_d, log_loss[active], mask[active])
        new_cost = (new_residual**2).sum(axis=1)
        better = new_cost < cost[active]
        moved = np.abs(candidate - current).max(axis=1)
        improved = active[better]
        theta[improved], cost[improved] = candidate[better], new_cost[better]
        residual[improved], jacobian[improved] = new_residual[better], new_jacobian[better]
        damping[active] = np.where(better, np.maximum(damping[active] / 3, 1e-12), damping[active] * 3)
        done = (moved <= 1e-12 * (1.0 + np.abs(theta[active]).max(axis=1))) | (damping[active] > 1e12)
        active = active[~done]
    return theta, cost


# ---------------------------------------------------------------------------------------------- derived


def data_worth_of_10x_model(k: float, alpha: float, beta: float, n_params: float, d_f_chars: float) -> float:
    """X such that the size-N model fine-tuned on X * D_F has the same D_E as the size-10N model on D_F.

    Solves X D_F + k (X D_F)^alpha N^beta = D_F + k D_F^alpha (10 N)^beta; D_E grows with X, so the root
    is unique.
    """
    target = d_f_chars + transferred_data(k, alpha, beta, 10.0 * n_params, d_f_chars)

    def gap(log_x: float) -> float:
        d = d_f_chars * math.exp(log_x)
        return math.log(d + transferred_data(k, alpha, beta, n_params, d)) - math.log(target)

    return math.exp(brentq(gap, -100.0, 100.0, xtol=1e-12))


def derived_quantities(block: dict[str, Any], grid: pd.DataFrame) -> dict[str, Any]:
    """Multiplier, fraction and the worth of 10x model size on the observed (N, D_F) grid."""
    k, alpha, beta = block["k"], block["alpha"], block["beta"]
    rows = []
    for n_params, d_f_chars in grid[["n_params", "d_f_chars"]].drop_duplicates().itertuples(index=False):
        ratio = transferred_data(k, alpha, beta, n_params, d_f_chars) / d_f_chars
        rows.append({"n_params": n_params, "d_f_chars": d_f_chars, "multiplier": 1.0 + ratio,
                     "fraction": ratio / (1.0 + ratio),
                     "data_worth_of_10x_model_equal_d_effective":
                         data_worth_of_10x_model(k, alpha, beta, n_params, d_f_chars)})
    return {"data_worth_of_10x_model_equal_d_transferred": 10.0 ** (beta / alpha) if alpha > 0 else math.inf,
            "grid": rows}


def ossification(points: pd.DataFrame) -> list[dict[str, Any]]:
    """Per N, the D_F above which training from scratch (interpolated) beats fine-tuning, or None.

    Reported as the smallest observed D_F from which scratch wins at every larger observed D_F, so a single
    noisy crossing in the middle of the range does not count.
    """
    result = []
    for n_params, group in points[points["status"] != "failed"].groupby("n_params"):
        group = group.sort_values("d_f_chars")
        gap = group["test_loss"] - group["scratch_loss_at_d_f"]
        compared = gap.notna().to_numpy()
        scratch_wins = (gap > 0).to_numpy()
        onset = None
        for index in range(len(group) - 1, -1, -1):
            if not compared[index]:
                continue
            if not scratch_wins[index]:
                break
            onset = float(group["d_f_chars"].iloc[index])
        result.append({"n_params": float(n_params), "d_f_chars": onset,
                       "loss_gap": [None if not np.isfinite(v) else float(v) for v in gap],
                       "d_f_observed": group["d_f_chars"].tolist()})
    return result


# ---------------------------------------------------------------------------------------------- entry points


@dataclass(frozen=True)
class FitOptions:
    tolerance: float = 0.01
    low_data_fraction: float = 0.1
    n_bootstrap: int = 1000
    seed: int = 0
    slope_tolerance: float = DEFAULT_SLOPE_TOLERANCE
    joint_law: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.tolerance < 1:
            raise FitError(f"tolerance = {self.tolerance}: must lie in (0, 1)")
        if not self.low_data_fraction > 0:
            raise FitError(f"low_data_fraction = {self.low_data_fraction}: must be positive")
        if self.n_bootstrap < 0:
            raise FitError(f"n_bootstrap = {self.n_bootstrap}: must be >= 0")
        if self.slope_tolerance < 0:
            raise FitError(f"slope_tolerance = {self.slope_tolerance}: must be >= 0")


def fit_runs(runs: pd.DataFrame, tolerance: float = 0.01, low_data_fraction: float = 0.1,
             n_bootstrap: int = 1000, seed: int = 0, slope_tolerance: float = DEFAULT_SLOPE_TOLERANCE,
             joint_law: bool = True) -> dict[str, Any]:
    """Fit every source of a runs table; returns a JSON-ready dict (see ``fit_file`` for the layout).

    ``joint_law`` adds the joint-law diagnostic (a few seconds for the full start grid).
    """
    return _fit(runs, FitOptions(tolerance, low_data_fraction, n_bootstrap, seed, slope_tolerance, joint_law))[0]


def _fit(runs: pd.DataFrame, options: FitOptions) -> tuple[dict[str, Any], pd.DataFrame]:
    runs = validate_runs(runs)
    averaged = average_seeds(runs[runs["kind"].isin(FITTED_KINDS)])
    curves = {n: ScratchCurve(n, group["data_chars"].to_numpy(), group["test_loss"].to_numpy())
              for n, group in averaged[averaged["kind"] == "scratch"].groupby("n_params")}
    scratch = {n: scratch_summary(curve, options.tolerance, options.low_data_fraction) for n, curve in curves.items()}
    points = build_points(averaged, runs, curves, scratch, options.slope_tolerance)
    resamples, scratch_redraws = bootstrap_points(runs, points, options)
    sources = {source: _fit_source(group, resamples[source]) for source, group in points.groupby("source")}
    draws = _pop_draws(sources)
    scratch_points = averaged[averaged["kind"] == "scratch"]
    result = {
        "options": asdict(options),
        "bootstrap": {"unit": "runs", "n_resamples": options.n_bootstrap, "scratch_redraws": scratch_redraws},
        "scratch": {n_key(n): summary for n, summary in scratch.items()},
        "sources": sources,
        "points": points.to_dict(orient="records"),
        "failed_runs": runs[runs["status"] == "failed"].to_dict(orient="records"),
        "compute_by_kind": _compute_by_kind(runs),
        "joint_law": joint_law_diagnostic(scratch_points) if options.joint_law else None,
    }
    return to_jsonable(result), draws


def joint_law_diagnostic(scratch: pd.DataFrame) -> dict[str, Any]:
    """Chinchilla's and Kaplan's joint L(N, D) fitted to the scratch points: a diagnostic of how well one
    smooth law describes the runs, never used to compute D_E (the paper found it too poor to invert)."""
    try:
        fit = fit_chinchilla(scratch["n_params"], scratch["data_chars"], scratch["test_loss"])
    except JointLawError as error:
        return {"identifiable": False, "reason": str(error)}
    return {"identifiable": True, "n_params": scratch["n_params"].tolist(), "d_chars": scratch["data_chars"].tolist(),
            "test_loss": scratch["test_loss"].tolist(), **fit}


def _fit_source(points: pd.DataFrame, resamples: PointResamples) -> dict[str, Any]:
    usable = points[points["status"] == "ok"]
    fits = fit_transfer_law(usable["n_params"].to_numpy(), usable["d_f_chars"].to_numpy(),
                            usable["d_transferred"].to_numpy(), resamples)
    for block in fits.values():
        if block["identifiable"]:
            block["derived"] = derived_quantities(block, points)
    counts = points["status"].value_counts()
    return {**fits, "n_points_used": int(len(usable)),
            "n_points_excluded": {status: int(counts.get(status, 0)) for status in POINT_STATUSES if status != "ok"},
            "ossification": ossification(points)}


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

    ``transfer_fit.json``: options; ``bootstrap`` (resampling unit, resamples, scratch redraws); ``scratch`` per
    N (points, L_N fit, D(N) and its origin); ``sources`` per source (``appendix_c`` and ``huber`` blocks with k,
    alpha, beta, their 95% intervals, how many resamples could identify them, residuals, R^2 and derived
    quantities; point counts; ossification); ``points``; ``failed_runs``; ``compute_by_kind``.
    ``bootstrap.csv`` holds the identifiable bootstrap draws (for interval bands in the figures).
    """
    unknown = set(options) - {field.name for field in fields(FitOptions)}
    if unknown:
        raise FitError(f"unknown fit option(s) {sorted(unknown)}; allowed: {[f.name for f in fields(FitOptions)]}")
    result, draws = _fit(read_runs(runs_csv), FitOptions(**options))
    result["runs_csv"] = str(runs_csv)
    for run in result["failed_runs"]:
        logger.warning("failed run left out of the fit: %s %s N=%g data_chars=%g (%s)", run["kind"],
                       run.get("run", run["source"]), run["n_params"], run["data_chars"],
                       run.get("stop_reason", "no stop reason"))
    out_dir = Path(out_dir)
    write_json(out_dir / "transfer_fit.json", result)
    with atomic_open(out_dir / "points.csv", "w", encoding="utf-8", newline="") as handle:
        pd.DataFrame(result["points"]).to_csv(handle, index=False)
    with atomic_open(out_dir / "bootstrap.csv", "w", encoding="utf-8", newline="") as handle:
        draws.to_csv(handle, index=False)
    return result


def load_fit(fit_json: str | os.PathLike) -> dict[str, Any]:
    path = Path(fit_json)
    if path.is_dir():
        path = path / "transfer_fit.json"
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


def advise(fit: dict[str, Any], source: str, n_params: float, d_f_chars: float) -> dict[str, Any]:
    """What 10x more fine-tuning data buys against a 10x larger model, in D_E and in predicted loss.

    Loss is predicted from the fitted scratch curve L_N of the same N, which exists only for the N that
    were trained from scratch; anything outside the fitted ranges is listed under ``notes``.
    """
    if not (n_params > 0 and d_f_chars > 0):
        raise FitError(f"n_params = {n_params} and d_f_chars = {d_f_chars} must both be positive")
    method, block = primary_fit(fit, source)
    k, alpha, beta = block["k"], block["alpha"], block["beta"]
    notes = _range_notes(fit, source, n_params, d_f_chars)
    options = {"current": (n_params, d_f_chars), "10x_data": (n_params, 10 * d_f_chars),
               "10x_params": (10 * n_params, d_f_chars)}
    answer: dict[str, Any] = {"source": source, "method": method, "k": k, "alpha": alpha, "beta": beta}
    for name, (n, d) in options.items():
        d_transferred = float(transferred_data(k, alpha, beta, n, d))
        answer[name] = {"n_params": n, "d_f_chars": d, "d_transferred": d_transferred,
                        "d_effective": d + d_transferred,
                        "predicted_loss": _predict_loss(fit, n, d + d_transferred, notes)}
    answer["d_effective_ratio_10x_data"] = answer["10x_data"]["d_effective"] / answer["current"]["d_effective"]
    answer["d_effective_ratio_10x_params"] = answer["10x_params"]["d_effective"] / answer["current"]["d_effective"]
    answer["data_worth_of_10x_model_equal_d_effective"] = data_worth_of_10x_model(k, alpha, beta, n_params, d_f_chars)
    answer["notes"] = notes
    return to_jsonable(answer)


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


def _predict_loss(fit: dict[str, Any], n_params: float, d_effective: float, notes: list[str]) -> float | None:
    summary = fit["scratch"].get(n_key(n_params))
    if summary is None:
        notes.append(f"no scratch curve at N = {n_params:g}: loss not predicted")
        return None
    if not summary["law"]["ok"]:
        notes.append(f"the scratch fit L_N at N = {n_params:g} failed ({summary['law']['message']}): "
                     "loss not predicted")
        return None
    low, high = min(summary["d_chars"]), max(summary["d_chars"])
    if not low <= d_effective <= high:
        notes.append(f"extrapolating L_N at N = {n_params:g}: D_E = {d_effective:.3g} outside the scratch "
                     f"data {low:g}..{high:g}")
    return scratch_law_loss(summary["law"], d_effective)
