"""Bad inputs beyond the config: each is refused with a message naming the corpus or file at fault, and
nothing is written.

Bad config keys are the table of tests/test_config.py (BAD_CONFIGS); bad training specs are in
tests/test_training.py. This table covers the files the jobs read: corpora, tokenizer, token arrays,
weights, model descriptions and resume checkpoints. A local corpus path or glob that matches nothing is
refused earlier too, by the config check when the Snakefile is parsed (BAD_CONFIGS); the corpus job keeps
its own check for files that disappear after that.
"""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import datasets
import huggingface_hub.constants
import numpy as np
import pytest
import torch

from test_corpora import SPLITS, random_docs, write_files
from test_training import make_spec, write_bytes_tokens
from transfer_scaling.data import corpora, subsets
from transfer_scaling.train.checkpoints import CheckpointError
from transfer_scaling.data.sources import CorpusError
from transfer_scaling.evaluate.heldout import evaluate
from transfer_scaling.io import IntegrityError, TableError, directory_manifest, read_json, read_table, write_json
from transfer_scaling.train.model import WeightsMismatchError
from transfer_scaling.data.tokenizer import train_tokenizer
from transfer_scaling.tokens import TokenFileError, write_token_array
from transfer_scaling.train.loop import TrainingInterrupted
from transfer_scaling.train.run import train

CHECKPOINT_STEP = 4
MODEL_STATES = "mp_rank_00_model_states.pt"


@dataclass(frozen=True)
class Inputs:
    """Good files of every kind, made once; each case copies and spoils one of them."""

    data: dict[str, Path]
    spec: dict
    trained: Path
    interrupted: Path
    documents: Path
    tokenizer: Path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("inputs")
    data = {"train": write_bytes_tokens(root / "train.bin", [argparse.__file__, json.decoder.__file__]),
            "val": write_bytes_tokens(root / "val.bin", [textwrap.__file__])}
    spec = make_spec(data, max_steps=8, eval_interval=4, checkpoint_interval=CHECKPOINT_STEP, log_interval=4)
    train(spec, root / "trained")
    with pytest.raises(TrainingInterrupted):
        train({**spec, "stop_after_steps": CHECKPOINT_STEP}, root / "interrupted")
    tokenizer = root / "tokenizer.json"
    train_tokenizer({"kind": "byte"}, [], tokenizer)
    source = write_files(root / "docs", random_docs(0, 40, "doc"))
    corpora.build_documents("prose", {"files": [{"local": str(source)}]}, SPLITS, root / "documents",
                            root / "documents.json", root / "downloads", root / "cache")
    return Inputs(data, spec, root / "trained", root / "interrupted", root / "documents", tokenizer)


# ------------------------------------------------------------------ spoiling files


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_last_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[-1] ^= 0xFF
    path.write_bytes(bytes(content))


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(change(read_json(path))))


def without(key: str) -> Callable[[dict], dict]:
    return lambda record: {k: v for k, v in record.items() if k != key}


def copy_dir(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# ------------------------------------------------------------------ the jobs, as their adapters call them


def build_corpus(tmp: Path, files: list[dict]) -> Callable[[], Any]:
    out = tmp / "out"
    return lambda: corpora.build_documents("bad", {"files": files}, SPLITS, out / "documents",
                                           out / "documents.json", out / "downloads", tmp / "cache")


def evaluate_run(tmp: Path, run: Path, test: Path) -> Callable[[], Any]:
    return lambda: write_json(tmp / "out" / "eval.json",
                              evaluate(run / "best.safetensors", run / "model.json", test))


def train_run(tmp: Path, spec: dict) -> Callable[[], Any]:
    return lambda: train(spec, tmp / "out" / "run")


def spoiled_run(inputs: Inputs, tmp: Path, name: str, spoil: Callable[[Path], None]) -> Path:
    run = copy_dir(inputs.trained, tmp / "in" / "run")
    spoil(run / name)
    return run


def spoiled_tokens(inputs: Inputs, tmp: Path, suffix: str, spoil: Callable[[Path], None]) -> Path:
    """A copy of the train token array with its .bin or .json spoiled."""
    (tmp / "in").mkdir()
    for ending in (".bin", ".json"):
        shutil.copy(inputs.data["train"].with_suffix(ending), tmp / "in" / f"train{ending}")
    spoil(tmp / "in" / f"train{suffix}")
    return tmp / "in" / "train.bin"


def resume_from(inputs: Inputs, tmp: Path, spoil: Callable[[Path], None]) -> Callable[[], Any]:
    """Rerun the interrupted run after spoiling its checkpoint directory (given to ``spoil``)."""
    run = copy_dir(inputs.interrupted, tmp / "out" / "run")
    spoil(run / "checkpoint")
    return lambda: train(inputs.spec, run)


def checkpoint_tag(checkpoint: Path) -> Path:
    return checkpoint / read_json(checkpoint / "complete.json")["tag"]


# ------------------------------------------------------------------ the cases
# Each returns the job to run and the path its message must name (None: the message names the corpus).


def pinned_sha256_differs(inputs: Inputs, tmp: Path, monkeypatch: pytest.MonkeyPatch):
    """A real `pip download` from a local package index whose file differs from the pinned hash."""
    wheels = tmp / "in" / "wheels"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / "tinydocs-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("tinydocs/a.txt", "a document\n")
        wheel.writestr("tinydocs-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: tinydocs\nVersion: 1.0\n")
        wheel.writestr("tinydocs-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr("tinydocs-1.0.dist-info/RECORD", "")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    spec = {"index": "pypi", "package": "tinydocs", "version": "1.0", "filename": "tinydocs-1.0-py3-none-any.whl",
            "sha256": "0" * 64, "include": ["**/*.txt"]}
    return build_corpus(tmp, [spec]), "tinydocs-1.0-py3-none-any.whl"


def empty_corpus(inputs, tmp, monkeypatch):
    source = write_files(tmp / "in", {"a.txt": "\n \n", "b.txt": "\x00\x01 \t"})
    return build_corpus(tmp, [{"local": str(source)}]), None


def corpus_not_utf8(inputs, tmp, monkeypatch):
    source = write_files(tmp / "in", {"a.txt": "caf\xe9 latin-1".encode("latin-1"), "b.txt": b"\xff\xfe\x00bad"})
    return build_corpus(tmp, [{"local": str(source)}]), None


def huggingface_unreachable_offline(inputs, tmp, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return build_corpus(tmp, [{"huggingface": "no-such-user/no-such-dataset"}]), "no-such-user/no-such-dataset"


def missing_local_path(inputs, tmp, monkeypatch):
    return build_corpus(tmp, [{"local": str(tmp / "in" / "nowhere")}]), str(tmp / "in" / "nowhere")


def include_matches_nothing(inputs, tmp, monkeypatch):
    source = write_files(tmp / "in", {"a.txt": "text"})
    return build_corpus(tmp, [{"local": str(source), "include": ["*.py"]}]), str(source)


def corpus_too_small_for_splits(inputs, tmp, monkeypatch):
    source = write_files(tmp / "in", {"a.txt": "one lonely document"})
    return build_corpus(tmp, [{"local": str(source)}]), None


def subset_larger_than_train(inputs, tmp, monkeypatch):
    out = tmp / "out" / "subset.bin"
    return lambda: subsets.make_subset(inputs.documents, inputs.tokenizer, 10**9, out, seed=0), str(inputs.documents)


def documents_missing(inputs, tmp, monkeypatch):
    missing = tmp / "in" / "documents"
    return lambda: subsets.tokenize_split(missing, "test", inputs.tokenizer, tmp / "out" / "test.bin"), str(missing)


def tokenizer_truncated(inputs, tmp, monkeypatch):
    tokenizer = tmp / "in" / "tokenizer.json"
    tokenizer.parent.mkdir()
    tokenizer.write_text(inputs.tokenizer.read_text()[:10])
    return lambda: subsets.tokenize_split(inputs.documents, "test", tokenizer, tmp / "out" / "test.bin"), str(tokenizer)


def token_array_truncated(inputs, tmp, monkeypatch):
    tokens = spoiled_tokens(inputs, tmp, ".bin", truncate)
    return train_run(tmp, {**inputs.spec, "train_tokens": str(tokens)}), str(tokens)


def token_array_altered(inputs, tmp, monkeypatch):
    tokens = spoiled_tokens(inputs, tmp, ".bin", flip_last_byte)
    return train_run(tmp, {**inputs.spec, "train_tokens": str(tokens)}), str(tokens)


def token_metadata_missing(inputs, tmp, monkeypatch):
    tokens = spoiled_tokens(inputs, tmp, ".json", Path.unlink)
    return train_run(tmp, {**inputs.spec, "train_tokens": str(tokens)}), str(tokens.with_suffix(".json"))


def token_metadata_truncated(inputs, tmp, monkeypatch):
    tokens = spoiled_tokens(inputs, tmp, ".json", truncate)
    return train_run(tmp, {**inputs.spec, "train_tokens": str(tokens)}), str(tokens.with_suffix(".json"))


def token_metadata_lacks_hash(inputs, tmp, monkeypatch):
    tokens = spoiled_tokens(inputs, tmp, ".json", lambda p: edit_json(p, without("sha256")))
    return train_run(tmp, {**inputs.spec, "train_tokens": str(tokens)}), str(tokens.with_suffix(".json"))


def token_array_empty(inputs, tmp, monkeypatch):
    tokens = tmp / "in" / "empty.bin"
    write_token_array(tokens, np.zeros(0, dtype=np.uint16), chars=0)
    return train_run(tmp, {**inputs.spec, "val_tokens": str(tokens)}), str(tokens)


def eval_tokens_altered(inputs, tmp, monkeypatch):
    tokens = spoiled_tokens(inputs, tmp, ".bin", flip_last_byte)
    return evaluate_run(tmp, inputs.trained, tokens), str(tokens)


def best_weights_truncated(inputs, tmp, monkeypatch):
    run = spoiled_run(inputs, tmp, "best.safetensors", truncate)
    return evaluate_run(tmp, run, inputs.data["val"]), str(run / "best.safetensors")


def best_weights_altered(inputs, tmp, monkeypatch):
    run = spoiled_run(inputs, tmp, "best.safetensors", flip_last_byte)
    return evaluate_run(tmp, run, inputs.data["val"]), str(run / "best.safetensors")


def weights_sidecar_altered(inputs, tmp, monkeypatch):
    run = spoiled_run(inputs, tmp, "best.safetensors.sha256", lambda p: p.write_text("0" * 64 + "  best.safetensors\n"))
    return evaluate_run(tmp, run, inputs.data["val"]), str(run / "best.safetensors")


def weights_of_another_architecture(inputs, tmp, monkeypatch):
    run = spoiled_run(inputs, tmp, "model.json", lambda p: edit_json(p, lambda m: {**m, "d_model": 32}))
    return evaluate_run(tmp, run, inputs.data["val"]), str(run / "best.safetensors")


def model_json_lacks_key(inputs, tmp, monkeypatch):
    run = spoiled_run(inputs, tmp, "model.json", lambda p: edit_json(p, without("n_head")))
    return evaluate_run(tmp, run, inputs.data["val"]), str(run / "model.json")


def model_json_truncated(inputs, tmp, monkeypatch):
    run = spoiled_run(inputs, tmp, "model.json", truncate)
    return evaluate_run(tmp, run, inputs.data["val"]), str(run / "model.json")


def finetune_init_altered(inputs, tmp, monkeypatch):
    run = spoiled_run(inputs, tmp, "best.safetensors", flip_last_byte)
    spec = {**inputs.spec, "kind": "finetune", "init_from": str(run / "best.safetensors")}
    return train_run(tmp, spec), str(run / "best.safetensors")


def checkpoint_file_altered(inputs, tmp, monkeypatch):
    job = resume_from(inputs, tmp, lambda c: flip_last_byte(checkpoint_tag(c) / MODEL_STATES))
    return job, MODEL_STATES


def checkpoint_file_missing(inputs, tmp, monkeypatch):
    job = resume_from(inputs, tmp, lambda c: (checkpoint_tag(c) / MODEL_STATES).unlink())
    return job, MODEL_STATES


def checkpoint_file_added(inputs, tmp, monkeypatch):
    job = resume_from(inputs, tmp, lambda c: (checkpoint_tag(c) / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
                      .write_bytes(b"planted"))
    return job, "zero_pp_rank_0_mp_rank_00_optim_states.pt"


def checkpoint_marker_without_manifest(inputs, tmp, monkeypatch):
    job = resume_from(inputs, tmp, lambda c: edit_json(c / "complete.json", without("sha256")))
    return job, "complete.json"


def checkpoint_marker_truncated(inputs, tmp, monkeypatch):
    return resume_from(inputs, tmp, lambda c: truncate(c / "complete.json")), "complete.json"


BAD_INPUTS = [
    # (case, exception, fragment of the message)
    (pinned_sha256_differs, CorpusError, "but the config pins 0000"),
    (empty_corpus, CorpusError, "corpus 'bad': no documents left \\(2 empty after cleaning"),
    (corpus_not_utf8, CorpusError, "corpus 'bad': no documents left \\(0 empty after cleaning, 2 not UTF-8\\)"),
    (huggingface_unreachable_offline, CorpusError, "could not be loaded \\(offline mode is on"),
    (missing_local_path, CorpusError, "does not exist"),
    (include_matches_nothing, CorpusError, "no file matches include=\\['\\*\\.py'\\]"),
    (corpus_too_small_for_splits, CorpusError, "got no documents out of 1; the corpus is too small"),
    (subset_larger_than_train, CorpusError, "d_chars=1000000000 characters was asked for"),
    (documents_missing, CorpusError, "documents directory missing"),
    (tokenizer_truncated, ValueError, "not valid JSON"),
    (token_array_truncated, TokenFileError, "the file is truncated or altered"),
    (token_array_altered, TokenFileError, "sha256 differs from train.json; the file was altered"),
    (token_metadata_missing, TokenFileError, "token file missing"),
    (token_metadata_truncated, ValueError, "not valid JSON"),
    (token_metadata_lacks_hash, TokenFileError, "metadata lacks \\['sha256'\\]"),
    (token_array_empty, TokenFileError, "holds no tokens"),
    (eval_tokens_altered, TokenFileError, "sha256 differs"),
    (best_weights_truncated, IntegrityError, "differs from .* recorded in best.safetensors.sha256; the file is trunc"),
    (best_weights_altered, IntegrityError, "recorded in best.safetensors.sha256; the file is truncated or altered"),
    (weights_sidecar_altered, IntegrityError, "differs from 0000"),
    (weights_of_another_architecture, WeightsMismatchError, "weights do not fit"),
    (model_json_lacks_key, ValueError, "missing architecture keys \\['n_head'\\]"),
    (model_json_truncated, ValueError, "not valid JSON"),
    (finetune_init_altered, IntegrityError, "the file is truncated or altered"),
    (checkpoint_file_altered, CheckpointError, "checkpoint refused: .* differs from .* recorded when it was written"),
    (checkpoint_file_missing, CheckpointError, "missing, though recorded in the manifest"),
    (checkpoint_file_added, CheckpointError, "not recorded in the manifest .* it was added later"),
    (checkpoint_marker_without_manifest, CheckpointError, "records no sha256 manifest"),
    (checkpoint_marker_truncated, ValueError, "not valid JSON"),
]


def files_under(directory: Path) -> dict[str, str]:
    return directory_manifest(directory) if directory.exists() else {}


@pytest.mark.slow
@pytest.mark.parametrize("case,error,message", BAD_INPUTS, ids=[case.__name__ for case, _, _ in BAD_INPUTS])
def test_bad_input_is_refused_with_its_message_and_nothing_written(inputs: Inputs, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch, case, error,
                                                                   message: str) -> None:
    job, named = case(inputs, tmp_path, monkeypatch)
    before = files_under(tmp_path / "out")
    with pytest.raises(error, match=message) as refused:
        job()
    if named is not None:
        assert named in str(refused.value), f"the message does not name {named}: {refused.value}"
    assert files_under(tmp_path / "out") == before, "a refused input left files behind"



TABLE_FAULTS = [
    ("empty", b"", "empty file; a table needs at least a header line"),
    ("blank", b"\n\n  \n", "empty file"),
    ("binary", bytes(range(256)) * 4, "binary content, not a CSV table"),
    ("latin1", "run,kind\ncaf\xe9,scratch\n".encode("latin-1"), "not UTF-8 text \\(byte 12\\)"),
    ("ragged", b'run,kind\n"a,scratch\n', "not a readable CSV table"),
]


@pytest.mark.parametrize("name,content,message", TABLE_FAULTS, ids=[name for name, _, _ in TABLE_FAULTS])
def test_a_table_that_is_not_a_csv_is_named_in_one_line(tmp_path: Path, name: str, content: bytes,
                                                       message: str) -> None:
    """Every table the package reads (runs tables, fit tables) goes through io.read_table."""
    path = tmp_path / f"{name}.csv"
    path.write_bytes(content)
    with pytest.raises(TableError, match=message) as refused:
        read_table(path)
    assert str(refused.value).startswith(f"{path}: ") and "\n" not in str(refused.value)


def test_a_missing_table_and_a_binary_json_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(TableError, match=f"{tmp_path / 'runs.csv'}: no such table file"):
        read_table(tmp_path / "runs.csv")
    (tmp_path / "fit.json").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=f"{tmp_path / 'fit.json'}: not valid JSON \\(binary content"):
        read_json(tmp_path / "fit.json")


def test_no_module_reads_a_csv_past_read_table() -> None:
    package = Path(__file__).resolve().parents[1] / "src" / "transfer_scaling"
    offences = [f"{path.relative_to(package)}:{number}" for path in sorted(package.rglob("*.py")) if path.name != "io.py"
                for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if "read_csv(" in line]
    assert offences == []
