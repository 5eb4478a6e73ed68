"""One checkout, several studies: each study's outputs in ``results/<study>/``, named by the config's ``study``.

Two studies never share an output path, so a check at parse time reads only its own study's files and a second
preset cannot overwrite the first one's runs. Jobs that are truly the same across studies (corpora, tokens,
pretraining with equal settings) are reused through Snakemake's output cache, not through shared paths. Only the
pinned downloads and the Hugging Face datasets cache are shared: their content is fixed by a sha256 or a dataset
fingerprint, and writes to them are atomic.

A study folder records the config it was made from (``study.json``, written when a run starts). A config that
changes a value every output is made of (IDENTITY_KEYS) is another study, and is refused before it mixes its outputs
with the folder's. Other changes (sizes, grids, training options) are what incremental re-runs are for: Snakemake
re-runs the jobs each one touches, and they are listed at parse time so that none happens unnoticed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .io import read_json, write_json
from .plan import ConfigError

RESULTS_ROOT = Path("results")
SHARED_DOWNLOADS = RESULTS_ROOT / "downloads"
SHARED_DATASETS_CACHE = RESULTS_ROOT / ".datasets-cache"
RECORD = "study.json"
IDENTITY_KEYS = ("corpora", "target", "splits", "tokenizer", "context", "seed")
"""Keys that every corpus, token array or run depends on: changing one makes a different study."""
EARLIER_LAYOUT = ("corpora", "tokenizer", "subsets", "runs", "runs.csv", "fit", "figures", "pretraining_data", "logs",
                  "benchmarks")
"""What versions before per-study folders wrote directly under results/."""
SHOWN_DIFFERENCES = 8


def study_dir(config: dict, root: Path = RESULTS_ROOT) -> Path:
    return root / config["study"]


def _plain(config: dict) -> dict:
    """The config as the record holds it: JSON types, without the study's own name."""
    return {key: value for key, value in json.loads(json.dumps(config)).items() if key != "study"}


def config_differences(old: Any, new: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every leaf that differs; a key present on one side only has None on the other."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [difference for name in sorted(set(old) | set(new), key=str)
                for difference in config_differences(old.get(name), new.get(name), f"{key}.{name}" if key else name)]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [difference for index, (a, b) in enumerate(zip(old, new))
                for difference in config_differences(a, b, f"{key}.{index}")]
    return [] if old == new else [(key, old, new)]


def describe_differences(differences: list[tuple[str, Any, Any]]) -> str:
    shown = [f"{key}: {json.dumps(old)} -> {json.dumps(new)}" for key, old, new in differences[:SHOWN_DIFFERENCES]]
    more = len(differences) - SHOWN_DIFFERENCES
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def check_study_folder(config: dict, root: Path = RESULTS_ROOT) -> list[tuple[str, Any, Any]]:
    """Refuse a config whose study folder was made from other data; return the changes made in place."""
    folder = study_dir(config, root)
    record = folder / RECORD
    if not record.exists():
        return []
    recorded = read_json(record)
    if not isinstance(recorded, dict) or not isinstance(recorded.get("config"), dict):
        raise ConfigError(f"{record}: not a study record (a JSON object with a 'config'); remove it, or the folder")
    differences = config_differences(recorded["config"], _plain(config))
    # A key on one side only (a corpus added, or an option a newer version fills with its default) is a change in
    # place; a value that both sides hold and that differs changes what the folder's outputs are made of.
    identity = [(key, old, new) for key, old, new in differences
                if key.split(".")[0] in IDENTITY_KEYS and old is not None and new is not None]
    if identity:
        raise ConfigError(
            f"config key 'study': {folder}/ holds the study {config['study']!r} made from other data "
            f"({describe_differences(identity)}); name this one differently (study: in its config, or "
            f"--config study=NAME) to keep both, or remove {folder}/ to replace it"
        )
    return differences


def write_study_record(config: dict, root: Path = RESULTS_ROOT) -> Path:
    """What the folder's outputs are made from, for the next run's check."""
    record = study_dir(config, root) / RECORD
    write_json(record, {"study": config["study"], "config": _plain(config)})
    return record


def earlier_layout_message(config: dict, root: Path = RESULTS_ROOT) -> str | None:
    """One line naming outputs an earlier version left directly in results/, and how to adopt them."""
    found = [name for name in EARLIER_LAYOUT if (root / name).exists()]
    if not found:
        return None
    return (f"note: {root}/ holds a study written before per-study folders ({', '.join(found)}); this run writes to "
            f"{study_dir(config, root)}/. To keep that study as the default one: cd {root} && mkdir -p default && "
            f"mv {' '.join(found)} default/")


def check_study(config: dict, root: Path = RESULTS_ROOT) -> list[str]:
    """At parse time: refuse a config made from other data than its folder's; return the lines to show (the
    changes made in place, a results/ left by an earlier version)."""
    notes = []
    differences = check_study_folder(config, root)
    if differences:
        notes.append(f"study {config['study']!r}: the config changed since this folder's last run; Snakemake re-runs "
                     f"the jobs whose parameters change: {describe_differences(differences)}")
    earlier = earlier_layout_message(config, root)
    if earlier:
        notes.append(earlier)
    return notes
