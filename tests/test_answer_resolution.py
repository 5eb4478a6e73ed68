"""The answer page and ``advise`` state no derived number without its bootstrap interval, and mark the ones the study
does not resolve (issue 17, item 5): an interval across 0 or 1x, wider than two orders of magnitude, or undefined in
a notable share of the replicates (alpha <= 0) is "not resolved" with the reason, never a bare number."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from test_fitting import synthetic_runs
from test_report import html_of

from transfer_scaling import cli
from transfer_scaling.fit import derived
from transfer_scaling.fit.study import fit_file, load_draws
from transfer_scaling.report.advice import advise
from transfer_scaling.report.answer import answer_rst

SIZES = (6592, 25472, 100096, 304192)
"""The default config's four sizes (non-embedding parameters)."""
D_F = (3e3, 1e4, 3e4, 1e5)
SCRATCH_D = (3e3, 1e4, 3e4, 1e5, 3e5, 1e6)
WEAK_LAW = {"k": 100.0, "alpha": 0.05, "beta": 0.4}
"""A law whose alpha, at 1% noise and one seed on this design, is not resolved from 0 (as text_code's 0.063)."""


def default_design_runs(law: dict, noise: float, seed: int) -> pd.DataFrame:
    """The default study's grid (4 sizes, 4 D_F, 6 scratch D, one seed) in a world L(N, D) = 0.8 + 20/N^0.3 +
    20/D^0.3, fine-tuned runs at D_F + k D_F^alpha N^beta, each run's loss with relative noise ``noise``."""
    rng = np.random.default_rng(seed)
    rows = []
    for n_params in SIZES:
        rows += [("scratch", "", n_params, d, 0.8 + 20 / n_params**0.3 + 20 / d**0.3) for d in SCRATCH_D]
        rows += [("finetune", "src", n_params, d, 0.8 + 20 / n_params**0.3 + 20 / (
            d + law["k"] * d ** law["alpha"] * n_params ** law["beta"]) ** 0.3) for d in D_F]
    runs = pd.DataFrame(rows, columns=["kind", "source", "n_params", "data_chars", "test_loss"])
    runs["test_loss"] *= 1 + noise * rng.standard_normal(len(runs))
    return runs


def fitted(runs: pd.DataFrame, tmp_path) -> tuple[dict, str]:
    runs.to_csv(tmp_path / "runs.csv", index=False)
    fit = fit_file(tmp_path / "runs.csv", tmp_path / "fit", n_bootstrap=200, joint_law=False)
    return fit, str(tmp_path / "fit" / "transfer_fit.json")


def advise_printed(fit_json: str, source: str, n_params: float, d_f_chars: float, capsys) -> tuple[dict, str]:
    cli.main(["advise", fit_json, "--source", source, "--n-params", f"{n_params:g}", "--d-f-chars", f"{d_f_chars:g}"])
    printed = capsys.readouterr().out
    return json.loads(printed), printed


def unresolved_values(answer: dict) -> list[tuple[str, object]]:
    """(name, value) of every quantity whose verdict is not "resolved" but whose value is not null."""
    found = []
    for container in (answer, answer["current"], answer["10x_data"], answer["10x_params"]):
        found += [(key, container[key[: -len("_resolution")]]) for key, verdict in container.items()
                  if key.endswith("_resolution") and verdict != "resolved"
                  and container[key[: -len("_resolution")]] is not None]
    return found


@pytest.mark.parametrize(("values", "kind", "verdict"), [
    (np.linspace(-0.1, 0.5, 200), "signed", "not_resolved: its 95% interval [-0.085, 0.485] spans 0"),
    (np.log10(np.linspace(0.5, 3.0, 200)), "ratio", "not_resolved: its 95% interval [0.562, 2.94] spans 1x"),
    (np.linspace(0.5, 3.5, 200), "ratio", "not_resolved: its 95% interval [3.76, 2.66e+03] spans 2.9 orders"),
    (np.linspace(0.05, 0.2, 200), "signed", "resolved"),
    (np.linspace(-3.0, 0.5, 200), "amount", "not_resolved: its 95% interval [0.00122, 2.59] spans 3.3 orders"),
    (np.r_[np.full(190, 2.0), np.full(10, np.nan)], "ratio",
     "not_resolved: undefined in 5% of the 200 bootstrap replicates (alpha <= 0 in 5%)"),
    (np.r_[np.linspace(1.0, 1.2, 196), np.full(4, np.nan)], "ratio", "resolved"),
])
def test_resolution_rules(values, kind, verdict):
    """A sign change (0, or 1x for a ratio), more than two orders of magnitude, or more than 2.5% of the replicates
    undefined (with the cause) is not resolved; the interval of a resolved ratio is in its own units."""
    causes = {"alpha <= 0": np.isnan(values)}
    result = derived.resolution("x", values, 200, kind, causes)
    assert result["x_resolution"].startswith(verdict), result
    if verdict == "resolved" and kind == "ratio":
        assert result["x_ci"] == pytest.approx(10 ** np.percentile(values[np.isfinite(values)], [2.5, 97.5]))


@pytest.mark.parametrize(("estimate", "kind", "verdict"), [
    (0.15, "signed", "resolved"),
    (0.25, "signed", "not_resolved: the estimate 0.25 lies outside its 95% interval [0.0538, 0.196]"),
    (np.log10(18.54), "ratio", "not_resolved: the estimate 18.54 lies outside its 95% interval [3.806, 18.48]"),
])
def test_an_estimate_outside_its_own_interval_is_not_resolved(estimate, kind, verdict):
    """As text's law on the default study: its near-zero D_T points turn no_transfer in many replicates, which then
    fit a smaller alpha, so the replicates' percentile interval lies below the estimate and cannot vouch for it; the
    estimate is shown with the digits that tell it from the interval's end."""
    if kind == "signed":
        values = np.linspace(0.05, 0.2, 200)
    else:
        low, high = np.log10(3.808), np.log10(18.48)
        values = np.r_[np.full(5, low - 0.01), np.linspace(low, high, 190), np.full(5, high + 1e-4)]
    result = derived.resolution("x", values, 200, kind, estimate=estimate)
    assert result["x_resolution"].startswith(verdict), result
    assert derived.resolution("x", values, 200, kind)["x_resolution"] == "resolved"


def test_no_replicates_resolve_nothing():
    assert derived.resolution("x", np.empty(0), 0, "signed")["x_resolution"].startswith(
        "not_resolved: no bootstrap replicates")


def test_a_fit_whose_alpha_spans_zero_states_the_trade_off_as_not_resolved(tmp_path, capsys):
    """The default design at 1% noise and one seed with alpha = 0.05: alpha's interval spans 0, so the trade-off
    10^(beta/alpha) is undefined in a notable share of the replicates. The page and advise say "not resolved", why
    (alpha <= 0 in x% of them) and what would resolve it, and never print its value."""
    fit, fit_json = fitted(default_design_runs(WEAK_LAW, noise=0.01, seed=1), tmp_path)
    block = fit["sources"]["src"]["appendix_c"]
    low, high = block["alpha_ci"]
    assert low < 0 < high and block["alpha"] > 0
    trade_off = block["derived"]["data_worth_of_10x_model_equal_d_transferred"]
    assert block["derived"]["data_worth_of_10x_model_equal_d_transferred_resolution"].startswith(
        "not_resolved: undefined in")

    rst = answer_rst(fit, [], "python")
    assert "system-message" not in html_of(rst)
    opening = rst.split("\n\n")[1]
    assert opening.startswith("- src: the study does not resolve whether 10x more fine-tuning data or a 10x larger "
                              "model gives more effective data")
    assert "what would resolve it: more seeds per run (now 1" in opening and "more D\\_F values (now 4" in opening
    assert "(10^(beta/alpha)): not resolved (undefined in" in rst and "alpha <= 0 in" in rst
    assert f"{trade_off:.3g}x" not in rst
    for row in block["derived"]["grid"]:
        assert row["data_worth_of_10x_model_equal_d_effective_resolution"].startswith("not_resolved")
        assert f"- {row['data_worth_of_10x_model_equal_d_effective']:.3g}x\n" not in rst
    assert "Not resolved by this study: " in rst and "alpha (its 95% interval [" in rst

    answer, printed = advise_printed(fit_json, "src", SIZES[-1], 1e4, capsys)
    assert answer["supports"] == "not_resolved" and "does not resolve" in answer["answer"]
    assert answer["data_worth_of_10x_model_equal_d_effective"] is None
    assert "alpha <= 0 in" in answer["data_worth_of_10x_model_equal_d_effective_resolution"]
    assert answer["alpha"] is None and answer["alpha_resolution"].endswith("spans 0")
    assert unresolved_values(answer) == []
    worth = derived.data_worth_of_10x_model(block["k"], block["alpha"], block["beta"], SIZES[-1], 1e4)
    assert repr(worth)[:8] not in printed


def test_a_well_resolved_fit_states_each_number_with_its_interval(tmp_path, capsys):
    """Five sizes over 100x, two seeds at 0.5% noise: the trade-off and the choice are resolved, and each number is
    printed with its 95% interval."""
    fit, fit_json = fitted(synthetic_runs(), tmp_path)
    block = fit["sources"]["text"]["appendix_c"]
    derived_block = block["derived"]
    trade_off, (low, high) = (derived_block["data_worth_of_10x_model_equal_d_transferred"],
                              derived_block["data_worth_of_10x_model_equal_d_transferred_ci"])
    assert derived_block["data_worth_of_10x_model_equal_d_transferred_resolution"] == "resolved"
    assert low < trade_off < high and high / low < 100
    decision = derived_block["decision"]
    assert decision["supports"] == "larger_model" and decision["d_effective_ratio_10x_data_to_10x_model"] < 1

    rst = answer_rst(fit, [], "python")
    assert "system-message" not in html_of(rst)
    assert f"(10^(beta/alpha)): {trade_off:.3g}x [{low:.3g}, {high:.3g}]." in rst
    ratio, (ratio_low, ratio_high) = (decision["d_effective_ratio_10x_data_to_10x_model"],
                                      decision["d_effective_ratio_10x_data_to_10x_model_ci"])
    assert (f"- text: at N = 1e+07 and D\\_F = 1e+04, a 10x larger model gives {1 / ratio:.3g}x "
            f"[{1 / ratio_high:.3g}, {1 / ratio_low:.3g}] the effective data of 10x more fine-tuning data, so the fit "
            "supports the larger model.") in rst
    row = derived_block["grid"][0]
    assert f"{row['multiplier']:.3g}x [{row['multiplier_ci'][0]:.3g}, {row['multiplier_ci'][1]:.3g}]" in rst

    answer, _ = advise_printed(fit_json, "text", 1e6, 1e4, capsys)
    assert answer["supports"] == "larger_model" and "supports the larger model" in answer["answer"]
    worth = answer["data_worth_of_10x_model_equal_d_effective"]
    assert worth == pytest.approx(derived.data_worth_of_10x_model(block["k"], block["alpha"], block["beta"], 1e6, 1e4))
    worth_low, worth_high = answer["data_worth_of_10x_model_equal_d_effective_ci"]
    assert worth_low < worth < worth_high and answer["alpha_resolution"] == "resolved"
    current = answer["current"]
    assert current["d_effective"] == pytest.approx(current["d_f_chars"] + current["d_transferred"])
    assert current["d_effective_ci"][0] < current["d_effective"] < current["d_effective_ci"][1]
    assert current["predicted_loss_ci"][0] < current["predicted_loss"] < current["predicted_loss_ci"][1]


def test_advise_without_draws_resolves_nothing(tmp_path):
    """The Python API given no bootstrap draws cannot give an interval, so it states no number."""
    fit, fit_json = fitted(synthetic_runs(), tmp_path)
    answer = advise(fit, "text", 1e6, 1e4)
    assert answer["supports"] == "not_resolved" and answer["current"]["d_transferred"] is None
    assert any("no bootstrap draws of text (appendix_c) were given" in note for note in answer["notes"])
    with_draws = advise(fit, "text", 1e6, 1e4, load_draws(fit_json))
    assert with_draws["current"]["d_transferred"] == pytest.approx(
        fit["sources"]["text"]["appendix_c"]["k"] * 1e4 ** fit["sources"]["text"]["appendix_c"]["alpha"]
        * 1e6 ** fit["sources"]["text"]["appendix_c"]["beta"])
    assert math.isfinite(with_draws["current"]["d_transferred_ci"][0])


def test_held_out_prediction_carries_the_interval_of_the_smaller_sizes_law(tmp_path):
    """The law fitted on the four smaller sizes gives every predicted loss of the largest an interval over its own
    bootstrap, and the largest error one too; the main fit's intervals are those of a fit without it."""
    fit, _ = fitted(synthetic_runs(), tmp_path)
    held = fit["sources"]["text"]["held_out_prediction"]
    for point in held["points"]:
        low, high = point["predicted_loss_ci"]
        assert low < point["predicted_loss"] < high and point["predicted_loss_resolution"] == "resolved"
        assert point["error_percent_ci"][0] < point["error_percent_ci"][1]
    assert held["max_abs_error_percent_resolution"] == "resolved"
    assert "alpha_ci" in held and held["alpha_ci"][0] < held["alpha"] < held["alpha_ci"][1]
