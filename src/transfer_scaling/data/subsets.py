"""Token arrays: a split of a corpus tokenized whole, and the D_F and D subsets of the fine-tuning and from-scratch
runs: fixed-size chunks of the train split drawn in an order set by a seed, nested across D and counted in
characters as in Hernandez et al. (2021).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import datasets
import numpy as np

from ..tokens import write_token_array
from .corpora import content_hash, load_split
from .sources import CorpusError
from .tokenizer import load_tokenizer, take_chars

logger = logging.getLogger(__name__)

SUBSET_CHUNK_CHARS = 1000  # the default chunk of a D subset (config subsets.chunk_chars)


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
                         documents_sha256=content_hash(zip(columns["doc_id"], columns["text"], columns["source"])))


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
