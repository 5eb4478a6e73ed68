"""Laws over the pretraining data D_p, after Isik et al. (2024), "Scaling Laws for Downstream Task Performance".

For a fixed fine-tuning task, the downstream cross-entropy follows L(D_p) = E + A / D_p^alpha and a
downstream score (BLEU, chrF, exact match) follows the log-law f(D_p) = (log(A * D_p^alpha))^beta. Both are
fitted as the paper does, with a Huber loss on log values and L-BFGS from a grid of starts, on the smallest D_p
and checked by predicting the largest ones. Isik et al.'s warning is that the two can disagree: with a poorly
aligned pretraining distribution the score stalls or falls while the cross-entropy keeps improving, so both
are reported side by side with a verdict. chrF is fitted and judged exactly as BLEU is, beside it: it still
moves where small models' BLEU sits at 0 to 0.4, below resolution.

The Huber threshold on log values is the joint law's HUBER_DELTA (1e-3), so residuals of a few percent, the
scores' noise, fall in its linear, outlier-robust part. LOSS_RTOL, SCORE_RTOL and CHRF_RTOL set how much a
trend must gain not to stall, and how far it may step back and still count as monotone.

Parameterisations keep every law well defined during the search: the loss law is
log L = LSE(a - alpha ln D_p, e) with A = e^a, E = e^e (both positive, as in Chinchilla); the score law is
log f = beta * (ln alpha + ln(ln D_p - c)) with c = min ln D_p(fit) - e^g, so that log(A D_p^alpha) =
alpha (ln D_p - c) stays positive on the fitted points (A = e^(-alpha c)). Only numpy and scipy.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..io import read_table, write_json
from .study import load_fit, n_key, to_jsonable
from .jointlaw import HUBER_DELTA, grid_then_polish, huber, lse_with_shares
from .scratch import ScratchCurves, classify_point

logger = logging.getLogger("transfer_scaling.dplaw")

LOSS_RTOL = 0.005
"""A loss may rise by 0.5% between neighbouring D_p and still count as monotone: about 0.01 nats at the
~2 nats/char of small byte-level models, the low end of the seed-to-seed spread measured here."""
SCORE_RTOL = 0.05
"""A score may fall by 5% of its largest value between neighbouring D_p and still count as monotone: BLEU
and exact match over a few hundred greedy completions move by a few percent on single flipped lines."""
CHRF_RTOL = 0.02
"""chrF's SCORE_RTOL, tighter because chrF pools character n-grams over every task: one line flipping from
wrong to right moves it by about (100 / n_tasks) x the part of the line it had wrong, ~0.4 points or ~1% of a
chrF of 30-40 at 200 tasks (an estimate from that arithmetic, not a measured seed spread). 5% would call
stalled the small-scale gains chrF is there to resolve; 2% still allows a couple of flipped lines."""
TABLE_COLUMNS = ("source", "n_params", "d_f_chars", "d_p_tokens", "test_loss", "bleu", "chrf", "exact_match")
SCORES = ("bleu", "chrf", "exact_match")
GROUP_KEYS = ["source", "n_params", "d_f_chars"]
N_POLISH = 2
POLISH_ITERATIONS = 100
GTOL_CONVERGED = 1e-6


class DPLawError(ValueError):
    """Points that cannot identify a D_p law; the message names the value or count at fault."""


LogLaw = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""(theta (S, P), x (n,)) -> (predicted log values (S, n), their Jacobian (S, n, P))."""


@dataclass(frozen=True)
class Law:
    params: tuple[str, ...]
    grid: np.ndarray
    log_law: LogLaw
    bounds: tuple[tuple[float, float], ...]
    """Box for the polish: wide enough for any sensible law, narrow enough to end a drift along a flat valley."""


def _loss_log_law(theta: np.ndarray, ln_d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log L = LSE(a - alpha ln D, e) for theta = (a, e, alpha)."""
    a, e, alpha = (theta[:, i : i + 1] for i in range(3))
    log_loss, (share_power, share_e) = lse_with_shares(a - alpha * ln_d, e)
    return log_loss, np.stack([share_power, share_e, -share_power * ln_d], axis=-1)


def _zero_offset(g: Any) -> Any:
    """e^g, the e-folds from the smallest fitted D_p down to d_p_zero, clipped so logs stay finite."""
    return np.exp(np.clip(g, -30.0, 50.0))


def _score_log_law(theta: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log f = beta (ln alpha + ln(u + e^g)) for theta = (ln alpha, g, beta), u = ln D - min ln D(fit) >= 0."""
    ln_alpha, g, beta = (theta[:, i : i + 1] for i in range(3))
    offset = _zero_offset(g)
    z = u + offset
    inner = ln_alpha + np.log(z)
    jacobian = np.stack([np.broadcast_to(beta, z.shape), beta * offset / z, inner], axis=-1)
    return beta * inner, jacobian


LOSS_LAW = Law(("a", "e", "alpha"), np.array(list(itertools.product(
    np.arange(0.0, 25.1, 5.0), np.arange(-1.0, 1.1, 0.5), np.arange(0.0, 2.1, 0.5)))), _loss_log_law,
    ((-50.0, 100.0), (-20.0, 20.0), (0.0, 10.0)))
SCORE_LAW = Law(("ln_alpha", "g", "beta"), np.array(list(itertools.product(
    np.log([0.1, 0.3, 1.0, 3.0]), [-2.0, 0.0, 1.0, 2.0, 3.0], [-1.0, 0.5, 1.0, 2.0, 3.0]))), _score_log_law,
    ((-20.0, 5.0), (-20.0, 8.0), (-20.0, 20.0)))


def _objective(law: Law, x: np.ndarray, log_y: np.ndarray, delta: float):
    """Huber loss of log values summed over points, and its gradient, for each row of theta."""

    def objective(theta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        predicted, jacobian = law.log_law(theta, x)
        loss, slope = huber(predicted - log_y, delta)
        return loss.sum(1), np.einsum("sn,snp->sp", slope, jacobian)

    return objective


def _fit_law(law: Law, x: np.ndarray, log_y: np.ndarray, delta: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Every start of the grid by batched L-BFGS, then the best few polished by scipy's L-BFGS-B within the
    law's bounds (``jointlaw.grid_then_polish``, as the joint law is fitted).

    The polish is capped at POLISH_ITERATIONS: points the law cannot describe (a falling or flat score) leave
    a flat valley the optimiser would follow for seconds; ``converged`` False flags such fits. A stop on a
    failed line search with a vanishing gradient counts as converged: it is the Huber objective's optimum.
    """
    began = time.perf_counter()
    best, _ = grid_then_polish(_objective(law, x, log_y, delta), law.grid, N_POLISH, law.bounds, POLISH_ITERATIONS)
    converged = bool(best.status != 1 and np.max(np.abs(best.jac)) < GTOL_CONVERGED)
    return best.x, {"huber_delta": delta, "objective": float(best.fun), "converged": converged,
                    "n_starts": len(law.grid), "fit_seconds": time.perf_counter() - began}


def _as_points(d_p: Any, values: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite 1-D arrays sorted by D_p (stable), D_p > 0; errors name the offending entry."""
    d_p, values = np.asarray(d_p, float).ravel(), np.asarray(values, float).ravel()
    if d_p.size != values.size:
        raise DPLawError(f"d_p has {d_p.size} values but {name} has {values.size}")
    bad = np.flatnonzero(~(np.isfinite(d_p) & (d_p > 0)))
    if bad.size:
        raise DPLawError(f"d_p[{bad[0]}] = {float(d_p[bad[0]])}: pretraining data must be finite and positive")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise DPLawError(f"{name}[{bad[0]}] = {float(values[bad[0]])}: values must be finite")
    order = np.argsort(d_p, kind="stable")
    return d_p[order], values[order]


def _split(d_p: Any, values: Any, n_fit: int, name: str, law: Law) -> tuple[np.ndarray, np.ndarray]:
    """Sorted points after checking that the ``n_fit`` smallest can identify the law's parameters."""
    d_p, values = _as_points(d_p, values, name)
    n_params = len(law.params)
    if isinstance(n_fit, bool) or not isinstance(n_fit, (int, np.integer)) or not n_params <= n_fit <= d_p.size:
        raise DPLawError(f"n_fit = {n_fit!r}: must be an integer from {n_params} (the law has {n_params} "
                         f"parameters {list(law.params)}) to the number of points ({d_p.size})")
    distinct = np.unique(d_p[:n_fit]).size
    if distinct < n_params:
        raise DPLawError(f"the {n_fit} smallest points cover {distinct} distinct D_p; at least {n_params} are "
                         f"needed for {n_params} parameters")
    nonpositive = np.flatnonzero(values[:n_fit] <= 0)
    if nonpositive.size:
        raise DPLawError(f"{name} = {float(values[nonpositive[0]])} at D_p = {d_p[nonpositive[0]]:g}: the law is "
                         "fitted on log values, which needs every fitted value > 0")
    return d_p, values


def _prediction_report(d_p: np.ndarray, observed: np.ndarray, predicted: np.ndarray, n_fit: int) -> dict[str, Any]:
    """Fitted residuals and, for each held-out point, the absolute and relative prediction error."""
    error = predicted - observed
    relative = np.divide(error, np.abs(observed), out=np.full_like(error, np.nan), where=observed != 0)
    held_out = [{"d_p": d, "observed": o, "predicted": p, "abs_error": abs(e), "rel_error": abs(r)}
                for d, o, p, e, r in zip(d_p[n_fit:], observed[n_fit:], predicted[n_fit:], error[n_fit:],
                                         relative[n_fit:])]
    return {
        "n_fit": n_fit,
        "fit_points": {"d_p": d_p[:n_fit], "observed": observed[:n_fit], "predicted": predicted[:n_fit]},
        "held_out": held_out,
        "max_abs_error_held_out": float(np.max(np.abs(error[n_fit:]))) if held_out else None,
        "max_rel_error_held_out": float(np.nanmax(np.abs(relative[n_fit:]))) if held_out else None,
    }


def predict_dp_loss(fit: dict[str, Any], d_p: Any) -> np.ndarray:
    """L(D_p) = E + A / D_p^alpha."""
    return fit["E"] + fit["A"] / np.power(np.asarray(d_p, float), fit["alpha"])


def predict_dp_score(fit: dict[str, Any], d_p: Any) -> np.ndarray:
    """f(D_p) = (ln A + alpha ln D_p)^beta; NaN where the logarithm is not positive (the law is undefined)."""
    inner = fit["ln_A"] + fit["alpha"] * np.log(np.asarray(d_p, float))
    return np.where(inner > 0, np.power(np.maximum(inner, 1e-300), fit["beta"]), np.nan)


def fit_dp_loss(d_p: Any, loss: Any, n_fit: int, delta: float = HUBER_DELTA) -> dict[str, Any]:
    """Fit L(D_p) = E + A / D_p^alpha on the ``n_fit`` smallest D_p; predict the rest and report the errors."""
    d_p, loss = _split(d_p, loss, n_fit, "loss", LOSS_LAW)
    theta, info = _fit_law(LOSS_LAW, np.log(d_p[:n_fit]), np.log(loss[:n_fit]), delta)
    a, e, alpha = (float(v) for v in theta)
    fit = {"law": "L = E + A / D_p^alpha", "A": math.exp(a), "E": math.exp(e), "alpha": alpha, "a": a, "e": e}
    return {**fit, **info, **_prediction_report(d_p, loss, predict_dp_loss(fit, d_p), n_fit)}


def fit_dp_score(d_p: Any, score: Any, n_fit: int, delta: float = HUBER_DELTA) -> dict[str, Any]:
    """Fit f(D_p) = (log(A * D_p^alpha))^beta on the ``n_fit`` smallest D_p; predict the rest with errors.

    ``d_p_zero`` is where log(A D_p^alpha) reaches 0, the D_p below which the law has no value.
    """
    d_p, score = _split(d_p, score, n_fit, "score", SCORE_LAW)
    ln_d_min = math.log(d_p[0])
    theta, info = _fit_law(SCORE_LAW, np.log(d_p[:n_fit]) - ln_d_min, np.log(score[:n_fit]), delta)
    ln_alpha, g, beta = (float(v) for v in theta)
    alpha = math.exp(ln_alpha)
    ln_d_zero = ln_d_min - float(_zero_offset(g))
    fit = {"law": "f = (log(A * D_p^alpha))^beta", "ln_A": -alpha * ln_d_zero, "alpha": alpha, "beta": beta,
           "d_p_zero": math.exp(ln_d_zero)}
    fit["A"] = math.exp(fit["ln_A"]) if fit["ln_A"] < 700 else math.inf
    return {**fit, **info, **_prediction_report(d_p, score, predict_dp_score(fit, d_p), n_fit)}


def _mean_by_d_p(d_p: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique, inverse = np.unique(d_p, return_inverse=True)
    return unique, np.bincount(inverse, weights=values) / np.bincount(inverse)


def _trend(values: np.ndarray, tolerance: float, better: int) -> dict[str, Any]:
    """'improves' (overall gain beyond tolerance, no step back beyond it), 'worsens' (overall loss beyond
    tolerance), 'non_monotone' (a gain, but with a step back beyond tolerance) or 'stalls'."""
    gain = better * (values[-1] - values[0])
    worst_step_back = float(max(0.0, np.max(-better * np.diff(values))))
    if gain < -tolerance:
        trend = "worsens"
    elif gain <= tolerance:
        trend = "stalls"
    else:
        trend = "improves" if worst_step_back <= tolerance else "non_monotone"
    return {"trend": trend, "change": float(values[-1] - values[0]), "worst_step_back": worst_step_back,
            "tolerance": tolerance}


def alignment_verdict(d_p: Any, loss: Any, score: Any, loss_rtol: float = LOSS_RTOL,
                      score_rtol: float = SCORE_RTOL) -> dict[str, Any]:
    """Do cross-entropy and score move together as D_p grows (Isik et al.'s alignment)?

    Points with equal D_p are averaged. Verdict 'agree' when the loss falls and the score rises, both
    monotonically within tolerance (``loss_rtol`` of the mean loss, ``score_rtol`` of the largest score);
    'disagree' when the loss improves but the score stalls, falls or goes back (the signature of a
    misaligned pretraining distribution); 'loss_not_improving' when the loss itself does not improve, so
    alignment cannot be judged.
    """
    d_p_sorted, loss_sorted = _as_points(d_p, loss, "loss")
    _, score_sorted = _as_points(d_p, score, "score")
    d_p_unique, mean_loss = _mean_by_d_p(d_p_sorted, loss_sorted)
    _, mean_score = _mean_by_d_p(d_p_sorted, score_sorted)
    if d_p_unique.size < 2:
        raise DPLawError(f"{d_p_unique.size} distinct D_p: a trend needs at least 2")
    loss_trend = _trend(mean_loss, loss_rtol * float(np.mean(np.abs(mean_loss))), better=-1)
    score_trend = _trend(mean_score, score_rtol * float(np.max(np.abs(mean_score))), better=+1)
    if loss_trend["trend"] != "improves":
        verdict = "loss_not_improving"
    else:
        verdict = "agree" if score_trend["trend"] == "improves" else "disagree"
    return {"verdict": verdict, "loss": loss_trend, "score": score_trend, "d_p": d_p_unique, "mean_loss": mean_loss,
            "mean_score": mean_score, "best_score_d_p": float(d_p_unique[np.argmax(mean_score)])}


def _validate_table(table: pd.DataFrame) -> pd.DataFrame:
    missing = [column for column in TABLE_COLUMNS if column not in table.columns]
    if missing:
        raise DPLawError(f"D_p table lacks columns {missing}; it needs {list(TABLE_COLUMNS)}")
    for column in TABLE_COLUMNS[1:]:
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(float)
        positive = column in ("n_params", "d_f_chars", "d_p_tokens", "test_loss")
        bad = np.flatnonzero(~np.isfinite(values) | ((values <= 0) if positive else (values < 0)))
        if bad.size:
            row = table.index[bad[0]]
            raise DPLawError(f"D_p table row {row}: {column} = {table.at[row, column]}; it must be a finite "
                             f"number {'> 0' if positive else '>= 0'}")
    return table


def _fit_or_reason(fit: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """A fit, or why this group's points cannot give one (too few points, a zero score)."""
    try:
        return fit(*args)
    except DPLawError as error:
        return {"error": str(error)}


def _analyse_group(group: pd.DataFrame, n_fit: int, delta: float, loss_rtol: float,
                   score_rtols: dict[str, float]) -> dict[str, Any]:
    """The loss law, and each score's law and verdict (``score_rtols`` maps every score to its tolerance)."""
    d_p, loss = group["d_p_tokens"].to_numpy(float), group["test_loss"].to_numpy(float)
    result: dict[str, Any] = {"n_points": len(group), "loss_fit": _fit_or_reason(fit_dp_loss, d_p, loss, n_fit, delta)}
    for score in SCORES:
        values = group[score].to_numpy(float)
        result[f"{score}_fit"] = _fit_or_reason(fit_dp_score, d_p, values, n_fit, delta)
        result[f"{score}_verdict"] = _fit_or_reason(alignment_verdict, d_p, loss, values, loss_rtol,
                                                    score_rtols[score])
    return result


def analyse_dp(table: pd.DataFrame, n_fit: int, delta: float = HUBER_DELTA, loss_rtol: float = LOSS_RTOL,
               score_rtol: float = SCORE_RTOL, chrf_rtol: float = CHRF_RTOL) -> dict[str, Any]:
    """Per (source, n_params, d_f_chars): the loss and score laws over D_p, their predictions of the largest
    D_p, and the alignment verdict for each score; JSON-ready (NaN and infinities become None).

    Rows with equal D_p in a group (seeds) are averaged first, so ``n_fit`` counts distinct D_p. chrF's
    verdict uses ``chrf_rtol``, the other scores ``score_rtol``.
    """
    if isinstance(n_fit, bool) or not isinstance(n_fit, (int, np.integer)) or n_fit < len(LOSS_LAW.params):
        raise DPLawError(f"n_fit = {n_fit!r}: must be an integer >= {len(LOSS_LAW.params)}, the parameter count "
                         "of each law")
    table = _validate_table(table)
    averaged = table.groupby([*GROUP_KEYS, "d_p_tokens"], as_index=False)[["test_loss", *SCORES]].mean()
    score_rtols = {score: chrf_rtol if score == "chrf" else score_rtol for score in SCORES}
    groups = []
    for (source, n_params, d_f_chars), group in averaged.groupby(GROUP_KEYS, sort=True):
        groups.append({"source": source, "n_params": n_params, "d_f_chars": d_f_chars,
                       **_analyse_group(group, n_fit, delta, loss_rtol, score_rtols)})
    return to_jsonable({"n_fit": n_fit, "huber_delta": delta, "loss_rtol": loss_rtol, "score_rtol": score_rtol,
                        "chrf_rtol": chrf_rtol, "groups": groups})


def transferred_by_d_p(table: pd.DataFrame, transfer_fit: dict[str, Any]) -> pd.DataFrame:
    """D_E, D_T and the status of every snapshot fine-tune, read off the main study's same-N scratch curve.

    The same classification as the transfer fit's points (censored, ill-conditioned, ...), so D_T as a function
    of D_p is measured exactly as D_T as a function of D_F and N.
    """
    options = transfer_fit["options"]
    rows = []
    for record in table.itertuples(index=False):
        scratch = transfer_fit["scratch"].get(n_key(record.n_params))
        if scratch is None:
            raise DPLawError(f"N = {record.n_params} has no from-scratch curve in the transfer fit; "
                             "D_T needs scratch runs of the same size")
        curve = ScratchCurves(record.n_params, np.asarray(scratch["d_chars"]), np.asarray(scratch["test_loss"]),
                              options["tolerance"], options["low_data_fraction"])
        point = classify_point(curve, float(record.d_f_chars), float(record.test_loss), options["slope_tolerance"])
        rows.append({"source": record.source, "n_params": record.n_params, "d_f_chars": record.d_f_chars,
                     "d_p_tokens": record.d_p_tokens, "test_loss": record.test_loss, **point})
    return pd.DataFrame(rows)


def write_dp_analysis(runs_csv: str | os.PathLike, transfer_fit_json: str | os.PathLike, n_fit: int,
                      out_json: str | os.PathLike) -> dict[str, Any]:
    """The D_p analysis of a snapshot runs table, plus D_T per D_p, written atomically as JSON. Failed runs
    (a diverged fine-tune, ``status`` failed) are listed under ``failed_runs`` and left out of both."""
    table = read_table(runs_csv)
    failed = table["status"].eq("failed") if "status" in table.columns else pd.Series(False, index=table.index)
    for run in table.loc[failed, "run"]:
        logger.warning("failed run left out of the D_p analysis: %s", run)
    ok = table[~failed]
    analysis = analyse_dp(ok, n_fit)
    analysis["transferred"] = to_jsonable(transferred_by_d_p(ok, load_fit(transfer_fit_json)).to_dict("records"))
    analysis["failed_runs"] = to_jsonable(table[failed].to_dict("records"))
    write_json(out_json, analysis)
    return analysis
