"""A downstream score a code-model user cares about: greedy completion of the next line of held-out code.

Isik et al. (2024) show that cross-entropy and a downstream score can disagree as the pretraining data
grows, so the score is measured directly: from the text before a line start in a held-out target
document, the model greedily writes the next line, scored against the real line by corpus BLEU
(sacreBLEU's default 13a tokenisation, comparable with published numbers), by corpus chrF and by exact match.

BLEU needs whole-word 4-gram matches, so small models whose lines are nearly right score 0 to 0.4, below
resolution; chrF (sacreBLEU's defaults: character 6-grams, recall-weighted F with beta 2, whitespace
ignored, deterministic) credits every matching run of characters, so it moves at small scale and is
reported beside BLEU rather than instead of it.

With a BPE tokenizer, a context cut at a line start may end in a token that training text would have
merged with the next line's indentation; the byte-level default has no such boundary effect.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import sacrebleu
import torch

from ..data.corpora import load_split
from .heldout import load_model
from ..train.model import GPT
from ..data.tokenizer import Tokenizer, load_tokenizer

logger = logging.getLogger(__name__)

MIN_REFERENCE_CHARS = 6
"""Lines shorter than this once stripped (``)``, ``else:``, ``pass``) are nearly free to predict and carry
no BLEU 4-gram, so they would inflate exact match without testing the model."""


def _line_starts(document: str) -> list[int]:
    """Offsets of every line start after the first: a task needs some context before its line."""
    return [index + 1 for index, char in enumerate(document) if char == "\n" and index + 1 < len(document)]


def _reference_at(document: str, start: int) -> str:
    end = document.find("\n", start)
    return document[start:] if end < 0 else document[start:end]


def _context_before(document: str, start: int, context_chars: int) -> str:
    """Up to ``context_chars`` characters before ``start``, cut after a newline where the window holds one
    before its last character, so the context does not begin with half a line of code."""
    window = document[max(0, start - context_chars):start]
    if start - context_chars <= 0:
        return window
    cut = window.find("\n")
    return window[cut + 1:] if 0 <= cut < len(window) - 1 else window


def make_line_completion_tasks(documents: list[str], n_tasks: int, context_chars: int,
                               seed: int) -> list[dict[str, Any]]:
    """A deterministic sample of ``n_tasks`` (context, reference) pairs at line starts of ``documents``.

    Blank lines are skipped (an empty reference has nothing to score) and so are lines shorter than
    ``MIN_REFERENCE_CHARS`` once stripped. A trailing carriage return is dropped so CRLF files score like
    LF ones. With fewer candidate lines than ``n_tasks``, all are used (and a warning logged); every
    checkpoint of a study is scored on the same tasks, so the count only sets the noise.
    """
    if n_tasks < 1 or context_chars < 1:
        raise ValueError(f"n_tasks = {n_tasks!r} and context_chars = {context_chars!r} must both be >= 1")
    candidates = [(doc_index, start) for doc_index, document in enumerate(documents)
                  for start in _line_starts(document)
                  if len(_reference_at(document, start).strip()) >= MIN_REFERENCE_CHARS]
    if not candidates:
        raise ValueError(f"{len(documents)} documents hold no line of >= {MIN_REFERENCE_CHARS} characters after "
                         "a first line: nothing to complete")
    if len(candidates) < n_tasks:
        logger.warning("only %d candidate lines for %d tasks: using all of them", len(candidates), n_tasks)
    chosen = np.random.default_rng(seed).choice(len(candidates), size=min(n_tasks, len(candidates)), replace=False)
    tasks = []
    for doc_index, start in (candidates[i] for i in np.sort(chosen)):
        document = documents[doc_index]
        tasks.append({"doc_index": doc_index, "line_start": start,
                      "context": _context_before(document, start, context_chars),
                      "reference": _reference_at(document, start).removesuffix("\r")})
    return tasks


def load_tasks_from_documents(documents_dir: Path, split: str = "test", n_tasks: int = 200,
                              context_chars: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Line-completion tasks from one split (by default the held-out test split) of a documents dataset."""
    return make_line_completion_tasks(list(load_split(Path(documents_dir), split)["text"]), n_tasks,
                                      context_chars, seed)


def _newline_ids(tokenizer: Tokenizer) -> torch.Tensor:
    """A mask over the vocabulary of tokens whose text holds a newline (BPE tokens may hold one inside)."""
    return torch.tensor(["\n" in tokenizer.decode([token]) for token in range(tokenizer.vocab_size)])


def _prompt_ids(tokenizer: Tokenizer, contexts: list[str], max_prompt: int) -> list[np.ndarray]:
    """Token ids of each context, left-truncated to ``max_prompt``; an empty context starts at a document
    boundary (the end-of-document id), which is how training arrays begin every document."""
    prompts = []
    for ids in tokenizer.encode_batch(contexts):
        ids = ids[-max_prompt:].astype(np.int64)
        prompts.append(ids if ids.size else np.array([tokenizer.eot_id], np.int64))
    return prompts


def _equal_length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of equal prompt length, at most ``batch_size`` each.

    The model takes no attention mask, so padding would change what each row attends to and its
    positions; equal lengths keep every row exactly what it would be alone. Contexts longer than the
    prompt window are all truncated to the same length, so long contexts batch fully.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    for index in order:
        if batches and len(batches[-1]) < batch_size and lengths[batches[-1][0]] == lengths[index]:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def _greedy_batch(model: GPT, prompt: torch.Tensor, max_new_tokens: int, stop: torch.Tensor) -> list[list[int]]:
    """Greedy continuation of equal-length rows; a row stops after a newline or end-of-document token.
    Finished rows leave the batch, so a batch costs only as many rows as are still writing."""
    rows = prompt
    active = torch.arange(len(prompt))
    generated: list[list[int]] = [[] for _ in range(len(prompt))]
    for _ in range(max_new_tokens):
        logits, _ = model(rows)
        next_ids = logits[:, -1].argmax(-1)
        for row, token in zip(active.tolist(), next_ids.tolist()):
            generated[row].append(token)
        running = ~stop[next_ids.cpu()]
        if not running.any():
            break
        rows = torch.cat([rows, next_ids[:, None]], dim=1)[running.to(rows.device)]
        active = active[running]
    return generated


@torch.inference_mode()
def complete_lines(model: GPT, tokenizer: Tokenizer, contexts: list[str], max_new_tokens: int,
                   batch_size: int) -> list[str]:
    """Greedy completion of the line that follows each context, cut at its first newline.

    Contexts are left-truncated to ``n_ctx - max_new_tokens`` tokens so that the whole completion fits
    the model's window. Deterministic: greedy argmax, and batching never changes a row's input.
    """
    n_ctx = model.config.n_ctx
    if not 1 <= max_new_tokens < n_ctx:
        raise ValueError(f"max_new_tokens = {max_new_tokens!r}: must be from 1 to n_ctx - 1 = {n_ctx - 1}")
    if batch_size < 1:
        raise ValueError(f"batch_size = {batch_size!r}: must be >= 1")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"tokenizer vocab_size {tokenizer.vocab_size} exceeds the model's "
                         f"{model.config.vocab_size}: they were not trained together")
    device = next(model.parameters()).device
    stop = _newline_ids(tokenizer)
    stop[tokenizer.eot_id] = True
    stop = torch.cat([stop, torch.zeros(model.config.vocab_size - tokenizer.vocab_size, dtype=torch.bool)])
    prompts = _prompt_ids(tokenizer, contexts, n_ctx - max_new_tokens)
    completions = [""] * len(contexts)
    for batch in _equal_length_batches([len(ids) for ids in prompts], batch_size):
        prompt = torch.from_numpy(np.stack([prompts[i] for i in batch])).to(device)
        for index, ids in zip(batch, _greedy_batch(model, prompt, max_new_tokens, stop)):
            completions[index] = tokenizer.decode(ids).split("\n", 1)[0]
    return completions


def score_completions(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF (0-100) and exact match (0-1, surrounding whitespace ignored as BLEU ignores it)."""
    if len(predictions) != len(references) or not references:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references: need equal, "
                         "non-zero counts")
    hypotheses, reference_sets = list(predictions), [list(references)]
    exact = sum(p.strip() == r.strip() for p, r in zip(predictions, references))
    return {"bleu": float(sacrebleu.corpus_bleu(hypotheses, reference_sets).score),
            "chrf": float(sacrebleu.corpus_chrf(hypotheses, reference_sets).score),
            "exact_match": exact / len(references), "n": len(references)}


def evaluate_downstream(weights_path: Path, model_json_path: Path, tokenizer_path: Path, tasks: list[dict],
                        batch_size: int = 32, max_new_tokens: int = 64) -> dict[str, Any]:
    """Line-completion BLEU, chrF and exact match of a checkpoint on ``tasks`` (from make_line_completion_tasks)."""
    missing = [i for i, task in enumerate(tasks) if not {"context", "reference"} <= set(task)]
    if not tasks or missing:
        raise ValueError(f"tasks must be a non-empty list of dicts with 'context' and 'reference'; "
                         f"{len(tasks)} given, entries lacking them: {missing[:5]}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(Path(weights_path), Path(model_json_path)).to(device)
    tokenizer = load_tokenizer(tokenizer_path)
    began = time.perf_counter()
    predictions = complete_lines(model, tokenizer, [task["context"] for task in tasks], max_new_tokens, batch_size)
    seconds = time.perf_counter() - began
    scores = score_completions(predictions, [task["reference"] for task in tasks])
    return {**scores, "max_new_tokens": max_new_tokens, "decode_seconds": seconds,
            "examples": [{"reference": task["reference"], "prediction": prediction}
                         for task, prediction in zip(tasks[:5], predictions[:5])]}
