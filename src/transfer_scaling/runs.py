"""Runs: the record of one training run, and the table of every run's results.

A run is identified by its kind (pretrain, finetune, scratch), source, size and data. Three mappings describe it:
the run settings (what the config fixes: kind, model, options, seed; the rule's ``params.run_settings``), the
run record (``spec.json``: the settings joined with the run's files, plus what names the run) and, inside the
record, the trainer spec (its ``trainer`` member, all the trainer reads). The record is written next to the
weights so every number in ``runs.csv`` can be traced to the settings that made it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from .plan import step_budget
from .io import atomic_open, read_json
from .layout import RunLayout
from .tokens import load_token_array

RUN_COLUMNS = [
    "run", "kind", "source", "size", "n_params", "n_layer", "d_model", "data_chars", "seed",
    "test_loss", "test_loss_per_token", "best_val_loss", "steps", "best_step", "tokens_seen",
    "compute", "wall_seconds", "stop_reason", "status",
]


def run_record(settings: dict, train: Path, validation: Path, tokenizer: Path, init_from: Path | None,
               threads: int, source: str | None, size: str, d_p_tokens: int | None = None) -> dict:
    """Join a run's settings (from the config) with its files: the trainer spec plus what names the run."""
    _, train_meta = load_token_array(train, verify_hash=False)
    vocab_size = int(read_json(tokenizer)["vocab_size"])
    options = dict(settings["options"])
    max_steps = step_budget(options, train_meta["tokens"], settings["model"]["n_ctx"])
    options.pop("max_epochs")
    options.update(max_steps=max_steps, threads=threads)
    trainer = {
        "kind": settings["kind"],
        "seed": settings["seed"],
        "model": {**settings["model"], "vocab_size": vocab_size},
        "train_tokens": str(train),
        "val_tokens": str(validation),
        "init_from": str(init_from) if init_from else None,
        **options,
    }
    return {
        "source": source,
        "size": size,
        "data_chars": int(train_meta["chars"]),
        "data_tokens": int(train_meta["tokens"]),
        "d_p_tokens": d_p_tokens,
        "package_version": settings["package_version"],
        "trainer": trainer,
    }


def run_row(run: str, record: dict, summary: dict, model: dict, evaluation: dict) -> dict:
    """One row of the runs table. Data is in characters (the paper's unit); compute is 6 * N * tokens."""
    n_params = int(model["n_params"])
    tokens_seen = int(summary["tokens_seen"])
    trainer = record["trainer"]
    if trainer["kind"] == "pretrain":
        # Pretraining reads its data in part or several times over: count the characters it read.
        data_chars = round(tokens_seen * record["data_chars"] / record["data_tokens"])
    else:
        data_chars = int(record["data_chars"])
    return {
        "run": run,
        "kind": trainer["kind"],
        "source": record["source"] or "",
        "size": record["size"],
        "n_params": n_params,
        "n_layer": trainer["model"]["n_layer"],
        "d_model": trainer["model"]["d_model"],
        "data_chars": data_chars,
        "seed": trainer["seed"],
        "test_loss": evaluation["test_loss_per_char"],
        "test_loss_per_token": evaluation["test_loss_per_token"],
        "best_val_loss": summary["best_val_loss"],
        "steps": summary["steps"],
        "best_step": summary["best_step"],
        "tokens_seen": tokens_seen,
        "compute": 6.0 * n_params * tokens_seen,
        "wall_seconds": summary["wall_seconds"],
        "stop_reason": summary["stop_reason"],
        "status": summary["status"],
    }


def run_names(run_dirs: Iterable[str | os.PathLike], runs_root: str | os.PathLike) -> dict[str, str]:
    """Each run's name in the tables (its directory below ``runs_root``, e.g. ``results/runs``) -> its directory."""
    return {Path(os.path.relpath(run_dir, runs_root)).as_posix(): str(run_dir) for run_dir in run_dirs}


def collect_runs(runs: Mapping[str, str | os.PathLike]) -> pd.DataFrame:
    """Read every run directory's record, summary, model and evaluation into one table (``runs``: name -> dir)."""
    rows = []
    for name, run_dir in runs.items():
        files = RunLayout(Path(run_dir))
        rows.append(run_row(name, read_json(files.record), read_json(files.summary),
                            read_json(files.model), read_json(files.eval)))
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


SNAPSHOT_COLUMNS = ["run", "source", "size", "n_params", "d_f_chars", "d_p_tokens", "seed", "test_loss",
                    "test_loss_per_token", "bleu", "chrf", "exact_match", "n_tasks", "status"]


def collect_snapshot_runs(runs: Mapping[str, str | os.PathLike]) -> pd.DataFrame:
    """Fine-tuning runs started from pretraining snapshots: loss and downstream score against D_p."""
    rows = []
    for name, run_dir in runs.items():
        files = RunLayout(Path(run_dir))
        record, evaluation, downstream = (read_json(path) for path in (files.record, files.eval, files.downstream))
        rows.append({
            "run": name,
            "source": record["source"],
            "size": record["size"],
            "n_params": read_json(files.model)["n_params"],
            "d_f_chars": record["data_chars"],
            "d_p_tokens": record["d_p_tokens"],
            "seed": record["trainer"]["seed"],
            "test_loss": evaluation["test_loss_per_char"],
            "test_loss_per_token": evaluation["test_loss_per_token"],
            "bleu": downstream["bleu"],
            "chrf": downstream["chrf"],
            "exact_match": downstream["exact_match"],
            "n_tasks": downstream["n"],
            "status": read_json(files.summary)["status"],
        })
    return pd.DataFrame(rows, columns=SNAPSHOT_COLUMNS)


def write_runs_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        table.to_csv(handle, index=False, float_format="%.6g")
