"""Corpora: globs, cleaning, splits, deduplication, mixtures, token arrays and the drawn D subsets.

Fixture corpora are small local files written per test; only the tests marked slow download
pinned package files from PyPI or npm.
"""

from __future__ import annotations

import io as stdlib_io
import logging
import random
import tarfile
import time
import zipfile
from pathlib import Path

import datasets
import huggingface_hub.constants
import numpy as np
import pytest
import yaml

from transfer_scaling.data import corpora, sources, subsets
from transfer_scaling.data.sources import CorpusError
from transfer_scaling.io import read_json, sha256_file, sha256_text
from transfer_scaling.data.tokenizer import load_tokenizer, train_tokenizer
from transfer_scaling.tokens import load_token_array

REPO = Path(__file__).resolve().parents[1]
SPLITS = {"validation": 0.2, "test": 0.2}
LODASH = {"index": "npm", "package": "lodash", "version": "4.17.21",
          "sha256": "6a087ac9e5702a0c9d60fbcd48696012646ec8df1491dea472b150e79fcaf804", "include": ["package/add.js"]}
WORDS = "the of and a to in is was that for it with as his on be at by had are but from or have an they".split()


def prose(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)) + "."


def write_files(directory: Path, texts: dict[str, str | bytes]) -> Path:
    for name, content in texts.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return directory


def random_docs(seed: int, n: int, prefix: str) -> dict[str, str]:
    rng = random.Random(seed)
    return {f"{prefix}{i:03d}.txt": f"{prefix} {i}\n" + prose(rng, rng.randint(20, 200)) for i in range(n)}


def build(tmp: Path, name: str, files: list[dict], splits: dict = SPLITS) -> tuple[dict, Path]:
    out = tmp / "corpora" / name
    meta = corpora.build_documents(name, {"files": files}, splits, out / "documents", out / "documents.json",
                                   tmp / "downloads", tmp / "cache")
    return meta, out / "documents"


@pytest.fixture()
def byte_tokenizer(tmp_path: Path) -> Path:
    path = tmp_path / "tokenizer.json"
    train_tokenizer({"kind": "byte"}, [], path)
    return path


@pytest.fixture()
def prose_corpus(tmp_path: Path) -> tuple[dict, Path]:
    source = write_files(tmp_path / "src", random_docs(0, 60, "doc"))
    return build(tmp_path, "prose", [{"local": str(source)}])


# ------------------------------------------------------------------ globs


@pytest.mark.parametrize("pattern, path, expected", [
    ("package/*.js", "package/add.js", True),
    ("package/*.js", "package/fp/add.js", False),
    ("package/*.js", "package/add.json", False),
    ("sympy-1.13.3/sympy/**/*.py", "sympy-1.13.3/sympy/__init__.py", True),
    ("sympy-1.13.3/sympy/**/*.py", "sympy-1.13.3/sympy/core/tests/test_basic.py", True),
    ("sympy-1.13.3/sympy/**/*.py", "sympy-1.13.3/setup.py", False),
    ("sympy-1.13.3/sympy/**/*.py", "sympy-1.13.3/sympy/core/basic.pyc", False),
    ("**/tests/**", "sympy/core/tests/test_basic.py", True),
    ("**/tests/**", "tests/x.py", True),
    ("**/tests/**", "sympy/mytests/x.py", False),
    ("package/lib/**", "package/lib/a/b/c.js", True),
    ("file?.txt", "file1.txt", True),
    ("file?.txt", "file/.txt", False),
    ("[!a]*.txt", "b.txt", True),
    ("[!a]*.txt", "a.txt", False),
    ("v1.0/*", "v1x0/a", False),
])
def test_glob_regex(pattern: str, path: str, expected: bool) -> None:
    assert bool(sources.glob_regex(pattern).match(path)) is expected


def test_path_matches_applies_excludes() -> None:
    include, exclude = ["package/*.js"], ["package/*.min.js", "package/core.js"]
    assert sources.path_matches("package/add.js", include, exclude)
    assert not sources.path_matches("package/lodash.min.js", include, exclude)
    assert not sources.path_matches("package/core.js", include, exclude)


# ------------------------------------------------------------------ cleaning and splitting


def test_clean_plain() -> None:
    raw = "\n \n\tdef f():\r\n    return 1  \r\n\x00\x0c\rx = 'é'\t\n\n\n"
    assert corpora.clean_plain(raw) == "\tdef f():\n    return 1\n\nx = 'é'"


def test_clean_plain_keeps_clean_text_unchanged() -> None:
    text = "First paragraph.\n\n    indented code\n\ttab\nlast line"
    assert corpora.clean_plain(text) == text


def test_clean_strip_tags_on_brown_corpus_line() -> None:
    raw = ("\n\n\tThe/at jury/nn said/vbd ,/, ``/`` considering/in the/at election/nn ''/'' ./.\n"
           "It/pps wouldn't/md* matter/vb (/( much/ap )/) ./.\n<p>Done/vbn</p>")
    assert corpora.clean_strip_tags(raw) == ('\tThe jury said, "considering the election".\n'
                                             "It wouldn't matter (much).\nDone")


def test_split_of_is_deterministic_with_requested_fractions() -> None:
    texts = [f"document number {i}" for i in range(5000)]
    first = [corpora.split_of(text, SPLITS) for text in texts]
    assert first == [corpora.split_of(text, SPLITS) for text in texts]
    for split, fraction in SPLITS.items():
        assert abs(first.count(split) / len(texts) - fraction) < 0.03
    assert abs(first.count("train") / len(texts) - 0.6) < 0.03


@pytest.mark.parametrize("fractions", [{"validation": 0.5, "test": 0.5}, {"validation": 0.1},
                                       {"validation": 0.1, "test": 0.1, "dev": 0.1}, {"validation": -0.1, "test": 0.1}])
def test_invalid_split_fractions(fractions: dict) -> None:
    with pytest.raises(CorpusError, match="splits"):
        corpora.split_of("text", fractions)


# ------------------------------------------------------------------ building documents


def test_build_documents_splits_dedupes_and_counts(tmp_path: Path) -> None:
    docs = random_docs(1, 50, "doc")
    source = write_files(tmp_path / "src", {
        **docs,
        "copy_of_doc000.txt": docs["doc000.txt"] + "   \n\n",  # duplicate once cleaned
        "empty.txt": " \n\t\n",
        "latin1.txt": "caf\xe9 cr\xe8me".encode("latin-1"),
        "skipped.md": "not included",
    })
    meta, out = build(tmp_path, "prose", [{"local": str(source), "include": ["*.txt"]}])
    assert meta["duplicates_dropped"] == 1
    assert meta["empty_dropped"] == 1
    assert meta["undecodable_dropped"] == 1 and meta["undecodable_members"][0].endswith("latin1.txt")
    assert meta["sources"][0]["documents"] == 52  # 50 + copy + empty; the latin-1 file is not a document
    dataset = datasets.load_from_disk(str(out))
    assert set(dataset) == {"train", "validation", "test"}
    ids = {split: list(dataset[split]["doc_id"]) for split in dataset}
    assert sum(map(len, ids.values())) == 50
    assert len(set().union(*map(set, ids.values()))) == 50, "a document is in two splits"
    for split, split_ids in ids.items():
        assert split_ids == sorted(split_ids)
        assert meta["splits"][split]["documents"] == len(split_ids)
        assert meta["splits"][split]["chars"] == sum(len(t) for t in dataset[split]["text"])
        row = dataset[split][0]
        assert row["doc_id"] == sha256_text(row["text"]) and corpora.split_of(row["text"], SPLITS) == split
    assert read_json(tmp_path / "corpora/prose/documents.json") == meta
    assert sorted(p.name for p in out.parent.iterdir()) == ["documents", "documents.json"]


def test_rebuild_is_identical_and_never_stale(tmp_path: Path, prose_corpus: tuple[dict, Path]) -> None:
    meta, out = prose_corpus
    rebuilt, _ = build(tmp_path, "prose", [{"local": str(tmp_path / "src")}])
    assert rebuilt == meta
    assert sorted(p.name for p in out.parent.iterdir()) == ["documents", "documents.json"]
    (tmp_path / "src" / "doc000.txt").write_text("a changed document")
    changed, _ = build(tmp_path, "prose", [{"local": str(tmp_path / "src")}])
    split = corpora.split_of("a changed document", SPLITS)
    assert changed["splits"][split]["content_sha256"] != meta["splits"][split]["content_sha256"]
    assert "a changed document" in list(datasets.load_from_disk(str(out))[split]["text"])


def test_corpus_too_small_for_its_splits(tmp_path: Path) -> None:
    source = write_files(tmp_path / "src", {"a.txt": "one", "b.txt": "two"})
    with pytest.raises(CorpusError, match=r"corpus 'tiny': splits \[.*\] got no documents out of 2"):
        build(tmp_path, "tiny", [{"local": str(source)}])


def test_archives_and_globs(tmp_path: Path) -> None:
    members = {"pkg/a.js": "var a = 1;", "pkg/sub/b.js": "var b = 2;", "pkg/a.min.js": "var a=1;", "pkg/x.txt": "x"}
    with zipfile.ZipFile(tmp_path / "pkg.zip", "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    with tarfile.open(tmp_path / "pkg.tar.gz", "w:gz") as archive:
        for name, text in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            archive.addfile(info, stdlib_io.BytesIO(text.encode()))
    for archive_name in ("pkg.zip", "pkg.tar.gz"):
        spec = {"local": str(tmp_path / archive_name), "include": ["pkg/*.js"], "exclude": ["**/*.min.js"]}
        assert list(sources.iter_documents(spec)) == [(f"{archive_name}:pkg/a.js", "var a = 1;")]


def test_huggingface_dataset_from_local_json(tmp_path: Path) -> None:
    data = tmp_path / "records.jsonl"
    data.write_text("\n".join(f'{{"body": "record {i}", "id": {i}}}' for i in range(3)))
    spec = {"huggingface": "json", "data_files": str(data), "text_field": "body"}
    documents = list(sources.iter_documents(spec, cache_dir=tmp_path / "cache"))
    assert documents == [(f"json/train[{i}]", f"record {i}") for i in range(3)]
    with pytest.raises(CorpusError, match="text_field='text' is not among its columns"):
        list(sources.iter_documents({**spec, "text_field": "text"}, cache_dir=tmp_path / "cache"))


def test_unreachable_huggingface_dataset_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CorpusError, match="'no-such-user/no-such-dataset'.*offline mode is on"):
        list(sources.iter_documents({"huggingface": "no-such-user/no-such-dataset"}, cache_dir=tmp_path))


def test_missing_local_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(CorpusError, match=f"local corpus path '{missing}' does not exist"):
        build(tmp_path, "ghost", [{"local": str(missing)}])


def test_include_matching_nothing(tmp_path: Path) -> None:
    source = write_files(tmp_path / "src", {"a.txt": "text"})
    with pytest.raises(CorpusError, match=r"no file matches include=\['\*\.py'\]"):
        build(tmp_path, "none", [{"local": str(source), "include": ["*.py"]}])


def test_empty_corpus(tmp_path: Path) -> None:
    source = write_files(tmp_path / "src", {"a.txt": "\n\n", "b.txt": "  \x00 "})
    with pytest.raises(CorpusError, match="corpus 'blank': no documents left"):
        build(tmp_path, "blank", [{"local": str(source)}])


@pytest.mark.parametrize("spec, message", [
    ({"files": [{"index": "conda", "package": "x"}]}, "index='conda' is not one of"),
    ({"files": [{"local": "x", "glob": "*"}]}, r"unknown keys \['glob'\]"),
    ({"files": [{"index": "pypi", "package": "x", "version": "1"}]}, "missing keys"),
    ({"files": [{"local": "x"}], "cleaner": "fancy"}, "cleaner='fancy' is not one of"),
    ({"mixture": {"a": 1.0}}, "mixtures go to build_mixture"),
])
def test_invalid_corpus_specs(tmp_path: Path, spec: dict, message: str) -> None:
    with pytest.raises(CorpusError, match=message):
        corpora.build_documents("bad", spec, SPLITS, tmp_path / "d", tmp_path / "d.json", tmp_path, tmp_path)


def test_fetch_reuses_verified_file_without_network(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cached = tmp_path / "npm" / "not-a-real-package-0.0.0.tgz"
    cached.parent.mkdir()
    cached.write_bytes(b"pinned bytes")
    spec = {"index": "npm", "package": "not-a-real-package", "version": "0.0.0",
            "sha256": sha256_file(cached), "include": ["**"]}
    with caplog.at_level(logging.INFO, logger="transfer_scaling.data.sources"):
        assert sources.fetch_file(spec, tmp_path) == cached
    assert "reusing" in caplog.text


@pytest.mark.slow
def test_fetch_verifies_sha256(tmp_path: Path) -> None:
    wrong = {**LODASH, "sha256": "0" * 64}
    with pytest.raises(CorpusError, match=f"npm lodash@4.17.21: lodash-4.17.21.tgz has sha256 {LODASH['sha256']}, "
                                          f"but the config pins {'0' * 64}"):
        sources.fetch_file(wrong, tmp_path)
    assert list((tmp_path / "npm").iterdir()) == [], "a file with the wrong hash was kept"
    path = sources.fetch_file(LODASH, tmp_path)
    assert path == tmp_path / "npm" / "lodash-4.17.21.tgz" and sha256_file(path) == LODASH["sha256"]
    assert list(sources.iter_documents(LODASH, path))[0][0] == "lodash-4.17.21.tgz:package/add.js"


# ------------------------------------------------------------------ mixtures


def test_mixture_follows_weights_by_characters(tmp_path: Path) -> None:
    small = write_files(tmp_path / "small", random_docs(2, 60, "small"))
    large = write_files(tmp_path / "large", random_docs(3, 200, "large"))
    _, small_dir = build(tmp_path, "small", [{"local": str(small)}])
    _, large_dir = build(tmp_path, "large", [{"local": str(large)}])
    out = tmp_path / "corpora" / "mix"
    meta = corpora.build_mixture("mix", {"small": 0.25, "large": 0.75}, {"small": small_dir, "large": large_dir},
                                 out / "documents", out / "documents.json", tmp_path / "cache")
    mixed = datasets.load_from_disk(str(out / "documents"))
    for split in ("train", "validation", "test"):
        components = meta["splits"][split]["components"]
        scarcest = min(components.values(), key=lambda c: c["available_chars"] / c["weight"])
        assert scarcest["chars"] == scarcest["available_chars"], "the scarcest component is not used up"
        for component in components.values():
            assert abs(component["fraction"] - component["weight"]) < 0.05
        texts = list(mixed[split]["text"])
        assert sum(map(len, texts)) == meta["splits"][split]["chars"]
        assert sum(text.startswith("small") for text in texts) == components["small"]["documents"]
        ids = list(mixed[split]["doc_id"])
        assert ids == sorted(ids)
    with pytest.raises(CorpusError, match="sum to 0.9"):
        corpora.build_mixture("mix", {"small": 0.2, "large": 0.7}, {"small": small_dir, "large": large_dir},
                              out / "documents", out / "documents.json", tmp_path / "cache")


# ------------------------------------------------------------------ token arrays and D_F subsets


def test_tokenize_split_metadata(tmp_path: Path, prose_corpus: tuple[dict, Path], byte_tokenizer: Path) -> None:
    meta, documents = prose_corpus
    record = subsets.tokenize_split(documents, "test", byte_tokenizer, tmp_path / "tokens" / "test.bin")
    tokens, loaded = load_token_array(tmp_path / "tokens" / "test.bin")
    texts = list(datasets.load_from_disk(str(documents))["test"]["text"])
    assert loaded == record
    assert record["corpus"] == "prose" and record["split"] == "test"
    assert record["documents"] == meta["splits"]["test"]["documents"] == len(texts)
    assert record["chars"] == meta["splits"]["test"]["chars"]
    assert record["documents_sha256"] == meta["splits"]["test"]["content_sha256"]
    assert record["tokenizer_sha256"] == sha256_file(byte_tokenizer)
    assert record["tokens"] == sum(len(t.encode()) for t in texts) + len(texts)
    assert int((np.asarray(tokens) == record["eot_id"]).sum()) == len(texts) and tokens[-1] == record["eot_id"]


def subset_chunks(path: Path, tokenizer_path: Path) -> list[str]:
    """A subset's chunks in draw order: its token array cut after each end-of-document id."""
    tokenizer = load_tokenizer(tokenizer_path)
    tokens = np.asarray(load_token_array(path)[0])
    assert tokens[-1] == tokenizer.eot_id
    return [tokenizer.decode(piece) for piece in np.split(tokens, np.flatnonzero(tokens == tokenizer.eot_id) + 1)[:-1]]


def aligned_chunks(documents: Path, chunk_chars: int) -> list[str]:
    """Every chunk of the train split: each document cut at multiples of ``chunk_chars``."""
    texts = datasets.load_from_disk(str(documents))["train"]["text"]
    return [text[start:start + chunk_chars] for text in texts for start in range(0, len(text), chunk_chars)]


@pytest.fixture()
def long_files_corpus(tmp_path: Path) -> tuple[dict, Path]:
    """Few long files, like the Python target's train split (818 files of ~18k characters)."""
    rng = random.Random(1)
    source = write_files(tmp_path / "long", {f"file{i:02d}.txt": f"file {i}\n" + prose(rng, 1500) for i in range(30)})
    return build(tmp_path, "long", [{"local": str(source)}])


def test_subsets_of_one_seed_are_nested_across_d_with_exact_chars(tmp_path: Path, prose_corpus: tuple[dict, Path],
                                                                 byte_tokenizer: Path) -> None:
    _, documents = prose_corpus
    every_chunk = aligned_chunks(documents, 100)
    train_chars = sum(map(len, every_chunk))
    drawn = []
    for d_chars in (100, 1000, 3333, train_chars):
        record = subsets.make_subset(documents, byte_tokenizer, d_chars, tmp_path / f"{d_chars}.bin", seed=3,
                                     chunk_chars=100)
        chunks = subset_chunks(tmp_path / f"{d_chars}.bin", byte_tokenizer)
        assert record["chars"] == record["d_chars"] == d_chars == sum(map(len, chunks))
        assert record["chunks"] == record["documents"] == len(chunks) >= d_chars / 100
        assert (record["seed"], record["chunk_chars"]) == (3, 100)
        drawn.append(chunks)
    for smaller, larger in zip(drawn, drawn[1:]):
        assert smaller[:-1] == larger[:len(smaller) - 1] and larger[len(smaller) - 1].startswith(smaller[-1])
    assert sorted(drawn[-1]) == sorted(every_chunk)


def test_subset_is_deterministic(tmp_path: Path, prose_corpus: tuple[dict, Path], byte_tokenizer: Path) -> None:
    _, documents = prose_corpus
    first, second = (subsets.make_subset(documents, byte_tokenizer, 2500, tmp_path / f"{name}.bin", seed=7)
                     for name in ("first", "second"))
    assert first == second
    assert (tmp_path / "first.bin").read_bytes() == (tmp_path / "second.bin").read_bytes()


def test_subsets_differ_across_seeds(tmp_path: Path, prose_corpus: tuple[dict, Path], byte_tokenizer: Path) -> None:
    _, documents = prose_corpus
    records = [subsets.make_subset(documents, byte_tokenizer, 2500, tmp_path / f"seed{seed}.bin", seed=seed,
                                   chunk_chars=100) for seed in (0, 1)]
    assert records[0]["chars"] == records[1]["chars"] == 2500
    assert records[0]["sha256"] != records[1]["sha256"]
    chunks = [subset_chunks(tmp_path / f"seed{seed}.bin", byte_tokenizer) for seed in (0, 1)]
    assert len(set(chunks[0]) & set(chunks[1])) < len(chunks[0]) / 2


def test_small_subset_draws_chunks_from_many_files(tmp_path: Path, long_files_corpus: tuple[dict, Path],
                                                   byte_tokenizer: Path) -> None:
    """A whole-file prefix of 1,000 characters is one file; the chunks of a draw come from several."""
    _, documents = long_files_corpus
    record = subsets.make_subset(documents, byte_tokenizer, 1000, tmp_path / "small.bin", seed=0, chunk_chars=100)
    chunks = subset_chunks(tmp_path / "small.bin", byte_tokenizer)
    assert record["chunks"] == len(chunks) == 10
    assert 5 <= record["source_documents"] <= 10
    assert set(chunks) <= set(aligned_chunks(documents, 100))


def test_subset_larger_than_the_train_split_is_refused(tmp_path: Path, prose_corpus: tuple[dict, Path],
                                                       byte_tokenizer: Path) -> None:
    meta, documents = prose_corpus
    train_chars = meta["splits"]["train"]["chars"]
    with pytest.raises(CorpusError, match=f"d_chars={train_chars + 1} .* holds only {train_chars}"):
        subsets.make_subset(documents, byte_tokenizer, train_chars + 1, tmp_path / "too_big.bin", seed=0)
    assert not (tmp_path / "too_big.bin").exists()


@pytest.mark.parametrize("arguments, message", [
    ({"chunk_chars": 0}, "chunk_chars=0 must be an integer of at least 1"),
    ({"chunk_chars": 2.5}, "chunk_chars=2.5 must be an integer"),
    ({"chunk_chars": True}, "chunk_chars=True must be an integer"),
    ({"chunk_chars": "1000"}, "chunk_chars='1000' must be an integer"),
    ({"seed": -1}, "seed=-1 must be an integer of at least 0"),
    ({"d_chars": 0}, "d_chars=0 must be an integer of at least 1"),
])
def test_invalid_subset_arguments(tmp_path: Path, prose_corpus: tuple[dict, Path], byte_tokenizer: Path,
                                  arguments: dict, message: str) -> None:
    arguments = {"d_chars": 100, "seed": 0, **arguments}
    with pytest.raises(CorpusError, match=message):
        subsets.make_subset(prose_corpus[1], byte_tokenizer, out_bin=tmp_path / "subset.bin", **arguments)


# ------------------------------------------------------------------ the real corpora


@pytest.mark.slow
def test_real_python_corpus_end_to_end(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    start = time.perf_counter()
    meta, documents = build(tmp_path, "python", config["corpora"]["python"]["files"], config["splits"])
    seconds = time.perf_counter() - start
    print(f"python corpus built in {seconds:.1f} s:",
          {split: (v["documents"], v["chars"]) for split, v in meta["splits"].items()},
          f"duplicates {meta['duplicates_dropped']}, empty {meta['empty_dropped']}")
    assert meta["sources"][0]["sha256"] == config["corpora"]["python"]["files"][0]["sha256"]
    assert meta["undecodable_dropped"] == 0
    total = sum(v["chars"] for v in meta["splits"].values())
    assert 10_000_000 < total < 20_000_000
    train = datasets.load_from_disk(str(documents))["train"]
    sources = list(train["source"])
    assert all(s.endswith(".py") and "/tests/" not in s and "/benchmarks/" not in s for s in sources)
    assert meta["splits"]["train"]["chars"] > 0.8 * total
