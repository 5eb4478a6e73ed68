"""Tests of the transfer-law fit: check values, recovery of a known law, statuses, validation, outputs."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy.interpolate import PchipInterpolator
from scipy.optimize import brentq, least_squares

from transfer_scaling.fit import bootstrap, derived, scratch, study, transferlaw
from transfer_scaling.fit.study import fit_file, fit_runs
from transfer_scaling.fit.table import FitError
from transfer_scaling.report.advice import advise

TRUE_LAW = {"k": 275.0, "alpha": 0.18, "beta": 0.38}
N_VALUES = (1e5, 3e5, 1e6, 3e6, 1e7)
D_F_VALUES = (1e3, 3e3, 1e4, 3e4, 1e5)


def true_loss(n_params, d_chars):
    """A data-limited joint law in characters, E + A/N^0.35 + B/D^0.5: within 1% of L_inf near D = 5e7-1e8."""
    return 0.8 + 30.0 / np.power(n_params, 0.35) + 95.0 / np.power(d_chars, 0.5)


def synthetic_runs(seed: int = 0, noise: float = 0.005, finetune_seeds: int = 2, scratch_noise: float = 0.0,
                   scratch_seeds: int = 1, n_values: tuple = N_VALUES) -> pd.DataFrame:
    """Scratch runs on the true L(N, D) and fine-tuned runs at L(N, D_F + k D_F^alpha N^beta), each with its own
    multiplicative noise (scratch noise from a stream of its own); one pretraining run per N (its compute is
    reported apart)."""
    rng, scratch_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    rows = []
    for n_params in n_values:
        rows.append({"kind": "pretrain", "source": "text", "n_params": n_params, "data_chars": 1e8,
                     "test_loss": 1.0, "compute": 6 * n_params * 3e7})
        for d_chars in np.logspace(4, 8.5, 10):
            for seed_index in range(scratch_seeds):
                loss = true_loss(n_params, d_chars) * (1 + scratch_noise * scratch_rng.standard_normal())
                rows.append({"kind": "scratch", "source": "", "n_params": n_params, "data_chars": d_chars,
                             "seed": seed_index, "test_loss": loss, "compute": 6 * n_params * d_chars})
        for d_f in D_F_VALUES:
            d_effective = d_f + transferlaw.transferred_data(**TRUE_LAW, n_params=n_params, d_f_chars=d_f)
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
    text = transferlaw.transferred_data(1.9e4, 0.18, 0.38, 1.75e11, 1.0)
    mixed = transferlaw.transferred_data(2.1e5, 0.096, 0.38, 1.75e11, 1.0)
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


def scipy_effective_data(d_chars: np.ndarray, test_loss: np.ndarray, loss: float) -> tuple[str, float, float]:
    """The reference for ``ScratchCurves.effective_data``: (range status, D_E, secant slope) from scipy's
    PchipInterpolator through the monotone envelope, inverted by brentq."""
    envelope = np.minimum.accumulate(test_loss)
    keep = np.r_[True, envelope[1:] < envelope[:-1]]
    log_d, envelope = np.log(d_chars[keep]), envelope[keep]
    if loss < envelope[-1] or loss > envelope[0]:
        return ("censored" if loss < envelope[-1] else "below_range"), math.nan, math.nan
    if envelope.size == 1:
        return "ok", d_chars[0], 0.0
    segment = int(np.clip(np.searchsorted(-envelope, -loss) - 1, 0, envelope.size - 2))
    pchip = PchipInterpolator(log_d, envelope)
    root = brentq(lambda x: float(pchip(x)) - loss, log_d[segment], log_d[segment + 1], xtol=1e-14)
    return "ok", math.exp(root), (envelope[segment] - envelope[segment + 1]) / (log_d[segment + 1] - log_d[segment])


def scipy_low_data_limit(d_chars: np.ndarray, test_loss: np.ndarray) -> float:
    """The reference for ``ScratchCurves.low_data_limit`` (tolerance 0.01, fraction 0.1): L_N fitted by scipy's
    least_squares from the same starts within the same bounds, its D(N) capped at the largest D."""
    log_d, lowest = np.log(d_chars), test_loss.min()
    lower, upper = [0.0, -scratch.LN_A_BOUND, scratch.MIN_EXPONENT], [lowest, scratch.LN_A_BOUND, scratch.MAX_EXPONENT]
    fits = [least_squares(lambda t: np.log(t[0] + np.exp(t[1] - t[2] * log_d)) - np.log(test_loss),
                          np.clip([share * lowest, math.log(test_loss[0] - share * lowest) + exponent * log_d[0],
                                   exponent], lower, upper), bounds=(lower, upper))
            for exponent, share in scratch.SCRATCH_LAW_STARTS]
    l_inf, ln_a, exponent = min(fits, key=lambda fit: fit.cost).x
    return 0.1 * min((math.exp(ln_a) / (0.01 * l_inf)) ** (1 / exponent), d_chars[-1])


def test_scratch_curves_reproduce_the_point_estimate_and_scipy():
    """The scratch curves, given every run once, give the point estimate's D_E, slope and low-data limit; on subsets
    of D they agree with scipy's PCHIP inverted by brentq and with scipy's least-squares fit of L_N."""
    runs = synthetic_runs(scratch_noise=0.005)
    fit = fit_runs(runs, n_bootstrap=0, joint_law=False)
    points = pd.DataFrame(fit["points"])
    for n_params in N_VALUES:
        own = runs[(runs["kind"] == "scratch") & (runs["n_params"] == n_params)].sort_values("data_chars")
        curves = scratch.ScratchCurves(n_params, own["data_chars"].to_numpy(), own["test_loss"].to_numpy()[None],
                                       0.01, 0.1)
        assert curves.low_data_limit[0] == pytest.approx(fit["scratch"][study.n_key(n_params)]["low_data_limit"],
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
        curves = scratch.ScratchCurves(1e6, d_chars[drawn], test_loss[drawn][None], 0.01, 0.1)
        for loss in rng.uniform(test_loss.min() - 0.05, test_loss.max() + 0.05, 10):
            d_effective, slope, status = (value[0, 0] for value in curves.effective_data(np.array([[loss]])))
            expected = scipy_effective_data(d_chars[drawn], test_loss[drawn], loss)
            assert status == expected[0]
            if status == "ok":
                assert d_effective == pytest.approx(expected[1], rel=1e-9) and slope == pytest.approx(expected[2])
        assert curves.low_data_limit[0] == pytest.approx(scipy_low_data_limit(d_chars[drawn], test_loss[drawn]),
                                                         rel=1e-3)


def test_bootstrap_keeps_every_scratch_point():
    """An N with one scratch run at each of two D: every resample keeps both points (a curve needs two), since the
    bootstrap redraws the noise of each point instead of drawing the runs of an N; the summary counts the points."""
    runs = synthetic_runs()
    sparse = (runs["kind"] == "scratch") & (runs["n_params"] == 1e5) & ~runs["data_chars"].isin([1e4, 10**8.5])
    fit = fit_runs(runs[~sparse], n_bootstrap=200, joint_law=False)
    assert fit["bootstrap"]["n_resamples"] == 200
    assert fit["bootstrap"]["scratch_cells_one_seed"] == 2 + 4 * 10
    assert fit["bootstrap"]["scratch_cells_several_seeds"] == 0
    assert fit["sources"]["text"]["appendix_c"]["n_bootstrap_identifiable"] == 200


def test_redrawn_points_spread_like_a_new_mean_of_as_many_seeds():
    """Deviations of three seeds, scaled by sqrt(3/2): a point of three seeds redrawn from them spreads like the
    mean of three new seeds (three of three alone would shrink the variance by 2/3); a one-seed point is its
    centre times e^d."""
    seeds = np.array([1.0, 1.03, 0.98])
    pool = bootstrap.seed_deviations(np.array([0, 0, 0, 1]), np.r_[seeds, 2.0])
    assert pool.size == 3 and pool.std() == pytest.approx(np.log(seeds).std(ddof=1))
    losses = bootstrap.redraw_cells(np.random.default_rng(0), np.array([1.0, 3.0]), np.array([3, 1]), pool, 20000)
    assert losses[:, 0].std() == pytest.approx(np.log(seeds).std(ddof=1) / math.sqrt(3), rel=0.05)
    assert set(np.round(losses[:, 1], 9)) == set(np.round(3.0 * np.exp(pool), 9))


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
    summary = fit["scratch"][study.n_key(1e6)]
    l_inf = 0.8 + 30.0 / 1e6**0.35
    assert summary["law"]["l_inf"] == pytest.approx(l_inf, rel=1e-3)
    assert summary["d_converged"] == pytest.approx((95.0 / (0.01 * l_inf)) ** 2, rel=0.02)
    assert summary["d_converged_source"] == "L_N fit"
    assert summary["low_data_limit"] == pytest.approx(0.1 * summary["d_converged"])


def test_scratch_fit_falls_back_to_largest_d_and_says_so():
    summary = scratch.ScratchCurves(1e6, np.array([1e4, 1e5]), np.array([3.0, 2.5]), 0.01, 0.1).summary()
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
    ours = transferlaw.huber_regression(design, target, np.ones((1, 40)), delta=0.05)[0]
    reference = least_squares(lambda c: design @ c - target, np.zeros(3), loss="huber", f_scale=0.05,
                              xtol=1e-14, ftol=1e-14, gtol=1e-14).x
    np.testing.assert_allclose(ours, reference, atol=1e-7)


@pytest.mark.parametrize(("n_params", "d_f"), [(1e8, 1e6), (1e9, 1e12)])
def test_data_worth_of_10x_model_solves_equal_effective_data(n_params, d_f):
    """Also at huge sizes (1e9 parameters, 1e12 characters), where the root is sought in ln D."""
    k, alpha, beta = 1.9e4, 0.18, 0.38
    x = derived.data_worth_of_10x_model(k, alpha, beta, n_params, d_f)
    larger_model = d_f + transferlaw.transferred_data(k, alpha, beta, 10 * n_params, d_f)
    more_data = x * d_f + transferlaw.transferred_data(k, alpha, beta, n_params, x * d_f)
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
    answer = advise(fit, "text", 1e7, 1e4, study.load_draws(tmp_path / "fit"))
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


SMALL_N_VALUES = (1e5, 1e6, 1e7)


def test_negative_alpha_is_not_defined_and_the_fit_goes_on():
    """3 sizes, 5 D_F, one seed, 2% noise on every run: this replicate's Appendix C alpha comes out negative, so no
    amount of data trades against a 10x model. The fit used to abort in brentq, with nothing written for any source."""
    runs = synthetic_runs(seed=35, noise=0.02, scratch_noise=0.02, finetune_seeds=1, n_values=SMALL_N_VALUES)
    fit = fit_runs(runs, n_bootstrap=50, joint_law=False)
    block = fit["sources"]["text"]["appendix_c"]
    assert block["alpha"] < 0
    derived = block["derived"]
    assert derived["data_worth_of_10x_model_equal_d_transferred"] is None
    assert derived["data_worth_of_10x_model_equal_d_transferred_status"].startswith("not_defined: alpha = -")
    for row in derived["grid"]:
        assert row["data_worth_of_10x_model_equal_d_effective"] is None
        assert row["data_worth_of_10x_model_equal_d_effective_status"].startswith("not_defined: alpha = -")
    assert fit["sources"]["text"]["huber"]["derived"]["data_worth_of_10x_model_equal_d_transferred_status"] == "ok"
    json.dumps(fit, allow_nan=False)


@pytest.mark.parametrize(("quantity", "args", "reason"), [
    (derived.data_worth_of_10x_model_equal_d_transferred, (-0.1, 0.38), "not_defined: alpha = -0.1 <= 0"),
    (derived.data_worth_of_10x_model_equal_d_transferred, (0.0, 0.38), "not_defined: alpha = 0 <= 0"),
    (derived.data_worth_of_10x_model_equal_d_transferred, (1e-4, 0.38), "beyond floating point: alpha = 0.0001"),
    (derived.data_worth_of_10x_model, (275.0, -0.1, 0.38, 1e6, 1e4), "not_defined: alpha = -0.1 <= 0"),
])
def test_trade_off_that_does_not_exist_is_not_defined(quantity, args, reason):
    """10^(beta/alpha) overflowed (OverflowError) for alpha near 0; neither trade-off exists for alpha <= 0."""
    value = derived.derived("x", quantity, *args)
    assert value["x"] is None and reason in value["x_status"]


def test_scratch_sweep_gets_its_curves_and_joint_law(tmp_path, caplog):
    """No fine-tuned run (a from-scratch L(N, D) sweep): the fit used to stop on a TypeError; it now writes the
    scratch curves, D(N) and the joint law, and says that there is nothing to fit for D_T."""
    runs = synthetic_runs(scratch_noise=0.005)
    runs[runs["kind"] != "finetune"].to_csv(tmp_path / "runs.csv", index=False)
    with caplog.at_level("WARNING", logger="transfer_scaling.fitting"):
        fit = fit_file(tmp_path / "runs.csv", tmp_path / "fit", n_bootstrap=20)
    assert fit["transfer_law_status"].startswith("nothing_to_fit: the table has no fine-tuned run")
    assert "nothing_to_fit" in caplog.text
    assert fit["sources"] == {} and fit["points"] == []
    assert len(fit["scratch"]) == len(N_VALUES)
    assert fit["scratch"][study.n_key(1e6)]["d_converged_source"] == "L_N fit"
    assert fit["joint_law"]["identifiable"] and fit["joint_law"]["E"] == pytest.approx(0.8, rel=0.1)
    assert json.loads((tmp_path / "fit" / "transfer_fit.json").read_text())["sources"] == {}


def test_header_only_table_says_there_is_nothing_to_fit(tmp_path):
    (tmp_path / "runs.csv").write_text("kind,source,n_params,data_chars,test_loss\n")
    fit = fit_file(tmp_path / "runs.csv", tmp_path / "fit", n_bootstrap=20)
    assert fit["transfer_law_status"].startswith("nothing_to_fit")
    assert fit["scratch"] == {} and fit["sources"] == {}
    assert fit["joint_law"]["identifiable"] is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.assign(kind=r["kind"].replace("scratch", "Scratch")),
         "kind 'Scratch' in rows 1, 2, 3, 4, 5, 6 and 44 more: unknown kind of run; accepted kinds: "
         "['pretrain', 'finetune', 'scratch']"),
        (lambda r: r.assign(kind=r["kind"].where(r.index != 12, None)), "kind '' in row 12: unknown kind"),
        (lambda r: r.assign(kind=r["kind"].replace("finetune", "fine-tune")), "kind 'fine-tune' in rows 11, 12"),
        (lambda r: pd.concat([r, r.iloc[[3, 12]]], ignore_index=True),
         "duplicated rows: rows 3, 80 repeat one run (kind 'scratch', source '', n_params 100000, data_chars "
         "100000, seed 0.0); rows 12, 81 repeat one run"),
        (lambda r: r.assign(test_loss=r["test_loss"].astype(object).where(r.index != 7, "abc")),
         "row 7: column 'test_loss' is 'abc'"),
        (lambda r: r.assign(data_chars=r["data_chars"].where(r.index != 2, -5.0)),
         "row 2: column 'data_chars' is -5.0"),
    ],
)
def test_rows_that_would_be_dropped_or_double_counted_are_refused(change, message):
    """An unknown kind used to vanish from the fit, a duplicated row to count as a seed, and a bad loss to be
    reported as np.float64(nan)."""
    with pytest.raises(FitError, match=re.escape(message)):
        fit_runs(change(synthetic_runs(finetune_seeds=1)), n_bootstrap=10, joint_law=False)


def test_spaces_around_kind_and_source_are_ignored():
    """' scratch' used to be an unknown kind, so its N had 'no successful scratch run'."""
    runs = synthetic_runs()
    padded = runs.assign(kind=" " + runs["kind"] + " ", source=runs["source"] + " ")
    assert fit_runs(padded, n_bootstrap=10, joint_law=False)["points"] == \
        fit_runs(runs, n_bootstrap=10, joint_law=False)["points"]


def test_rows_of_a_point_without_seed_column_are_its_seeds():
    """Distinct seeds are seeds; without a seed column the rows of a point cannot be told apart and are averaged."""
    fit = fit_runs(synthetic_runs().drop(columns="seed"), n_bootstrap=10, joint_law=False)
    assert {p["n_seeds"] for p in fit["points"]} == {2}


def test_held_out_size_is_predicted_from_the_others():
    """Exact fine-tuned losses from a known law: the law fitted on the four smaller sizes predicts the largest size's
    losses through its scratch curve to interpolation accuracy, and the reported numbers compose."""
    runs = synthetic_runs(noise=0.0, finetune_seeds=1)
    runs["size"] = runs["n_params"].map({n: f"size{i}" for i, n in enumerate(N_VALUES)})
    held = fit_runs(runs, n_bootstrap=10, joint_law=False)["sources"]["text"]["held_out_prediction"]
    assert held["status"] == "ok" and held["size"] == "size4" and held["n_params"] == 1e7
    assert held["method"] == "appendix_c" and held["fitted_n_params"] == list(N_VALUES[:-1])
    assert held["alpha"] == pytest.approx(TRUE_LAW["alpha"], abs=1e-3) and held["beta"] == pytest.approx(0.38, abs=1e-3)
    assert [point["d_f_chars"] for point in held["points"]] == list(D_F_VALUES)
    for point in held["points"]:
        d_transferred = transferlaw.transferred_data(held["k"], held["alpha"], held["beta"], 1e7, point["d_f_chars"])
        assert point["predicted_d_transferred"] == pytest.approx(d_transferred)
        assert point["predicted_d_effective"] == pytest.approx(point["d_f_chars"] + d_transferred)
        assert point["measured_loss"] == pytest.approx(true_loss(1e7, point["d_f_chars"] + transferlaw.transferred_data(
            **TRUE_LAW, n_params=1e7, d_f_chars=point["d_f_chars"])))
        assert point["error_percent"] == pytest.approx(
            100 * (point["predicted_loss"] - point["measured_loss"]) / point["measured_loss"])
        assert point["extrapolated"] is False
    assert held["max_abs_error_percent"] < 0.05
    assert held["max_abs_error_percent"] == max(abs(point["error_percent"]) for point in held["points"])


def test_held_out_prediction_needs_two_other_sizes():
    runs = synthetic_runs()
    fit = fit_runs(runs[runs["n_params"].isin([1e6, 1e7])], n_bootstrap=10, joint_law=False)
    assert fit["sources"]["text"]["held_out_prediction"] == {
        "size": None, "n_params": 1e7,
        "status": "not_available: 1 smaller size(s) with fitted points; predicting another size takes 2"}


REPLICATE_SD = {"alpha": 0.0177, "beta": 0.0204}
"""Appendix C's alpha and beta over 40 replicates of ``synthetic_runs(seed=100..139, noise=0.005, scratch_noise=0.005,
finetune_seeds=1)``: the spread that an honest 95% interval spans about 3.92 times."""


def test_one_seed_intervals_are_as_wide_as_the_spread_of_the_estimates():
    """One seed per point, 0.5% noise on every run: over 8 replicate tables the intervals cover the truth in 7 of 8
    or more, and their mean width is about 3.92 replicate SDs. Drawing the runs of an N made beta's 2.2x too wide,
    as every resample left out a third of the scratch D grid."""
    widths, covered = {"alpha": [], "beta": []}, {"alpha": 0, "beta": 0}
    for replicate in range(8):
        runs = synthetic_runs(seed=100 + replicate, noise=0.005, scratch_noise=0.005, finetune_seeds=1)
        block = fit_runs(runs, n_bootstrap=200, seed=replicate, joint_law=False)["sources"]["text"]["appendix_c"]
        for name in widths:
            low, high = block[f"{name}_ci"]
            widths[name].append(high - low)
            covered[name] += low <= TRUE_LAW[name] <= high
    assert min(covered.values()) >= 7, covered
    for name, spread in REPLICATE_SD.items():
        assert 0.7 < np.mean(widths[name]) / (3.92 * spread) < 1.35, (name, np.mean(widths[name]) / (3.92 * spread))


@pytest.mark.parametrize(("estimator", "tolerance"), [("interpolation", 0.05), ("scratch_law", 1e-4),
                                                      ("joint_law", 1e-3)])
def test_each_estimator_reads_the_known_d_transferred(estimator, tolerance):
    """Noise-free runs of a known world: every estimator reads D_T = k D_F^alpha N^beta back at every fitted point,
    the laws' inverses exactly (they are the world's form), interpolation through 10 scratch points to a few
    percent; alpha and beta follow."""
    fit = fit_runs(synthetic_runs(noise=0.0, finetune_seeds=1), n_bootstrap=20, joint_law=False, estimator=estimator)
    used = [point for point in fit["points"] if point["status"] == "ok"]
    assert len(used) == len(N_VALUES) * len(D_F_VALUES)
    for point in used:
        truth = transferlaw.transferred_data(**TRUE_LAW, n_params=point["n_params"], d_f_chars=point["d_f_chars"])
        assert point["d_transferred"] == pytest.approx(truth, rel=tolerance), point
    block = fit["sources"]["text"]["appendix_c"]
    assert block["alpha"] == pytest.approx(TRUE_LAW["alpha"], abs=20 * tolerance)
    assert block["beta"] == pytest.approx(TRUE_LAW["beta"], abs=20 * tolerance)
    assert fit["options"]["estimator"] == estimator
    assert {summary["estimator"] for summary in fit["scratch"].values()} == {estimator}
    assert all((summary["estimator_law"] is None) == (estimator == "interpolation")
               for summary in fit["scratch"].values())


def test_law_estimators_flag_out_of_range_and_flat_points_as_interpolation_does():
    """The inverse of a law reads D_E only within the scratch D: a loss below the law at the largest D is censored,
    one above it at the smallest D below_range; the slope that flags ill-conditioned points is the law's."""
    curves = scratch.ScratchCurves(1e6, np.logspace(4, 8.5, 10), true_loss(1e6, np.logspace(4, 8.5, 10))[None],
                                   0.01, 0.1, "scratch_law")
    lowest, highest = true_loss(1e6, 10**8.5), true_loss(1e6, 1e4)
    inside = true_loss(1e6, 3e5)
    d_effective, slope, status = curves.effective_data(np.array([[lowest - 0.01, highest + 0.01, inside]]))
    assert list(status[0]) == ["censored", "below_range", "ok"]
    assert d_effective[0, 0] == 10**8.5 and d_effective[0, 1] == 1e4
    assert d_effective[0, 2] == pytest.approx(3e5, rel=1e-4)
    assert slope[0, 2] == pytest.approx(0.5 * 95.0 / math.sqrt(3e5), rel=1e-3)
    assert curves.estimated_loss_at([3e5])[0, 0] == pytest.approx(inside, rel=1e-5)


def test_estimator_is_checked_and_a_degenerate_joint_law_is_refused():
    with pytest.raises(FitError, match=r"estimator = 'spline': must be one of \['interpolation'"):
        fit_runs(synthetic_runs(), n_bootstrap=10, estimator="spline")
    with pytest.raises(FitError, match="estimator joint_law: the joint law of the scratch runs cannot be inverted"):
        fit_runs(status_runs(), n_bootstrap=10, joint_law=False, estimator="joint_law")
