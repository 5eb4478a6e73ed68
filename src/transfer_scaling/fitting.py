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

Only numpy, scipy and pandas: fitting a runs table must never import torch or deepspeed.
"""

from __future__ import annotations

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

    lower, upper = np.array([0.0, -50.0, 1e-3]), np.array([lowest, 50.0, 3.0])
    best = None
    for exponent in (0.1, 0.3, 1.0):
        for share in (0.5, 0.9, 0.99):
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


def converged_data(law: dict[str, Any], tolerance: float) -> float:
    """D(N): the data at which L_N(D) comes within ``tolerance`` (relative) of L_inf; inf if L_inf = 0."""
    if law["l_inf"] <= 0:
        return math.inf
    return (law["a_coef"] / (tolerance * law["l_inf"])) ** (1.0 / law["exponent"])


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
        fitted = converged_data(law, tolerance)
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
    d_effective, slope, status = curve.effective_data(test_loss)
    d_transferred = d_effective - d_f_chars
    if status == "ok":
        if slope < slope_tolerance:
            status = "ill_conditioned"
        elif d_transferred <= 0:
            status = "no_transfer"
        elif d_f_chars > low_data_limit:
            status = "high_data"
    fraction = d_transferred / d_effective if d_transferred > 0 else math.nan
    return {"d_effective": d_effective, "d_transferred": d_transferred, "scratch_slope": slope,
            "fraction": fraction, "multiplier": d_effective / d_f_chars,
            "scratch_loss_at_d_f": curve.loss_at(d_f_chars), "status": status}


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
    """Appendix C, batched over rows of ``weights`` (B, n): returns (B, 3) of (ln k, alpha, beta), NaN rows
    where a resample cannot identify them.

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
    """Huber-loss linear regression by IRLS, batched over rows of ``weights`` (B, n); NaN rows where the
    weighted design is rank-deficient. Same minimiser as least_squares(loss='huber', f_scale=delta).
    """
    coef = _weighted_lstsq(design, target, weights)
    for _ in range(iterations):
        residual = target - coef @ design.T
        robust = weights * np.minimum(1.0, delta / np.maximum(np.abs(residual), 1e-300))
        updated = _weighted_lstsq(design, target, robust)
        if np.allclose(updated, coef, rtol=0, atol=1e-12, equal_nan=True):
            break
        coef = updated
    return coef


def _weighted_lstsq(design: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    gram = np.einsum("bn,ni,nj->bij", weights, design, design)
    moment = np.einsum("bn,ni,n->bi", weights, design, target)
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
                     n_bootstrap: int, seed: int) -> dict[str, dict]:
    """Both fits of D_T = k D_F^alpha N^beta with percentile bootstrap intervals over points."""
    reason = not_identifiable_reason(n_params, d_f_chars)
    if reason is None and np.unique(d_f_chars).size == len(d_f_chars):
        reason = "no D_F has runs at two N: the shared slope of Appendix C is not identifiable"
    ln_n, ln_d_f, ln_d_t = np.log(n_params), np.log(d_f_chars), np.log(d_transferred)
    n = len(ln_n)
    rng = np.random.default_rng(seed)
    resamples = rng.multinomial(n, np.full(n, 1.0 / n), size=n_bootstrap).astype(float) if n else np.empty((0, 0))
    design = np.column_stack([np.ones(n), ln_d_f, ln_n])
    results = {}
    appendix_reason = reason
    huber_reason = not_identifiable_reason(n_params, d_f_chars)
    if appendix_reason is None:
        estimate = appendix_c_regression(ln_n, ln_d_f, ln_d_t - ln_d_f, np.ones((1, n)))[0]
        draws = appendix_c_regression(ln_n, ln_d_f, ln_d_t - ln_d_f, resamples)
        results["appendix_c"] = _law_block(estimate, draws, design, ln_d_t, {})
    else:
        results["appendix_c"] = {"identifiable": False, "reason": appendix_reason}
    if huber_reason is None:
        ols = _weighted_lstsq(design, ln_d_t, np.ones((1, n)))[0]
        residual = ln_d_t - design @ ols
        mad = float(np.median(np.abs(residual - np.median(residual))))
        delta = max(HUBER_TUNING * 1.4826 * mad, MIN_HUBER_DELTA)
        estimate = huber_regression(design, ln_d_t, np.ones((1, n)), delta)[0]
        draws = huber_regression(design, ln_d_t, resamples, delta)
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
    sources = {source: _fit_source(group, options.n_bootstrap, options.seed)
               for source, group in points.groupby("source")}
    draws = _pop_draws(sources)
    scratch_points = averaged[averaged["kind"] == "scratch"]
    result = {
        "options": asdict(options),
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


def _fit_source(points: pd.DataFrame, n_bootstrap: int, seed: int) -> dict[str, Any]:
    usable = points[points["status"] == "ok"]
    fits = fit_transfer_law(usable["n_params"].to_numpy(), usable["d_f_chars"].to_numpy(),
                            usable["d_transferred"].to_numpy(), n_bootstrap, seed)
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

    ``transfer_fit.json``: options; ``scratch`` per N (points, L_N fit, D(N) and its origin); ``sources`` per
    source (``appendix_c`` and ``huber`` blocks with k, alpha, beta, their 95% intervals, residuals, R^2 and
    derived quantities; point counts; ossification); ``points``; ``failed_runs``; ``compute_by_kind``.
    ``bootstrap.csv`` holds the bootstrap draws (for interval bands in the figures).
    """
    unknown = set(options) - {field.name for field in fields(FitOptions)}
    if unknown:
        raise FitError(f"unknown fit option(s) {sorted(unknown)}; allowed: {[f.name for f in fields(FitOptions)]}")
    result, draws = _fit(read_runs(runs_csv), FitOptions(**options))
    result["runs_csv"] = str(runs_csv)
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
