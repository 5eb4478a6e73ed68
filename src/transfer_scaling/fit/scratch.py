"""The from-scratch loss-vs-data curve of each N, the effective data D_E read off it, and its scratch law.

D_E of a fine-tuned model is read off the same-N from-scratch curve (``ESTIMATORS``): by monotone interpolation
through its points, as in the paper (the default); or by inverting a smooth law through them, the curve's own fitted
L_N(D) = L_inf + A / D^a (``scratch_law``) or the slice at N of a joint L(N, D) = E + A / N^alpha + B / D^beta fitted
to every size at once (``joint_law``, ``fit_joint_laws``). ``ScratchCurves`` holds the curves of one N as rows, the
measured curve (one row) for the point estimate or its resamples for the bootstrap, so the point estimate is the
resample that draws every run once: one reading of D_E, one fit of L_N and one D(N), and a point's status follows the
same rules (``read_off``) whichever it is read off.

Only numpy (and the joint law's objective): fitting a runs table must never import torch or deepspeed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .jointlaw import HUBER_DELTA, JointData, JointLawError, batched_lbfgs, chinchilla_log_loss, fit_chinchilla, huber

ESTIMATORS = ("interpolation", "scratch_law", "joint_law")
"""How D_E is read off the scratch curve of its N: monotone interpolation through the points (the paper's), or the
inverse of the fitted L_N of that N, or of the joint law's slice at N."""
SCRATCH_LAW_STARTS = tuple((exponent, share) for exponent in (0.1, 0.3, 1.0) for share in (0.5, 0.9, 0.99))
LN_A_BOUND, MIN_EXPONENT, MAX_EXPONENT = 50.0, 1e-3, 3.0
SCRATCH_LAW_PARAMETERS = 3
SCRATCH_LAW_FIELDS = ("l_inf", "a_coef", "exponent", "rms_log_residual")


class ScratchCurves:
    """The same-N from-scratch loss-vs-data curves, one per row of ``test_loss`` (rows, D values), each reduced
    to its monotone envelope, with its scratch law L_N and its low-data limit.

    Early-stopped runs on more data should never be worse; where they are (noise, a plateau), the running minimum
    over increasing D is the best loss known to be reachable, and only its strictly decreasing points are
    interpolated: PCHIP in ln D (scipy's derivatives, for every row at once), which keeps the curve monotone
    between them. D(N) falls back to the largest scratch D where L_N cannot be fitted or its D(N) lies beyond the
    data (an extrapolation the data cannot check): a conservative limit, since the curve was still measurably above
    L_inf there.
    """

    def __init__(self, n_params: float, d_chars: np.ndarray, test_loss: np.ndarray, tolerance: float,
                 low_data_fraction: float, estimator: str = "interpolation"):
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator {estimator!r} is not one of {list(ESTIMATORS)}")
        self.estimator = estimator
        order = np.argsort(d_chars)
        self.n_params = float(n_params)
        self.d_chars = np.asarray(d_chars, float)[order]
        self.test_loss = np.atleast_2d(np.asarray(test_loss, float))[:, order]
        log_d = np.log(self.d_chars)
        running = np.minimum.accumulate(self.test_loss, axis=1)
        keep = running < np.column_stack([np.full(len(running), np.inf), running[:, :-1]])
        knots_first = np.argsort(~keep, axis=1, kind="stable")
        self.knots = keep.sum(axis=1)
        self.env_log_d = np.take_along_axis(np.where(keep, log_d, np.nan), knots_first, axis=1)
        self.env_loss = np.take_along_axis(np.where(keep, self.test_loss, np.nan), knots_first, axis=1)
        self.derivatives = _pchip_derivatives(self.env_log_d, self.env_loss, self.knots)
        self.law = fit_scratch_laws(log_d, self.test_loss)
        self.law_d_converged = np.where(self.law["ok"], converged_data(self.law, tolerance), np.inf)
        self.d_converged = np.minimum(self.law_d_converged, self.d_chars[-1])
        self.low_data_limit = low_data_fraction * self.d_converged
        self.inverted = self.law if estimator == "scratch_law" else None

    def use_law(self, law: dict[str, np.ndarray]) -> None:
        """Read D_E through ``law`` (arrays ``ok``, ``l_inf``, ``a_coef``, ``exponent``, one per row): the joint law's
        slice at this N, for the ``joint_law`` estimator."""
        self.inverted = law

    def effective_data(self, test_loss: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(D_E, local slope |dL/dln D|, range status) of losses (rows, points), each read off its row's curve by the
        curve's estimator (``ESTIMATORS``); a row whose law could not be fitted is interpolated."""
        if self.inverted is None:
            return self.interpolated_data(test_loss)
        inverted = self._inverted_data(test_loss)
        has_law = np.asarray(self.inverted["ok"], bool)
        if has_law.all():
            return inverted
        interpolated = self.interpolated_data(test_loss)
        return tuple(np.where(has_law[:, None], by_law, by_points) for by_law, by_points in zip(inverted, interpolated))

    def _inverted_data(self, test_loss: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """D_E = (A / (L - L_inf))^(1/a) through each row's law, within the scratch D: censored below the law's loss
        at the largest D, below_range above its loss at the smallest; the slope is the law's, a (L - L_inf)."""
        l_inf, a_coef, exponent = (np.asarray(self.inverted[name], float)[:, None]
                                   for name in ("l_inf", "a_coef", "exponent"))
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            lowest = l_inf + a_coef * self.d_chars[-1] ** -exponent
            highest = l_inf + a_coef * self.d_chars[0] ** -exponent
            censored, below_range = test_loss < lowest, test_loss > highest
            excess = test_loss - l_inf
            log_d = (np.log(a_coef) - np.log(excess)) / exponent
            d_effective = np.select([censored, below_range], [self.d_chars[-1], self.d_chars[0]], np.exp(log_d))
            slope = exponent * excess
        range_status = np.where(censored, "censored", np.where(below_range, "below_range", "ok"))
        return d_effective, np.where(range_status == "ok", slope, np.nan), range_status

    def estimated_loss_at(self, d_chars: Any) -> np.ndarray:
        """The loss (rows, points) that the estimator reads D_E off, at ``d_chars``: the envelope, or the inverted
        law; NaN outside the scratch data."""
        envelope = self.loss_at(d_chars)
        if self.inverted is None:
            return envelope
        d_chars = np.atleast_1d(np.asarray(d_chars, float))[None, :]
        law = {name: np.asarray(self.inverted[name], float)[:, None] for name in ("l_inf", "a_coef", "exponent")}
        inside = (self.d_chars[0] <= d_chars) & (d_chars <= self.d_chars[-1])
        by_law = np.where(inside, scratch_law_loss(law, d_chars), np.nan)
        return np.where(np.asarray(self.inverted["ok"], bool)[:, None], by_law, envelope)

    def interpolated_data(self, test_loss: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(D_E, local slope |dL/dln D|, range status) of losses (rows, points), each interpolated on its row's curve.

        The status is ok, censored (below the best loss: D_E is the largest scratch D, a lower bound) or
        below_range (above the loss at the smallest D: D_E is that D, an upper bound). The slope is the secant of
        the envelope segment that brackets the loss: it measures how far a small loss error moves D_E, and unlike
        the PCHIP derivative it does not vanish at the curve's ends; NaN out of range.
        """
        rows = np.arange(len(test_loss))[:, None]
        censored = test_loss < self.env_loss[rows, (self.knots - 1)[:, None]]
        below_range = test_loss > self.env_loss[:, :1]
        range_status = np.where(censored, "censored", np.where(below_range, "below_range", "ok"))
        (x0, y0, d0), (x1, y1, d1) = self._segment((self.env_loss[:, None, :] > test_loss[:, :, None]).sum(axis=2))
        width = x1 - x0
        single = width == 0
        with np.errstate(invalid="ignore", divide="ignore"):
            log_d = x0 + width * _invert_hermite(y0, y1, d0 * width, d1 * width, test_loss)
            slope = np.where(single, 0.0, (y0 - y1) / width)
        d_effective = np.select([censored, below_range], [self.d_chars[-1], self.d_chars[0]],
                                np.exp(np.where(single, x0, log_d)))
        return d_effective, np.where(range_status == "ok", slope, np.nan), range_status

    def loss_at(self, d_chars: Any) -> np.ndarray:
        """Envelope loss (rows, points) at ``d_chars`` (points); NaN outside the scratch data (no extrapolation)."""
        d_chars = np.atleast_1d(np.asarray(d_chars, float))
        log_d = np.log(d_chars)[None, :]
        (x0, y0, d0), (x1, y1, d1) = self._segment((self.env_log_d[:, None, :] <= log_d[..., None]).sum(axis=2))
        width = x1 - x0
        with np.errstate(invalid="ignore", divide="ignore"):
            inside = _hermite(y0, y1, d0 * width, d1 * width, (log_d - x0) / width)
        rows = np.arange(len(self.knots))
        last_log_d, last_loss = (values[rows, self.knots - 1][:, None] for values in (self.env_log_d, self.env_loss))
        value = np.where((width == 0) | (log_d >= last_log_d), last_loss, inside)
        return np.where((self.d_chars[0] <= d_chars) & (d_chars <= self.d_chars[-1]), value, np.nan)

    def measured_loss_at(self, d_chars: float) -> float:
        """The measured curve's (row 0) envelope loss at one D."""
        return float(self.loss_at(d_chars)[0, 0])

    def _segment(self, knots_below: np.ndarray) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """(ln D, loss, derivative) at both ends of the envelope segment after the ``knots_below``-th knot
        (rows, points), clipped to each row's knots."""
        rows = np.arange(len(knots_below))[:, None]
        last = (self.knots - 1)[:, None]
        segment = np.clip(knots_below - 1, 0, np.maximum(last - 1, 0))
        return tuple(tuple(values[rows, end] for values in (self.env_log_d, self.env_loss, self.derivatives))
                     for end in (segment, np.minimum(segment + 1, last)))

    def summary(self) -> dict[str, Any]:
        """The measured curve's (row 0) entry in the fit's ``scratch`` table: points, L_N, D(N) and its origin."""
        law = self._measured_law()
        law_d_converged, largest = float(self.law_d_converged[0]), float(self.d_chars[-1])
        if not law["ok"]:
            source = f"largest scratch D (L_N fit failed: {law['message']})"
        elif law_d_converged > largest:
            source = f"largest scratch D (the fit's D(N) = {law_d_converged:.3g} is beyond the data)"
        else:
            source = "L_N fit"
        inverted = None
        if self.inverted is not None and self.inverted["ok"][0]:
            inverted = {name: float(np.asarray(self.inverted[name])[0]) for name in ("l_inf", "a_coef", "exponent")}
        return {"n_params": self.n_params, "d_chars": self.d_chars.tolist(), "test_loss": self.test_loss[0].tolist(),
                "law": law, "d_converged": float(self.d_converged[0]), "d_converged_source": source,
                "low_data_limit": float(self.low_data_limit[0]), "estimator": self.estimator,
                "estimator_law": inverted}

    def _measured_law(self) -> dict[str, Any]:
        """L_N of the measured curve: ``{"ok", "message", "l_inf", "a_coef", "exponent", "rms_log_residual"}``, or
        ``{"ok": False, "message": why}``."""
        if not self.law["ok"][0]:
            return {"ok": False, "message": f"{self.d_chars.size} distinct D; {SCRATCH_LAW_PARAMETERS} parameters "
                                            f"need at least {SCRATCH_LAW_PARAMETERS}"}
        return {"ok": True, "message": "", **{name: float(self.law[name][0]) for name in SCRATCH_LAW_FIELDS}}


def scratch_law_loss(law: dict[str, Any], d_chars: Any) -> Any:
    """L_N(D) = L_inf + A / D^a."""
    return law["l_inf"] + law["a_coef"] * d_chars ** (-law["exponent"])


def converged_data(law: dict[str, Any], tolerance: float) -> Any:
    """D(N): the data at which L_N(D) comes within ``tolerance`` (relative) of L_inf; inf if L_inf = 0.

    Element-wise over the curves' laws.
    """
    l_inf = np.asarray(law["l_inf"], float)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        d_converged = (law["a_coef"] / (tolerance * l_inf)) ** (1.0 / np.asarray(law["exponent"], float))
    return np.where(l_inf > 0, d_converged, np.inf)


def point_status(range_status: Any, slope: Any, d_transferred: Any, d_f_chars: Any, low_data_limit: Any,
                 slope_tolerance: float) -> np.ndarray:
    """Status of fine-tuned points from their range status (ok, censored, below_range) and D_E; arrays broadcast."""
    conditions = [np.asarray(range_status) != "ok", np.asarray(slope) < slope_tolerance,
                  np.asarray(d_transferred) <= 0, np.asarray(d_f_chars) > low_data_limit]
    return np.select(conditions, [np.asarray(range_status), "ill_conditioned", "no_transfer", "high_data"], "ok")


def read_off(curves: ScratchCurves, d_f_chars: np.ndarray, test_loss: np.ndarray,
             slope_tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(D_E, slope, D_T, status) of fine-tuned points (D_F (points,), losses (rows, points)) read off their N's
    curves row by row: the one way a point is classified, measured or resampled."""
    d_effective, slope, range_status = curves.effective_data(test_loss)
    d_transferred = d_effective - d_f_chars
    status = point_status(range_status, slope, d_transferred, d_f_chars, curves.low_data_limit[:, None],
                          slope_tolerance)
    return d_effective, slope, d_transferred, status


def classify_point(curve: ScratchCurves, d_f_chars: float, test_loss: float, slope_tolerance: float) -> dict[str, Any]:
    """D_E, D_T and the status of one fine-tuned point on the measured curve (``fitting`` lists the statuses)."""
    d_effective, slope, d_transferred, status = (value[0, 0].item() for value in read_off(
        curve, np.array([d_f_chars]), np.array([[test_loss]]), slope_tolerance))
    fraction = d_transferred / d_effective if d_transferred > 0 else math.nan
    return {"d_effective": d_effective, "d_transferred": d_transferred, "scratch_slope": slope,
            "fraction": fraction, "multiplier": d_effective / d_f_chars,
            "scratch_loss_at_d_f": curve.measured_loss_at(d_f_chars), "status": status}


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


def _hermite(y0: np.ndarray, y1: np.ndarray, m0: np.ndarray, m1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The cubic Hermite segment with values y0, y1 and tangents m0, m1 (per unit t) at t in [0, 1]."""
    return (y0 * (2 * t**3 - 3 * t**2 + 1) + m0 * (t**3 - 2 * t**2 + t) + y1 * (3 * t**2 - 2 * t**3)
            + m1 * (t**3 - t**2))


def _invert_hermite(y0: np.ndarray, y1: np.ndarray, m0: np.ndarray, m1: np.ndarray, target: np.ndarray,
                    iterations: int = 60) -> np.ndarray:
    """t in [0, 1] where the cubic Hermite segment (values y0, y1; tangents m0, m1 per unit t) equals target.

    PCHIP segments of a decreasing envelope decrease monotonically, so bisection finds the only root.
    """
    low, high = np.zeros(np.shape(target)), np.ones(np.shape(target))
    for _ in range(iterations):
        t = 0.5 * (low + high)
        above = _hermite(y0, y1, m0, m1, t) > target
        low, high = np.where(above, t, low), np.where(above, high, t)
    return 0.5 * (low + high)


def fit_scratch_laws(log_d: np.ndarray, test_loss: np.ndarray, iterations: int = 300) -> dict[str, np.ndarray]:
    """L_N(D) = L_inf + A / D^a fitted to every curve (rows of ``test_loss`` on the grid ``log_d``) at once: bounded
    least squares on ln L from several starts, the best kept.

    Levenberg-Marquardt batched over curves and starts, with steps clipped to the bounds: one scipy fit per
    resampled curve (about 20 ms) would make a thousand resamples take minutes. Returns arrays ``ok`` (at least as
    many D as parameters), ``l_inf``, ``a_coef``, ``exponent`` and ``rms_log_residual``, NaN where not ok.
    """
    n_curves, n_starts = len(test_loss), len(SCRATCH_LAW_STARTS)
    if log_d.size < SCRATCH_LAW_PARAMETERS:
        return {"ok": np.zeros(n_curves, bool), **{name: np.full(n_curves, np.nan) for name in SCRATCH_LAW_FIELDS}}
    lowest = test_loss.min(axis=1)
    theta = np.concatenate([
        np.column_stack([share * lowest, np.log(test_loss[:, 0] - share * lowest) + exponent * log_d[0],
                         np.full(n_curves, exponent)]) for exponent, share in SCRATCH_LAW_STARTS])
    lower = np.tile([0.0, -LN_A_BOUND, MIN_EXPONENT], (n_starts * n_curves, 1))
    upper = np.column_stack([np.tile(lowest, n_starts), np.tile([LN_A_BOUND, MAX_EXPONENT], (n_starts * n_curves, 1))])
    log_loss = np.tile(np.log(test_loss), (n_starts, 1))
    theta, cost = _levenberg_marquardt(np.clip(theta, lower, upper), lower, upper, log_d, log_loss, iterations)
    best = (np.argmin(cost.reshape(n_starts, n_curves), axis=0), np.arange(n_curves))
    l_inf, ln_a, exponent = theta.reshape(n_starts, n_curves, 3)[best].T
    return {"ok": np.ones(n_curves, bool), "l_inf": l_inf, "a_coef": np.exp(ln_a), "exponent": exponent,
            "rms_log_residual": np.sqrt(cost.reshape(n_starts, n_curves)[best] / log_d.size)}


def _scratch_law_residuals(theta: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Residuals ln(L_inf + e^(ln A - a ln D)) - ln L and their Jacobian in (L_inf, ln A, a)."""
    power = np.exp(theta[:, 1:2] - theta[:, 2:3] * log_d)
    total = theta[:, 0:1] + power
    return np.log(total) - log_loss, np.stack([1.0 / total, power / total, -log_d * power / total], axis=2)


def _levenberg_marquardt(theta: np.ndarray, lower: np.ndarray, upper: np.ndarray, log_d: np.ndarray,
                         log_loss: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Batched Levenberg-Marquardt on the scratch-law residuals within bounds: a parameter on a bound that the
    gradient pushes outward is held there for the step (an active set); iterates only unconverged problems."""
    residual, jacobian = _scratch_law_residuals(theta, log_d, log_loss)
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
        new_residual, new_jacobian = _scratch_law_residuals(candidate, log_d, log_loss[active])
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


def fit_joint_laws(curves: dict[float, ScratchCurves], start: np.ndarray | None = None) -> np.ndarray:
    """The joint law L(N, D) = E + A / N^alpha + B / D^beta (Chinchilla's form and objective) fitted to every size's
    curve at once, row by row (rows: the measured curves, or their resamples), and each curve told to read D_E
    through its slice at N (``ScratchCurves.use_law``). Returns the parameters (rows, 5) as (a, b, e, alpha, beta).

    Without ``start`` (the measured curves: one row) the full start grid of ``fit_chinchilla`` is searched and a
    degenerate fit (a term at its bound) is refused with ``JointLawError``, since its slices are no estimate; the
    resamples are then started from that fit, one batched L-BFGS for all of them.
    """
    sizes = sorted(curves)
    log_n = np.concatenate([np.full(curves[n].d_chars.size, np.log(n)) for n in sizes])
    log_d = np.concatenate([np.log(curves[n].d_chars) for n in sizes])
    log_loss = np.log(np.concatenate([curves[n].test_loss for n in sizes], axis=1))
    if start is None:
        if len(log_loss) != 1:
            raise ValueError("the joint law of resampled curves needs the measured curves' fit as its start")
        fit = fit_chinchilla(np.exp(log_n), np.exp(log_d), np.exp(log_loss[0]), kaplan=False)
        if fit["degenerate"]:
            raise JointLawError(fit["reason"])
        theta = np.array([[fit[name] for name in ("a", "b", "e", "alpha", "beta")]])
    else:
        theta, _ = batched_lbfgs(_joint_objective(log_n, log_d, log_loss), np.tile(start, (len(log_loss), 1)))
    for n_params in sizes:
        curves[n_params].use_law(joint_slice(theta, n_params))
    return theta


def joint_slice(theta: np.ndarray, n_params: float) -> dict[str, np.ndarray]:
    """The joint law's slice at N as a scratch law per row: L_inf = E + A / N^alpha, A = B, a = beta."""
    a, b, e, alpha, beta = np.atleast_2d(theta).T
    finite = np.all(np.isfinite(np.atleast_2d(theta)), axis=1) & (beta > 0)
    return {"ok": finite, "l_inf": np.exp(e) + np.exp(a - alpha * np.log(n_params)), "a_coef": np.exp(b),
            "exponent": beta}


def _joint_objective(log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray):
    """Chinchilla's Huber objective on log L with one row of losses per problem (``jointlaw``'s takes one set of
    losses for every problem), and its gradient in (a, b, e, alpha, beta)."""
    data = JointData(log_n, log_d, np.zeros(log_n.size))

    def objective(theta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        predicted, (share_n, share_d, share_e) = chinchilla_log_loss(theta, data)
        loss, slope = huber(predicted - log_loss[rows], HUBER_DELTA)
        by_n, by_d = slope * share_n, slope * share_d
        grad = np.column_stack([by_n.sum(1), by_d.sum(1), (slope * share_e).sum(1), -(by_n @ log_n),
                                -(by_d @ log_d)])
        return loss.sum(1), grad

    return objective
