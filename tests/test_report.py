"""The answer page: written from transfer_fit.json, read defensively, and first on the report's opening page."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from docutils.core import publish_parts
from jinja2 import Environment
from test_fitting import status_runs

from transfer_scaling.fit.study import fit_file
from transfer_scaling.report.answer import answer_rst, write_answer

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("transferred_vs_finetune", "multiplier_heatmap", "loss_vs_data")
STUDY = "default"
RESULTS = f"results/{STUDY}"
"""The study's folder, as config.yaml's study names it."""


def figures(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.png" for name in FIGURES]
    for path in paths:
        path.write_bytes(b"\x89PNG not a real image" * 700)
    return paths


def html_of(rst: str) -> str:
    """The page as the report shows it; any docutils warning (a broken table, a line too long) raises."""
    return publish_parts(rst, writer="html", settings_overrides={"halt_level": 2})["html_body"]


def hand_made_fit() -> dict:
    """A fit whose alpha is negative (derived quantities null with a status), with a held-out prediction block,
    no Huber block at all, and a degenerate joint law."""
    grid_row = {"n_params": 1e5, "d_f_chars": 1e4, "data_worth_of_10x_model_equal_d_effective": None,
                "data_worth_of_10x_model_equal_d_effective_status": "not_defined: alpha <= 0"}
    appendix = {"identifiable": True, "k": 12.5, "alpha": -0.2, "beta": 0.58, "k_ci": [3.1, 40.0],
                "alpha_ci": [-0.5, 0.1], "beta_ci": [0.03, 1.03], "r_squared": 0.58,
                "derived": {"data_worth_of_10x_model_equal_d_transferred": None,
                            "data_worth_of_10x_model_equal_d_transferred_status": "not_defined: alpha <= 0",
                            "grid": [grid_row]}}
    held_out = {"size": "l", "n_params": 3e5, "status": "ok", "method": "appendix_c", "fitted_n_params": [1e5, 2e5],
                "max_abs_error": 0.05, "max_abs_error_percent": 2.56,
                "points": [{"d_f_chars": 3e5, "status": "ok", "measured_loss": 1.95, "predicted_loss": 1.9,
                            "extrapolated": True, "error_percent": -2.56}]}
    points = [{"source": "text_code", "n_params": 1e5, "d_f_chars": d, "test_loss": 2.0, "d_transferred": None,
               "status": status} for d, status in ((3e3, "ok"), (3e5, "high_data"), (1e6, "mystery"))]
    return {"sources": {"text_code": {"appendix_c": appendix, "n_points_used": 1,
                                      "n_points_excluded": {"high_data": 1, "mystery": 1},
                                      "held_out_prediction": held_out}},
            "points": points,
            "joint_law": {"degenerate": True, "identifiable": False, "at_bounds": ["E"], "E": 2e-197,
                          "reason": "E is at its lower bound 0"}}


def test_answer_of_a_fit_with_undefined_quantities(tmp_path):
    rst = answer_rst(hand_made_fit(), figures(tmp_path), "python")
    html = html_of(rst)
    assert "system-message" not in html
    assert "12.5 [3.1, 40]" in rst and "-0.2 [-0.5, 0.1]" in rst and "1 of 3" in rst
    assert "worth at equal D\\_T (10^(beta/alpha)): not defined (alpha <= 0)." in rst
    assert "     - not defined (alpha <= 0)\n" in rst and "10^beta: not available." in rst
    assert "this fit states no choice between 10x more fine-tuning data and a 10x larger model" in rst
    assert "Huber\n     - not available" in rst
    assert "high\\_data" in rst or "``high_data``" in rst
    assert "- high\\_data: D\\_F above the low-data limit" in rst and "- mystery: see the fit log" in rst
    assert "fitted on N = 1e+05, 2e+05 (Appendix C) predicts the largest size, N = 3e+05; largest error 2.56%" in rst
    assert "     - -2.56\n     - ``ok``\n     - yes" in rst
    assert "Degenerate, not identifiable (at bounds: E)" in rst and "2e-197" not in rst
    assert html.count('src="data:image/png;base64,') == 2 and "loss_vs_data.png" in html


def test_answer_of_a_real_unidentifiable_fit(tmp_path):
    """One N only: neither law is identifiable; every fine-tuned point left out is listed with its reason."""
    status_runs().to_csv(tmp_path / "runs.csv", index=False)
    fit_file(tmp_path / "runs.csv", tmp_path / "fit", n_bootstrap=20, joint_law=False)
    out = write_answer(tmp_path / "fit" / "transfer_fit.json", tmp_path / "none", tmp_path / "answer.rst", "python")
    rst = out.read_text()
    assert "system-message" not in html_of(rst)
    assert "not identifiable (Appendix C: 1 usable point(s); at least 3 are needed; Huber: 1 usable" in rst
    assert "10x more fine-tuning data or a 10x larger model?** not defined" in rst
    for status in ("censored", "below_range", "ill_conditioned", "no_transfer"):
        assert f"``{status}``" in rst, status
    assert "**Held-out prediction**: not available (" in rst
    assert "Joint law" in rst and "not available: not fitted" in rst and "no figures were drawn" in rst


def test_answer_of_a_scratch_only_fit():
    rst = answer_rst({"transfer_law_status": "nothing_to_fit: the table has no fine-tuned run", "sources": {}}, [],
                     "python")
    assert "No transfer law was fitted (the table has no fine-tuned run)." in rst


@pytest.mark.parametrize("built", [True, False])
def test_report_opens_on_the_answer(built, tmp_path, monkeypatch):
    """workflow.rst rendered the way ``snakemake --report`` renders it: Jinja2 with the report's files, then
    docutils from the study directory; the answer is included first when it was built."""
    monkeypatch.chdir(tmp_path)
    answer = Path(RESULTS, "fit/answer.rst")
    answer.parent.mkdir(parents=True)
    pngs = figures(Path(RESULTS, "figures"))
    answer.write_text(answer_rst(hand_made_fit(), pngs, "python"))
    files = [SimpleNamespace(target=path.name, path=path) for path in [*pngs, *([answer] if built else [])]]
    links = "".join(f"\n.. _{res.target}: javascript:app.showResultInfo('{res.path}')" for res in files)
    template = (ROOT / "workflow/report/workflow.rst").read_text() + "\n" + links + "\n"
    rst = Environment(trim_blocks=True, lstrip_blocks=True).from_string(template).render(
        snakemake=SimpleNamespace(config={"target": "python", "study": STUDY}), categories={}, files=files)
    html = html_of(rst)
    assert "system-message" not in html
    assert "How the study was run" in html and f"showResultInfo('{RESULTS}/figures/loss_vs_data.png')" in html
    if built:
        assert html.index("The answer: what pretraining is worth for python") < html.index("How the study was run")
    else:
        assert "is not in this report" in html and "The answer:" not in html and f"{RESULTS}/fit/answer.rst" in html
