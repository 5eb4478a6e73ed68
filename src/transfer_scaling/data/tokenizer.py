"""Tokenizers described by one JSON file: byte-level (no training) or a byte-level BPE.

Byte-level is the default because it is neutral across source and target distributions: no domain
gets a vocabulary advantage, so transfer is measured on the data alone, at the cost of longer
sequences. A BPE trained evenly on all corpora is the paper-like alternative. Either way, every
document is followed by the end-of-document id ``eot_id`` in token arrays.
"""

from __future__ import annotations

import json
import logging
import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..plan import BYTE_VOCAB_SIZE
from ..io import read_json, sha256_file, write_json

logger = logging.getLogger(__name__)

BYTE_EOT_ID = 256
EOT_TOKEN = "<|endoftext|>"
MAX_VOCAB_SIZE = 65536  # token arrays are uint16
KINDS = ("byte", "bpe")
TOKEN_DTYPE = np.uint16


class TokenizerError(ValueError):
    """A tokenizer spec or file is invalid."""


class Tokenizer(ABC):
    """Text <-> token ids, with an end-of-document id that never comes out of ``encode``."""

    kind: str

    def __init__(self, vocab_size: int, eot_id: int, sha256: str):
        self.vocab_size = vocab_size
        self.eot_id = eot_id
        self.sha256 = sha256

    @abstractmethod
    def encode(self, text: str) -> np.ndarray: ...

    @abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]: ...

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; end-of-document ids are dropped."""

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """One flat uint16 array: each document's tokens followed by ``eot_id``."""
        eot = np.array([self.eot_id], dtype=TOKEN_DTYPE)
        pieces = [piece for ids in self.encode_batch(texts) for piece in (ids, eot)]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=TOKEN_DTYPE)


class ByteTokenizer(Tokenizer):
    """Ids 0-255 are the UTF-8 bytes of the text; 256 ends a document."""

    kind = "byte"

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(TOKEN_DTYPE)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        ids = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)
        return ids[ids < 256].astype(np.uint8).tobytes().decode("utf-8", errors="replace")


class BPETokenizer(Tokenizer):
    """A byte-level BPE from the ``tokenizers`` library (reversible: no normaliser, no prefix space)."""

    kind = "bpe"

    def __init__(self, tokenizer_json: str, vocab_size: int, eot_id: int, sha256: str):
        from tokenizers import Tokenizer as HFTokenizer

        super().__init__(vocab_size, eot_id, sha256)
        self._tokenizer = HFTokenizer.from_str(tokenizer_json)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tokenizer.encode(text, add_special_tokens=False).ids, dtype=TOKEN_DTYPE)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encodings = self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        return [np.asarray(encoding.ids, dtype=TOKEN_DTYPE) for encoding in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def _validate_spec(spec: dict) -> dict:
    """Check a tokenizer spec from the config; errors name the key at fault."""
    if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
        raise TokenizerError(f"tokenizer spec {spec!r}: 'kind' must be one of {list(KINDS)}")
    allowed = {"byte": {"kind"}, "bpe": {"kind", "vocab_size", "train_chars"}}[spec["kind"]]
    unknown = set(spec) - allowed
    if unknown:
        raise TokenizerError(f"tokenizer spec: unknown keys {sorted(unknown)}; allowed for kind "
                             f"{spec['kind']!r}: {sorted(allowed)}")
    if spec["kind"] == "bpe":
        vocab_size = spec.get("vocab_size")
        if not isinstance(vocab_size, int) or not BYTE_VOCAB_SIZE < vocab_size <= MAX_VOCAB_SIZE:
            raise TokenizerError(f"tokenizer spec: vocab_size={vocab_size!r} must be an integer in "
                                 f"({BYTE_VOCAB_SIZE}, {MAX_VOCAB_SIZE}] (256 bytes + end-of-document "
                                 f"+ merges; ids are stored as uint16)")
        train_chars = spec.get("train_chars")
        if not isinstance(train_chars, int) or train_chars <= 0:
            raise TokenizerError(f"tokenizer spec: train_chars={train_chars!r} must be a positive integer")
    return spec


def take_chars(texts: Iterable[str], chars: int) -> Iterator[str]:
    """Whole texts from ``texts`` until ``chars`` characters, the last one cut to fit exactly.

    Reads no further than needed, so a prefix of a large split costs only what it takes.
    """
    remaining = chars
    for text in texts:
        if remaining <= 0:
            return
        piece = text[:remaining]
        remaining -= len(piece)
        yield piece


def _train_texts(documents_dirs: list[Path], chars_per_corpus: int) -> Iterator[str]:
    """The first ``chars_per_corpus`` characters of each corpus's train split, in stored order.

    Stored order is by content hash, so each prefix is an unbiased sample of its corpus.
    """
    import datasets

    for documents_dir in documents_dirs:
        yield from take_chars(datasets.load_from_disk(str(documents_dir))["train"]["text"], chars_per_corpus)


def _train_bpe(vocab_size: int, texts: Iterator[str]) -> tuple[str, int]:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer.to_str(), tokenizer.token_to_id(EOT_TOKEN)


def train_tokenizer(spec: dict, documents_dirs: list[Path], out_path: Path) -> dict:
    """Write the tokenizer JSON described by ``spec``; a BPE learns from the corpora's train splits."""
    spec = _validate_spec(spec)
    if spec["kind"] == "byte":
        record = {"kind": "byte", "vocab_size": BYTE_VOCAB_SIZE, "eot_id": BYTE_EOT_ID}
    else:
        if not documents_dirs:
            raise TokenizerError("a BPE tokenizer needs at least one corpus to train on")
        start = time.perf_counter()
        chars_per_corpus = spec["train_chars"] // len(documents_dirs)
        tokenizer_json, eot_id = _train_bpe(spec["vocab_size"], _train_texts(list(documents_dirs), chars_per_corpus))
        vocab_size = len(json.loads(tokenizer_json)["model"]["vocab"])
        record = {
            "kind": "bpe",
            "vocab_size": vocab_size,
            "eot_id": eot_id,
            "train_chars_per_corpus": chars_per_corpus,
            "trained_on": [str(path) for path in documents_dirs],
            "tokenizer": tokenizer_json,
        }
        logger.info("trained BPE of %d tokens on %d corpora (%d chars each at most) in %.1f s",
                    vocab_size, len(documents_dirs), chars_per_corpus, time.perf_counter() - start)
    write_json(out_path, record)
    return record


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Read a tokenizer JSON written by :func:`train_tokenizer`."""
    path = Path(path)
    if not path.exists():
        raise TokenizerError(f"tokenizer file missing: {path}")
    record = read_json(path)
    kind = record.get("kind")
    sha256 = sha256_file(path)
    if kind == "byte":
        return ByteTokenizer(BYTE_VOCAB_SIZE, BYTE_EOT_ID, sha256)
    if kind == "bpe":
        return BPETokenizer(record["tokenizer"], int(record["vocab_size"]), int(record["eot_id"]), sha256)
    raise TokenizerError(f"{path}: kind={kind!r} is not one of {list(KINDS)}")
