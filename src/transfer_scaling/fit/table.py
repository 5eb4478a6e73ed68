"""A runs table as the fit reads it: the columns it needs, each row checked (kinds, positive N and D, duplicates,
the scratch runs every size needs), seeds averaged per point, and the compute of each run.

A bad table is refused with one message naming the file, column, row or N at fault.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..io import TableError, read_table
from ..plan import TRAINING_KINDS

REQUIRED_COLUMNS = ("kind", "source", "n_params", "data_chars", "test_loss")
FITTED_KINDS = ("scratch", "finetune")
ACCEPTED_KINDS = TRAINING_KINDS
"""A table holds the kinds of run the pipeline trains; pretraining runs count only for compute."""
RUN_STATUSES = ("ok", "failed")
POINT_STATUSES = ("ok", "failed", "censored", "below_range", "ill_conditioned", "no_transfer", "high_data")


class FitError(ValueError):
    """The runs table cannot be fitted; the message names the column, row or N at fault."""


# ---------------------------------------------------------------------------------------------- validation


def validate_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Return a cleaned copy of ``runs`` (text stripped, status filled, numbers parsed) or raise ``FitError``.

    Nothing is dropped or counted twice without a word: a row of an unknown kind, a duplicated row or a value that
    is not a number is refused with the rows at fault (counted from 0 after the header).
    """
    missing = [column for column in REQUIRED_COLUMNS if column not in runs.columns]
    if missing:
        raise FitError(f"runs table lacks column(s) {missing}; required: {list(REQUIRED_COLUMNS)}")
    runs = runs.copy().reset_index(drop=True)
    runs["kind"] = _text(runs["kind"])
    runs["source"] = _text(runs["source"])
    runs["status"] = _text(runs["status"].fillna("ok")) if "status" in runs.columns else "ok"
    _check_kinds(runs)
    bad_status = runs.index[~runs["status"].isin(RUN_STATUSES)]
    if len(bad_status):
        row = bad_status[0]
        raise FitError(f"row {row}: status {runs.at[row, 'status']!r} is not one of {list(RUN_STATUSES)}")
    fitted = runs["kind"].isin(FITTED_KINDS)
    for column in ("n_params", "data_chars"):
        _require_positive(runs, column, fitted, "it must be a positive number")
    _require_positive(runs, "test_loss", fitted & (runs["status"] == "ok"), "a run with status ok needs a finite "
                      "positive loss (mark failed runs with status 'failed')")
    no_source = runs.index[(runs["kind"] == "finetune") & (runs["source"] == "")]
    if len(no_source):
        raise FitError(f"row {no_source[0]}: a finetune run needs a non-empty 'source'")
    _check_duplicates(runs)
    _check_scratch_coverage(runs[fitted & (runs["status"] == "ok")])
    return runs


def _text(column: pd.Series) -> pd.Series:
    """A text column with empty cells as '' and no surrounding spaces (' finetune' is finetune)."""
    return column.fillna("").astype(str).str.strip()


def _rows(index: pd.Index, shown: int = 6) -> str:
    """'row 3' or 'rows 3, 5, 9 and 12 more': the rows at fault, numbered as pandas reads the table."""
    listed = ", ".join(str(row) for row in index[:shown])
    more = f" and {len(index) - shown} more" if len(index) > shown else ""
    return f"row{'s' if len(index) > 1 else ''} {listed}{more}"


def _as_written(value: Any) -> str:
    """A cell as the user wrote it ('abc', -5.0, empty), not as numpy would print it."""
    if isinstance(value, str):
        return repr(value)
    return "empty" if pd.isna(value) else str(value)


def _check_kinds(runs: pd.DataFrame) -> None:
    unknown = runs[~runs["kind"].isin(ACCEPTED_KINDS)]
    if len(unknown):
        found = "; ".join(f"kind {kind!r} in {_rows(group.index)}"
                          for kind, group in unknown.groupby("kind", sort=False))
        raise FitError(f"{found}: unknown kind of run; accepted kinds: {list(ACCEPTED_KINDS)}")


def _require_positive(runs: pd.DataFrame, column: str, rows: pd.Series, rule: str) -> None:
    values = pd.to_numeric(runs[column], errors="coerce")
    bad = runs.index[rows & ~(np.isfinite(values) & (values > 0))]
    if len(bad):
        row = bad[0]
        raise FitError(f"row {row}: column {column!r} is {_as_written(runs.at[row, column])}; {rule}")
    runs[column] = values.astype(float)


def _check_duplicates(runs: pd.DataFrame, shown: int = 3) -> None:
    """Rows that repeat a run (same kind, source, N, D and seed) would count as extra seeds. Without a ``seed``
    column the rows of a point cannot be told apart and are taken as its seeds, as the README says."""
    if "seed" not in runs.columns:
        return
    key = ["kind", "source", "n_params", "data_chars", "seed"]
    groups = [group for _, group in runs[runs.duplicated(key, keep=False)].groupby(key, dropna=False, sort=False)]
    if groups:
        found = "; ".join(f"{_rows(group.index)} repeat one run (kind {run['kind']!r}, source {run['source']!r}, "
                          f"n_params {run['n_params']:g}, data_chars {run['data_chars']:g}, seed "
                          f"{_as_written(run['seed'])})" for group in groups[:shown] for run in [group.iloc[0]])
        more = f" (and {len(groups) - shown} more such groups)" if len(groups) > shown else ""
        raise FitError(f"duplicated rows: {found}{more}; a copy would count as an extra seed: remove it, or give "
                       "each seed its own 'seed'")


def _check_scratch_coverage(runs: pd.DataFrame) -> None:
    """Every N with fine-tuned runs needs a scratch curve (2 D at least) to read D_E off; a scratch-only N (a
    from-scratch sweep) needs none, its points still enter the joint law."""
    distinct_d = runs[runs["kind"] == "scratch"].groupby("n_params")["data_chars"].nunique()
    for n_params in sorted(runs.loc[runs["kind"] == "finetune", "n_params"].unique()):
        if n_params not in distinct_d.index:
            raise FitError(f"N = {n_params:g}: fine-tuned runs but no successful scratch run of that n_params")
        if distinct_d[n_params] < 2:
            raise FitError(f"N = {n_params:g}: scratch runs at {distinct_d[n_params]} value of data_chars; at least 2 "
                           "are needed to interpolate the scratch curve")


def average_seeds(runs: pd.DataFrame) -> pd.DataFrame:
    """Average the losses of the successful seeds of each (kind, source, N, D); keep the seed count."""
    ok = runs[runs["status"] == "ok"].copy()
    if "compute" not in ok.columns:
        ok["compute"] = run_compute(ok)
    grouped = ok.groupby(["kind", "source", "n_params", "data_chars"], as_index=False)
    return grouped.agg(test_loss=("test_loss", "mean"), loss_std=("test_loss", "std"),
                       n_seeds=("test_loss", "size"), compute=("compute", "mean"))


def run_compute(runs: pd.DataFrame) -> pd.Series:
    """Compute of each run: the ``compute`` column, else 6 * N * tokens_seen, else NaN."""
    if "compute" in runs.columns:
        return pd.to_numeric(runs["compute"], errors="coerce")
    if "tokens_seen" in runs.columns:
        return 6.0 * runs["n_params"] * pd.to_numeric(runs["tokens_seen"], errors="coerce")
    return pd.Series(np.nan, index=runs.index)


# ---------------------------------------------------------------------------------------------- points


def read_runs(runs_csv: str | os.PathLike) -> pd.DataFrame:
    """The runs table at ``runs_csv``; a missing, empty, binary or non-CSV file is one FitError naming it."""
    path = Path(runs_csv)
    if not path.exists():
        raise FitError(f"runs table not found: {path}")
    try:
        return read_table(path, dtype={"source": str, "kind": str, "status": str}, keep_default_na=True)
    except TableError as error:
        raise FitError(str(error)) from None


