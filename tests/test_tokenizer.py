"""Tokenizers: exact round trips, end-of-document ids, deterministic BPE training, clear spec errors."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from transfer_scaling.data import corpora
from transfer_scaling.io import sha256_file
from transfer_scaling.data.tokenizer import TokenizerError, load_tokenizer, take_chars, train_tokenizer

SAMPLES = [
    "",
    "Fellow-Citizens of the Senate and House of Representatives:\n\nI embrace...",
    "def f(x):\n    return x ** 2  # square\n\n\tif a != b:\n        pass\n",
    "const UNSAFE = new Set([\"+\", \"-\"]);   \n",
    "unicode: café, naïve, Ünïcödé, 数学, emoji 🙂, combining e\u0301, nbsp\u00a0end",
    "  leading spaces, trailing spaces   \n\n\n",
]


@pytest.fixture(scope="module")
def documents_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two small corpora (prose and code) to train a BPE on."""
    root = tmp_path_factory.mktemp("corpora")
    rng = random.Random(0)
    words = "the of and state union congress people nation law war peace".split()
    code_lines = ["def f(x):", "    return x + 1", "for i in range(10):", "    print(i)", "class A:", "    pass"]
    texts = {
        "prose": {f"{i}.txt": f"Speech {i}.\n" + " ".join(rng.choice(words) for _ in range(300)) for i in range(40)},
        "code": {f"{i}.py": f"# file {i}\n" + "\n".join(rng.choice(code_lines) for _ in range(60)) for i in range(40)},
    }
    dirs = []
    for name, files in texts.items():
        source = root / "src" / name
        source.mkdir(parents=True)
        for file_name, text in files.items():
            (source / file_name).write_text(text)
        out = root / name
        corpora.build_documents(name, {"files": [{"local": str(source)}]}, {"validation": 0.2, "test": 0.2},
                                out / "documents", out / "documents.json", root / "downloads", root / "cache")
        dirs.append(out / "documents")
    return dirs


@pytest.fixture(scope="module")
def bpe_path(documents_dirs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    train_tokenizer({"kind": "bpe", "vocab_size": 400, "train_chars": 200_000}, documents_dirs, path)
    return path


def test_byte_tokenizer(tmp_path: Path) -> None:
    record = train_tokenizer({"kind": "byte"}, [], tmp_path / "byte.json")
    tokenizer = load_tokenizer(tmp_path / "byte.json")
    assert record == {"kind": "byte", "vocab_size": 257, "eot_id": 256}
    assert (tokenizer.kind, tokenizer.vocab_size, tokenizer.eot_id) == ("byte", 257, 256)
    assert tokenizer.sha256 == sha256_file(tmp_path / "byte.json")
    for text in SAMPLES:
        ids = tokenizer.encode(text)
        assert ids.dtype == np.uint16 and list(ids) == list(text.encode("utf-8"))
        assert tokenizer.decode(ids) == text
    assert [list(ids) for ids in tokenizer.encode_batch(["ab", "é"])] == [[97, 98], [195, 169]]
    assert list(tokenizer.encode_documents(["ab", "", "c"])) == [97, 98, 256, 256, 99, 256]
    assert tokenizer.decode([104, 256, 105]) == "hi"


def test_bpe_round_trip_and_compression(bpe_path: Path) -> None:
    tokenizer = load_tokenizer(bpe_path)
    assert tokenizer.kind == "bpe" and 257 < tokenizer.vocab_size <= 400  # merges stop when no pair repeats
    for text in SAMPLES:
        ids = tokenizer.encode(text)
        assert ids.dtype == np.uint16 and tokenizer.eot_id not in ids and np.all(ids < tokenizer.vocab_size)
        assert tokenizer.decode(ids) == text
    assert [tokenizer.decode(ids) for ids in tokenizer.encode_batch(SAMPLES)] == SAMPLES
    sample = "the state of the union and the congress of the people"
    assert len(tokenizer.encode(sample)) < len(sample) / 2, "the BPE learned no merges from its corpora"
    tokens = tokenizer.encode_documents(SAMPLES[1:3])
    assert list(tokens).count(tokenizer.eot_id) == 2 and tokens[-1] == tokenizer.eot_id
    assert tokenizer.decode(tokens) == "".join(SAMPLES[1:3])


def test_bpe_training_is_deterministic(bpe_path: Path, documents_dirs: list[Path], tmp_path: Path) -> None:
    train_tokenizer({"kind": "bpe", "vocab_size": 400, "train_chars": 200_000}, documents_dirs, tmp_path / "again.json")
    assert sha256_file(tmp_path / "again.json") == sha256_file(bpe_path)


def test_take_chars() -> None:
    assert list(take_chars(["abc", "defg", "hi"], 5)) == ["abc", "de"]
    assert list(take_chars(["abc", "defg"], 7)) == ["abc", "defg"]
    assert list(take_chars(["abc"], 10)) == ["abc"]


@pytest.mark.parametrize("spec, message", [
    ({"kind": "wordpiece"}, "'kind' must be one of"),
    ({"kind": "byte", "vocab_size": 300}, r"unknown keys \['vocab_size'\]"),
    ({"kind": "bpe", "vocab_size": 70000, "train_chars": 1000}, "vocab_size=70000 must be an integer in"),
    ({"kind": "bpe", "vocab_size": 4096}, "train_chars=None must be a positive integer"),
])
def test_invalid_specs(spec: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=message):
        train_tokenizer(spec, [], tmp_path / "tokenizer.json")


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="tokenizer file missing"):
        load_tokenizer(tmp_path / "absent.json")
    (tmp_path / "odd.json").write_text('{"kind": "unigram"}')
    with pytest.raises(TokenizerError, match="kind='unigram' is not one of"):
        load_tokenizer(tmp_path / "odd.json")
