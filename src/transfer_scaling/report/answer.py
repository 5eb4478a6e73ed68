"""The study's answer as reStructuredText, written from ``transfer_fit.json`` for the first page of the report.

A reader opens the report to learn what pretraining on each source is worth, so the answer comes first: one
sentence per source that a reader can act on (which of 10x more fine-tuning data or a 10x larger model the fit
supports, with its interval, or that the study does not resolve it and what would), then per source k, alpha and
beta with their intervals, what 10x more data is worth against a 10x larger model, the derived quantities over the
observed grid, which points were left out and why, the held-out prediction, and the figures that show it.

No derived number is shown without its 95% bootstrap interval, and one that the study does not resolve (the fit's
``<name>_resolution``: undefined in a notable share of the replicates, an interval across 0 or 1x, wider than two
orders of magnitude, or not holding the estimate) is written "not resolved" with the reason, never as a number.
Every field is read defensively: a fit from an older or partial run (a key missing, a null where a quantity is not defined) still renders, saying
"not defined", "not available" or "not resolved" in place of the number.
"""

from __future__ import annotations

import base64
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..io import atomic_open, read_json

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
NOT_RESOLVED = "not resolved"
NO_INTERVAL = "this fit gives no bootstrap interval for it"


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
    lines += [_bullet(_source_sentence(fit, source, sources[source])) for source in sorted(sources)]
    lines += ([""] if sources else [])
    lines += [_plain(f"Effective data transferred D_T = k * D_F^alpha * N^beta, in characters of {target}, with N "
                     "the non-embedding parameters; 95% bootstrap intervals in brackets. A derived quantity that the "
                     "study does not resolve (undefined in more than 2.5% of the bootstrap replicates, an interval "
                     "across 0 or 1x, one wider than two orders of magnitude, or one that does not hold the "
                     "estimate) is written 'not resolved' with the "
                     "reason. Appendix C is the paper's procedure, Huber a robust regression; the advice uses "
                     "Appendix C when it is identifiable. How the study was run follows the answer."), ""]
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
    lines += _unresolved_parameters(block)
    lines += _ten_x(method, block)
    lines += _grid_table(block)
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
    """The method the advice uses: Appendix C when identifiable, else Huber (as ``advice.primary_fit``)."""
    for method in METHODS:
        if (blocks.get(method) or {}).get("identifiable"):
            return method, blocks[method]
    return None, {}


def _ten_x(method: str | None, block: dict[str, Any]) -> list[str]:
    """What 10x more fine-tuning data is worth against a 10x larger model, each quantity with its interval."""
    title = "**10x more fine-tuning data or a 10x larger model?**"
    if method is None:
        return [f"{title} {NOT_DEFINED}: the law is not identifiable for this source.", ""]
    derived = block.get("derived") or {}
    return [f"{title} ({METHODS[method]} fit)", "",
            _bullet("10x more D_F multiplies D_T by 10^alpha: "
                    f"{_quantity(derived, 'd_transferred_factor_10x_data', 'x')}; a 10x larger model multiplies it "
                    f"by 10^beta: {_quantity(derived, 'd_transferred_factor_10x_model', 'x')}."),
            _bullet("Fine-tuning data that a 10x larger model is worth at equal D_T (10^(beta/alpha)): "
                    f"{_quantity(derived, 'data_worth_of_10x_model_equal_d_transferred', 'x')}."),
            _bullet("At equal effective data D_E = D_F + D_T, and the effective data of 10x more fine-tuning data "
                    "against a 10x larger model: per observed N and D_F in the table below."), ""]


def _quantity(container: dict[str, Any], name: str, unit: str = "") -> str:
    """A derived quantity as a reader may see it: its value with its 95% interval where the study resolves it,
    else "not resolved (why)" or "not defined (why)", never a bare number."""
    if name not in container:
        return NOT_AVAILABLE
    value, verdict = container.get(name), container.get(f"{name}_resolution")
    if verdict is not None and verdict != "resolved":
        return f"{NOT_RESOLVED} ({_reason(verdict)})"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return _status_text(container.get(f"{name}_status"), NOT_DEFINED)
    if verdict is None:
        return f"{NOT_RESOLVED} ({NO_INTERVAL})"
    low, high = container.get(f"{name}_ci") or [None, None]
    return f"{_number(value)}{unit} [{_number(low)}, {_number(high)}]"


def _reason(verdict: Any) -> str:
    """The why of a ``not_resolved: why`` verdict."""
    return re.sub(r"^\w+:\s*", "", str(verdict)) if verdict else NO_INTERVAL


def _unresolved_parameters(block: dict[str, Any]) -> list[str]:
    """One line naming the law's parameters whose intervals do not resolve them, and why."""
    found = [f"{name} ({_reason(block[f'{name}_resolution'])})" for name in ("k", "alpha", "beta")
             if block.get(f"{name}_resolution") not in (None, "resolved")]
    return [_plain(f"Not resolved by this study: {'; '.join(found)}."), ""] if found else []


GRID_COLUMNS = {
    "multiplier": ("multiplier 1 + D_T/D_F", "x"),
    "fraction": ("fraction D_T/D_E", ""),
    "data_worth_of_10x_model_equal_d_effective": ("fine-tuning data a 10x model is worth (equal D_E)", "x"),
    "d_effective_ratio_10x_data_to_10x_model": ("D_E of 10x data / D_E of a 10x model", "x"),
}


def _grid_table(block: dict[str, Any]) -> list[str]:
    """The derived quantities at each observed (N, D_F), each with its interval or why it is not resolved."""
    rows = (block.get("derived") or {}).get("grid") or []
    if not rows:
        return []
    cells = [[_number(row.get("n_params")), _number(row.get("d_f_chars")),
              *(_plain(_quantity(row, name, unit)) for name, (_, unit) in GRID_COLUMNS.items())]
             for row in sorted(rows, key=lambda row: (row.get("n_params") or 0, row.get("d_f_chars") or 0))]
    header = ["N", _plain("D_F"), *(_plain(title) for title, _ in GRID_COLUMNS.values())]
    return ["**Derived quantities over the observed N and D_F**", "", *_table(header, cells)]


def _source_sentence(fit: dict[str, Any], source: str, blocks: dict[str, Any]) -> str:
    """The one sentence a reader can act on for a source (``decision_sentence``), or why there is none."""
    method, block = _primary(blocks)
    if method is None:
        return f"{source}: the law is not identifiable, so the study says nothing about 10x more data or a 10x model."
    decision = (block.get("derived") or {}).get("decision")
    if not decision:
        return (f"{source}: this fit states no choice between 10x more fine-tuning data and a 10x larger model "
                "with an interval (it predates them); fit the runs table again for one.")
    points = [point for point in fit.get("points") or [] if point.get("source") == source]
    return decision_sentence(source, decision, block, points)


def decision_sentence(source: str, decision: dict[str, Any], block: dict[str, Any], points: list[dict]) -> str:
    """Which of 10x more fine-tuning data or a 10x larger model the fit supports at the decision's (N, D_F), with
    the interval of their effective-data ratio; or that the study does not resolve it, why, and what would (more
    seeds per point, more D_F values or more sizes, from the parameters whose intervals do not resolve them)."""
    name = "d_effective_ratio_10x_data_to_10x_model"
    if "n_params" not in decision:
        return f"{source}: {_status_text(decision.get('reason'), 'no point to state the choice at')}."
    ratio, verdict = decision.get(name), decision.get(f"{name}_resolution")
    place = f"at N = {_number(decision.get('n_params'))} and D_F = {_number(decision.get('d_f_chars'))}"
    interval = decision.get(f"{name}_ci") or [None, None]
    if verdict == "resolved" and isinstance(ratio, (int, float)):
        if ratio > 1:
            return (f"{source}: {place}, 10x more fine-tuning data gives {_number(ratio)}x [{_number(interval[0])}, "
                    f"{_number(interval[1])}] the effective data of a 10x larger model, so the fit supports more "
                    "data (effective data counts each model's own from-scratch characters; a larger model's lower "
                    "from-scratch loss comes on top).")
        return (f"{source}: {place}, a 10x larger model gives {_number(1 / ratio)}x [{_number(1 / interval[1])}, "
                f"{_number(1 / interval[0])}] the effective data of 10x more fine-tuning data, so the fit supports "
                "the larger model.")
    return (f"{source}: the study does not resolve whether 10x more fine-tuning data or a 10x larger model gives "
            f"more effective data {place} (their ratio: {_reason(verdict) if verdict else NO_INTERVAL}); "
            f"{_what_would_resolve(block, points)}.")


def _what_would_resolve(block: dict[str, Any], points: list[dict]) -> str:
    """The runs that would narrow the interval: more seeds, and more D_F values or sizes where alpha's or beta's
    interval does not resolve its sign."""
    fitted = [point for point in points if point.get("status") == "ok"]
    seeds = max((point.get("n_seeds") or 1 for point in fitted), default=1)
    more = [f"more seeds per run (now {seeds})"]
    for parameter, column, what in (("alpha", "d_f_chars", "D_F values"), ("beta", "n_params", "model sizes")):
        if block.get(f"{parameter}_resolution") not in (None, "resolved"):
            values = sorted({point[column] for point in fitted if point.get(column)})
            span = f", over {math.log10(values[-1] / values[0]):.1f} decades" if len(values) > 1 else ""
            interval = block.get(f"{parameter}_ci") or [None, None]
            more.append(f"more {what} (now {len(values)}{span}; {parameter}'s interval is "
                        f"[{_number(interval[0])}, {_number(interval[1])}])")
    return "what would resolve it: " + ", ".join(more[:-1]) + (" or " if len(more) > 1 else "") + more[-1]


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
             f"``{p.get('status')}``"]
            for p in sorted(left_out, key=lambda p: (p.get("n_params") or 0, p.get("d_f_chars") or 0))]
    statuses = dict.fromkeys(str(point.get("status")) for point in left_out)
    meanings = [_bullet(f"{status}: {STATUS_MEANING.get(status, 'see the fit log')}") for status in statuses]
    return ([f"{title}: {len(left_out)} of {len(points)}.", ""]
            + _table(["N", _plain("D_F"), "measured test loss", "status"], rows) + meanings + [""])


def _held_out(block: dict[str, Any] | None) -> list[str]:
    """Predict, then verify: the law fitted on the smaller sizes against the largest size's measured losses, each
    predicted loss and error with its interval over that law's bootstrap replicates."""
    title = "**Held-out prediction**"
    if not block or block.get("status") != "ok":
        return [f"{title}: {_status_text((block or {}).get('status'), NOT_AVAILABLE)}.", ""]
    fitted = ", ".join(_number(n) for n in block.get("fitted_n_params") or []) or NOT_AVAILABLE
    largest = (_quantity(block, "max_abs_error_percent", "%") if "max_abs_error_percent_resolution" in block
               else f"{_number(block.get('max_abs_error_percent'))}% (no interval in this fit)")
    lines = [f"{title}: " + _plain(f"the law fitted on N = {fitted} ({METHODS.get(block.get('method'), '?')}) "
                                   f"predicts the largest size, N = {_number(block.get('n_params'))}; largest error "
                                   f"{largest} over its low-data points (measured losses are single "
                                   "measurements; the intervals are the law's)."), ""]
    rows = [[_number(p.get("d_f_chars")), _number(p.get("measured_loss")),
             _plain(_quantity(p, "predicted_loss")),
             _number(p.get("error_percent")) + _interval_text(p.get("error_percent_ci")),
             f"``{p.get('status')}``", "yes" if p.get("extrapolated") else "no"]
            for p in block.get("points") or []]
    header = [_plain("D_F"), "measured loss", "predicted loss", "error %", "point status", "L_N extrapolated"]
    return lines + (_table(header, rows) if rows else [])


def _interval_text(interval: Any) -> str:
    return f" [{_number(interval[0])}, {_number(interval[1])}]" if interval and len(interval) == 2 else ""


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


def _bullet(text: str) -> str:
    return f"- {_plain(text)}"


def _plain(text: str) -> str:
    """Text with rst's inline markup characters escaped, so a reason or name is shown as written."""
    return re.sub(r"([\\*`|_])", r"\\\1", text)
