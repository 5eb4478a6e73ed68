"""Joint loss laws L(N, D), fitted robustly: Chinchilla's approach 3 and Kaplan's form as a diagnostic.

Hoffmann et al. (2022) fit log L = LSE(a - alpha log N, b - beta log D, e), i.e. L = E + A/N^alpha + B/D^beta,
with a Huber loss (delta = 1e-3) on log L by L-BFGS from a grid of starts; Besiroglu et al. (2024) showed
the answer depends on the grid, so every start is run. The starts are optimised together by a batched
L-BFGS written in numpy (each start keeps its own history and step), which takes the ~4,500-start grid in
seconds where a Python loop over scipy calls would take minutes; the best few results are then polished
with scipy's L-BFGS-B (``grid_then_polish``, which also fits dplaw's laws over D_p). Both use the analytic
gradient. Bootstrap resamples are batched the same way, as per-point weights (multinomial counts), started from
the full-data optimum.

Kaplan et al. (2020): L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D, written here as
log L = alpha_D * LSE(c_1 - q log N, c_2 - log D) with q = alpha_N/alpha_D, N_c = e^(c_1/q), D_c = e^c_2.
The transfer paper found this form too poor to invert; it is reported only as a diagnostic.

A fit can be *degenerate*: a term that contributes nothing (E at 0 when the points show no floor) or an exponent
at 0 or at the top of the searched range. The optimum is then a point on the edge of the parameter space, not an
estimate (E = 2e-197 "fits" as well as E = 1e-5), so such a fit is reported as not identifiable, with the
parameters at their bounds named, and ``predict_chinchilla`` refuses it.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy.optimize import minimize

HUBER_DELTA = 1e-3
CHINCHILLA_GRID = {
    "a": np.arange(0.0, 25.1, 5.0),
    "b": np.arange(0.0, 25.1, 5.0),
    "e": np.arange(-1.0, 1.1, 0.5),
    "alpha": np.arange(0.0, 2.1, 0.5),
    "beta": np.arange(0.0, 2.1, 0.5),
}
CHINCHILLA_PARAMS = ("a", "b", "e", "alpha", "beta")
EXPONENT_RANGE = (float(CHINCHILLA_GRID["alpha"].min()), float(CHINCHILLA_GRID["alpha"].max()))
"""The exponents searched by Hoffmann et al. (and spanned by the start grid); a fit at either end is degenerate."""
EXPONENT_TOLERANCE = 1e-3
NEGLIGIBLE_SHARE = 1e-3
"""A term below this share of the predicted loss at every point is at its lower bound 0."""
TERM_NAMES = {"A": "A/N^alpha", "B": "B/D^beta", "E": "E"}
RUNS_COLUMNS = ("kind", "n_params", "data_chars", "test_loss")
KAPLAN_PARAMS = ("c1", "q", "c2", "alpha_d")

Objective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""(theta (m, P), rows (m,)) -> (values (m,), gradients (m, P)); ``rows`` picks each problem's weights."""


class JointLawError(ValueError):
    """The points cannot identify a joint law (too few, or non-positive values)."""


def huber(residual: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss and its derivative, elementwise."""
    size = np.abs(residual)
    loss = np.where(size <= delta, 0.5 * np.minimum(size, delta) ** 2, delta * (size - 0.5 * delta))
    return loss, np.clip(residual, -delta, delta)


@dataclass
class JointData:
    log_n: np.ndarray
    log_d: np.ndarray
    log_loss: np.ndarray


def lse_with_shares(*terms: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """log(sum(exp(terms))) and each term's share exp(term)/sum, computed stably in one pass."""
    top = terms[0]
    for term in terms[1:]:
        top = np.maximum(top, term)
    exps = [np.exp(term - top) for term in terms]
    total = sum(exps)
    return top + np.log(total), [values / total for values in exps]


def chinchilla_log_loss(theta: np.ndarray, data: JointData) -> tuple[np.ndarray, list[np.ndarray]]:
    """Predicted log L (S, n) and the shares of the three terms (A/N^alpha, B/D^beta, E), for theta (S, 5)."""
    a, b, e, alpha, beta = (theta[:, i : i + 1] for i in range(5))
    constant = np.broadcast_to(e, (len(theta), data.log_n.size))
    return lse_with_shares(a - alpha * data.log_n, b - beta * data.log_d, constant)


def _weighted(values: np.ndarray, weights: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    return values if weights is None else weights[rows] * values


def chinchilla_objective(data: JointData, weights: np.ndarray | None, delta: float) -> Objective:
    """Weighted Huber objective on log L and its analytic gradient; ``weights`` None means one per point."""

    def objective(theta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        predicted, (share_n, share_d, share_e) = chinchilla_log_loss(theta, data)
        loss, slope = huber(predicted - data.log_loss, delta)
        slope = _weighted(slope, weights, rows)
        by_n, by_d = slope * share_n, slope * share_d
        grad = np.column_stack([by_n.sum(1), by_d.sum(1), (slope * share_e).sum(1), -(by_n @ data.log_n),
                                -(by_d @ data.log_d)])
        return _weighted(loss, weights, rows).sum(1), grad

    return objective


def kaplan_log_loss(theta: np.ndarray, data: JointData) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Predicted log L (S, n), the inner LSE (S, n) and its two shares, for theta (S, 4)."""
    c1, q, c2, alpha_d = (theta[:, i : i + 1] for i in range(4))
    inner, shares = lse_with_shares(c1 - q * data.log_n, c2 - data.log_d)
    return alpha_d * inner, inner, shares


def kaplan_objective(data: JointData, weights: np.ndarray | None, delta: float) -> Objective:
    def objective(theta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        predicted, inner, (share_n, share_d) = kaplan_log_loss(theta, data)
        loss, slope = huber(predicted - data.log_loss, delta)
        slope = _weighted(slope, weights, rows)
        by_n = slope * theta[:, 3:4] * share_n
        grad = np.column_stack([by_n.sum(1), -(by_n @ data.log_n), (slope * theta[:, 3:4] * share_d).sum(1),
                                (slope * inner).sum(1)])
        return _weighted(loss, weights, rows).sum(1), grad

    return objective


def batched_lbfgs(objective: Objective, start: np.ndarray, max_iter: int = 1000, memory: int = 10,
                  gtol: float = 1e-10, ftol: float = 1e-15) -> tuple[np.ndarray, np.ndarray]:
    """Minimise independent problems, one per row of ``start``, with L-BFGS and Armijo backtracking.

    ``objective`` maps (S, P) parameters to (S,) values and (S, P) gradients. Rows stop independently when
    their gradient or relative improvement falls below tolerance. Returns (parameters, values).
    """
    x = np.array(start, float)
    count, dim = x.shape
    value, grad = objective(x, np.arange(count))
    s_hist = np.zeros((memory, count, dim))
    y_hist = np.zeros((memory, count, dim))
    rho = np.zeros((memory, count))
    active = np.ones(count, bool)
    for iteration in range(max_iter):
        index = np.flatnonzero(active)
        if index.size == 0:
            break
        direction = _two_loop(grad[index], s_hist[:, index], y_hist[:, index], rho[:, index], iteration, memory)
        slope = (direction * grad[index]).sum(1)
        uphill = slope >= 0
        direction[uphill] = -grad[index][uphill]
        slope[uphill] = -(grad[index][uphill] ** 2).sum(1)
        step = np.where(iteration == 0, 1.0 / np.maximum(np.linalg.norm(grad[index], axis=1), 1e-12), 1.0)
        new_x, new_value, new_grad = _backtrack(objective, index, x[index], value[index], direction, slope, step)
        slot = iteration % memory
        s = new_x - x[index]
        y = new_grad - grad[index]
        curvature = (s * y).sum(1)
        s_hist[slot, index], y_hist[slot, index] = s, y
        valid = curvature > 1e-12 * (y * y).sum(1)
        rho[slot, index] = np.where(valid, 1.0 / np.where(valid, curvature, 1.0), 0.0)
        improvement = value[index] - new_value
        x[index], value[index], grad[index] = new_x, new_value, new_grad
        done = (np.abs(new_grad).max(1) < gtol) | (improvement <= ftol * np.maximum(np.abs(new_value), 1e-12))
        active[index[done]] = False
    return x, value


def _two_loop(grad: np.ndarray, s_hist: np.ndarray, y_hist: np.ndarray, rho: np.ndarray, iteration: int,
              memory: int) -> np.ndarray:
    """The L-BFGS two-loop recursion for each row; pairs with rho = 0 (skipped updates) have no effect."""
    q = grad.copy()
    newest_first = [(iteration - 1 - i) % memory for i in range(min(iteration, memory))]
    coefficients = {}
    for slot in newest_first:
        coefficients[slot] = rho[slot] * (s_hist[slot] * q).sum(1)
        q -= coefficients[slot][:, None] * y_hist[slot]
    if newest_first:
        slot = newest_first[0]
        yy = (y_hist[slot] ** 2).sum(1)
        gamma = np.where(rho[slot] > 0, 1.0 / np.where(rho[slot] > 0, rho[slot], 1.0) / np.maximum(yy, 1e-300), 1.0)
        q *= gamma[:, None]
    for slot in reversed(newest_first):
        correction = rho[slot] * (y_hist[slot] * q).sum(1)
        q += (coefficients[slot] - correction)[:, None] * s_hist[slot]
    return -q


def _backtrack(objective: Objective, rows: np.ndarray, x: np.ndarray, value: np.ndarray, direction: np.ndarray,
               slope: np.ndarray, step: np.ndarray, shrink: float = 0.5,
               tries: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Armijo backtracking per row; a row that finds no decrease stays where it is."""
    new_x, new_value = x.copy(), value.copy()
    new_grad = np.zeros_like(x)
    pending = np.ones(len(x), bool)
    step = np.array(step, float)
    for _ in range(tries):
        index = np.flatnonzero(pending)
        if index.size == 0:
            break
        trial = x[index] + step[index, None] * direction[index]
        trial_value, trial_grad = objective(trial, rows[index])
        accepted = np.isfinite(trial_value) & (trial_value <= value[index] + 1e-4 * step[index] * slope[index])
        hit = index[accepted]
        new_x[hit], new_value[hit], new_grad[hit] = trial[accepted], trial_value[accepted], trial_grad[accepted]
        pending[hit] = False
        step[index[~accepted]] *= shrink
    stuck = np.flatnonzero(pending)
    if stuck.size:
        new_grad[stuck] = objective(x[stuck], rows[stuck])[1]
    return new_x, new_value, new_grad


def _prepare(n_params: Any, d: Any, loss: Any) -> JointData:
    arrays = [np.asarray(v, float).ravel() for v in (n_params, d, loss)]
    if len({a.size for a in arrays}) != 1:
        raise JointLawError(f"n, d and loss differ in length: {[a.size for a in arrays]}")
    for name, values in zip(("n", "d", "loss"), arrays):
        bad = np.flatnonzero(~(np.isfinite(values) & (values > 0)))
        if bad.size:
            raise JointLawError(f"{name}[{bad[0]}] = {values[bad[0]]!r}: every value must be finite and positive")
    if arrays[0].size < 5 or np.unique(arrays[0]).size < 2 or np.unique(arrays[1]).size < 2:
        raise JointLawError(f"{arrays[0].size} points over {np.unique(arrays[0]).size} N and "
                            f"{np.unique(arrays[1]).size} D: a joint law needs >= 5 points, >= 2 of each")
    return JointData(np.log(arrays[0]), np.log(arrays[1]), np.log(arrays[2]))


def grid_then_polish(objective: Objective, grid: np.ndarray, n_polish: int, bounds: Any = None,
                     polish_iterations: int = 10000) -> tuple[Any, np.ndarray]:
    """Every start of ``grid`` by batched L-BFGS (to tolerances loose enough to find the basin), then the
    ``n_polish`` best polished with scipy's L-BFGS-B (within ``bounds``) to full precision. Returns the best
    polished result (scipy's ``OptimizeResult``) and the polished starts."""
    optima, values = batched_lbfgs(objective, grid, max_iter=200, ftol=1e-10)
    leaders = optima[np.argsort(np.where(np.isfinite(values), values, np.inf))[:n_polish]]

    def scalar(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = objective(theta[None, :], np.zeros(1, int))
        return float(value[0]), grad[0]

    starts = leaders if bounds is None else np.clip(leaders, *np.array(bounds).T)
    results = [minimize(scalar, start, jac=True, method="L-BFGS-B", bounds=bounds,
                        options={"maxiter": polish_iterations, "ftol": 1e-15, "gtol": 1e-12}) for start in starts]
    return min(results, key=lambda result: result.fun if np.isfinite(result.fun) else np.inf), leaders


def _bootstrap(make: Callable[..., Objective], data: JointData, delta: float, starts: np.ndarray, n_bootstrap: int,
               seed: int) -> np.ndarray:
    """Best parameters of each resample (rows), from every start in ``starts``."""
    size = data.log_n.size
    counts = np.random.default_rng(seed).multinomial(size, np.full(size, 1.0 / size), size=n_bootstrap).astype(float)
    weights = np.repeat(counts, len(starts), axis=0)
    x, values = batched_lbfgs(make(data, weights, delta), np.tile(starts, (n_bootstrap, 1)))
    values = np.where(np.isfinite(values), values, np.inf).reshape(n_bootstrap, len(starts))
    return x.reshape(n_bootstrap, len(starts), -1)[np.arange(n_bootstrap), values.argmin(1)]


def _interval(samples: np.ndarray) -> list[float]:
    return np.percentile(samples, [2.5, 97.5]).tolist()


def chinchilla_grid() -> np.ndarray:
    """The (a, b, e, alpha, beta) start grid: 6 x 6 x 5 x 5 x 5 = 4,500 starts."""
    return np.array(list(itertools.product(*(CHINCHILLA_GRID[name] for name in CHINCHILLA_PARAMS))))


def fit_chinchilla(n_params: Any, d: Any, loss: Any, delta: float = HUBER_DELTA, n_bootstrap: int = 0,
                   seed: int = 0, grid: np.ndarray | None = None, n_polish: int = 8,
                   kaplan: bool = True) -> dict[str, Any]:
    """Fit L = E + A/N^alpha + B/D^beta (and, as a diagnostic, Kaplan's form); JSON-ready dict.

    Returns A, B, E, alpha, beta (and a, b, e), the Huber objective, residuals of log L, the seconds the start
    grid took, whether the fit is ``identifiable`` or ``degenerate`` (``at_bounds`` names the parameters at a
    bound, ``reason`` says why), and with ``n_bootstrap`` > 0 percentile 95% intervals ``<name>_ci``.
    """
    data = _prepare(n_params, d, loss)
    grid = chinchilla_grid() if grid is None else np.asarray(grid, float)
    began = time.perf_counter()
    polished, leaders = grid_then_polish(chinchilla_objective(data, None, delta), grid, n_polish)
    grid_seconds = time.perf_counter() - began
    best, value = polished.x, float(polished.fun)
    a, b, e, alpha, beta = (float(v) for v in best)
    residuals = data.log_loss - chinchilla_log_loss(best[None, :], data)[0][0]
    result: dict[str, Any] = {
        "a": a, "b": b, "e": e, "alpha": alpha, "beta": beta, "A": math.exp(a), "B": math.exp(b), "E": math.exp(e),
        "huber_delta": delta, "objective": value, "n_points": int(data.log_n.size), "n_starts": int(len(grid)),
        "grid_seconds": grid_seconds, "residuals_log_loss": residuals.tolist(), **degeneracy(best, data),
    }
    if n_bootstrap > 0:
        starts = np.vstack([best, leaders[: max(n_polish // 4, 1)]])
        draws = _bootstrap(chinchilla_objective, data, delta, starts, n_bootstrap, seed)
        for index, name in enumerate(CHINCHILLA_PARAMS):
            result[f"{name}_ci"] = _interval(draws[:, index])
        for name, index in (("A", 0), ("B", 1), ("E", 2)):
            result[f"{name}_ci"] = _interval(np.exp(draws[:, index]))
        result["n_bootstrap"] = int(n_bootstrap)
    if kaplan:
        result["kaplan"] = fit_kaplan(data, delta)
    return result


def at_bounds(theta: np.ndarray, data: JointData) -> dict[str, str]:
    """The parameters of a Chinchilla fit ``theta`` (5,) that sit at a bound, each with why.

    A term is at its lower bound 0 when it is a negligible share of the predicted loss at every point (then
    any smaller value fits as well: E = 2e-197 is no estimate of an irreducible loss); an exponent is at a
    bound within ``EXPONENT_TOLERANCE`` of either end of ``EXPONENT_RANGE``, or beyond it.
    """
    shares = chinchilla_log_loss(theta[None, :], data)[1]
    found = {}
    for (name, term), log_value, share in zip(TERM_NAMES.items(), theta[:3], shares):
        if share.max() < NEGLIGIBLE_SHARE:
            found[name] = (f"{term} is at its lower bound 0 ({name} = {math.exp(log_value):.3g}; at most "
                           f"{share.max():.1e} of the loss at any point)")
    low, high = EXPONENT_RANGE
    for name, value in (("alpha", theta[3]), ("beta", theta[4])):
        if value <= low + EXPONENT_TOLERANCE or value >= high - EXPONENT_TOLERANCE:
            found[name] = f"{name} = {value:.4g} is at or beyond an end of the searched range {low:g}..{high:g}"
    return found


def degeneracy(theta: np.ndarray, data: JointData) -> dict[str, Any]:
    """``identifiable``, ``degenerate``, ``at_bounds`` (names) and, when degenerate, the ``reason``."""
    found = at_bounds(theta, data)
    verdict: dict[str, Any] = {"identifiable": not found, "degenerate": bool(found), "at_bounds": list(found)}
    if found:
        verdict["reason"] = "a point on the edge of the parameter space, not an estimate: " + "; ".join(found.values())
    return verdict


def scratch_points(runs: pd.DataFrame) -> pd.DataFrame:
    """The successful from-scratch rows of a runs table (``n_params``, ``data_chars``, ``test_loss`` as floats).

    Unlike the transfer fit this needs no fine-tuned runs and no second D per N: a Chinchilla-style table
    (one D per N) is what the joint law is for. Each seed is a point of its own.
    """
    missing = [column for column in RUNS_COLUMNS if column not in runs.columns]
    if missing:
        raise JointLawError(f"runs table lacks column(s) {missing}; the joint law needs {list(RUNS_COLUMNS)} "
                            "(rows with kind 'scratch')")
    ok = runs["status"].fillna("ok").astype(str).eq("ok") if "status" in runs.columns else True
    scratch = runs[runs["kind"].astype(str).eq("scratch") & ok]
    if scratch.empty:
        raise JointLawError(f"no from-scratch run with status ok among {len(runs)} rows (kinds: "
                            f"{sorted(runs['kind'].astype(str).unique())}); the joint law is fitted to kind 'scratch'")
    columns = {}
    for column in RUNS_COLUMNS[1:]:
        values = pd.to_numeric(scratch[column], errors="coerce")
        bad = scratch.index[~(np.isfinite(values) & (values > 0))]
        if len(bad):
            raise JointLawError(f"row {bad[0]}: column {column!r} is {runs.at[bad[0], column]!r}; "
                                "it must be a positive number")
        columns[column] = values.astype(float)
    return pd.DataFrame(columns)


def fit_scratch_runs(runs: pd.DataFrame, n_bootstrap: int, seed: int) -> dict[str, Any]:
    """The joint law of a runs table's scratch rows: its points and ``fit_chinchilla``'s result, JSON-ready.
    The console script's ``joint-law`` passes the fit's defaults (``FitOptions``), so none is restated here."""
    if n_bootstrap < 0:
        raise JointLawError(f"n_bootstrap = {n_bootstrap}: must be >= 0")
    points = scratch_points(runs)
    fit = fit_chinchilla(points["n_params"], points["data_chars"], points["test_loss"], n_bootstrap=n_bootstrap,
                         seed=seed)
    return {"n_params": points["n_params"].tolist(), "d_chars": points["data_chars"].tolist(),
            "test_loss": points["test_loss"].tolist(), **fit}


def law_summary(law: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a reader needs: each parameter with its interval, or why the fit is not identifiable.

    A degenerate fit keeps the exponents not at a bound (the shape of the fitted range) but shows no A, B or E:
    with one term at its bound the others absorb it, so none of them is an estimate.
    """
    summary = {key: law.get(key) for key in ("n_points", "identifiable", "degenerate", "at_bounds", "reason")}
    for name in ("alpha", "beta", *TERM_NAMES):
        if name in (law.get("at_bounds") or []) or (name in TERM_NAMES and law.get("degenerate")):
            summary[name] = "not identified (degenerate fit)"
        elif name in law:
            summary[name] = law[name] if f"{name}_ci" not in law else {"value": law[name], "ci": law[f"{name}_ci"]}
    if law.get("kaplan"):
        summary["kaplan_rms_log_residual"] = law["kaplan"]["rms_log_residual"]
    return summary


def kaplan_grid(data: JointData) -> np.ndarray:
    """Starts for Kaplan's form: N_c and D_c from the data's median to e^20 beyond it."""
    rows = []
    for q, alpha_d, shift_n, shift_d in itertools.product((0.25, 0.5, 1.0, 2.0), (0.05, 0.1, 0.2, 0.5),
                                                          (0.0, 5.0, 10.0, 20.0), (0.0, 5.0, 10.0, 20.0)):
        rows.append([q * (np.median(data.log_n) + shift_n), q, np.median(data.log_d) + shift_d, alpha_d])
    return np.array(rows)


def fit_kaplan(data: JointData, delta: float = HUBER_DELTA, n_polish: int = 4) -> dict[str, Any]:
    """Kaplan et al.'s L(N, D), same robust objective; N_c, D_c, alpha_N, alpha_D and residuals of log L."""
    polished, _ = grid_then_polish(kaplan_objective(data, None, delta), kaplan_grid(data), n_polish)
    best, value = polished.x, float(polished.fun)
    c1, q, c2, alpha_d = (float(v) for v in best)
    residuals = data.log_loss - kaplan_log_loss(best[None, :], data)[0][0]
    return {"n_c": math.exp(c1 / q) if q != 0 else None, "d_c": math.exp(c2), "alpha_n": q * alpha_d,
            "alpha_d": alpha_d, "objective": value, "residuals_log_loss": residuals.tolist(),
            "rms_log_residual": float(np.sqrt(np.mean(residuals**2)))}


def predict_chinchilla(fit: dict[str, Any], n_params: Any, d: Any) -> np.ndarray:
    """L(N, D) of a fit; a degenerate fit is refused, since its E (and so every prediction) is not identified."""
    if fit.get("degenerate"):
        raise JointLawError(f"a degenerate joint law predicts nothing ({fit.get('reason', 'a parameter at a bound')})")
    return fit["E"] + fit["A"] / np.power(n_params, fit["alpha"]) + fit["B"] / np.power(d, fit["beta"])


def predict_kaplan(fit: dict[str, Any], n_params: Any, d: Any) -> np.ndarray:
    ratio = fit["alpha_n"] / fit["alpha_d"]
    inner = np.power(fit["n_c"] / np.asarray(n_params, float), ratio) + fit["d_c"] / np.asarray(d, float)
    return inner ** fit["alpha_d"]
