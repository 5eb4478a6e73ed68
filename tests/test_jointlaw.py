"""Tests of the robust joint-law fits (Chinchilla approach 3, Kaplan diagnostic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from transfer_scaling.fit import jointlaw
from transfer_scaling.fit.jointlaw import JointLawError, fit_chinchilla

CHINCHILLA_CSV = Path("/work/shared/data/chinchilla_svg_extracted.csv")
SMALL_GRID = jointlaw.chinchilla_grid()[::15]


def chinchilla_points(max_flop: float = np.inf, drop_highest: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D, loss) of the real Chinchilla runs below a compute budget; D = C / (6 N) tokens."""
    runs = pd.read_csv(CHINCHILLA_CSV).sort_values("loss")
    runs = runs.iloc[: len(runs) - drop_highest]
    runs = runs[runs["Training FLOP"] < max_flop]
    n = runs["Model Size"].to_numpy()
    return n, runs["Training FLOP"].to_numpy() / (6 * n), runs["loss"].to_numpy()


def synthetic_points() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, d = np.meshgrid(np.logspace(5, 8, 5), np.logspace(6, 10, 6))
    n, d = n.ravel(), d.ravel()
    return n, d, 1.5 + 400.0 / n**0.34 + 900.0 / d**0.28


@pytest.mark.parametrize(("make", "size"), [(jointlaw.chinchilla_objective, 5), (jointlaw.kaplan_objective, 4)])
def test_analytic_gradient_matches_finite_differences(make, size):
    n, d, loss = synthetic_points()
    data = jointlaw._prepare(n, d, loss * np.exp(np.linspace(-0.01, 0.01, n.size)))
    weights = np.random.default_rng(0).integers(0, 3, size=(3, n.size)).astype(float)
    objective = make(data, weights, 0.05)
    theta = np.array([[5.0, 6.0, 0.3, 0.3, 0.3, 0.0][:size], [4.0, 7.0, 0.5, 0.4, 0.2, 0.0][:size],
                      [6.0, 5.0, 0.2, 0.35, 0.25, 0.0][:size]])
    if size == 4:
        theta[:, 3] = [0.1, 0.2, 0.15]
    rows = np.arange(3)
    _, grad = objective(theta, rows)
    step = 1e-6
    for index in range(size):
        shift = np.zeros(size)
        shift[index] = step
        numeric = (objective(theta + shift, rows)[0] - objective(theta - shift, rows)[0]) / (2 * step)
        np.testing.assert_allclose(grad[:, index], numeric, rtol=1e-5, atol=1e-8)


def test_recovers_exact_law_with_intervals():
    n, d, loss = synthetic_points()
    noisy = loss * np.exp(0.002 * np.random.default_rng(0).standard_normal(n.size))
    fit = fit_chinchilla(n, d, noisy, grid=SMALL_GRID, n_bootstrap=100, kaplan=False)
    assert fit["alpha"] == pytest.approx(0.34, abs=0.03)
    assert fit["beta"] == pytest.approx(0.28, abs=0.03)
    assert fit["E"] == pytest.approx(1.5, abs=0.05)
    for name, truth in (("alpha", 0.34), ("beta", 0.28), ("E", 1.5)):
        low, high = fit[f"{name}_ci"]
        assert low <= truth <= high, (name, low, high)
    np.testing.assert_allclose(jointlaw.predict_chinchilla(fit, n, d), noisy, rtol=0.01)


def test_degenerate_fit_on_real_small_budget_runs():
    """The 58 Chinchilla runs below 1.5e19 FLOP (its two smallest budgets) show no loss floor: the optimum puts
    E at ~1e-8, the lower edge of its range. That is flagged, not reported as an estimate, and never predicts."""
    n, d, loss = chinchilla_points(max_flop=1.5e19)
    fit = fit_chinchilla(n, d, loss, kaplan=False)
    assert fit["n_points"] == 58 and fit["E"] < 1e-3
    assert fit["degenerate"] and not fit["identifiable"] and fit["at_bounds"] == ["E"]
    assert "E is at its lower bound 0" in fit["reason"]
    with pytest.raises(JointLawError, match="degenerate"):
        jointlaw.predict_chinchilla(fit, n, d)


@pytest.mark.parametrize("points", [synthetic_points, lambda: chinchilla_points(drop_highest=5)],
                         ids=["synthetic", "chinchilla_all_runs"])
def test_well_posed_fit_is_not_degenerate(points):
    fit = fit_chinchilla(*points(), grid=SMALL_GRID, kaplan=False)
    assert fit["identifiable"] and not fit["degenerate"] and fit["at_bounds"] == []
    assert fit["E"] > 1.0 and "reason" not in fit


def test_exponents_at_either_end_of_the_range_are_at_bounds():
    data = jointlaw._prepare(*synthetic_points())
    found = jointlaw.at_bounds(np.array([6.0, 40.0, 0.4, 0.0, 2.5]), data)
    assert set(found) == {"alpha", "beta"}
    assert jointlaw.at_bounds(np.array([6.0, 7.0, 0.4, 0.34, 0.28]), data) == {}


def test_batched_lbfgs_solves_independent_quadratics():
    centres = np.array([[1.0, -2.0], [3.0, 0.5], [-4.0, 2.0]])
    scales = np.array([[1.0, 10.0], [0.1, 1.0], [5.0, 5.0]])

    def objective(theta, rows):
        gap = theta - centres[rows]
        return (scales[rows] * gap**2).sum(1), 2 * scales[rows] * gap

    x, values = jointlaw.batched_lbfgs(objective, np.zeros((3, 2)))
    np.testing.assert_allclose(x, centres, atol=1e-6)
    assert values.max() < 1e-10


def test_kaplan_diagnostic_fits_its_own_form():
    n, d = np.meshgrid(np.logspace(5, 9, 5), np.logspace(6, 11, 6))
    n, d = n.ravel(), d.ravel()
    truth = {"n_c": 8.8e13, "d_c": 5.4e13, "alpha_n": 0.076, "alpha_d": 0.103}
    loss = jointlaw.predict_kaplan(truth, n, d)
    fit = jointlaw.fit_kaplan(jointlaw._prepare(n, d, loss))
    assert fit["rms_log_residual"] < 1e-3
    np.testing.assert_allclose(jointlaw.predict_kaplan(fit, n, d), loss, rtol=2e-3)


def test_rejects_bad_points():
    with pytest.raises(JointLawError, match=r"loss\[2\]"):
        fit_chinchilla([1e6] * 3 + [1e7] * 3, [1e8, 1e9, 1e10] * 2, [3.0, 2.5, -1.0, 2.8, 2.4, 2.1])
    with pytest.raises(JointLawError, match="needs >= 5 points"):
        fit_chinchilla([1e6, 1e7], [1e8, 1e9], [3.0, 2.5])


@pytest.mark.slow
def test_chinchilla_replication_full_grid():
    """Besiroglu et al. (2024) on the Chinchilla points: alpha 0.3473, beta 0.3672, E 1.817 (~4,500 starts)."""
    runs = pd.read_csv(CHINCHILLA_CSV).sort_values("loss").iloc[:-5]
    n = runs["Model Size"].to_numpy()
    d = runs["Training FLOP"].to_numpy() / (6 * n)
    fit = fit_chinchilla(n, d, runs["loss"].to_numpy(), n_bootstrap=200, seed=0)
    assert fit["n_starts"] == 4500 and fit["n_points"] == 240
    assert fit["alpha"] == pytest.approx(0.3473, abs=0.005)
    assert fit["beta"] == pytest.approx(0.3672, abs=0.005)
    assert fit["E"] == pytest.approx(1.817, abs=0.01)
    assert fit["alpha_ci"][0] < 0.3473 < fit["alpha_ci"][1] and fit["E_ci"][0] < 1.817 < fit["E_ci"][1]
    assert fit["grid_seconds"] < 60
    print(f"full start grid: {fit['grid_seconds']:.1f} s; alpha {fit['alpha']:.4f} beta {fit['beta']:.4f} "
          f"E {fit['E']:.4f}; alpha CI {fit['alpha_ci']}; Kaplan rms {fit['kaplan']['rms_log_residual']:.4f}")
