"""Every figure renders from a synthetic runs table and its fit, as PNG and SVG."""

from __future__ import annotations

import pytest
from test_fitting import status_runs, synthetic_runs

from transfer_scaling.fitting import fit_file
from transfer_scaling.plots import make_figures

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
