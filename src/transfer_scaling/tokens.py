"""Flat token arrays on disk: ``NAME.bin`` (little-endian uint16) beside ``NAME.json`` metadata.

The metadata carries the token count, the characters of text the tokens encode (data is counted in
characters, as in Hernandez et al. 2021), the sha256 of the array and of the tokenizer, so a truncated
or altered file is caught when it is loaded instead of deep inside training.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_path, read_json, sha256_file, write_json

DTYPE = np.dtype("<u2")
META_KEYS = ("tokens", "chars", "sha256")


class TokenFileError(ValueError):
    """A token array does not match its metadata."""


def meta_path(bin_path: str | os.PathLike) -> Path:
    return Path(bin_path).with_suffix(".json")


def write_token_array(bin_path: str | os.PathLike, tokens: np.ndarray, chars: int, **meta: Any) -> dict:
    """Write ``tokens`` and its metadata atomically; extra keyword arguments go into the metadata."""
    tokens = np.asarray(tokens)
    if tokens.size and int(tokens.max()) > np.iinfo(DTYPE).max:
        raise TokenFileError(f"{bin_path}: token id {int(tokens.max())} does not fit in uint16")
    with atomic_path(bin_path) as tmp:
        tokens.astype(DTYPE).tofile(tmp)
        digest = sha256_file(tmp)
    record = {"tokens": int(tokens.size), "chars": int(chars), "dtype": DTYPE.str, "sha256": digest, **meta}
    write_json(meta_path(bin_path), record)
    return record


def load_token_array(bin_path: str | os.PathLike, verify_hash: bool = True) -> tuple[np.memmap, dict]:
    """Memory-map a token array after checking its size (and hash) against its metadata."""
    bin_path = Path(bin_path)
    json_path = meta_path(bin_path)
    for path in (bin_path, json_path):
        if not path.exists():
            raise TokenFileError(f"token file missing: {path}")
    meta = read_json(json_path)
    missing = [key for key in META_KEYS if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise TokenFileError(f"{json_path}: metadata lacks {missing}; it was not written by write_token_array")
    expected_bytes = int(meta["tokens"]) * DTYPE.itemsize
    actual_bytes = bin_path.stat().st_size
    if actual_bytes != expected_bytes:
        raise TokenFileError(
            f"{bin_path}: {actual_bytes} bytes on disk but {json_path.name} records "
            f"{meta['tokens']} tokens ({expected_bytes} bytes); the file is truncated or altered"
        )
    if verify_hash and sha256_file(bin_path) != meta["sha256"]:
        raise TokenFileError(f"{bin_path}: sha256 differs from {json_path.name}; the file was altered")
    if meta["tokens"] == 0:
        raise TokenFileError(f"{bin_path}: holds no tokens")
    return np.memmap(bin_path, dtype=DTYPE, mode="r"), meta
