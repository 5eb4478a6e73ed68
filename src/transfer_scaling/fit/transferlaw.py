"""The law for transfer, D_T = k * D_F^alpha * N^beta (Hernandez et al. 2021), fitted to one source's points.

Two fits: Appendix C's (per D_F, logit of the transferred fraction against ln N with one shared slope, then the
intercepts against ln D_F) and a Huber regression of ln D_T on ln D_F and ln N. Both are batched over rows of
point weights, so that the point estimate and every bootstrap resample (``PointResamples``, drawn by
``bootstrap.Bootstrap``) are fitted by one call.

Only numpy: fitting a runs table must never import torch or deepspeed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np

HUBER_TUNING = 1.345
MIN_HUBER_DELTA = 1e-3
PARAMETERS = ("k", "alpha", "beta")
METHODS = ("appendix_c", "huber")


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
                     bootstrap: Callable[[np.ndarray], PointResamples] | None = None,
                     methods: tuple[str, ...] = METHODS) -> dict[str, dict]:
    """Both fits (or those of ``methods``) of D_T = k D_F^alpha N^beta to the usable points; with ``bootstrap`` (a
    fitted (ln k, alpha, beta) -> the resampled points of a world where that law holds, ``Bootstrap.source``),
    percentile intervals.

    The Huber scale delta is set once from the point estimate's residuals and kept for every resample.
    """
    huber_reason = not_identifiable_reason(n_params, d_f_chars)
    appendix_reason = huber_reason
    if appendix_reason is None and np.unique(d_f_chars).size == len(d_f_chars):
        appendix_reason = "no D_F has runs at two N: the shared slope of Appendix C is not identifiable"
    ln_n, ln_d_f, ln_d_t = np.log(n_params), np.log(d_f_chars), np.log(d_transferred)
    results = {"appendix_c": {"identifiable": False, "reason": appendix_reason},
               "huber": {"identifiable": False, "reason": huber_reason}}
    if appendix_reason is None and "appendix_c" in methods:
        results["appendix_c"] = _law_block(_appendix_c, ln_n, ln_d_f, ln_d_t, bootstrap, {})
    if huber_reason is None and "huber" in methods:
        design = _design(ln_n, ln_d_f)
        residual = ln_d_t - design @ _weighted_lstsq(design, ln_d_t, np.ones((1, ln_n.size)))[0]
        mad = float(np.median(np.abs(residual - np.median(residual))))
        delta = max(HUBER_TUNING * 1.4826 * mad, MIN_HUBER_DELTA)
        results["huber"] = _law_block(partial(_huber, delta=delta), ln_n, ln_d_f, ln_d_t, bootstrap,
                                      {"huber_delta": delta})
    return {method: block for method, block in results.items() if method in methods}


def exp_or_inf(value: float) -> float:
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
    block = {"identifiable": True, "k": exp_or_inf(ln_k), "ln_k": ln_k, "alpha": alpha, "beta": beta,
             "residuals_ln_d_transferred": residuals.tolist(),
             "r_squared": 1.0 - float((residuals**2).sum()) / total if total > 0 else math.nan,
             "n_bootstrap": int(len(draws)), "n_bootstrap_identifiable": int(len(good)), **extra}
    for index, name in enumerate(("ln_k", "alpha", "beta")):
        interval = np.percentile(good[:, index], [2.5, 97.5]).tolist() if len(good) else [math.nan, math.nan]
        block[f"{name}_ci"] = interval
    block["k_ci"] = [exp_or_inf(v) for v in block["ln_k_ci"]]
    block["bootstrap_draws"] = good
    return block


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
