"""Loss and score laws over the pretraining data D_p (Isik et al. 2024), their predictions and the verdict."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from test_fitting import synthetic_runs
from transfer_scaling.fit.dplaw import (CHRF_RTOL, SCORE_RTOL, DPLawError, alignment_verdict, analyse_dp, fit_dp_loss,
                                    fit_dp_score, predict_dp_loss, predict_dp_score, write_dp_analysis)
from transfer_scaling.fit.study import fit_file

D_P = np.logspace(6, 10, 9)
LOSS_LAW = {"E": 1.5, "A": 30.0, "alpha": 0.3}
SCORE_LAW = {"ln_A": np.log(1e-4), "alpha": 0.8, "beta": 1.5}
CHRF_LAW = {"ln_A": np.log(0.5), "alpha": 0.3, "beta": 2.0}
"""chrF from about 12 to 39 over D_P: a floor well above zero and a slow rise, unlike BLEU's law."""


def true_loss(d_p: np.ndarray) -> np.ndarray:
    return predict_dp_loss(LOSS_LAW, d_p)


def true_score(d_p: np.ndarray) -> np.ndarray:
    return predict_dp_score(SCORE_LAW, d_p)


def noisy(values: np.ndarray, scale: float, seed: int = 0) -> np.ndarray:
    return values * np.exp(scale * np.random.default_rng(seed).standard_normal(values.size))


def test_loss_fit_recovers_the_law_and_predicts_exact_points() -> None:
    fit = fit_dp_loss(D_P, true_loss(D_P), n_fit=6)
    for name, value in LOSS_LAW.items():
        assert fit[name] == pytest.approx(value, rel=1e-6)
    assert [point["d_p"] for point in fit["held_out"]] == pytest.approx(D_P[6:])
    assert fit["max_rel_error_held_out"] < 1e-8


def test_loss_fit_recovers_the_law_under_small_noise() -> None:
    fit = fit_dp_loss(D_P, noisy(true_loss(D_P), 1e-3), n_fit=9)
    assert fit["E"] == pytest.approx(1.5, rel=0.02)
    assert fit["alpha"] == pytest.approx(0.3, abs=0.03)
    assert fit["A"] == pytest.approx(30.0, rel=0.3)


def test_loss_fit_ignores_the_input_order() -> None:
    order = np.random.default_rng(1).permutation(D_P.size)
    shuffled = fit_dp_loss(D_P[order], true_loss(D_P)[order], n_fit=6)
    assert shuffled["alpha"] == pytest.approx(0.3, rel=1e-6)
    assert shuffled["fit_points"]["d_p"] == pytest.approx(D_P[:6])


def test_score_fit_recovers_the_log_law() -> None:
    fit = fit_dp_score(D_P, true_score(D_P), n_fit=6)
    assert fit["alpha"] == pytest.approx(0.8, rel=1e-6)
    assert fit["beta"] == pytest.approx(1.5, rel=1e-6)
    assert fit["A"] == pytest.approx(1e-4, rel=1e-5)
    assert fit["d_p_zero"] == pytest.approx(1e5, rel=1e-5)
    assert fit["max_rel_error_held_out"] < 1e-8
    rough = fit_dp_score(D_P, noisy(true_score(D_P), 1e-2), n_fit=9)
    assert rough["alpha"] == pytest.approx(0.8, rel=0.1)
    assert rough["beta"] == pytest.approx(1.5, rel=0.1)


def test_a_broken_law_at_large_d_p_shows_as_a_large_prediction_error() -> None:
    loss = true_loss(D_P)
    loss[6:] += 0.3
    fit = fit_dp_loss(D_P, loss, n_fit=6)
    assert fit["max_rel_error_held_out"] > 0.1
    assert fit["held_out"][-1]["abs_error"] == pytest.approx(0.3, rel=1e-3)
    score = true_score(D_P)
    score[6:] = score[5]
    assert fit_dp_score(D_P, score, n_fit=6)["max_rel_error_held_out"] > 0.2


def test_fits_converge_on_noisy_laws_and_say_so_where_the_law_fails() -> None:
    assert fit_dp_loss(D_P, noisy(true_loss(D_P), 1e-3), n_fit=6)["converged"]
    assert fit_dp_score(D_P, noisy(true_score(D_P), 1e-2), n_fit=6)["converged"]
    linear = fit_dp_score(D_P, 30.0 - 2.0 * np.arange(9), n_fit=6)
    assert not linear["converged"]
    assert linear["max_rel_error_held_out"] > 0.1


@pytest.mark.parametrize("fit", [fit_dp_loss, fit_dp_score])
def test_bad_points_are_rejected_with_the_value_at_fault(fit) -> None:
    values = true_score(D_P)
    with pytest.raises(DPLawError, match=r"d_p\[2\] = -5.0"):
        fit(np.where(np.arange(9) == 2, -5.0, D_P), values, 6)
    with pytest.raises(DPLawError, match="n_fit = 2: must be an integer from 3"):
        fit(D_P, values, 2)
    with pytest.raises(DPLawError, match=r"n_fit = 10: .* number of points \(9\)"):
        fit(D_P, values, 10)
    with pytest.raises(DPLawError, match="2 distinct D_p"):
        fit([1e6, 1e6, 1e7, 1e7], values[:4], 4)
    with pytest.raises(DPLawError, match="has 8"):
        fit(D_P, values[:8], 6)
    with pytest.raises(DPLawError, match="needs every fitted value > 0"):
        fit(D_P, np.where(np.arange(9) == 1, 0.0, values), 6)


def test_verdict_agrees_when_loss_falls_and_score_rises() -> None:
    verdict = alignment_verdict(D_P, noisy(true_loss(D_P), 1e-3), true_score(D_P))
    assert verdict["verdict"] == "agree"
    assert verdict["loss"]["trend"] == "improves" and verdict["score"]["trend"] == "improves"
    assert verdict["best_score_d_p"] == D_P[-1]


@pytest.mark.parametrize("shape, trend", [("falls", "worsens"), ("flat", "stalls"), ("dip", "non_monotone")])
def test_verdict_disagrees_when_the_score_does_not_follow_the_loss(shape: str, trend: str) -> None:
    score = {"falls": 30.0 - 2.0 * np.arange(9), "flat": 20.0 + 0.1 * np.sin(np.arange(9)),
             "dip": np.array([5.0, 8, 11, 14, 6, 17, 20, 23, 26])}[shape]
    verdict = alignment_verdict(D_P, true_loss(D_P), score)
    assert verdict["verdict"] == "disagree"
    assert verdict["score"]["trend"] == trend
    assert verdict["mean_score"] == pytest.approx(score)


def test_verdict_tolerates_noise_below_its_tolerance() -> None:
    score = true_score(D_P)
    score[4] = score[3] - 0.02 * score.max()
    assert alignment_verdict(D_P, true_loss(D_P), score)["verdict"] == "agree"
    assert alignment_verdict(D_P, true_loss(D_P), score, score_rtol=0.01)["verdict"] == "disagree"


def test_verdict_needs_an_improving_loss() -> None:
    loss = true_loss(D_P)[::-1]
    assert alignment_verdict(D_P, loss, true_score(D_P))["verdict"] == "loss_not_improving"


def test_verdict_averages_repeated_d_p() -> None:
    verdict = alignment_verdict([1e6, 1e6, 1e7], [3.0, 2.8, 2.0], [1.0, 3.0, 5.0])
    assert verdict["mean_loss"] == pytest.approx([2.9, 2.0])
    assert verdict["mean_score"] == pytest.approx([2.0, 5.0])
    with pytest.raises(DPLawError, match="1 distinct D_p"):
        alignment_verdict([1e6, 1e6], [3.0, 2.8], [1.0, 3.0])


def dp_table() -> pd.DataFrame:
    rows = []
    for source, n_params in (("text", 1e5), ("code", 4e5)):
        for seed in (0, 1):
            loss = noisy(true_loss(D_P), 1e-3, seed)
            bleu = true_score(D_P) if source == "text" else 30.0 - 2.0 * np.arange(9)
            chrf = predict_dp_score(CHRF_LAW, D_P) if source == "text" else 40.0 - np.arange(9)
            for d_p, test_loss, score, chrf_score in zip(D_P, loss, bleu, chrf):
                rows.append({"source": source, "n_params": n_params, "d_f_chars": 3e5, "d_p_tokens": d_p,
                             "test_loss": test_loss, "bleu": score, "chrf": chrf_score, "exact_match": 0.0,
                             "seed": seed})
    return pd.DataFrame(rows)


def test_analyse_dp_fits_each_group_and_is_strict_json() -> None:
    result = analyse_dp(dp_table(), n_fit=6)
    json.dumps(result, allow_nan=False)
    groups = {group["source"]: group for group in result["groups"]}
    assert set(groups) == {"text", "code"}
    assert groups["text"]["n_points"] == 9
    assert groups["text"]["loss_fit"]["alpha"] == pytest.approx(0.3, abs=0.05)
    assert groups["text"]["bleu_fit"]["beta"] == pytest.approx(1.5, rel=1e-3)
    assert groups["text"]["bleu_verdict"]["verdict"] == "agree"
    assert groups["code"]["bleu_verdict"]["verdict"] == "disagree"
    assert "needs every fitted value > 0" in groups["text"]["exact_match_fit"]["error"]
    assert groups["text"]["exact_match_verdict"]["score"]["trend"] == "stalls"


def test_analyse_dp_fits_chrf_beside_bleu() -> None:
    groups = {group["source"]: group for group in analyse_dp(dp_table(), n_fit=6)["groups"]}
    chrf_fit = groups["text"]["chrf_fit"]
    assert chrf_fit["alpha"] == pytest.approx(0.3, rel=1e-3)
    assert chrf_fit["beta"] == pytest.approx(2.0, rel=1e-3)
    assert chrf_fit["max_rel_error_held_out"] < 1e-3
    assert groups["text"]["chrf_verdict"]["verdict"] == "agree"
    assert groups["code"]["chrf_verdict"]["score"]["trend"] == "worsens"


def test_chrf_shows_a_gain_bleu_cannot_and_has_its_own_tolerance() -> None:
    """BLEU jittering between 0.2 and 0.4 (small models, below its resolution) cannot show the gain chrF shows;
    a 3% step back in chrF is judged against CHRF_RTOL, not SCORE_RTOL."""
    table = dp_table().query("source == 'text'").assign(bleu=0.2 + 0.2 * np.sin(np.arange(18)) ** 2)
    chrf = predict_dp_score(CHRF_LAW, D_P)
    chrf[4] = chrf[3] - 0.03 * chrf.max()
    table["chrf"] = np.tile(chrf, 2)
    assert CHRF_RTOL < 0.03 < SCORE_RTOL
    strict, loose = analyse_dp(table, n_fit=6), analyse_dp(table, n_fit=6, chrf_rtol=SCORE_RTOL)
    assert strict["chrf_rtol"] == CHRF_RTOL and loose["chrf_rtol"] == SCORE_RTOL
    assert strict["groups"][0]["bleu_verdict"]["verdict"] == "disagree"
    assert strict["groups"][0]["chrf_verdict"]["score"]["trend"] == "non_monotone"
    assert loose["groups"][0]["chrf_verdict"]["verdict"] == "agree"


def test_analyse_dp_rejects_bad_tables() -> None:
    table = dp_table()
    with pytest.raises(DPLawError, match=r"lacks columns \['bleu'\]"):
        analyse_dp(table.drop(columns="bleu"), n_fit=6)
    table.loc[3, "d_p_tokens"] = -1.0
    with pytest.raises(DPLawError, match="row 3: d_p_tokens = -1.0"):
        analyse_dp(table, n_fit=6)
    with pytest.raises(DPLawError, match="n_fit = 2"):
        analyse_dp(dp_table(), n_fit=2)


def without_timing(value):
    """``value`` without the fits' ``fit_seconds``, at any depth."""
    if isinstance(value, dict):
        return {key: without_timing(item) for key, item in value.items() if key != "fit_seconds"}
    return [without_timing(item) for item in value] if isinstance(value, list) else value


def test_failed_runs_are_listed_and_left_out_of_the_d_p_analysis(tmp_path) -> None:
    synthetic_runs().to_csv(tmp_path / "runs.csv", index=False)
    fit_file(tmp_path / "runs.csv", tmp_path / "fit", n_bootstrap=100, joint_law=False)
    table = dp_table().query("source == 'text'").reset_index(drop=True)
    table = table.assign(run=[f"snapshot/{index}" for index in table.index], status="ok")
    table.loc[3, ["status", "test_loss"]] = ["failed", 99.0]  # a diverged run's loss: never to be fitted
    table.to_csv(tmp_path / "dp_runs.csv", index=False)
    analysis = write_dp_analysis(tmp_path / "dp_runs.csv", tmp_path / "fit" / "transfer_fit.json", 6,
                                 tmp_path / "dp_fit.json")
    assert [run["run"] for run in analysis["failed_runs"]] == ["snapshot/3"]
    assert without_timing(analysis["groups"]) == without_timing(analyse_dp(table.drop(index=3), n_fit=6)["groups"])
    assert len(analysis["transferred"]) == len(table) - 1
    assert 99.0 not in [row["test_loss"] for row in analysis["transferred"]]
    assert json.loads((tmp_path / "dp_fit.json").read_text()) == analysis


def test_the_module_does_not_import_torch() -> None:
    code = "import sys, transfer_scaling.fit.dplaw; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
