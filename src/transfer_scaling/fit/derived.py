"""What a fitted law for transfer implies: the quantities derived from k, alpha and beta, each with its bootstrap
interval and a verdict on whether the study resolves it; where scratch training overtakes fine-tuning (ossification);
and the held-out check of the law on the largest size.

A derived quantity that a fitted law does not define (alpha <= 0: no trade-off against a 10x model) is null with a
``<name>_status`` saying why, and never stops the fit. Each quantity is also computed on every bootstrap replicate
of the law (``LawDraws``): ``<name>_ci`` is its 95% percentile interval and ``<name>_resolution`` is "resolved" or
"not_resolved: why" (``resolution``): undefined in more than 2.5% of the replicates, an interval that spans a sign
change (0 for a signed quantity, 1x for a ratio), one wider than two orders of magnitude, or an estimate outside its
own interval (the replicates do not centre on it: points near no transfer, which change status between replicates,
can do this). A reader is shown the number of a resolved quantity only, with its interval.

Only numpy, scipy and pandas: fitting a runs table must never import torch or deepspeed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from .scratch import ScratchCurves, scratch_law_loss
from .transferlaw import PARAMETERS, fit_transfer_law, transferred_data

LN10 = math.log(10.0)
UNDEFINED_SHARE = 0.025
"""A quantity undefined in more of the bootstrap replicates than this has no 95% interval: each tail of a percentile
interval holds 2.5% of them, so the undefined ones would decide where it ends."""
MAX_ORDERS = 2.0
"""An interval wider than this many orders of magnitude does not resolve the quantity (the issue's rule)."""
KINDS = ("signed", "ratio", "amount")
"""signed: a real number whose sign matters (alpha, beta); ratio: a positive multiple whose side of 1x matters (a
trade-off); amount: a positive quantity with no neutral value (D_T, a loss). Ratios and amounts are handled in
log10, so a replicate of 10^400 is a number, not an overflow."""


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


def ln_d_effective(ln_k: Any, alpha: Any, beta: Any, ln_n: Any, ln_d: Any) -> Any:
    """ln(D + k D^alpha N^beta), as a log-sum-exp so that no size overflows; element-wise."""
    return np.logaddexp(ln_d, ln_k + alpha * ln_d + beta * ln_n)


def ln_data_worth_of_10x_model(ln_k: Any, alpha: Any, beta: Any, ln_n: Any, ln_d_f: Any,
                               iterations: int = 200) -> np.ndarray:
    """ln X of ``data_worth_of_10x_model``, element-wise over laws (the estimate or every bootstrap replicate); NaN
    where alpha <= 0.

    Bisection in ln D: with alpha > 0, D_E grows with D, so the root is unique, and at it the larger of the two
    terms is at least half of D_E, which brackets it.
    """
    ln_k, alpha, beta, ln_n, ln_d_f = np.broadcast_arrays(*(np.asarray(v, float) for v in
                                                            (ln_k, alpha, beta, ln_n, ln_d_f)))
    growing = alpha > 0
    slope = np.where(growing, alpha, 1.0)
    target = ln_d_effective(ln_k, alpha, beta, ln_n + LN10, ln_d_f)
    half = target - math.log(2.0)
    low, high = np.minimum(half, (half - ln_k - beta * ln_n) / slope), target.copy()
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        above = ln_d_effective(ln_k, slope, beta, ln_n, middle) > target
        low, high = np.where(above, low, middle), np.where(above, middle, high)
        if np.all(high - low <= 4e-16 * np.maximum(np.abs(high), 1.0)):
            break
    return np.where(growing, 0.5 * (low + high) - ln_d_f, np.nan)


def data_worth_of_10x_model(k: float, alpha: float, beta: float, n_params: float, d_f_chars: float) -> float:
    """X such that the size-N model fine-tuned on X * D_F has the same D_E as the size-10N model on D_F.

    Solves X D_F + k (X D_F)^alpha N^beta = D_F + k D_F^alpha (10 N)^beta (``ln_data_worth_of_10x_model``); with
    alpha <= 0 (D_E first falls) or X beyond floating point, ``NotDefined``.
    """
    _require_growing(alpha)
    ln_x = float(ln_data_worth_of_10x_model(math.log(k), alpha, beta, math.log(n_params), math.log(d_f_chars)))
    return _exp_in_range(ln_x, alpha)


def data_worth_of_10x_model_equal_d_transferred(alpha: float, beta: float) -> float:
    """X with D_T(N, X D_F) = D_T(10 N, D_F): 10^(beta / alpha), the same at every N and D_F."""
    _require_growing(alpha)
    return _exp_in_range(beta / alpha * LN10, alpha)


# ---------------------------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class LawDraws:
    """A law's estimate and its bootstrap replicates, each (ln k, alpha, beta): ``draws`` (G, 3) are the resamples
    that identified the law, ``n_resamples`` counts them all (a resample that could not identify it has no value of
    any derived quantity)."""

    estimate: np.ndarray
    draws: np.ndarray
    n_resamples: int

    @classmethod
    def of_block(cls, block: dict[str, Any], draws: Any = None) -> LawDraws:
        """The law of a fit's ``appendix_c`` or ``huber`` block, with ``draws`` (G, 3), else the block's own
        ``bootstrap_draws`` (present while the fit runs; ``bootstrap.csv`` holds them afterwards)."""
        draws = block.get("bootstrap_draws") if draws is None else draws
        draws = np.empty((0, 3)) if draws is None else np.asarray(draws, float).reshape(-1, 3)
        n_resamples = block.get("n_bootstrap")
        return cls(np.array([block["ln_k"] if "ln_k" in block else math.log(block["k"]), block["alpha"],
                             block["beta"]], float), draws, int(len(draws) if n_resamples is None else n_resamples))

    def quantity(self, name: str, function: Callable[..., Any], kind: str,
                 causes: Callable[..., dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
        """``name`` (the estimate's value), ``<name>_ci``, ``<name>_undefined_share`` and ``<name>_resolution`` of
        a quantity ``function(ln_k, alpha, beta)`` (element-wise; log10 of the value for a ratio or an amount, NaN
        where undefined); ``causes(ln_k, alpha, beta)`` names the replicates where it is undefined, and why."""
        scaled = float(np.asarray(function(*self.estimate)))  # log10 for a ratio or an amount, as the values
        point = scaled if kind == "signed" else _power_of_ten(scaled)
        values = np.asarray(function(*self.draws.T), float) if len(self.draws) else np.empty(0)
        named = causes(*self.draws.T) if causes and len(self.draws) else {}
        return {name: point, **resolution(name, values, self.n_resamples, kind, named, estimate=scaled)}


def _power_of_ten(log10_value: float) -> float:
    """10^x, infinite (null in the JSON) beyond floating point, NaN for NaN."""
    with np.errstate(over="ignore"):
        return float(np.power(10.0, log10_value))


def resolution(name: str, values: np.ndarray, n_resamples: int, kind: str,
               causes: dict[str, np.ndarray] | None = None, estimate: float | None = None) -> dict[str, Any]:
    """The interval and verdict of one quantity from its values on the G identifiable replicates (log10 for a
    ratio or an amount, NaN where undefined) of ``n_resamples``.

    Not resolved, with the reason, where it has no replicates; where it is undefined in more than
    ``UNDEFINED_SHARE`` of them (``causes``: description -> mask over the G replicates, e.g. alpha <= 0, with the
    resamples that could not identify the law counted too); where its 95% interval spans a sign change (0 for a
    signed quantity, 1x for a ratio); where the interval is wider than ``MAX_ORDERS`` orders of magnitude; or where
    ``estimate`` (on the scale of ``values``) lies outside the interval, which a percentile interval cannot vouch for.
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    values = np.asarray(values, float)
    keys = (f"{name}_ci", f"{name}_undefined_share", f"{name}_resolution")
    if n_resamples <= 0:
        return dict(zip(keys, ([math.nan, math.nan], math.nan,
                               "not_resolved: no bootstrap replicates to give it an interval")))
    defined = np.isfinite(values)
    share = (n_resamples - defined.sum()) / n_resamples
    if share > UNDEFINED_SHARE:
        parts = [f"{why} in {mask.sum() / n_resamples:.0%}" for why, mask in (causes or {}).items() if mask.any()]
        if values.size < n_resamples:
            parts.append(f"the law not identifiable in {1 - values.size / n_resamples:.0%}")
        why = f" ({'; '.join(parts)})" if parts else ""
        return dict(zip(keys, ([math.nan, math.nan], share,
                               f"not_resolved: undefined in {share:.0%} of the {n_resamples} bootstrap replicates"
                               f"{why}")))
    low, high = np.percentile(values[defined], [2.5, 97.5])
    shown = f"[{_shown(low, kind)}, {_shown(high, kind)}]"
    interval = [low, high] if kind == "signed" else [_power_of_ten(low), _power_of_ten(high)]
    verdict = "resolved"
    if kind != "amount" and low <= 0 <= high:
        verdict = f"not_resolved: its 95% interval {shown} spans {'0' if kind == 'signed' else '1x'}"
    else:
        orders = high - low if kind != "signed" else _orders(low, high)
        if orders > MAX_ORDERS:
            verdict = (f"not_resolved: its 95% interval {shown} spans {orders:.1f} orders of magnitude (over "
                       f"{MAX_ORDERS:g})")
        elif estimate is not None and np.isfinite(estimate) and not low <= estimate <= high:
            # As many digits as it takes to tell the estimate from the end it lies beyond.
            digits = next((d for d in range(3, 8) if _shown(estimate, kind, d) not in (_shown(low, kind, d),
                                                                                       _shown(high, kind, d))), 8)
            verdict = (f"not_resolved: the estimate {_shown(estimate, kind, digits)} lies outside its 95% interval "
                       f"[{_shown(low, kind, digits)}, {_shown(high, kind, digits)}], so the bootstrap replicates do "
                       "not centre on it (points near no transfer, which change status between replicates, can do this)")
    return dict(zip(keys, (interval, share, verdict)))


def _orders(low: float, high: float) -> float:
    """Orders of magnitude between the ends of a signed interval on one side of 0."""
    ends = sorted((abs(low), abs(high)))
    return math.inf if ends[0] == 0 else math.log10(ends[1] / ends[0])


def _shown(value: float, kind: str, digits: int = 3) -> str:
    """An end of an interval as a reader sees it; a ratio or amount given in log10 past floating point as 10^x."""
    if kind == "signed":
        return f"{value:.{digits}g}"
    return f"{10.0 ** value:.{digits}g}" if value < 300 else f"10^{value:.0f}"


def _alpha_not_positive(ln_k: Any, alpha: Any, beta: Any) -> dict[str, np.ndarray]:
    return {"alpha <= 0": np.asarray(alpha) <= 0}


def _log10_transfer_ratio(ln_k: Any, alpha: Any, beta: Any, ln_n: float, ln_d_f: float) -> Any:
    """log10 of D_T / D_F = k D_F^(alpha - 1) N^beta."""
    return (ln_k + (alpha - 1.0) * ln_d_f + beta * ln_n) / LN10


def log10_ratio_10x_data_to_10x_model(ln_k: Any, alpha: Any, beta: Any, ln_n: float, ln_d_f: float) -> Any:
    """log10 of D_E(N, 10 D_F) / D_E(10 N, D_F): above 0 where 10x more fine-tuning data gives more effective data
    than a 10x larger model (D_E counts each model's own from-scratch characters)."""
    more_data = ln_d_effective(ln_k, alpha, beta, ln_n, ln_d_f + LN10)
    larger_model = ln_d_effective(ln_k, alpha, beta, ln_n + LN10, ln_d_f)
    return (more_data - larger_model) / LN10


def point_quantities(law: LawDraws, n_params: float, d_f_chars: float) -> dict[str, Any]:
    """At one (N, D_F): the multiplier 1 + D_T/D_F, the fraction D_T/D_E, the worth of a 10x model in fine-tuning
    data (equal D_E) and the effective-data ratio of 10x data to a 10x model, each with interval and verdict."""
    ln_n, ln_d_f = math.log(n_params), math.log(d_f_chars)
    ratio = lambda ln_k, alpha, beta: _log10_transfer_ratio(ln_k, alpha, beta, ln_n, ln_d_f)  # noqa: E731
    return {
        **law.quantity("multiplier", lambda *law_: np.logaddexp(0.0, ratio(*law_) * LN10) / LN10, "amount"),
        **law.quantity("fraction", lambda *law_: -np.logaddexp(0.0, -ratio(*law_) * LN10) / LN10, "amount"),
        **law.quantity("data_worth_of_10x_model_equal_d_effective",
                       lambda *law_: ln_data_worth_of_10x_model(*law_, ln_n, ln_d_f) / LN10, "ratio",
                       _alpha_not_positive),
        **law.quantity("d_effective_ratio_10x_data_to_10x_model",
                       lambda *law_: log10_ratio_10x_data_to_10x_model(*law_, ln_n, ln_d_f), "ratio"),
    }


def supports(quantities: dict[str, Any]) -> str:
    """What the effective-data ratio of 10x data to a 10x model supports: "more_data", "larger_model" or
    "not_resolved"."""
    if quantities.get("d_effective_ratio_10x_data_to_10x_model_resolution") != "resolved":
        return "not_resolved"
    return "more_data" if quantities["d_effective_ratio_10x_data_to_10x_model"] > 1 else "larger_model"


def parameter_resolutions(block: dict[str, Any]) -> dict[str, str]:
    """``<name>_resolution`` of k (an amount), alpha and beta (signed) from the block's bootstrap draws."""
    law = LawDraws.of_block(block)
    return {f"{name}_resolution": law.quantity(name, function, kind)[f"{name}_resolution"]
            for name, function, kind in (("k", lambda ln_k, alpha, beta: ln_k / LN10, "amount"),
                                         ("alpha", lambda ln_k, alpha, beta: alpha, "signed"),
                                         ("beta", lambda ln_k, alpha, beta: beta, "signed"))}


def decision_point(points: pd.DataFrame) -> tuple[float, float] | None:
    """The (N, D_F) at which the answer is stated: the largest fitted N and the fitted D_F nearest the middle (in
    ln D_F) of the fitted range; None without fitted points."""
    fitted = points[points["status"] == "ok"]
    if fitted.empty:
        return None
    d_f = np.unique(fitted["d_f_chars"].to_numpy(float))
    middle = 0.5 * (np.log(d_f[0]) + np.log(d_f[-1]))
    return float(fitted["n_params"].max()), float(d_f[np.argmin(np.abs(np.log(d_f) - middle))])


def derived_quantities(block: dict[str, Any], grid: pd.DataFrame) -> dict[str, Any]:
    """Multiplier, fraction and the worth of 10x model size on the observed (N, D_F) grid, the factors 10^alpha and
    10^beta, and the ``decision`` at ``decision_point``; each with its interval over the block's bootstrap draws."""
    k, alpha, beta = block["k"], block["alpha"], block["beta"]
    law = LawDraws.of_block(block)
    rows = []
    for n_params, d_f_chars in grid[["n_params", "d_f_chars"]].drop_duplicates().itertuples(index=False):
        ratio = transferred_data(k, alpha, beta, n_params, d_f_chars) / d_f_chars
        rows.append({"n_params": n_params, "d_f_chars": d_f_chars,
                     **point_quantities(law, n_params, d_f_chars),
                     "multiplier": 1.0 + ratio, "fraction": ratio / (1.0 + ratio),
                     **derived("data_worth_of_10x_model_equal_d_effective", data_worth_of_10x_model, k, alpha, beta,
                               n_params, d_f_chars)})
    place = decision_point(grid)
    decision = {"supports": "not_resolved", "reason": "no fitted point"}
    if place is not None:
        quantities = point_quantities(law, *place)
        decision = {"n_params": place[0], "d_f_chars": place[1], "supports": supports(quantities),
                    **{key: value for key, value in quantities.items()
                       if key.startswith("d_effective_ratio_10x_data_to_10x_model")}}
    return {**law.quantity("data_worth_of_10x_model_equal_d_transferred",
                           lambda ln_k, alpha, beta: np.where(alpha > 0, beta / np.where(alpha > 0, alpha, 1.0),
                                                              np.nan), "ratio", _alpha_not_positive),
            **derived("data_worth_of_10x_model_equal_d_transferred", data_worth_of_10x_model_equal_d_transferred,
                      alpha, beta),
            **law.quantity("d_transferred_factor_10x_data", lambda ln_k, alpha, beta: alpha, "ratio"),
            **law.quantity("d_transferred_factor_10x_model", lambda ln_k, alpha, beta: beta, "ratio"),
            "decision": decision, "grid": rows}


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
                        sizes: dict[float, str],
                        resampler: Callable[[pd.DataFrame], Callable[[np.ndarray], Any]] | None = None
                        ) -> dict[str, Any]:
    """Predict, then verify (issue 10): the law fitted on every size but the largest predicts the largest size's
    fine-tuned losses (D_E = D_F + D_T, then that size's scratch curve at D_E), to set against the measured ones.

    The loss is read off the measured scratch curve as each D_E was read off it (the fit's estimator), so a point on
    the law is predicted exactly; beyond the curve's D it comes from the fitted L_N (``extrapolated``). The largest
    errors count the points in the low-data regime (status other than high_data), where the law is claimed to hold.
    ``resampler`` (the smaller sizes' points -> their bootstrap, ``Bootstrap.source``) gives every predicted loss,
    error and the largest error an interval over the law's replicates.
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
    fitted = [others[column].to_numpy() for column in ("n_params", "d_f_chars", "d_transferred")]
    fits = fit_transfer_law(*fitted)
    method = next((name for name in ("appendix_c", "huber") if fits[name]["identifiable"]), None)
    if method is None:
        return {**head, "status": f"not_available: the law is not identifiable on the smaller sizes "
                                  f"({fits['huber']['reason']})"}
    block = fit_transfer_law(*fitted, resampler(others), (method,))[method] if resampler else fits[method]
    law = LawDraws.of_block(block)
    held = present[present["n_params"] == held_n]
    losses, extrapolated = _predicted_losses(law, curves[held_n], scratch[held_n]["law"],
                                             held["d_f_chars"].to_numpy(float))
    rows = [_predicted_point(block, law, point, losses[:, index], bool(extrapolated[index]))
            for index, point in enumerate(held.itertuples(index=False))]
    compared = np.array([row["status"] != "high_data" and math.isfinite(row["predicted_loss"]) for row in rows])
    measured = held["test_loss"].to_numpy(float)[compared]
    largest = {}
    if compared.any():
        errors = np.abs(losses[1:, compared] - measured) / measured
        largest = resolution("max_abs_error_percent", np.log10(100.0 * errors.max(axis=1)), law.n_resamples,
                             "amount")
    return {**head, "status": "ok", "method": method, **{name: block[name] for name in PARAMETERS},
            **{f"{name}_ci": block[f"{name}_ci"] for name in PARAMETERS},
            "fitted_n_params": sorted(others["n_params"].unique().tolist()), "points": rows,
            "max_abs_error": max((abs(row["predicted_loss"] - row["measured_loss"])
                                  for row, used in zip(rows, compared) if used), default=None),
            "max_abs_error_percent": max((abs(row["error_percent"]) for row, used in zip(rows, compared) if used),
                                         default=None), **largest}


def _predicted_losses(law: LawDraws, curve: ScratchCurves, scratch_law: dict[str, Any],
                      d_f_chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted losses (1 + G, points) of the law's estimate and each replicate, D_E read into the measured scratch
    curve, else (beyond its D) into the fitted L_N, else NaN; and whether the estimate's D_E lies beyond the curve
    (points,)."""
    ln_k, alpha, beta = np.vstack([law.estimate, law.draws]).T[:, :, None]
    d_effective = np.exp(ln_d_effective(ln_k, alpha, beta, math.log(curve.n_params), np.log(d_f_chars)[None, :]))
    losses = curve.estimated_loss_at(d_effective.ravel())[0].reshape(d_effective.shape)
    extrapolated = np.isnan(losses[0])
    if scratch_law["ok"]:
        losses = np.where(np.isnan(losses), scratch_law_loss(scratch_law, d_effective), losses)
    return losses, extrapolated


def _predicted_point(block: dict[str, Any], law: LawDraws, point: Any, losses: np.ndarray,
                     extrapolated: bool) -> dict[str, Any]:
    """One held-out point: its loss predicted by the law ``block`` and the scratch curve of its N (``losses``: the
    estimate's, then each replicate's), with the intervals of the predicted loss and of its error."""
    d_transferred = float(transferred_data(block["k"], block["alpha"], block["beta"], point.n_params, point.d_f_chars))
    predicted = float(losses[0])
    errors = 100.0 * (losses[1:] - point.test_loss) / point.test_loss
    finite = errors[np.isfinite(errors)]
    return {"d_f_chars": point.d_f_chars, "status": point.status, "measured_loss": point.test_loss,
            "predicted_d_transferred": d_transferred, "predicted_d_effective": point.d_f_chars + d_transferred,
            "predicted_loss": predicted, "extrapolated": extrapolated,
            "error_percent": 100.0 * (predicted - point.test_loss) / point.test_loss,
            "error_percent_ci": np.percentile(finite, [2.5, 97.5]).tolist() if finite.size else [math.nan, math.nan],
            **resolution("predicted_loss", np.log10(losses[1:]), law.n_resamples, "amount")}
