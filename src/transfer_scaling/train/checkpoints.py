"""The trainer's saved states: the resumable checkpoint and the stable states a cooldown starts from.

A checkpoint is a DeepSpeed checkpoint tag plus what a resumed run must find again: the outputs written before it
(best weights, snapshots, the stable state) hard-linked into it, metrics.jsonl copied, and a ``complete.json``
marker holding the sha256 of every file. Only a complete tag is ever loaded, and only after it matches its
manifest and unpickles under an allow-list, so a resumed run continues exactly where the interrupted one stood.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..io import (IntegrityError, atomic_open, atomic_path, check_directory_manifest, directory_manifest,
                 explain_full_disk, read_json, sidecar_path, write_json)
from ..layout import RunLayout


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete, altered or holds objects a training checkpoint never pickles."""


STATE_TAG = "state"
"""The one DeepSpeed tag of a stable state directory."""


def rng_states() -> dict:
    """RNG states in plain Python types and tensors, so a checkpoint loads with ``weights_only=True``."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {"python": random.getstate(), "numpy": (name, keys.tolist(), position, has_gauss, cached_gaussian),
            "torch": torch.get_rng_state()}


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(states["torch"])


def checkpoint_safe_globals() -> list:
    """The only classes a DeepSpeed checkpoint of this trainer pickles besides tensors and builtins."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def check_checkpoint(tag_dir: Path, manifest: dict[str, str] | None) -> None:
    """Refuse a checkpoint that differs from the sha256 manifest written with it, or that holds any pickled
    object outside the allow-list: DeepSpeed loads checkpoints with ``torch.load(weights_only=False)``,
    which would run the code a planted pickle names."""
    restart = f"delete {tag_dir.parent} to restart the run from step 0"
    if manifest is None:
        raise CheckpointError(f"{tag_dir.parent / 'complete.json'} records no sha256 manifest of {tag_dir.name}; {restart}")
    try:
        check_directory_manifest(tag_dir, manifest)
    except IntegrityError as exc:
        raise CheckpointError(f"checkpoint refused: {exc}; {restart}") from exc
    with torch.serialization.safe_globals(checkpoint_safe_globals()):
        for path in sorted(tag_dir.glob("*.pt")):
            try:
                torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as exc:
                reason = re.search(r"Unsupported [^\n]*?(?=\. |\n|$)", str(exc))
                raise CheckpointError(f"checkpoint refused: {path} holds a pickled object outside the allow-list of "
                                      f"a training checkpoint ({reason.group(0) if reason else exc}); loading it "
                                      f"could run arbitrary code; {restart}") from None


def keep_metrics_through(path: Path, step: int) -> None:
    """Drop metric lines past ``step`` (written after the checkpoint a run resumes from) and any line cut
    short by a kill."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError):
            continue
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.writelines(kept)


@dataclass
class Checkpoints:
    """The saved states of one run on one rank. Every rank saves and loads through the engine; the main rank
    alone moves files, the others wait at ``barrier``."""

    engine: Any
    layout: RunLayout
    is_main: bool
    barrier: Callable[[], None]

    @property
    def marker(self) -> Path:
        return self.layout.checkpoint_dir / "complete.json"

    # ---------------------------------------------------------------- stable states
    def save_state(self, directory: Path) -> None:
        """Weights and optimizer state of this step, to decay from later. The directory is replaced whole,
        never written in place: checkpoints hold hard links to its previous files."""
        partial = directory.with_name(directory.name + ".partial")
        if self.is_main:
            shutil.rmtree(partial, ignore_errors=True)
        self.barrier()
        with explain_full_disk(partial):
            self.engine.save_checkpoint(str(partial), tag=STATE_TAG, client_state={"rng": rng_states()},
                                        save_latest=False)
        self.barrier()
        if self.is_main:
            shutil.rmtree(directory, ignore_errors=True)
            partial.rename(directory)
        self.barrier()

    def load_state(self, directory: Path) -> None:
        load_path, client_state = self.engine.load_checkpoint(str(directory), tag=STATE_TAG)
        if load_path is None:
            raise CheckpointError(f"{directory}: the saved training state did not load")
        restore_rng_states(client_state["rng"])

    def remove_state(self, directory: Path) -> None:
        self.barrier()
        if self.is_main:
            shutil.rmtree(directory, ignore_errors=True)

    # ---------------------------------------------------------------- the resumable checkpoint
    def kept_files(self) -> list[Path]:
        """Outputs written before a checkpoint that a resumed run must find again (best weights, snapshots),
        linked into it; metrics.jsonl, appended in place, is copied instead. Snakemake deletes all of them
        before rerunning an incomplete job."""
        layout = self.layout
        stable_state = sorted(path for path in layout.stable_best_dir.rglob("*") if path.is_file())
        return [path for weights in (layout.weights, *layout.snapshots())
                for path in (weights, sidecar_path(weights))] + stable_state

    def save(self, tag: str, progress: dict) -> None:
        """Save on every rank, then mark the tag complete; only complete tags are ever loaded."""
        checkpoint_dir = self.layout.checkpoint_dir
        client_state = {"progress": progress, "rng": rng_states()}
        with explain_full_disk(checkpoint_dir / tag):
            self.engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state=client_state, save_latest=False)
        if self.is_main:
            self.keep_outputs(checkpoint_dir / tag / "kept")
        self.barrier()
        if self.is_main:
            write_json(self.marker, {"tag": tag, "step": progress["step"],
                                     "sha256": directory_manifest(checkpoint_dir / tag)})
            for old in checkpoint_dir.iterdir():
                if old.is_dir() and old.name != tag:
                    shutil.rmtree(old)

    def keep_outputs(self, kept_dir: Path) -> None:
        for kept in self.kept_files():
            link = kept_dir / kept.relative_to(self.layout.directory)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            os.link(kept, link)
        shutil.copyfile(self.layout.metrics, kept_dir / self.layout.metrics.name)

    def resume(self) -> tuple[str, dict] | None:
        """Load the last complete checkpoint and restore its outputs; return its tag and progress, or None
        after dropping any partial one. Either way metrics.jsonl ends at the step the run continues from."""
        loaded = self.load() if self.marker.exists() else None
        if loaded is None and self.is_main and self.layout.checkpoint_dir.exists():
            shutil.rmtree(self.layout.checkpoint_dir)
        if self.is_main:
            keep_metrics_through(self.layout.metrics, loaded[1]["step"] if loaded else -1)
        self.barrier()
        return loaded

    def load(self) -> tuple[str, dict]:
        checkpoint_dir = self.layout.checkpoint_dir
        record = read_json(self.marker)
        tag = record["tag"]
        check_checkpoint(checkpoint_dir / tag, record.get("sha256"))
        load_path, client_state = self.engine.load_checkpoint(str(checkpoint_dir), tag=tag)
        if load_path is None:
            raise RuntimeError(f"{checkpoint_dir}: checkpoint {tag} is marked complete but did not load")
        restore_rng_states(client_state["rng"])
        if self.is_main:
            kept_dir = checkpoint_dir / tag / "kept"
            for kept in sorted(path for path in kept_dir.rglob("*") if path.is_file()):
                with atomic_path(self.layout.directory / kept.relative_to(kept_dir)) as tmp:
                    shutil.copyfile(kept, tmp)
        return tag, client_state["progress"]

    def discard(self) -> None:
        """Remove every saved state once the run has ended (main rank)."""
        for directory in (self.layout.checkpoint_dir, self.layout.stable_best_dir, self.layout.branch_dir):
            shutil.rmtree(directory, ignore_errors=True)
