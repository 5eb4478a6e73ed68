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

The intervals of k, alpha and beta come from a bootstrap that redraws the noise of every point, scratch points
included, and keeps the points in place (``Bootstrap``): seeds within a point where it has several, a log-loss
residual of the fitted law where it has one. Each resample rebuilds the scratch curves, D_E, D_T, statuses and
both fits, so the error that one scratch curve shares with all the points read off it is counted.

A derived quantity that a fitted law does not define (alpha <= 0: no trade-off against a 10x model) is null with a
``<name>_status`` saying why, and never stops the fit; a table without fine-tuned runs still gets its scratch
curves, D(N) and joint law. Each source's law is also checked by predicting its largest size from the others.

Only numpy, scipy and pandas: fitting a runs table must never import torch or deepspeed.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy.interpolate import PchipInterpolator
from scipy.optimize import brentq, least_squares

from .config import TRAINING_KINDS
from .io import atomic_open, read_json, write_json
from .jointlaw import JointLawError, fit_chinchilla

logger = logging.getLogger("transfer_scaling.fitting")

REQUIRED_COLUMNS = ("kind", "source", "n_params", "data_chars", "test_loss")
FITTED_KINDS = ("scratch", "finetune")
ACCEPTED_KINDS = TRAINING_KINDS
"""A table holds the kinds of run the pipeline trains; pretraining runs count only for compute."""
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
                     bootstrap: Callable[[np.ndarray], PointResamples] | None = None) -> dict[str, dict]:
    """Both fits of D_T = k D_F^alpha N^beta to the usable points; with ``bootstrap`` (a fitted (ln k, alpha, beta)
    -> the resampled points of a world where that law holds, ``Bootstrap.source``), percentile intervals.

    The Huber scale delta is set once from the point estimate's residuals and kept for every resample.
    """
    huber_reason = not_identifiable_reason(n_params, d_f_chars)
    appendix_reason = huber_reason
    if appendix_reason is None and np.unique(d_f_chars).size == len(d_f_chars):
        appendix_reason = "no D_F has runs at two N: the shared slope of Appendix C is not identifiable"
    ln_n, ln_d_f, ln_d_t = np.log(n_params), np.log(d_f_chars), np.log(d_transferred)
    results = {"appendix_c": {"identifiable": False, "reason": appendix_reason},
               "huber": {"identifiable": False, "reason": huber_reason}}
    if appendix_reason is None:
        results["appendix_c"] = _law_block(_appendix_c, ln_n, ln_d_f, ln_d_t, bootstrap, {})
    if huber_reason is None:
        design = _design(ln_n, ln_d_f)
        residual = ln_d_t - design @ _weighted_lstsq(design, ln_d_t, np.ones((1, ln_n.size)))[0]
        mad = float(np.median(np.abs(residual - np.median(residual))))
        delta = max(HUBER_TUNING * 1.4826 * mad, MIN_HUBER_DELTA)
        results["huber"] = _law_block(partial(_huber, delta=delta), ln_n, ln_d_f, ln_d_t, bootstrap,
                                      {"huber_delta": delta})
    return results


def _exp(value: float) -> float:
    """e^value, infinite (null in the JSON) rather than an OverflowError for a wild ln k."""
    with np.errstate(over="ignore"):
        return float(np.exp(value))


def _design(ln_n: np.ndarray, ln_d_f: np.ndarray) -> np.ndarray:
    """Columns of ln D_T = ln k + alpha ln D_F + beta ln N."""
    return np.column_stack([np.ones(ln_n.size), ln_d_f, ln_n])


def _appendix_c(ln_n: np.ndarray, ln_d_f: np.ndarray, ln_d_t: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return appendix_c_regression(ln_n, ln_d_f, ln_d_t - ln_d_f, weights)


def _huber(ln_n: np.ndarray, ln_d_f: np.ndarray, ln_d_t: np.ndarray, weights: np.ndarray, delta: float) -> np.ndarray:
    return huber_regression(_design(ln_n, ln_d_f), ln_d_t, weights, delta)


def _law_block(regression: Callable[..., np.ndarray], ln_n: np.ndarray, ln_d_f: np.ndarray, ln_d_t: np.ndarray,
               bootstrap: Callable[[np.ndarray], PointResamples] | None, extra: dict) -> dict[str, Any]:
    """One method's fit: ``regression`` (ln N, ln D_F, ln D_T, weights (B, n)) -> (B, 3) of (ln k, alpha, beta)
    on the points, then on every resample of the world centred on that estimate."""
    estimate = regression(ln_n, ln_d_f, ln_d_t, np.ones((1, ln_n.size)))[0]
    if not np.all(np.isfinite(estimate)):
        return {"identifiable": False, "reason": "the points are collinear in (ln N, ln D_F)"}
    draws = np.empty((0, 3))
    if bootstrap is not None:
        resamples = bootstrap(estimate)
        draws = regression(np.log(resamples.n_params), np.log(resamples.d_f_chars), resamples.ln_d_transferred,
                           resamples.weights)
        extra = {**extra, "bootstrap_finetune_noise": resamples.noise,
                 "bootstrap_finetune_noise_sd": resamples.noise_sd}
    ln_k, alpha, beta = (float(v) for v in estimate)
    residuals = ln_d_t - _design(ln_n, ln_d_f) @ estimate
    total = float(((ln_d_t - ln_d_t.mean()) ** 2).sum())
    good = draws[np.all(np.isfinite(draws), axis=1)]
    block = {"identifiable": True, "k": _exp(ln_k), "ln_k": ln_k, "alpha": alpha, "beta": beta,
             "residuals_ln_d_transferred": residuals.tolist(),
             "r_squared": 1.0 - float((residuals**2).sum()) / total if total > 0 else math.nan,
             "n_bootstrap": int(len(draws)), "n_bootstrap_identifiable": int(len(good)), **extra}
    for index, name in enumerate(("ln_k", "alpha", "beta")):
        interval = np.percentile(good[:, index], [2.5, 97.5]).tolist() if len(good) else [math.nan, math.nan]
        block[f"{name}_ci"] = interval
    block["k_ci"] = [_exp(v) for v in block["ln_k_ci"]]
    block["bootstrap_draws"] = good
    return block


# ---------------------------------------------------------------------------------------------- bootstrap


@dataclass
class PointResamples:
    """One source's fine-tuned points in every resample (rows of ``weights``, ``ln_d_transferred``).

    A point's weight is 1 where it is fitted in that resample and 0 where its status there is not ``ok`` (its ln D_T
    is 0 there); ``noise`` says what the fine-tuned losses were redrawn with (``noise_pool``), ``noise_sd`` its
    spread in ln L.
    """

    n_params: np.ndarray
    d_f_chars: np.ndarray
    weights: np.ndarray
    ln_d_transferred: np.ndarray
    noise: str
    noise_sd: float | None


def seed_deviations(run_cell: np.ndarray, run_loss: np.ndarray) -> np.ndarray:
    """ln L of each seed minus the mean ln L of its point, for the points with n > 1 seeds, scaled by
    sqrt(n / (n - 1)) so that their spread estimates that of a single seed."""
    n_seeds = np.bincount(run_cell)
    log_loss = np.log(run_loss)
    centred = log_loss - (np.bincount(run_cell, weights=log_loss) / np.maximum(n_seeds, 1))[run_cell]
    several = n_seeds[run_cell] > 1
    return (centred * np.sqrt(n_seeds / np.maximum(n_seeds - 1, 1))[run_cell])[several]


def noise_pool(deviations: np.ndarray, residuals: Callable[[], np.ndarray]) -> tuple[str, np.ndarray]:
    """The log-loss noise that one kind of point is redrawn with: its seeds' deviations where some point has
    several seeds, else the residuals of the fitted law (``residuals()``, as one seed has no spread of its own)."""
    if deviations.size:
        return "seeds", deviations
    pool = residuals()
    return ("residuals" if pool.size else "none"), pool


def redraw_cells(rng: np.random.Generator, centre: np.ndarray, n_seeds: np.ndarray, pool: np.ndarray,
                 n_resamples: int) -> np.ndarray:
    """(resamples, cells) losses: each cell (a point: an N and a D) is ``centre``, its loss in the bootstrap
    world, times the mean of e^d over its n seeds, each d drawn from ``pool`` (``noise_pool``).

    The pool gathers the noise of all points of a kind, so that a point's spread does not rest on its own two or
    three seeds: over 100 synthetic tables of 3 seeds, redrawing each point's own seeds (variances of 2 degrees of
    freedom) covered alpha and beta in 88-92% of them, the pool in 91-93%.
    """
    slot_cell = np.repeat(np.arange(centre.size), n_seeds)
    shape = (n_resamples, slot_cell.size)
    noise = np.exp(rng.choice(pool, shape)) if pool.size else np.ones(shape)
    return centre * (noise @ np.eye(centre.size)[slot_cell]) / np.maximum(n_seeds, 1)


def _dof_scale(n_points: int, n_fitted: int) -> float:
    """sqrt(n / (n - p)): the residuals of p fitted parameters on n points understate the noise by that factor."""
    return math.sqrt(n_points / (n_points - n_fitted)) if n_points > n_fitted else 1.0


def _sd(pool: np.ndarray) -> float | None:
    return float(np.sqrt(np.mean(pool**2))) if pool.size else None


class Bootstrap:
    """Resampled tables drawn from a world in which the fitted laws hold, for the intervals of k, alpha and beta.

    Each point (a cell: kind, source, N, D) keeps its place and its number of seeds; only their noise is redrawn
    (``redraw_cells``). In the world, a scratch curve follows its fitted L_N, and a fitted fine-tuned point lies at
    L_N(D_F + D_T) of the law being bootstrapped. The noise is the seeds' where points have several; with one
    seed, the scratch points' residuals against L_N, pooled over N, and the fitted fine-tuned points' against the
    loss that law predicts on the measured scratch curve (these also hold some of the scratch noise, so with one
    seed the intervals err wide). Drawing the runs of an N instead left out a third of a one-seed D grid per
    resample, and beta's interval came out 1.5-2.2x as wide as the spread of its estimates over replicate tables.
    The resampled scratch curves are drawn once and shared by every source and both methods; every resample
    rebuilds D_E, D_T, statuses and the fit as the point estimate does.
    """

    def __init__(self, runs: pd.DataFrame, curves: dict[float, ScratchCurve], scratch: dict[float, dict],
                 points: pd.DataFrame, options: FitOptions):
        self.rng = np.random.default_rng(options.seed)
        self.curves, self.scratch, self.options = curves, scratch, options
        ok = runs[runs["status"] == "ok"]
        self.finetune = ok[ok["kind"] == "finetune"]
        scratch_runs = {n: group for n, group in ok[ok["kind"] == "scratch"].groupby("n_params")}
        self.seeds = {n: np.bincount(np.searchsorted(curve.d_chars, scratch_runs[n]["data_chars"].to_numpy()),
                                     minlength=curve.d_chars.size) for n, curve in curves.items()}
        deviations = [seed_deviations(np.searchsorted(curves[n].d_chars, group["data_chars"].to_numpy()),
                                      group["test_loss"].to_numpy()) for n, group in scratch_runs.items()]
        noise, pool = noise_pool(np.concatenate([np.zeros(0), *deviations]), self._scratch_residuals)
        self.resampled = {n: self._resample_curve(n, pool)
                          for n in sorted(points.loc[points["status"] != "failed", "n_params"].unique())}
        counts = np.concatenate([np.zeros(0, int), *self.seeds.values()])
        self.summary = {"unit": "points: their seeds' noise redrawn around the fitted laws (seed deviations, or "
                                "residuals of the fitted law where points have one seed)",
                        "n_resamples": options.n_bootstrap, "scratch_cells_several_seeds": int((counts > 1).sum()),
                        "scratch_cells_one_seed": int((counts == 1).sum()), "scratch_noise": noise,
                        "scratch_noise_sd": _sd(pool)}

    def world_loss(self, n_params: float, d_chars: Any) -> np.ndarray:
        """The loss at N and D (an array) in the bootstrap world: the fitted L_N, else the measured curve (NaN
        outside its D)."""
        d_chars = np.atleast_1d(np.asarray(d_chars, float))
        if self.scratch[n_params]["law"]["ok"]:
            return scratch_law_loss(self.scratch[n_params]["law"], d_chars)
        return np.array([self.curves[n_params].loss_at(d) for d in d_chars])

    def _scratch_residuals(self) -> np.ndarray:
        """ln L - ln L_N(D) of the one-seed scratch points, pooled over the N with a fitted L_N."""
        pooled, n_points, n_fitted = [], 0, 0
        for n_params, summary in self.scratch.items():
            if summary["law"]["ok"]:
                curve = self.curves[n_params]
                pooled.append(np.log(curve.test_loss / self.world_loss(n_params, curve.d_chars)))
                n_points, n_fitted = n_points + curve.d_chars.size, n_fitted + 3
        return np.concatenate([np.zeros(0), *pooled]) * _dof_scale(n_points, n_fitted)

    def _resample_curve(self, n_params: float, pool: np.ndarray) -> ScratchResamples:
        """The scratch curve of N in every resample; a curve without L_N keeps its measured points as centres
        (a conservative world: they carry their own noise and a drawn one)."""
        curve = self.curves[n_params]
        centre = self.world_loss(n_params, curve.d_chars) if self.scratch[n_params]["law"]["ok"] else curve.test_loss
        test_loss = redraw_cells(self.rng, centre, self.seeds[n_params], pool, self.options.n_bootstrap)
        return ScratchResamples(curve.d_chars, test_loss, self.options.tolerance, self.options.low_data_fraction)

    def source(self, source: str, points: pd.DataFrame) -> Callable[[np.ndarray], PointResamples]:
        """The resampler of one source's fine-tuned points, for ``fit_transfer_law``."""
        cells = points[points["status"] != "failed"].reset_index(drop=True)
        runs = self.finetune[self.finetune["source"] == source]
        keys = cells[["n_params", "d_f_chars"]].rename(columns={"d_f_chars": "data_chars"}).reset_index()
        run_cell = runs[["n_params", "data_chars"]].merge(keys, how="left")["index"].to_numpy(int)
        return partial(self._resample_source, cells, seed_deviations(run_cell, runs["test_loss"].to_numpy()))

    def _resample_source(self, cells: pd.DataFrame, deviations: np.ndarray, estimate: np.ndarray) -> PointResamples:
        """Redraw the fine-tuned cells around the law ``estimate`` (ln k, alpha, beta) and read each resampled
        point off its N's resampled scratch curve."""
        n_params, d_f_chars = cells["n_params"].to_numpy(float), cells["d_f_chars"].to_numpy(float)
        observed = cells["test_loss"].to_numpy(float)
        d_effective = d_f_chars + transferred_data(_exp(estimate[0]), estimate[1], estimate[2], n_params, d_f_chars)
        world = np.array([self.world_loss(n, d)[0] for n, d in zip(n_params, d_effective)])
        fitted = (cells["status"] == "ok").to_numpy()

        def residuals() -> np.ndarray:
            measured = np.array([self.curves[n].loss_at(d) for n, d in zip(n_params, d_effective)])
            return np.log(observed / measured)[fitted & np.isfinite(measured)] * _dof_scale(int(fitted.sum()), 3)

        noise, pool = noise_pool(deviations, residuals)
        centre = np.where(fitted & np.isfinite(world), world, observed)
        test_loss = redraw_cells(self.rng, centre, cells["n_seeds"].to_numpy(), pool, self.options.n_bootstrap)
        d_effective, slope, limit = (np.full(test_loss.shape, np.nan) for _ in range(3))
        range_status = np.full(test_loss.shape, "ok", dtype=object)
        for n, columns in cells.groupby("n_params").indices.items():
            curve = self.resampled[n]
            d_effective[:, columns], slope[:, columns], range_status[:, columns] = curve.effective_data(
                test_loss[:, columns])
            limit[:, columns] = curve.low_data_limit[:, None]
        d_transferred = d_effective - d_f_chars
        status = point_status(range_status.astype(str), slope, d_transferred, d_f_chars, limit,
                              self.options.slope_tolerance)
        in_fit = status == "ok"
        return PointResamples(n_params, d_f_chars, in_fit.astype(float), np.log(np.where(in_fit, d_transferred, 1.0)),
                              noise, _sd(pool))


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


class NotDefined(ValueError):
    """A derived quantity that does not exist for a fitted law (no crossing, an infinite trade-off); says why."""


def derived(name: str, quantity: Callable[..., float], *args: float) -> dict[str, Any]:
    """``{name: value, name_status: "ok"}``, or ``{name: None, name_status: "not_defined: why"}`` where the
    quantity does not exist for this law: one such quantity must never stop the fit of every source."""
    try:
        return {name: quantity(*args), f"{name}_status": "ok"}
    except NotDefined as reason:
        return {name: None, f"{name}_status": f"not_defined: {reason}"}


def _require_growing(alpha: float) -> None:
    if not alpha > 0:
        raise NotDefined(f"alpha = {alpha:.3g} <= 0: D_T does not grow with D_F, so no amount of fine-tuning data "
                         "trades against a 10x model")


def _exp_in_range(ln_value: float, alpha: float) -> float:
    """e^ln_value, or NotDefined beyond floating point (an alpha near 0 makes the trade-off explode)."""
    if not -700.0 < ln_value < 700.0:
        raise NotDefined(f"the trade-off is e^{ln_value:.4g}, beyond floating point: alpha = {alpha:.3g} is too "
                         "close to 0")
    return math.exp(ln_value)


def _ln_d_effective(ln_k: float, alpha: float, beta: float, ln_n: float, ln_d: float) -> float:
    """ln(D + k D^alpha N^beta), as a log-sum-exp so that no size overflows."""
    return float(np.logaddexp(ln_d, ln_k + alpha * ln_d + beta * ln_n))


def data_worth_of_10x_model(k: float, alpha: float, beta: float, n_params: float, d_f_chars: float) -> float:
    """X such that the size-N model fine-tuned on X * D_F has the same D_E as the size-10N model on D_F.

    Solves X D_F + k (X D_F)^alpha N^beta = D_F + k D_F^alpha (10 N)^beta in ln D. With alpha > 0, D_E grows with
    D, so the root is unique, and at it the larger of the two terms is at least half of D_E, which brackets it;
    with alpha <= 0 (D_E first falls) or X beyond floating point, ``NotDefined``.
    """
    _require_growing(alpha)
    ln_k, ln_n, ln_d_f = math.log(k), math.log(n_params), math.log(d_f_chars)
    target = _ln_d_effective(ln_k, alpha, beta, ln_n + math.log(10.0), ln_d_f)
    half = target - math.log(2.0)
    low = min(half, (half - ln_k - beta * ln_n) / alpha)
    ln_d = brentq(lambda x: _ln_d_effective(ln_k, alpha, beta, ln_n, x) - target, low, target, xtol=1e-12)
    return _exp_in_range(ln_d - ln_d_f, alpha)


def data_worth_of_10x_model_equal_d_transferred(alpha: float, beta: float) -> float:
    """X with D_T(N, X D_F) = D_T(10 N, D_F): 10^(beta / alpha), the same at every N and D_F."""
    _require_growing(alpha)
    return _exp_in_range(beta / alpha * math.log(10.0), alpha)


def derived_quantities(block: dict[str, Any], grid: pd.DataFrame) -> dict[str, Any]:
    """Multiplier, fraction and the worth of 10x model size on the observed (N, D_F) grid."""
    k, alpha, beta = block["k"], block["alpha"], block["beta"]
    rows = []
    for n_params, d_f_chars in grid[["n_params", "d_f_chars"]].drop_duplicates().itertuples(index=False):
        ratio = transferred_data(k, alpha, beta, n_params, d_f_chars) / d_f_chars
        rows.append({"n_params": n_params, "d_f_chars": d_f_chars, "multiplier": 1.0 + ratio,
                     "fraction": ratio / (1.0 + ratio),
                     **derived("data_worth_of_10x_model_equal_d_effective", data_worth_of_10x_model, k, alpha, beta,
                               n_params, d_f_chars)})
    return {**derived("data_worth_of_10x_model_equal_d_transferred", data_worth_of_10x_model_equal_d_transferred,
                      alpha, beta), "grid": rows}


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


# ---------------------------------------------------------------------------------------------- predict, then verify


def held_out_prediction(points: pd.DataFrame, curves: dict[float, ScratchCurve], scratch: dict[float, dict],
                        sizes: dict[float, str]) -> dict[str, Any]:
    """Predict, then verify (issue 10): the law fitted on every size but the largest predicts the largest size's
    fine-tuned losses (D_E = D_F + D_T, then that size's scratch curve at D_E), to set against the measured ones.

    The loss is read off the measured scratch curve, the one each D_E was read off, so a point on the law is
    predicted exactly; beyond the curve's D it comes from the fitted L_N (``extrapolated``). The largest errors
    count the points in the low-data regime (status other than high_data), where the law is claimed to hold.
    """
    present = points[points["status"] != "failed"]
    if present.empty:
        return {"status": "not_available: no fine-tuned point has a successful run"}
    held_n = float(present["n_params"].max())
    head = {"size": sizes.get(held_n), "n_params": held_n}
    others = points[(points["status"] == "ok") & (points["n_params"] < held_n)]
    if others["n_params"].nunique() < 2:
        return {**head, "status": f"not_available: {others['n_params'].nunique()} smaller size(s) with fitted points; "
                                  "predicting another size takes 2"}
    fits = fit_transfer_law(others["n_params"].to_numpy(), others["d_f_chars"].to_numpy(),
                            others["d_transferred"].to_numpy())
    method = next((name for name in ("appendix_c", "huber") if fits[name]["identifiable"]), None)
    if method is None:
        return {**head, "status": f"not_available: the law is not identifiable on the smaller sizes "
                                  f"({fits['huber']['reason']})"}
    block = fits[method]
    rows = [_predicted_point(block, curves[held_n], scratch[held_n]["law"], point)
            for point in present[present["n_params"] == held_n].itertuples(index=False)]
    compared = [row for row in rows if row["status"] != "high_data" and math.isfinite(row["predicted_loss"])]
    return {**head, "status": "ok", "method": method, **{name: block[name] for name in PARAMETERS},
            "fitted_n_params": sorted(others["n_params"].unique().tolist()), "points": rows,
            "max_abs_error": max((abs(row["predicted_loss"] - row["measured_loss"]) for row in compared), default=None),
            "max_abs_error_percent": max((abs(row["error_percent"]) for row in compared), default=None)}


def _predicted_point(block: dict[str, Any], curve: ScratchCurve, law: dict[str, Any], point: Any) -> dict[str, Any]:
    """One held-out point: its loss predicted by the law ``block`` and the scratch curve of its N."""
    d_transferred = float(transferred_data(block["k"], block["alpha"], block["beta"], point.n_params, point.d_f_chars))
    d_effective = point.d_f_chars + d_transferred
    predicted = curve.loss_at(d_effective)
    extrapolated = math.isnan(predicted)
    if extrapolated and law["ok"]:
        predicted = scratch_law_loss(law, d_effective)
    return {"d_f_chars": point.d_f_chars, "status": point.status, "measured_loss": point.test_loss,
            "predicted_d_transferred": d_transferred, "predicted_d_effective": d_effective,
            "predicted_loss": predicted, "extrapolated": extrapolated,
            "error_percent": 100.0 * (predicted - point.test_loss) / point.test_loss}


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
    bootstrap = Bootstrap(runs, curves, scratch, points, options)
    sizes = _size_labels(runs)
    sources = {source: _fit_source(group, bootstrap.source(source, group), curves, scratch, sizes)
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


def joint_law_diagnostic(scratch: pd.DataFrame) -> dict[str, Any]:
    """Chinchilla's and Kaplan's joint L(N, D) fitted to the scratch points: a diagnostic of how well one
    smooth law describes the runs, never used to compute D_E (the paper found it too poor to invert)."""
    try:
        fit = fit_chinchilla(scratch["n_params"], scratch["data_chars"], scratch["test_loss"])
    except JointLawError as error:
        return {"identifiable": False, "reason": str(error)}
    return {"identifiable": True, "n_params": scratch["n_params"].tolist(), "d_chars": scratch["data_chars"].tolist(),
            "test_loss": scratch["test_loss"].tolist(), **fit}


def _fit_source(points: pd.DataFrame, bootstrap: Callable[[np.ndarray], PointResamples],
                curves: dict[float, ScratchCurve], scratch: dict[float, dict],
                sizes: dict[float, str]) -> dict[str, Any]:
    usable = points[points["status"] == "ok"]
    fits = fit_transfer_law(usable["n_params"].to_numpy(), usable["d_f_chars"].to_numpy(),
                            usable["d_transferred"].to_numpy(), bootstrap)
    for block in fits.values():
        if block["identifiable"]:
            block["derived"] = derived_quantities(block, points)
    counts = points["status"].value_counts()
    return {**fits, "n_points_used": int(len(usable)),
            "n_points_excluded": {status: int(counts.get(status, 0)) for status in POINT_STATUSES if status != "ok"},
            "ossification": ossification(points),
            "held_out_prediction": held_out_prediction(points, curves, scratch, sizes)}


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
    L_N fit, D(N) and its origin); ``sources`` per source (``appendix_c`` and ``huber`` blocks with k, alpha, beta,
    their 95% intervals, how many resamples could identify them, residuals, R^2 and derived quantities, each with
    its ``<name>_status``; point counts; ossification; ``held_out_prediction``); ``points``; ``failed_runs``;
    ``compute_by_kind``; ``joint_law``. ``bootstrap.csv`` holds the identifiable bootstrap draws (for interval
    bands in the figures).
    """
    unknown = set(options) - {field.name for field in fields(FitOptions)}
    if unknown:
        raise FitError(f"unknown fit option(s) {sorted(unknown)}; allowed: {[f.name for f in fields(FitOptions)]}")
    result, draws = _fit(read_runs(runs_csv), FitOptions(**options))
    result["runs_csv"] = str(runs_csv)
    if result["transfer_law_status"] != "ok":
        logger.warning("%s", result["transfer_law_status"])
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
    answer.update(derived("data_worth_of_10x_model_equal_d_effective", data_worth_of_10x_model, k, alpha, beta,
                          n_params, d_f_chars))
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
