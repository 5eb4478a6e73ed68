"""Advice for a user's own (N, D_F): what the primary law of a fit predicts there, what 10x more fine-tuning data
buys against a 10x larger model, each quantity with its bootstrap interval or marked not resolved, and notes where
the question lies outside the fitted ranges.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..fit.derived import (LN10, LawDraws, data_worth_of_10x_model, derived, ln_d_effective, parameter_resolutions,
                           point_quantities, supports)
from ..fit.scratch import scratch_law_loss
from ..fit.study import n_key, to_jsonable
from ..fit.table import FitError
from .answer import decision_sentence

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


