"""Every figure renders from a synthetic runs table and its fit, as PNG and SVG."""

from __future__ import annotations

import pytest
from test_fitting import status_runs, synthetic_runs

from transfer_scaling.fit.study import fit_file
from transfer_scaling.report.figures import draw_joint_law, joint_law_plot, make_figures

FIGURES = {"loss_vs_data", "transferred_vs_finetune", "fraction_vs_params", "multiplier_heatmap", "ossification",
           "joint_law"}


@pytest.mark.slow
def test_make_figures_renders_every_figure(tmp_path):
    runs_csv = tmp_path / "runs.csv"
    synthetic_runs().to_csv(runs_csv, index=False)
    fit_file(runs_csv, tmp_path / "fit", n_bootstrap=200)
    written = make_figures(runs_csv, tmp_path / "fit", tmp_path / "figures")
    assert {path.stem for path in written} == FIGURES
    assert {path.suffix for path in written} == {".png", ".svg"} and len(written) == 2 * len(FIGURES)
    for path in written:
        assert path.stat().st_size > 5000, path
        assert path.read_bytes()[:4] == b"\x89PNG" if path.suffix == ".png" else b"<svg" in path.read_bytes()[:2000]
    assert not list((tmp_path / "figures").glob(".*.tmp"))


def test_figures_of_an_unidentifiable_fit(tmp_path):
    """A table whose law cannot be fitted still gets its figures (data only, the reason in the title)."""
    runs_csv = tmp_path / "runs.csv"
    status_runs().to_csv(runs_csv, index=False)
    fit_file(runs_csv, tmp_path / "fit", n_bootstrap=20, joint_law=False)
    written = make_figures(runs_csv, tmp_path / "fit", tmp_path / "figures")
    assert {path.stem for path in written} == FIGURES - {"joint_law"}


def degenerate_law(sizes: int = 12) -> dict:
    """A joint law as ``fit_chinchilla`` reports a degenerate one: E at its bound, one D per N, no usable E."""
    steps = range(sizes)
    return {"n_params": [1e7 * 1.5**i for i in steps], "d_chars": [2e10 / 1.3**i for i in steps],
            "test_loss": [3.0 - 0.02 * i for i in steps], "residuals_log_loss": [0.001 * i for i in steps],
            "alpha": 0.08, "beta": 0.76, "degenerate": True, "identifiable": False, "at_bounds": ["E"],
            "reason": "a point on the edge of the parameter space, not an estimate: E is at its lower bound 0"}


def test_degenerate_joint_law_is_named_and_not_drawn(tmp_path):
    """No curve that needs E (the law has none to give), and the headline says why; many sizes get a colour bar."""
    figure = joint_law_plot(degenerate_law())
    curves = figure.axes[0]
    assert figure.get_suptitle().startswith("DEGENERATE joint law, not identifiable")
    assert "degenerate, no curve drawn" in curves.get_title() and not curves.get_lines()
    assert curves.get_legend() is None and len(figure.axes) == 3  # curves, residuals, colour bar
    written = draw_joint_law(degenerate_law(sizes=3), tmp_path / "joint_law")
    assert [path.name for path in written] == ["joint_law.png", "joint_law.svg"]
