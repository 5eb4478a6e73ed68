"""The study's answer as reStructuredText, written from ``transfer_fit.json`` for the first page of the report.

A reader opens the report to learn what pretraining on each source is worth, so the answer comes first: per
source k, alpha and beta with their intervals, what 10x more fine-tuning data is worth against a 10x larger
model, which points were left out and why, the held-out prediction error, and the figures that show it.
Every field is read defensively: a fit from an older or partial run (a key missing, a null where a quantity is
not defined) still renders, saying "not defined" or "not available" in place of the number.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from .io import atomic_open, read_json

METHODS = {"appendix_c": "Appendix C", "huber": "Huber"}
STATUS_MEANING = {
    "failed": "every seed of the run failed",
    "censored": "loss below the best scratch run: D_E is beyond the largest scratch D (a lower bound only)",
    "below_range": "loss above the scratch run at the smallest D: D_E is below the smallest scratch D",
    "ill_conditioned": "the scratch curve is nearly flat at D_E, so D_E is not resolved",
    "no_transfer": "D_T <= 0: no better than training from scratch on D_F",
    "high_data": "D_F above the low-data limit, where the power law does not hold",
}
KEY_FIGURES = {
    "transferred_vs_finetune": "D_T against D_F per N with the fitted law and its 95% band (one panel per source)",
    "multiplier_heatmap": "the effective-data multiplier 1 + D_T/D_F over the observed N and D_F",
}
NOT_DEFINED = "not defined"
NOT_AVAILABLE = "not available"


def write_answer(fit_json: str | os.PathLike, figures_dir: str | os.PathLike, out: str | os.PathLike,
                 target: str) -> Path:
    """Write the answer page (``answer_rst``) for the fit in ``fit_json`` and the PNGs in ``figures_dir``."""
    figures = sorted(Path(figures_dir).glob("*.png"))
    with atomic_open(out, "w", encoding="utf-8") as handle:
        handle.write(answer_rst(read_json(fit_json), figures, target))
    return Path(out)


def answer_rst(fit: dict[str, Any], figures: Sequence[Path], target: str) -> str:
    """The answer per source, then the joint-law diagnostic, then the key figures embedded (data URIs)."""
    sources = fit.get("sources") or {}
    lines = _heading(f"The answer: what pretraining is worth for {target}", "=")
    lines += [_plain(f"Effective data transferred D_T = k * D_F^alpha * N^beta, in characters of {target}, with N "
                     "the non-embedding parameters; 95% bootstrap intervals in brackets. Appendix C is the paper's "
                     "procedure, Huber a robust regression; the advice uses Appendix C when it is identifiable. "
                     "How the study was run follows the answer."), ""]
    if not sources:
        lines += [_plain(_status_text(fit.get("transfer_law_status"), "No transfer law was fitted")) + ".", ""]
    for source in sorted(sources):
        lines += _source_section(fit, source, sources[source])
    lines += _joint_law_section(fit.get("joint_law"))
    lines += _figures_section(figures)
    return "\n".join(lines) + "\n"


def _source_section(fit: dict[str, Any], source: str, blocks: dict[str, Any]) -> list[str]:
    lines = _heading(f"Source: {source}", "-")
    lines += _law_table(blocks)
    method, block = _primary(blocks)
    lines += _ten_x(method, block)
    lines += _left_out(fit, source)
    lines += _held_out(blocks.get("held_out_prediction"))
    return lines


def _law_table(blocks: dict[str, Any]) -> list[str]:
    """k, alpha and beta by each method with their intervals; one sentence when neither method could fit."""
    if _primary(blocks)[0] is None:
        reasons = "; ".join(f"{name}: {(blocks.get(method) or {}).get('reason', NOT_AVAILABLE)}"
                            for method, name in METHODS.items())
        return ["**D_T law**: " + _plain(f"not identifiable ({reasons})."), ""]
    rows = []
    for method, name in METHODS.items():
        block = blocks.get(method)
        if not (block and block.get("identifiable")):
            why = f"not identifiable: {block.get('reason', NOT_AVAILABLE)}" if block else NOT_AVAILABLE
            rows.append([name, _plain(why), "", "", "", ""])
            continue
        rows.append([name, *(_estimate(block, key) for key in ("k", "alpha", "beta")),
                     _number(block.get("r_squared")), _used(blocks)])
    return _table(["method", "k", "alpha", "beta", "R^2", "points fitted"], rows)


def _used(blocks: dict[str, Any]) -> str:
    used = blocks.get("n_points_used")
    excluded = sum((blocks.get("n_points_excluded") or {}).values())
    return NOT_AVAILABLE if used is None else f"{used} of {used + excluded}"


def _primary(blocks: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The method the advice uses: Appendix C when identifiable, else Huber (as ``fitting.primary_fit``)."""
    for method in METHODS:
        if (blocks.get(method) or {}).get("identifiable"):
            return method, blocks[method]
    return None, {}


def _ten_x(method: str | None, block: dict[str, Any]) -> list[str]:
    """What 10x more fine-tuning data is worth against a 10x larger model, from the fit's derived quantities."""
    title = "**10x more fine-tuning data or a 10x larger model?**"
    if method is None:
        return [f"{title} {NOT_DEFINED}: the law is not identifiable for this source.", ""]
    derived = block.get("derived") or {}
    equal_d_t = _derived(derived, "data_worth_of_10x_model_equal_d_transferred")
    grid = [row.get("data_worth_of_10x_model_equal_d_effective") for row in derived.get("grid") or []]
    finite = [value for value in grid if isinstance(value, (int, float))]
    equal_d_e = f"{min(finite):.3g}x to {max(finite):.3g}x" if finite else _derived_grid_status(derived)
    return [f"{title} ({METHODS[method]} fit)", "",
            _bullet(f"10x more D_F multiplies D_T by 10^alpha = {_power(block.get('alpha'))}; a 10x larger model "
                    f"multiplies it by 10^beta = {_power(block.get('beta'))}."),
            _bullet(f"A 10x larger model transfers as much as {equal_d_t} more fine-tuning data (equal D_T, "
                    "10^(beta/alpha))."),
            _bullet(f"For the same effective data D_E = D_F + D_T, a 10x larger model is worth {equal_d_e} more "
                    "fine-tuning data over the observed N and D_F."), ""]


def _derived(derived: dict[str, Any], name: str) -> str:
    """A derived multiple, or "not defined" with the fit's ``<name>_status`` when it gives one."""
    value = derived.get(name)
    if isinstance(value, (int, float)):
        return f"{value:.3g}x"
    return _status_text(derived.get(f"{name}_status"), NOT_DEFINED)


def _derived_grid_status(derived: dict[str, Any]) -> str:
    statuses = [row.get("data_worth_of_10x_model_equal_d_effective_status") for row in derived.get("grid") or []]
    return _status_text(next((status for status in statuses if status), None), NOT_DEFINED)


def _status_text(status: Any, verdict: str) -> str:
    """``verdict`` with the reason of a fit's ``"not_defined: why"``-style status, when it gives one."""
    reason = re.sub(r"^\w+:\s*", "", str(status)) if status else ""
    return f"{verdict} ({reason})" if reason else verdict


def _left_out(fit: dict[str, Any], source: str) -> list[str]:
    """The fine-tuned points not fitted, each with its status, then what each of those statuses means."""
    points = [point for point in fit.get("points") or [] if point.get("source") == source]
    left_out = [point for point in points if point.get("status") != "ok"]
    title = "**Points left out of the fit**"
    if not points:
        return [f"{title}: {NOT_AVAILABLE} (no points in the fit).", ""]
    if not left_out:
        return [f"{title}: none; all {len(points)} fine-tuned points are fitted.", ""]
    rows = [[_number(p.get("n_params")), _number(p.get("d_f_chars")), _number(p.get("test_loss")),
             _number(p.get("d_transferred")), f"``{p.get('status')}``"]
            for p in sorted(left_out, key=lambda p: (p.get("n_params") or 0, p.get("d_f_chars") or 0))]
    statuses = dict.fromkeys(str(point.get("status")) for point in left_out)
    meanings = [_bullet(f"{status}: {STATUS_MEANING.get(status, 'see the fit log')}") for status in statuses]
    return ([f"{title}: {len(left_out)} of {len(points)}.", ""]
            + _table(["N", _plain("D_F"), "test loss", _plain("D_T"), "status"], rows) + meanings + [""])


def _held_out(block: dict[str, Any] | None) -> list[str]:
    """Predict, then verify: the law fitted on the smaller sizes against the largest size's measured losses."""
    title = "**Held-out prediction**"
    if not block or block.get("status") != "ok":
        return [f"{title}: {_status_text((block or {}).get('status'), NOT_AVAILABLE)}.", ""]
    fitted = ", ".join(_number(n) for n in block.get("fitted_n_params") or []) or NOT_AVAILABLE
    lines = [f"{title}: " + _plain(f"the law fitted on N = {fitted} ({METHODS.get(block.get('method'), '?')}) "
                                   f"predicts the largest size, N = {_number(block.get('n_params'))}; largest error "
                                   f"{_number(block.get('max_abs_error_percent'))}% "
                                   f"({_number(block.get('max_abs_error'))} nats) over its low-data points."), ""]
    rows = [[_number(p.get("d_f_chars")), _number(p.get("measured_loss")), _number(p.get("predicted_loss")),
             _number(p.get("error_percent")), f"``{p.get('status')}``", "yes" if p.get("extrapolated") else "no"]
            for p in block.get("points") or []]
    header = [_plain("D_F"), "measured loss", "predicted loss", "error %", "point status", "L_N extrapolated"]
    return lines + (_table(header, rows) if rows else [])


def _joint_law_section(law: dict[str, Any] | None) -> list[str]:
    """The joint L(N, D) of the scratch runs: a diagnostic, with a degenerate fit named as such and no E."""
    lines = _heading("Joint law L(N, D) of the from-scratch runs (a diagnostic)", "-")
    if not law:
        return lines + [f"{NOT_AVAILABLE}: not fitted.", ""]
    if law.get("degenerate"):
        bounds = ", ".join(law.get("at_bounds") or [])
        return lines + [_plain(f"Degenerate, not identifiable (at bounds: {bounds}): {law.get('reason', '')}. "
                               "E is not an estimate, so nothing here uses it."), ""]
    if not law.get("identifiable"):
        return lines + [_plain(f"Not identifiable: {law.get('reason', NOT_AVAILABLE)}."), ""]
    fitted = ", ".join(f"{name} = {_number(law.get(name))}" for name in ("E", "A", "alpha", "B", "beta"))
    return lines + [_plain(f"L = E + A/N^alpha + B/D^beta with {fitted}; never used to read D_E, which comes "
                           "from the same-N scratch curves."), ""]


def _figures_section(figures: Sequence[Path]) -> list[str]:
    shown = [path for path in figures if path.stem in KEY_FIGURES]
    lines = _heading("The figures that show it", "-")
    for path in sorted(shown, key=lambda path: list(KEY_FIGURES).index(path.stem)):
        lines += [f"**{path.name}**: {_plain(KEY_FIGURES[path.stem])}.", "", *_embedded_image(path), ""]
    others = [path.name for path in figures if path not in shown]
    if others:
        lines += [_plain(f"The other figures ({', '.join(others)}) are under Figures in this report."), ""]
    return lines if figures else lines + [f"{NOT_AVAILABLE}: no figures were drawn.", ""]


# ---------------------------------------------------------------------------------------------- formatting


def _embedded_image(path: Path, width: int = 76) -> list[str]:
    """An image directive carrying the PNG as a data URI, so the report's single HTML file holds it; the URI
    is split over indented lines (docutils strips the whitespace) to stay under its line-length limit."""
    encoded = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    chunks = [encoded[start:start + width] for start in range(0, len(encoded), width)]
    return [f".. image:: {chunks[0]}", *(f"   {chunk}" for chunk in chunks[1:]), "   :width: 100%",
            f"   :alt: {path.stem}"]


def _heading(text: str, underline: str) -> list[str]:
    return [_plain(text), underline * len(_plain(text)), ""]


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    """An rst list-table (cells may hold any inline text, no column alignment to keep)."""
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        lines += [f"   {'*' if index == 0 else ' '} - {cell if cell else '..'}" for index, cell in enumerate(row)]
    return lines + [""]


def _estimate(block: dict[str, Any], name: str) -> str:
    interval = block.get(f"{name}_ci")
    bounds = f" [{_number(interval[0])}, {_number(interval[1])}]" if interval and len(interval) == 2 else ""
    return _number(block.get(name)) + bounds


def _number(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else NOT_DEFINED


def _power(exponent: Any) -> str:
    return f"{10.0 ** exponent:.3g}x" if isinstance(exponent, (int, float)) else NOT_DEFINED


def _bullet(text: str) -> str:
    return f"- {_plain(text)}"


def _plain(text: str) -> str:
    """Text with rst's inline markup characters escaped, so a reason or name is shown as written."""
    return re.sub(r"([\\*`|_])", r"\\\1", text)
