"""Corpora: the documents of each file spec -> cleaned, deduplicated, split documents, stored as a DatasetDict;
mixtures of corpora by characters.

A document is one file of a package (or one record of a dataset). Its split is decided by a hash of
its cleaned text, so no document straddles train and test and a rebuild gives the same split. Each
split is stored ordered by that hash (``doc_id``), so any prefix is an unbiased sample.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterable, Iterator

import datasets

from ..config import check_mixture_weights
from ..io import sha256_file, sha256_text, write_json
from .sources import PACKAGE_INDEXES, CorpusError, describe_file, fetch_file, file_kind, iter_documents

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
HELD_OUT_SPLITS = ("validation", "test")
FEATURES = datasets.Features(
    {"text": datasets.Value("string"), "source": datasets.Value("string"), "doc_id": datasets.Value("string")}
)
CORPUS_KEYS = {"files", "description", "cleaner"}

Record = tuple[str, str, str]  # (doc_id, text, source)


# ------------------------------------------------------------------ cleaning and splitting

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_MARKUP = re.compile(r"<[A-Za-z/!?][^<>]*>")
_POS_TAG = re.compile(r"(?<=[^\s/])/[a-z0-9$*+\-.,:;'`()]+(?=\s|$)")
_SPACE_BEFORE = re.compile(r" +([.,;:!?)]|'')")
_SPACE_AFTER = re.compile(r"(``|\() +")


def clean_plain(text: str) -> str:
    """Newlines as \\n, no control characters but \\n and \\t, no trailing spaces or blank edge lines."""
    text = _CONTROL_CHARS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def clean_strip_tags(text: str) -> str:
    """``clean_plain`` after removing <markup> and Brown-corpus 'word/tag' POS tags.

    Tagged corpora separate punctuation by spaces and write quotes as `` and ''; both are undone.
    """
    text = _POS_TAG.sub("", _MARKUP.sub("", text))
    text = _SPACE_AFTER.sub(r"\1", _SPACE_BEFORE.sub(r"\1", text))
    return clean_plain(text.replace("``", '"').replace("''", '"'))


CLEANERS = {"plain": clean_plain, "strip_tags": clean_strip_tags}


def validate_split_fractions(fractions: dict) -> dict[str, float]:
    """The held-out fractions by document: keys 'validation' and 'test', the rest is train."""
    if not isinstance(fractions, dict) or set(fractions) != set(HELD_OUT_SPLITS):
        raise CorpusError(f"splits {fractions!r} must give exactly {list(HELD_OUT_SPLITS)} as fractions")
    for key, value in fractions.items():
        if not isinstance(value, (int, float)) or not 0 < value < 1:
            raise CorpusError(f"splits.{key}={value!r} must be a fraction strictly between 0 and 1")
    if sum(fractions.values()) >= 1:
        raise CorpusError(f"splits {fractions!r} leave nothing for train; their sum must be below 1")
    return {key: float(value) for key, value in fractions.items()}


def _split_of_doc_id(doc_id: str, fractions: dict[str, float]) -> str:
    position = int(doc_id[:16], 16) / 2**64
    boundary = 0.0
    for split in HELD_OUT_SPLITS:
        boundary += fractions[split]
        if position < boundary:
            return split
    return "train"


def split_of(text: str, fractions: dict) -> str:
    """'train', 'validation' or 'test' for a document, from the sha256 of its text."""
    return _split_of_doc_id(sha256_text(text), validate_split_fractions(fractions))


# ------------------------------------------------------------------ storing documents


def content_hash(records: Iterable[Record]) -> str:
    digest = hashlib.sha256()
    for doc_id, _, source in records:
        digest.update(f"{doc_id}\t{source}\n".encode())
    return digest.hexdigest()


def _generate_records(records: tuple[Record, ...]) -> Iterator[dict]:
    for doc_id, text, source in records:
        yield {"text": text, "source": source, "doc_id": doc_id}


def _to_dataset(records: list[Record], split: str, name: str, cache_dir: Path) -> datasets.Dataset:
    """An Arrow dataset cached in ``cache_dir`` under the content hash, so a cache entry is never stale."""
    content = content_hash(records)
    dataset = datasets.Dataset.from_generator(
        _generate_records, features=FEATURES, cache_dir=str(cache_dir), split=split,
        gen_kwargs={"records": tuple(records)}, fingerprint=f"{split}-{content}",
    )
    dataset.info.dataset_name = name
    return dataset


def _save_dataset_dict(splits: dict[str, list[Record]], name: str, out_dir: Path, cache_dir: Path) -> None:
    """Save beside ``out_dir`` and rename, so a killed job never leaves a half-written dataset."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    try:
        datasets.DatasetDict({split: _to_dataset(records, split, name, cache_dir)
                              for split, records in splits.items()}).save_to_disk(str(tmp))
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _split_summary(splits: dict[str, list[Record]]) -> dict[str, dict]:
    return {split: {"documents": len(records), "chars": sum(len(text) for _, text, _ in records),
                    "content_sha256": content_hash(records)}
            for split, records in splits.items()}


def _require_all_splits(name: str, splits: dict[str, list[Record]]) -> None:
    empty = [split for split in SPLITS if not splits[split]]
    if empty:
        total = sum(map(len, splits.values()))
        raise CorpusError(f"corpus {name!r}: splits {empty} got no documents out of {total}; "
                          f"the corpus is too small for its split fractions")


def _validate_corpus_spec(name: str, spec: dict) -> tuple[list[dict], str]:
    if not isinstance(spec, dict) or "mixture" in spec:
        raise CorpusError(f"corpus {name!r}: build_documents takes a 'files' corpus; mixtures go to build_mixture")
    unknown = set(spec) - CORPUS_KEYS
    files = spec.get("files")
    if unknown or not isinstance(files, list) or not files:
        raise CorpusError(f"corpus {name!r}: needs a non-empty 'files' list (optional keys: description, cleaner); "
                          f"unknown keys {sorted(unknown)}")
    cleaner = spec.get("cleaner", "plain")
    if cleaner not in CLEANERS:
        raise CorpusError(f"corpus {name!r}: cleaner={cleaner!r} is not one of {sorted(CLEANERS)}")
    for file_spec in files:
        file_kind(file_spec)
    return files, cleaner



def _source_record(file_spec: dict, path: Path | None, documents: int, digest: str) -> dict:
    record = {"spec": file_spec, "documents": documents, "content_sha256": digest}
    if path is not None:
        record["sha256"] = sha256_file(path)
    return record


def build_documents(name: str, spec: dict, splits: dict, out_dir: Path, meta_path: Path,
                    download_dir: Path, cache_dir: Path) -> dict:
    """Fetch, extract, clean, deduplicate and split a 'files' corpus; store it as a DatasetDict."""
    start = time.perf_counter()
    files, cleaner_name = _validate_corpus_spec(name, spec)
    fractions = validate_split_fractions(splits)
    clean = CLEANERS[cleaner_name]
    by_split: dict[str, list[Record]] = {split: [] for split in SPLITS}
    seen: set[str] = set()
    duplicates = empty = 0
    undecodable: list[str] = []
    sources = []
    for file_spec in files:
        path = fetch_file(file_spec, download_dir) if file_kind(file_spec) in PACKAGE_INDEXES else None
        digest, documents = hashlib.sha256(), 0
        for source, raw in iter_documents(file_spec, path, undecodable, cache_dir):
            documents += 1
            digest.update(f"{source}\0{raw}\0".encode())
            text = clean(raw)
            doc_id = sha256_text(text)
            if not text:
                empty += 1
            elif doc_id in seen:
                duplicates += 1
            else:
                seen.add(doc_id)
                by_split[_split_of_doc_id(doc_id, fractions)].append((doc_id, text, source))
        sources.append(_source_record(file_spec, path, documents, digest.hexdigest()))
        logger.info("corpus %s: read %d documents from %s", name, documents, describe_file(file_spec))
    if not seen:
        raise CorpusError(f"corpus {name!r}: no documents left ({empty} empty after cleaning, "
                          f"{len(undecodable)} not UTF-8)")
    _require_all_splits(name, by_split)
    for records in by_split.values():
        records.sort()
    _save_dataset_dict(by_split, name, out_dir, cache_dir)
    meta = {
        "corpus": name,
        "kind": "files",
        "description": spec.get("description", ""),
        "cleaner": cleaner_name,
        "split_fractions": fractions,
        "splits": _split_summary(by_split),
        "sources": sources,
        "duplicates_dropped": duplicates,
        "empty_dropped": empty,
        "undecodable_dropped": len(undecodable),
        "undecodable_members": undecodable,
    }
    write_json(meta_path, meta)
    logger.info("corpus %s: %s in %.1f s", name,
                ", ".join(f"{s} {v['documents']} docs {v['chars']} chars" for s, v in meta["splits"].items()),
                time.perf_counter() - start)
    return meta


# ------------------------------------------------------------------ mixtures


def _validate_weights(name: str, weights: dict, component_dirs: dict) -> None:
    try:
        check_mixture_weights(weights)
    except ValueError as error:
        raise CorpusError(f"mixture {name!r}: {error}") from None
    if set(weights) != set(component_dirs):
        raise CorpusError(f"mixture {name!r}: weights name {sorted(weights)} but documents were given for "
                          f"{sorted(component_dirs)}")


def _read_records(dataset: datasets.Dataset, prefix: str = "") -> list[Record]:
    columns = dataset[:]
    return [(doc_id, text, prefix + source)
            for doc_id, text, source in zip(columns["doc_id"], columns["text"], columns["source"])]


def _mix_split(name: str, split: str, weights: dict[str, float],
               components: dict[str, list[Record]]) -> tuple[list[Record], dict]:
    """Take each component's documents in stored order while that brings it nearer its share of characters.

    The total is set by the component that runs out first relative to its weight. Stopping (rather
    than skipping to shorter documents) keeps each component's sample unbiased. A document that two
    components share enters once.
    """
    available = {c: sum(len(text) for _, text, _ in records) for c, records in components.items()}
    total = min(available[c] / weight for c, weight in weights.items())
    mixed: dict[str, Record] = {}
    summary: dict[str, dict] = {}
    for component, weight in weights.items():
        budget, taken, documents, duplicates = weight * total, 0, 0, 0
        for record in components[component]:
            if taken + len(record[1]) / 2 > budget:
                break
            if record[0] in mixed:
                duplicates += 1
                continue
            mixed[record[0]] = record
            taken += len(record[1])
            documents += 1
        summary[component] = {"weight": weight, "documents": documents, "chars": taken,
                              "available_chars": available[component], "duplicates_dropped": duplicates}
    achieved = sum(v["chars"] for v in summary.values())
    for values in summary.values():
        values["fraction"] = values["chars"] / achieved
    logger.info("mixture %s/%s: %s", name, split,
                ", ".join(f"{c} {v['fraction']:.3f} ({v['chars']} chars)" for c, v in summary.items()))
    return sorted(mixed.values()), summary


def build_mixture(name: str, weights: dict[str, float], component_dirs: dict[str, Path], out_dir: Path,
                  meta_path: Path, cache_dir: Path) -> dict:
    """Combine component corpora per split so that characters follow ``weights``."""
    _validate_weights(name, weights, component_dirs)
    by_split: dict[str, list[Record]] = {}
    components: dict[str, dict] = {}
    for split in SPLITS:
        records = {c: _read_records(load_split(component_dirs[c], split), f"{c}:") for c in weights}
        by_split[split], components[split] = _mix_split(name, split, weights, records)
    _save_dataset_dict(by_split, name, out_dir, cache_dir)
    meta = {
        "corpus": name,
        "kind": "mixture",
        "weights": dict(weights),
        "components": {c: str(path) for c, path in component_dirs.items()},
        "splits": {split: {**summary, "components": components[split]}
                   for split, summary in _split_summary(by_split).items()},
    }
    write_json(meta_path, meta)
    return meta


# ------------------------------------------------------------------ reading stored documents


def load_split(documents_dir: Path, split: str) -> datasets.Dataset:
    """One split of a documents DatasetDict written by build_documents or build_mixture."""
    if not Path(documents_dir).is_dir():
        raise CorpusError(f"documents directory missing: {documents_dir}")
    dataset_dict = datasets.load_from_disk(str(documents_dir))
    if split not in dataset_dict:
        raise CorpusError(f"{documents_dir}: no split {split!r}; it has {sorted(dataset_dict)}")
    return dataset_dict[split]


