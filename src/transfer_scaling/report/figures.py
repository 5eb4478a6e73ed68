"""Figures of a transfer fit in the paper's terms (PNG and SVG), drawn from ``transfer_fit.json``,
``bootstrap.csv`` and the runs table. Agg backend only; every file is written through a temporary name.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from ..fit.dplaw import predict_dp_loss, predict_dp_score  # noqa: E402
from ..fit.jointlaw import predict_chinchilla, predict_kaplan  # noqa: E402
from ..fit.study import load_fit  # noqa: E402
from ..fit.table import FitError, read_runs, validate_runs  # noqa: E402
from ..fit.transferlaw import transferred_data  # noqa: E402
from ..io import atomic_path, read_table  # noqa: E402
from ..layout import FitLayout  # noqa: E402
from .advice import primary_fit  # noqa: E402

FORMATS = ("png", "svg")
LABELS = {
    "n_params": "N (non-embedding parameters)",
    "d_f_chars": "D_F, fine-tuning data (characters)",
    "d_chars": "D, training data (characters)",
    "d_transferred": "D_T, effective data transferred (characters)",
    "test_loss": "test loss (nats / character)",
    "fraction": "fraction of effective data from pretraining, D_T / D_E",
    "multiplier": "effective data multiplier, D_E / D_F",
    "d_p_tokens": "D_p, pretraining data seen (tokens)",
    "bleu": "next-line completion BLEU",
    "chrf": "next-line completion chrF",
}
DP_SCORES = ("bleu", "chrf")
"""Scores drawn against D_p, side by side: BLEU as published, chrF because it still moves where BLEU is ~0."""
FIT_NAMES = {"appendix_c": "Appendix C", "huber": "Huber"}


def make_figures(runs_csv: str | os.PathLike, fit_path: str | os.PathLike, out_dir: str | os.PathLike,
                 draws_csv: str | os.PathLike | None = None) -> list[Path]:
    """Draw every figure from the runs table, the fit (its JSON file or directory) and its bootstrap draws
    (``draws_csv``, by default the fit's own); returns the written paths (PNG and SVG of each)."""
    fit_json = Path(fit_path)
    if fit_json.is_dir():
        fit_json = FitLayout(fit_json).fit
    fit = load_fit(fit_json)
    draws = read_draws(Path(draws_csv) if draws_csv is not None else FitLayout(fit_json.parent).bootstrap)
    runs = validate_runs(read_runs(runs_csv))
    points = pd.DataFrame(fit["points"])
    sns.set_theme(style="whitegrid", context="paper")
    drawers: dict[str, Callable[[], plt.Figure]] = {
        "loss_vs_data": lambda: loss_vs_data(fit, runs, points),
        "transferred_vs_finetune": lambda: transferred_vs_finetune(fit, points, draws),
        "fraction_vs_params": lambda: fraction_vs_params(fit, points),
        "multiplier_heatmap": lambda: multiplier_heatmap(fit),
        "ossification": lambda: ossification_plot(fit),
    }
    if "residuals_log_loss" in (fit.get("joint_law") or {}):
        drawers["joint_law"] = lambda: joint_law_plot(fit["joint_law"])
    return _render_all(drawers, Path(out_dir))


def read_draws(path: Path) -> pd.DataFrame:
    """The bootstrap draws the interval bands come from. A missing file is an error: without it the figures
    would come out without their bands and nothing would say why."""
    if not path.exists():
        raise FitError(f"bootstrap draws not found: {path} (the fit writes them beside transfer_fit.json)")
    return read_table(path)


def draw_joint_law(law: dict[str, Any], stem: Path) -> list[Path]:
    """The joint-law figure alone (PNG and SVG at ``stem``), for a law fitted outside a transfer fit."""
    sns.set_theme(style="whitegrid", context="paper")
    return _render_all({stem.name: lambda: joint_law_plot(law)}, stem.parent)


def _render_all(drawers: dict[str, Callable[[], plt.Figure]], out_dir: Path) -> list[Path]:
    """Draw, save and close each figure in turn, so only one is held in memory."""
    written = []
    for name, draw in drawers.items():
        figure = draw()
        written += save_figure(figure, out_dir / name)
        plt.close(figure)
    return written


def save_figure(figure: plt.Figure, stem: Path) -> list[Path]:
    paths = []
    for fmt in FORMATS:
        path = stem.with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
        paths.append(path)
    return paths


def _panels(count: int, width: float = 4.2, height: float = 3.4, columns: int = 3) -> tuple[plt.Figure, list[plt.Axes]]:
    columns = max(1, min(columns, count))
    rows = math.ceil(max(count, 1) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False,
                             layout="constrained")
    flat = list(axes.ravel())
    for axis in flat[count:]:
        axis.set_visible(False)
    return figure, flat[:count]


def _n_label(n_params: float) -> str:
    return f"N = {n_params:.3g}"


def _palette(values: list[float]) -> dict[float, Any]:
    return dict(zip(sorted(values), sns.color_palette("viridis", len(values))))


def loss_vs_data(fit: dict[str, Any], runs: pd.DataFrame, points: pd.DataFrame) -> plt.Figure:
    """Per N: the scratch curve, fine-tuned points per source, and D_T as a horizontal segment D_F -> D_E."""
    scratch = _scratch_by_size(fit)
    figure, axes = _panels(len(scratch))
    sources = sorted(points["source"].unique()) if len(points) else []
    colours = dict(zip(sources, sns.color_palette("deep", len(sources))))
    for axis, summary in zip(axes, scratch):
        n_params = summary["n_params"]
        seeds = runs[(runs["kind"] == "scratch") & (runs["n_params"] == n_params) & (runs["status"] == "ok")]
        axis.scatter(seeds["data_chars"], seeds["test_loss"], s=8, color="0.6")
        axis.plot(summary["d_chars"], summary["test_loss"], "o-", color="black", label="from scratch")
        mine = points[(points["n_params"] == n_params) & (points["status"] != "failed")]
        for source, group in mine.groupby("source"):
            group = group.sort_values("d_f_chars")
            axis.plot(group["d_f_chars"], group["test_loss"], "s--", color=colours[source],
                      label=f"fine-tuned from {source}")
            for row in group.itertuples(index=False):
                if row.status not in ("below_range",) and np.isfinite(row.d_effective):
                    style = "-" if row.status == "ok" else ":"
                    axis.plot([row.d_f_chars, row.d_effective], [row.test_loss] * 2, style, color=colours[source], lw=1)
        axis.set(xscale="log", xlabel=LABELS["d_chars"], ylabel=LABELS["test_loss"], title=_n_label(n_params))
    if axes:
        axes[0].legend(fontsize="small", title="segment: D_T (dotted: not fitted)", title_fontsize="small")
    figure.suptitle("Loss vs data: the horizontal gap is the effective data transferred")
    return figure


def _scratch_by_size(fit: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(fit["scratch"].values(), key=lambda summary: summary["n_params"])


def _primary(fit: dict[str, Any], source: str) -> tuple[str, dict[str, Any]] | tuple[None, str]:
    try:
        return primary_fit(fit, source)
    except FitError as error:
        return None, str(error)


def _no_points(axis: plt.Axes, points: pd.DataFrame) -> None:
    """Say on the panel why it is empty (the statuses of the points), instead of failing on a log axis."""
    counts = points["status"].value_counts().to_dict() if len(points) else {}
    reason = ", ".join(f"{count} {status}" for status, count in sorted(counts.items())) or "no fine-tuned runs"
    axis.text(0.5, 0.5, f"no point with D_T > 0 to fit\n({reason})", ha="center", va="center",
              transform=axis.transAxes)
    axis.set_axis_off()


def transferred_vs_finetune(fit: dict[str, Any], points: pd.DataFrame, draws: pd.DataFrame) -> plt.Figure:
    """D_T vs D_F per N (log-log) with the fitted law and its 95% bootstrap band."""
    sources = sorted(fit["sources"])
    figure, axes = _panels(len(sources))
    for axis, source in zip(axes, sources):
        mine = points[(points["source"] == source) & (points["status"] == "ok")]
        colours = _palette(sorted(points.loc[points["source"] == source, "n_params"].unique()))
        method, block = _primary(fit, source)
        d_f = np.logspace(np.log10(points["d_f_chars"].min()), np.log10(points["d_f_chars"].max()), 50)
        for n_params, colour in colours.items():
            group = mine[mine["n_params"] == n_params]
            axis.scatter(group["d_f_chars"], group["d_transferred"], color=colour, label=_n_label(n_params))
            if method is None:
                continue
            fitted = transferred_data(block["k"], block["alpha"], block["beta"], n_params, d_f)
            axis.plot(d_f, fitted, color=colour)
            band = draws[(draws["source"] == source) & (draws["method"] == method)]
            if len(band):
                curves = np.exp(band["ln_k"].to_numpy()[:, None] + np.outer(band["alpha"], np.log(d_f))
                                + np.outer(band["beta"], np.full_like(d_f, np.log(n_params))))
                low, high = np.percentile(curves, [2.5, 97.5], axis=0)
                axis.fill_between(d_f, low, high, color=colour, alpha=0.15, lw=0)
        title = (f"{source}: D_T = {block['k']:.3g} D_F^{block['alpha']:.3f} N^{block['beta']:.3f} "
                 f"({FIT_NAMES[method]})" if method else f"{source}: {block}")
        if mine.empty and method is None:
            _no_points(axis, points[points["source"] == source])
            continue
        axis.set(xscale="log", yscale="log", xlabel=LABELS["d_f_chars"], ylabel=LABELS["d_transferred"])
        axis.set_title(title, fontsize="small")
        axis.legend(fontsize="small")
    return figure


def fraction_vs_params(fit: dict[str, Any], points: pd.DataFrame) -> plt.Figure:
    """Fraction from pretraining vs N on logit axes, one line per D_F (straight lines under the law)."""
    sources = sorted(fit["sources"])
    figure, axes = _panels(len(sources))
    for axis, source in zip(axes, sources):
        mine = points[(points["source"] == source) & (points["status"] == "ok")]
        method, block = _primary(fit, source)
        all_n = points.loc[points["source"] == source, "n_params"]
        n_grid = np.logspace(np.log10(all_n.min()), np.log10(all_n.max()), 50)
        for d_f, colour in _palette(sorted(points.loc[points["source"] == source, "d_f_chars"].unique())).items():
            group = mine[mine["d_f_chars"] == d_f]
            axis.scatter(group["n_params"], group["fraction"], color=colour, label=f"D_F = {d_f:.3g}")
            if method is not None:
                ratio = transferred_data(block["k"], block["alpha"], block["beta"], n_grid, d_f) / d_f
                axis.plot(n_grid, ratio / (1 + ratio), color=colour)
        if mine.empty and method is None:
            _no_points(axis, points[points["source"] == source])
            continue
        axis.set(xscale="log", yscale="logit", xlabel=LABELS["n_params"], ylabel=LABELS["fraction"], title=source)
        axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
        axis.yaxis.set_minor_formatter(NullFormatter())
        axis.legend(fontsize="small")
    return figure


def multiplier_heatmap(fit: dict[str, Any]) -> plt.Figure:
    """The fitted effective-data multiplier 1 + D_T/D_F over the observed (N, D_F)."""
    sources = sorted(fit["sources"])
    figure, axes = _panels(len(sources), width=5.0)
    for axis, source in zip(axes, sources):
        method, block = _primary(fit, source)
        if method is None:
            axis.text(0.5, 0.5, f"not identifiable:\n{block}", ha="center", va="center", wrap=True, fontsize="small")
            axis.set_axis_off()
            continue
        grid = pd.DataFrame(block["derived"]["grid"]).pivot(index="n_params", columns="d_f_chars", values="multiplier")
        grid.index = [f"{v:.3g}" for v in grid.index]
        grid.columns = [f"{v:.3g}" for v in grid.columns]
        sns.heatmap(grid.iloc[::-1], annot=True, fmt=".3g", cmap="magma", ax=axis,
                    cbar_kws={"label": LABELS["multiplier"]})
        axis.set(xlabel=LABELS["d_f_chars"], ylabel=LABELS["n_params"], title=f"{source} ({FIT_NAMES[method]} fit)")
    return figure


def ossification_plot(fit: dict[str, Any]) -> plt.Figure:
    """Fine-tuned minus scratch loss at the same D_F: above zero, pretraining hurts (ossification)."""
    sources = sorted(fit["sources"])
    figure, axes = _panels(len(sources))
    for axis, source in zip(axes, sources):
        entries = fit["sources"][source]["ossification"]
        colours = _palette([entry["n_params"] for entry in entries])
        for entry in entries:
            gap = np.array([np.nan if v is None else v for v in entry["loss_gap"]], float)
            colour = colours[entry["n_params"]]
            axis.plot(entry["d_f_observed"], gap, "o-", color=colour, label=_n_label(entry["n_params"]))
            if entry["d_f_chars"] is not None:
                axis.axvline(entry["d_f_chars"], color=colour, ls=":", lw=1)
        axis.axhline(0.0, color="black", lw=1)
        axis.set(xscale="log", xlabel=LABELS["d_f_chars"], ylabel="fine-tuned minus scratch loss (nats / char)",
                 title=f"{source}: above 0, scratch wins (dotted: onset)")
        axis.legend(fontsize="small")
    return figure


def joint_law_plot(law: dict[str, Any]) -> plt.Figure:
    """Scratch losses with the joint-law fits (Chinchilla solid, Kaplan dashed) and their log residuals.

    A degenerate Chinchilla fit (a parameter at its bound) gets no curve, only its residuals: its E is not an
    estimate, so nothing that depends on it is drawn, and the title says so.
    """
    degenerate = bool(law.get("degenerate"))
    kaplan = law.get("kaplan")
    figure, (curves, residuals) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    table = pd.DataFrame({key: law[key] for key in ("n_params", "d_chars", "test_loss", "residuals_log_loss")})
    scale = _size_scale(table["n_params"])
    for n_params, group in table.groupby("n_params"):
        group, colour = group.sort_values("d_chars"), scale.to_rgba(n_params)
        grid = np.logspace(np.log10(group["d_chars"].min()), np.log10(group["d_chars"].max()), 60)
        curves.scatter(group["d_chars"], group["test_loss"], color=colour, label=_n_label(n_params))
        if not degenerate:
            curves.plot(grid, predict_chinchilla(law, n_params, grid), color=colour)
        if kaplan:
            curves.plot(grid, predict_kaplan(kaplan, n_params, grid), "--", color=colour)
        residuals.plot(group["d_chars"], group["residuals_log_loss"], "o", color=colour)
    curves.set(xscale="log", xlabel=LABELS["d_chars"], ylabel=LABELS["test_loss"], title=_joint_law_title(law))
    _size_key(figure, curves, scale, table["n_params"].nunique())
    residuals.axhline(0.0, color="black", lw=1)
    kaplan_rms = f"; Kaplan rms {kaplan['rms_log_residual']:.3g}" if kaplan else ""
    residuals.set(xscale="log", xlabel=LABELS["d_chars"], ylabel="log L observed - fitted (Chinchilla form)",
                  title=f"residuals{kaplan_rms}")
    figure.suptitle(_joint_law_verdict(law), fontsize="small")
    return figure


def _size_scale(n_params: pd.Series) -> plt.cm.ScalarMappable:
    """Colours by log N, so sizes close together look alike however many there are."""
    return plt.cm.ScalarMappable(LogNorm(n_params.min(), n_params.max()), sns.color_palette("viridis", as_cmap=True))


def _size_key(figure: plt.Figure, axis: plt.Axes, scale: plt.cm.ScalarMappable, count: int, most: int = 8) -> None:
    """A legend of the sizes, or a colour bar when there are too many to list (one D per N, as in Chinchilla)."""
    if count <= most:
        axis.legend(fontsize="small")
    else:
        figure.colorbar(scale, ax=axis, label=LABELS["n_params"])


def _joint_law_title(law: dict[str, Any]) -> str:
    kaplan = "; Kaplan (dashed)" if law.get("kaplan") else ""
    if law.get("degenerate"):
        return f"E + A/N^alpha + B/D^beta: degenerate, no curve drawn{kaplan}"
    return f"E + A/N^{law['alpha']:.3f} + B/D^{law['beta']:.3f} (solid){kaplan}"


def _joint_law_verdict(law: dict[str, Any]) -> str:
    """The figure's headline: whether the fitted joint law is an estimate, and if not, which bound it hit."""
    if law.get("degenerate"):
        return "\n".join(textwrap.wrap(f"DEGENERATE joint law, not identifiable: {law.get('reason', '')}", 150))
    return f"L(N, D) of {len(law['n_params'])} from-scratch runs: no parameter at a bound; E = {law['E']:.3g}"


def make_dp_figures(runs_csv: str | os.PathLike, dp_fit_json: str | os.PathLike,
                    out_dir: str | os.PathLike) -> list[Path]:
    """Figures of the pretraining-data axis: loss and score against D_p with their laws, and D_T against D_p."""
    table = read_table(runs_csv)
    analysis = load_fit(dp_fit_json)
    sns.set_theme(style="whitegrid", context="paper")
    return _render_all({"dp_loss_and_score": lambda: dp_laws_plot(table, analysis),
                        "dp_transferred": lambda: dp_transferred_plot(analysis)}, Path(out_dir))


def _dp_law_panel(axis: plt.Axes, group: pd.DataFrame, column: str, fit: dict[str, Any],
                  predict: Callable[[dict[str, Any], Any], Any], colour: Any, label: str) -> None:
    """Observed points, the law fitted on the smallest D_p (solid) and its prediction of the held-out ones."""
    axis.plot(group["d_p_tokens"], group[column], "o", color=colour, label=label)
    if "error" in fit:
        return
    fitted_to = max(fit["fit_points"]["d_p"])
    grid = np.logspace(np.log10(group["d_p_tokens"].min()), np.log10(group["d_p_tokens"].max()), 60)
    inside = grid <= fitted_to
    axis.plot(grid[inside], predict(fit, grid[inside]), "-", color=colour)
    axis.plot(grid[~inside], predict(fit, grid[~inside]), "--", color=colour)
    for held in fit["held_out"]:
        axis.plot([held["d_p"]], [held["predicted"]], "x", color=colour, markersize=8)


def dp_laws_plot(table: pd.DataFrame, analysis: dict[str, Any]) -> plt.Figure:
    """Per (N, D_F): cross-entropy, BLEU and chrF against D_p for each source; x marks the laws' held-out
    predictions."""
    groups = analysis["groups"]
    keys = sorted({(g["n_params"], g["d_f_chars"]) for g in groups})
    figure, axes = plt.subplots(len(keys), 1 + len(DP_SCORES), figsize=(4.5 * (1 + len(DP_SCORES)), 3.4 * len(keys)),
                                squeeze=False, layout="constrained")
    colours = _palette(sorted({g["source"] for g in groups}))
    for (loss_axis, *score_axes), (n_params, d_f_chars) in zip(axes, keys):
        for group_fit in (g for g in groups if (g["n_params"], g["d_f_chars"]) == (n_params, d_f_chars)):
            source = group_fit["source"]
            rows = table[(table["source"] == source) & (table["n_params"] == n_params)
                         & (table["d_f_chars"] == d_f_chars)].sort_values("d_p_tokens")
            _dp_law_panel(loss_axis, rows, "test_loss", group_fit["loss_fit"], predict_dp_loss, colours[source],
                          source)
            for score_axis, score in zip(score_axes, DP_SCORES):
                verdict = group_fit.get(f"{score}_verdict", {}).get("verdict", "n/a")
                _dp_law_panel(score_axis, rows, score, group_fit[f"{score}_fit"], predict_dp_score, colours[source],
                              f"{source} ({verdict})")
        title = f"{_n_label(n_params)}, D_F = {d_f_chars:.3g} characters"
        loss_axis.set(xscale="log", xlabel=LABELS["d_p_tokens"], ylabel=LABELS["test_loss"], title=title)
        loss_axis.legend(fontsize="small")
        for score_axis, score in zip(score_axes, DP_SCORES):
            score_axis.set(xscale="log", xlabel=LABELS["d_p_tokens"], ylabel=LABELS[score], title=title)
            score_axis.legend(fontsize="small", title="source (score vs loss)", title_fontsize="small")
    return figure


def dp_transferred_plot(analysis: dict[str, Any]) -> plt.Figure:
    """D_T against D_p per source (points whose D_T cannot be read off the scratch curve are labelled)."""
    points = pd.DataFrame(analysis["transferred"])
    figure, axes = _panels(1, width=5.0)
    axis = axes[0]
    if not (points["status"] == "ok").any():
        _no_points(axis, points)
        return figure
    for (source, n_params, d_f_chars), group in points.groupby(["source", "n_params", "d_f_chars"]):
        ok = group[group["status"] == "ok"]
        axis.plot(ok["d_p_tokens"], ok["d_transferred"], "o-",
                  label=f"{source}, {_n_label(n_params)}, D_F = {d_f_chars:.3g}")
        for record in group[group["status"] != "ok"].itertuples():
            axis.annotate(record.status, (record.d_p_tokens, max(record.d_f_chars, 1.0)), fontsize="x-small")
    axis.set(xscale="log", yscale="log", xlabel=LABELS["d_p_tokens"], ylabel=LABELS["d_transferred"],
             title="effective data transferred vs pretraining data")
    axis.legend(fontsize="x-small")
    return figure
