"""What a fitted law for transfer implies: the quantities derived from k, alpha and beta, where scratch training
overtakes fine-tuning (ossification), and the held-out check of the law on the largest size.

A derived quantity that a fitted law does not define (alpha <= 0: no trade-off against a 10x model) is null with a
``<name>_status`` saying why, and never stops the fit.

Only numpy, scipy and pandas: fitting a runs table must never import torch or deepspeed.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy.optimize import brentq

from .scratch import ScratchCurves, scratch_law_loss
from .transferlaw import PARAMETERS, fit_transfer_law, transferred_data


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


def held_out_prediction(points: pd.DataFrame, curves: dict[float, ScratchCurves], scratch: dict[float, dict],
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


def _predicted_point(block: dict[str, Any], curve: ScratchCurves, law: dict[str, Any], point: Any) -> dict[str, Any]:
    """One held-out point: its loss predicted by the law ``block`` and the scratch curve of its N."""
    d_transferred = float(transferred_data(block["k"], block["alpha"], block["beta"], point.n_params, point.d_f_chars))
    d_effective = point.d_f_chars + d_transferred
    predicted = curve.measured_loss_at(d_effective)
    extrapolated = math.isnan(predicted)
    if extrapolated and law["ok"]:
        predicted = scratch_law_loss(law, d_effective)
    return {"d_f_chars": point.d_f_chars, "status": point.status, "measured_loss": point.test_loss,
            "predicted_d_transferred": d_transferred, "predicted_d_effective": d_effective,
            "predicted_loss": predicted, "extrapolated": extrapolated,
            "error_percent": 100.0 * (predicted - point.test_loss) / point.test_loss}
