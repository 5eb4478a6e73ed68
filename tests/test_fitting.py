"""Tests of the transfer-law fit: check values, recovery of a known law, statuses, validation, outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import least_squares

from transfer_scaling import fitting
from transfer_scaling.fitting import FitError, advise, fit_file, fit_runs

TRUE_LAW = {"k": 275.0, "alpha": 0.18, "beta": 0.38}
N_VALUES = (1e5, 3e5, 1e6, 3e6, 1e7)
D_F_VALUES = (1e3, 3e3, 1e4, 3e4, 1e5)


def true_loss(n_params, d_chars):
    """A data-limited joint law in characters, E + A/N^0.35 + B/D^0.5: within 1% of L_inf near D = 5e7-1e8."""
    return 0.8 + 30.0 / np.power(n_params, 0.35) + 95.0 / np.power(d_chars, 0.5)


def synthetic_runs(seed: int = 0, noise: float = 0.005, finetune_seeds: int = 2, scratch_noise: float = 0.0,
                   scratch_seeds: int = 1) -> pd.DataFrame:
    """Scratch runs on the true L(N, D) and fine-tuned runs at L(N, D_F + k D_F^alpha N^beta), each with its own
    multiplicative noise (scratch noise from a stream of its own); one pretraining run per N (its compute is
    reported apart)."""
    rng, scratch_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    rows = []
    for n_params in N_VALUES:
        rows.append({"kind": "pretrain", "source": "text", "n_params": n_params, "data_chars": 1e8,
                     "test_loss": 1.0, "compute": 6 * n_params * 3e7})
        for d_chars in np.logspace(4, 8.5, 10):
            for seed_index in range(scratch_seeds):
                loss = true_loss(n_params, d_chars) * (1 + scratch_noise * scratch_rng.standard_normal())
                rows.append({"kind": "scratch", "source": "", "n_params": n_params, "data_chars": d_chars,
                             "seed": seed_index, "test_loss": loss, "compute": 6 * n_params * d_chars})
        for d_f in D_F_VALUES:
            d_effective = d_f + fitting.transferred_data(**TRUE_LAW, n_params=n_params, d_f_chars=d_f)
            for seed_index in range(finetune_seeds):
                loss = true_loss(n_params, d_effective) * (1 + noise * rng.standard_normal())
                rows.append({"kind": "finetune", "source": "text", "n_params": n_params, "data_chars": d_f,
                             "seed": seed_index, "test_loss": loss, "compute": 6 * n_params * d_f})
    return pd.DataFrame(rows)


def status_runs() -> pd.DataFrame:
    """One N whose scratch curve flattens between 1e6 and 1e7 characters, and one fine-tuned point per status."""
    scratch = [(1e4, 3.0), (1e5, 2.5), (1e6, 2.0), (1e7, 1.99)]
    finetune = [(1e3, 1.9), (2e3, 3.2), (3e3, 1.995), (4e4, 2.9), (5e3, 2.4)]
    rows = [{"kind": "scratch", "source": "", "n_params": 1e6, "data_chars": d, "test_loss": loss}
            for d, loss in scratch]
    rows += [{"kind": "finetune", "source": "text", "n_params": 1e6, "data_chars": d, "test_loss": loss}
             for d, loss in finetune]
    return pd.DataFrame(rows)


def point_status(fit: dict, d_f_chars: float) -> dict:
    (point,) = [p for p in fit["points"] if p["d_f_chars"] == d_f_chars]
    return point


def test_check_values_of_section_6_2():
    """Table 1's laws at N = 1.75e11, D_F = 1: D_T ~ 3.7e8 (text) and ~ 4.1e9 (text + code)."""
    text = fitting.transferred_data(1.9e4, 0.18, 0.38, 1.75e11, 1.0)
    mixed = fitting.transferred_data(2.1e5, 0.096, 0.38, 1.75e11, 1.0)
    assert text == pytest.approx(3.7e8, rel=0.06)
    assert mixed == pytest.approx(4.1e9, rel=0.06)
    assert 300**0.18 == pytest.approx(2.8, abs=0.05) and 300**0.096 == pytest.approx(1.7, abs=0.05)


@pytest.mark.slow
def test_recovers_known_law_with_noise():
    """Five replicates with 0.5% noise on every run, scratch runs included: every estimate within about three
    replicate-to-replicate standard deviations of the truth (alpha 0.016, beta 0.020 over 60 replicates); each
    95% interval (bootstrap over runs) covers it in >= 4 of 5."""
    covered = {(method, name): 0 for method in ("appendix_c", "huber") for name in TRUE_LAW}
    for replicate in range(5):
        fit = fit_runs(synthetic_runs(seed=replicate, scratch_noise=0.005), n_bootstrap=1000, seed=0, joint_law=False)
        source = fit["sources"]["text"]
        assert source["n_points_used"] == len(N_VALUES) * len(D_F_VALUES)
        for method in ("appendix_c", "huber"):
            block = source[method]
            assert abs(block["alpha"] - TRUE_LAW["alpha"]) < 0.05, (replicate, method, block["alpha"])
            assert abs(block["beta"] - TRUE_LAW["beta"]) < 0.06, (replicate, method, block["beta"])
            assert 0.5 < block["k"] / TRUE_LAW["k"] < 2.0, (replicate, method, block["k"])
            assert block["r_squared"] > 0.95 and block["n_bootstrap_identifiable"] == 1000
            for name, truth in TRUE_LAW.items():
                low, high = block[f"{name}_ci"]
                covered[method, name] += low <= truth <= high
    assert min(covered.values()) >= 4, covered
    derived = source["appendix_c"]["derived"]
    assert derived["data_worth_of_10x_model_equal_d_transferred"] == pytest.approx(
        10 ** (source["appendix_c"]["beta"] / source["appendix_c"]["alpha"]))
    assert all(row["fraction"] == pytest.approx((row["multiplier"] - 1) / row["multiplier"]) for row in derived["grid"])


def test_bootstrap_resamples_scratch_seeds_as_runs():
    """Two tables with the same seed averages: scratch seeds that disagree must widen the intervals, which a
    bootstrap over averaged points cannot see; the point estimate stays the same."""
    agreeing = synthetic_runs(scratch_seeds=2)
    spread = agreeing.copy()
    scratch = spread["kind"] == "scratch"
    spread.loc[scratch, "test_loss"] *= np.where(spread.loc[scratch, "seed"] == 0, 1.01, 0.99)
    fits = [fit_runs(runs, n_bootstrap=300, joint_law=False)["sources"]["text"] for runs in (agreeing, spread)]
    for method in ("appendix_c", "huber"):
        quiet, noisy = (fit[method] for fit in fits)
        assert noisy["beta"] == pytest.approx(quiet["beta"], rel=1e-9)
        assert noisy["alpha"] == pytest.approx(quiet["alpha"], rel=1e-9)
        for name in ("alpha", "beta"):
            width = [block[f"{name}_ci"][1] - block[f"{name}_ci"][0] for block in (quiet, noisy)]
            assert width[1] > 1.5 * width[0], (method, name, width)


def test_resampled_scratch_curves_reproduce_the_point_estimate():
    """The vectorised scratch curves of the bootstrap, given every run once, give the point estimate's D_E,
    slope and low-data limit; on subsets of D they agree with ScratchCurve and fit_scratch_law."""
    runs = synthetic_runs(scratch_noise=0.005)
    fit = fit_runs(runs, n_bootstrap=0, joint_law=False)
    points = pd.DataFrame(fit["points"])
    for n_params in N_VALUES:
        scratch = runs[(runs["kind"] == "scratch") & (runs["n_params"] == n_params)].sort_values("data_chars")
        curves = fitting.ScratchResamples(scratch["data_chars"].to_numpy(), scratch["test_loss"].to_numpy()[None],
                                          0.01, 0.1)
        assert curves.low_data_limit[0] == pytest.approx(fit["scratch"][fitting.n_key(n_params)]["low_data_limit"],
                                                         rel=1e-4)
        mine = points[points["n_params"] == n_params]
        d_effective, slope, status = curves.effective_data(mine["test_loss"].to_numpy()[None])
        np.testing.assert_allclose(d_effective[0], mine["d_effective"], rtol=1e-9)
        np.testing.assert_allclose(slope[0], mine["scratch_slope"], rtol=1e-9)
        assert set(status[0]) == {"ok"}
    rng = np.random.default_rng(0)
    d_chars = np.logspace(4, 8.5, 10)
    for _ in range(20):
        test_loss = true_loss(1e6, d_chars) * (1 + 0.01 * rng.standard_normal(10))
        drawn = rng.random(10) < 0.6
        drawn[rng.choice(10, 3, replace=False)] = True
        curves = fitting.ScratchResamples(d_chars, np.where(drawn, test_loss, np.nan)[None], 0.01, 0.1)
        curve = fitting.ScratchCurve(1e6, d_chars[drawn], test_loss[drawn])
        for loss in rng.uniform(test_loss.min() - 0.05, test_loss.max() + 0.05, 10):
            d_effective, slope, status = (value[0, 0] for value in curves.effective_data(np.array([[loss]])))
            expected = curve.effective_data(loss)
            assert status == expected[2]
            if status == "ok":
                assert d_effective == pytest.approx(expected[0], rel=1e-9) and slope == pytest.approx(expected[1])
        summary = fitting.scratch_summary(curve, 0.01, 0.1)
        assert curves.low_data_limit[0] == pytest.approx(summary["low_data_limit"], rel=1e-3)


def test_scratch_draws_cover_two_d_values():
    """An N with one scratch run at each of two D: half of the draws cover one D and are redrawn."""
    counts, redraws = fitting._scratch_counts(np.random.default_rng(0), np.array([0, 1]), 2, 400)
    assert (counts > 0).all() and redraws > 100
    runs = synthetic_runs()
    sparse = (runs["kind"] == "scratch") & (runs["n_params"] == 1e5) & ~runs["data_chars"].isin([1e4, 10**8.5])
    fit = fit_runs(runs[~sparse], n_bootstrap=200, joint_law=False)
    assert fit["bootstrap"] == {"unit": "runs", "n_resamples": 200, "scratch_redraws": pytest.approx(200, rel=0.5)}
    assert fit["sources"]["text"]["appendix_c"]["n_bootstrap_identifiable"] == 200


def test_exact_points_give_the_law_exactly():
    """Noise-free fine-tuned losses: both fits return k, alpha, beta to numerical precision."""
    fit = fit_runs(synthetic_runs(noise=0.0, finetune_seeds=1), n_bootstrap=10, joint_law=False)
    for method in ("appendix_c", "huber"):
        block = fit["sources"]["text"][method]
        assert block["alpha"] == pytest.approx(TRUE_LAW["alpha"], abs=1e-4)
        assert block["beta"] == pytest.approx(TRUE_LAW["beta"], abs=1e-4)
        assert block["k"] == pytest.approx(TRUE_LAW["k"], rel=1e-3)


def test_statuses_of_points():
    fit = fit_runs(status_runs(), n_bootstrap=50, joint_law=False)
    expected = {1e3: "censored", 2e3: "below_range", 3e3: "ill_conditioned", 4e4: "no_transfer", 5e3: "ok"}
    for d_f_chars, status in expected.items():
        assert point_status(fit, d_f_chars)["status"] == status, d_f_chars
    censored = point_status(fit, 1e3)
    assert censored["d_effective"] == 1e7
    assert point_status(fit, 4e4)["d_transferred"] < 0
    ok = point_status(fit, 5e3)
    assert 1e5 < ok["d_effective"] < 1e6 and ok["d_transferred"] == pytest.approx(ok["d_effective"] - 5e3)
    source = fit["sources"]["text"]
    assert source["n_points_used"] == 1
    assert source["n_points_excluded"]["censored"] == 1 and source["n_points_excluded"]["no_transfer"] == 1
    assert source["huber"] == {"identifiable": False, "reason": "1 usable point(s); at least 3 are needed"}


def test_high_data_points_are_excluded():
    fit = fit_runs(synthetic_runs(), low_data_fraction=1e-6, n_bootstrap=10, joint_law=False)
    assert {p["status"] for p in fit["points"]} == {"high_data"}
    assert fit["sources"]["text"]["appendix_c"]["identifiable"] is False


def test_low_data_limit_from_scratch_fit():
    fit = fit_runs(synthetic_runs(), n_bootstrap=10, joint_law=False)
    summary = fit["scratch"][fitting.n_key(1e6)]
    l_inf = 0.8 + 30.0 / 1e6**0.35
    assert summary["law"]["l_inf"] == pytest.approx(l_inf, rel=1e-3)
    assert summary["d_converged"] == pytest.approx((95.0 / (0.01 * l_inf)) ** 2, rel=0.02)
    assert summary["d_converged_source"] == "L_N fit"
    assert summary["low_data_limit"] == pytest.approx(0.1 * summary["d_converged"])


def test_scratch_fit_falls_back_to_largest_d_and_says_so():
    summary = fitting.scratch_summary(fitting.ScratchCurve(1e6, np.array([1e4, 1e5]), np.array([3.0, 2.5])), 0.01, 0.1)
    assert summary["d_converged"] == 1e5
    assert "L_N fit failed" in summary["d_converged_source"]


def test_seeds_are_averaged_and_failed_runs_reported():
    runs = synthetic_runs()
    failed = {"kind": "finetune", "source": "text", "n_params": 1e6, "data_chars": 7e3, "test_loss": np.nan,
              "status": "failed"}
    runs = pd.concat([runs.assign(status="ok"), pd.DataFrame([failed])], ignore_index=True)
    fit = fit_runs(runs, n_bootstrap=10, joint_law=False)
    assert {p["n_seeds"] for p in fit["points"] if p["status"] != "failed"} == {2}
    assert point_status(fit, 7e3)["status"] == "failed"
    assert len(fit["failed_runs"]) == 1
    assert fit["sources"]["text"]["n_points_excluded"]["failed"] == 1
    assert fit["compute_by_kind"]["pretrain"] == pytest.approx(sum(6 * n * 3e7 for n in N_VALUES))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.drop(columns="test_loss"), "test_loss"),
        (lambda r: r.assign(n_params=r["n_params"].astype(object).where(r.index != 3, "big")),
         "row 3: column 'n_params'"),
        (lambda r: r.assign(data_chars=r["data_chars"].where(r.index != 2, -5.0)), "row 2: column 'data_chars'"),
        (lambda r: r.assign(test_loss=r["test_loss"].where(r.index != 4, np.nan)), "row 4: column 'test_loss'"),
        (lambda r: r[~((r["kind"] == "scratch") & (r["n_params"] == 1e6))], "N = 1e+06: fine-tuned runs but no"),
        (lambda r: r[~((r["kind"] == "scratch") & (r["n_params"] == 3e5) & (r["data_chars"] > 1e4))],
         "N = 300000: scratch runs at 1 value"),
        (lambda r: r.assign(status="done"), "status 'done'"),
    ],
)
def test_bad_tables_are_rejected_with_the_fault_named(change, message):
    with pytest.raises(FitError, match=message.replace("+", r"\+")):
        fit_runs(change(synthetic_runs()), n_bootstrap=10, joint_law=False)


def test_single_n_is_not_identifiable():
    runs = synthetic_runs()
    fit = fit_runs(runs[runs["n_params"] == 1e6], n_bootstrap=10, joint_law=False)
    for method in ("appendix_c", "huber"):
        assert fit["sources"]["text"][method]["identifiable"] is False
        assert "single N" in fit["sources"]["text"][method]["reason"]


def test_huber_irls_matches_scipy_least_squares():
    rng = np.random.default_rng(1)
    design = np.column_stack([np.ones(40), rng.normal(size=40), rng.normal(size=40)])
    target = design @ np.array([1.0, 0.2, -0.4]) + 0.05 * rng.standard_t(2, size=40)
    ours = fitting.huber_regression(design, target, np.ones((1, 40)), delta=0.05)[0]
    reference = least_squares(lambda c: design @ c - target, np.zeros(3), loss="huber", f_scale=0.05,
                              xtol=1e-14, ftol=1e-14, gtol=1e-14).x
    np.testing.assert_allclose(ours, reference, atol=1e-7)


def test_data_worth_of_10x_model_solves_equal_effective_data():
    k, alpha, beta, n_params, d_f = 1.9e4, 0.18, 0.38, 1e8, 1e6
    x = fitting.data_worth_of_10x_model(k, alpha, beta, n_params, d_f)
    larger_model = d_f + fitting.transferred_data(k, alpha, beta, 10 * n_params, d_f)
    more_data = x * d_f + fitting.transferred_data(k, alpha, beta, n_params, x * d_f)
    assert more_data == pytest.approx(larger_model, rel=1e-9)
    assert 1 < x < 10 ** (beta / alpha)


def test_ossification_onset():
    runs = status_runs().iloc[:4]
    ft = [(1e4, 2.6), (1e5, 2.55), (1e6, 2.1)]
    runs = pd.concat([runs, pd.DataFrame([{"kind": "finetune", "source": "text", "n_params": 1e6, "data_chars": d,
                                           "test_loss": loss} for d, loss in ft])], ignore_index=True)
    (entry,) = fit_runs(runs, n_bootstrap=10, joint_law=False)["sources"]["text"]["ossification"]
    assert entry["d_f_chars"] == 1e5
    assert entry["loss_gap"] == pytest.approx([-0.4, 0.05, 0.1])


def test_compute_comparison():
    fit = fit_runs(synthetic_runs(), n_bootstrap=10, joint_law=False)
    point = [p for p in fit["points"] if p["n_params"] == 1e7 and p["d_f_chars"] == 1e3][0]
    assert point["compute_scratch_equivalent"] == pytest.approx(6e7 * point["d_effective"], rel=1e-6)
    assert point["finetune_cheaper"] is True
    assert point["finetune_cheaper_with_pretraining"] is False


def test_fit_file_writes_outputs_and_advise(tmp_path):
    runs_csv = tmp_path / "runs.csv"
    synthetic_runs().to_csv(runs_csv, index=False)
    fit_file(runs_csv, tmp_path / "fit", n_bootstrap=100, joint_law=False)
    fit = json.loads((tmp_path / "fit" / "transfer_fit.json").read_text())
    points = pd.read_csv(tmp_path / "fit" / "points.csv")
    assert len(points) == len(N_VALUES) * len(D_F_VALUES)
    assert {"d_effective", "d_transferred", "status"} <= set(points.columns)
    draws = pd.read_csv(tmp_path / "fit" / "bootstrap.csv")
    assert set(draws["method"]) == {"appendix_c", "huber"} and len(draws) == 200
    answer = advise(fit, "text", 1e7, 1e4)
    assert answer["method"] == "appendix_c"
    assert answer["10x_data"]["d_effective"] > answer["current"]["d_effective"]
    expected = 0.8 + 30.0 / 1e7**0.35 + 95.0 / math.sqrt(answer["current"]["d_effective"])
    assert answer["current"]["predicted_loss"] == pytest.approx(expected, rel=0.01)
    assert answer["10x_params"]["predicted_loss"] is None
    assert any("no scratch curve at N = 1e+08" in note for note in answer["notes"])
    assert any(note.startswith("extrapolating the law: n_params") for note in answer["notes"])
    with pytest.raises(FitError, match="source 'code'"):
        advise(fit, "code", 1e6, 1e4)


def test_unknown_option_is_rejected(tmp_path):
    with pytest.raises(FitError, match="unknown fit option"):
        fit_file(tmp_path / "runs.csv", tmp_path, bootstrap=5)
