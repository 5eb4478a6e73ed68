"""Line-completion tasks, batched greedy decoding with the real GPT, and BLEU / chrF / exact-match scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transfer_scaling.data.sources import CorpusError
from transfer_scaling.evaluate.downstream import (MIN_REFERENCE_CHARS, complete_lines, evaluate_downstream,
                                         load_tasks_from_documents, make_line_completion_tasks, score_completions)
from transfer_scaling.io import write_json
from transfer_scaling.train.model import GPT, GPTConfig, n_params, save_weights
from transfer_scaling.plan import BYTE_VOCAB_SIZE
from transfer_scaling.data.tokenizer import BYTE_EOT_ID, ByteTokenizer, train_tokenizer

PROGRAM = "def add(a, b):\n    return a + b\n"
DOCUMENTS = [
    "import os\n\n\ndef main(argv):\n    path = os.path.join(argv[0], 'x')\n    )\n    return path\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\r\n        self.y = y\n",
    "x = 1\n",
    "# header only, no second line",
    "value = compute(alpha, beta)\nprint(value)\nresult = value * 2",
]
LINES = ["def add(a, b):", "    return a + b", "for item in items:", "print(total, count)"]


@pytest.fixture(scope="module")
def tokenizer() -> ByteTokenizer:
    return ByteTokenizer(BYTE_VOCAB_SIZE, BYTE_EOT_ID, "")


@pytest.fixture(scope="module")
def random_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, d_model=32, n_head=2, n_ctx=48, vocab_size=BYTE_VOCAB_SIZE)).eval()


@pytest.fixture(scope="module")
def trained_model(tokenizer: ByteTokenizer) -> GPT:
    """A one-layer GPT that has memorised PROGRAM (to a loss of about 0.02 nats, so that its greedy completions do not hang on the last bits of floating-point order of one CPU or another), so its completions are known in advance (~2 s)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ids = torch.from_numpy(tokenizer.encode(PROGRAM * 40).astype(np.int64))
    model = GPT(GPTConfig(n_layer=1, d_model=32, n_head=2, n_ctx=64, vocab_size=BYTE_VOCAB_SIZE))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(500):
        starts = torch.randint(0, len(ids) - 65, (16,))
        batch = torch.stack([ids[s:s + 65] for s in starts])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_perfect_completions_score_100_bleu_and_full_exact_match() -> None:
    assert score_completions(LINES, LINES) == pytest.approx({"bleu": 100.0, "chrf": 100.0, "exact_match": 1.0,
                                                             "n": 4})


def test_empty_completions_score_zero() -> None:
    assert score_completions([""] * len(LINES), LINES) == {"bleu": 0.0, "chrf": 0.0, "exact_match": 0.0, "n": 4}


def test_completions_sharing_no_character_score_about_zero_chrf() -> None:
    assert score_completions(["0123 456 789"] * len(LINES), LINES)["chrf"] == pytest.approx(0.0, abs=1e-9)


def test_chrf_moves_with_a_few_changed_characters_where_bleu_stays_zero() -> None:
    """The issue's case: lines nearly right, every word off by a character or two, no word n-gram in common."""
    references = ["return sortedItems when keepOrder else items", "yield nextValue from innerGenerator then stop"]
    one_off, two_off = ([" ".join(word[:-cut] for word in line.split()) for line in references] for cut in (1, 2))
    scores = [score_completions(predictions, references) for predictions in (references, one_off, two_off)]
    assert [score["bleu"] for score in scores] == pytest.approx([100.0, 0.0, 0.0])
    assert 100.0 == pytest.approx(scores[0]["chrf"])
    assert 100.0 > scores[1]["chrf"] > scores[2]["chrf"] > 30.0


def test_partial_completions_score_in_between() -> None:
    predictions = ["def add(a, b):", "    return a - b", "for x in items:", ""]
    scores = score_completions(predictions, LINES)
    assert 0.0 < scores["bleu"] < 100.0
    assert 0.0 < scores["chrf"] < 100.0
    assert scores["exact_match"] == 0.25


def test_exact_match_ignores_surrounding_whitespace_only() -> None:
    scores = score_completions(["return a + b  ", "return a+b"], ["    return a + b", "return a + b"])
    assert scores["exact_match"] == 0.5


def test_scoring_rejects_mismatched_counts() -> None:
    with pytest.raises(ValueError, match="3 predictions for 4 references"):
        score_completions(LINES[:3], LINES)


def test_tasks_are_deterministic_and_depend_on_the_seed() -> None:
    documents = [PROGRAM.replace("add", f"add{i}") * 3 for i in range(20)]
    first = make_line_completion_tasks(documents, 15, 40, seed=1)
    assert first == make_line_completion_tasks(documents, 15, 40, seed=1)
    assert first != make_line_completion_tasks(documents, 15, 40, seed=2)
    assert len(first) == 15


def test_tasks_follow_the_line_rules() -> None:
    tasks = make_line_completion_tasks(DOCUMENTS, 100, 30, seed=0)
    references = {task["reference"] for task in tasks}
    assert references == {"def main(argv):", "    path = os.path.join(argv[0], 'x')", "    return path",
                          "    def __init__(self, x, y):", "        self.x = x", "        self.y = y",
                          "print(value)", "result = value * 2"}
    for task in tasks:
        document = DOCUMENTS[task["doc_index"]]
        assert "\n" not in task["reference"] and "\r" not in task["reference"]
        assert len(task["reference"].strip()) >= MIN_REFERENCE_CHARS
        assert document[:task["line_start"]].endswith(task["context"])
        assert task["context"].endswith("\n") and len(task["context"]) <= 30
        before = document[:task["line_start"] - len(task["context"])]
        assert before == "" or before.endswith("\n") or task["context"].count("\n") == 1


def test_context_is_cut_at_a_line_start_when_the_window_allows() -> None:
    document = "first_line_is_long = 1\nsecond = 2\nthird_line = 3\n"
    task, = [t for t in make_line_completion_tasks([document], 5, 20, seed=0) if t["reference"] == "third_line = 3"]
    assert task["context"] == "second = 2\n"


def test_tasks_reject_documents_without_candidates() -> None:
    with pytest.raises(ValueError, match="no line"):
        make_line_completion_tasks(["x\n\ny\n", "single line"], 5, 100, seed=0)


def test_tasks_come_from_the_requested_split_of_a_documents_dataset(tmp_path) -> None:
    import datasets

    splits = {"train": ["train_only = 1\nnever_sampled = 2\n"], "test": DOCUMENTS}
    datasets.DatasetDict({name: datasets.Dataset.from_dict({"text": texts, "source": ["s"] * len(texts),
                                                             "doc_id": [f"{name}{i}" for i in range(len(texts))]})
                          for name, texts in splits.items()}).save_to_disk(str(tmp_path / "documents"))
    tasks = load_tasks_from_documents(tmp_path / "documents", "test", n_tasks=100, context_chars=30, seed=0)
    assert tasks == make_line_completion_tasks(DOCUMENTS, 100, 30, seed=0)
    with pytest.raises(CorpusError, match="no split 'validation'"):
        load_tasks_from_documents(tmp_path / "documents", "validation")


def reference_greedy(model: GPT, tokenizer: ByteTokenizer, context: str, max_new_tokens: int) -> str:
    """The textbook loop: one sequence, the whole window through the model at every step."""
    ids = [int(i) for i in tokenizer.encode(context)[-(model.config.n_ctx - max_new_tokens):]]
    text = b""
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            logits, _ = model(torch.tensor([ids]))
            token = int(logits[0, -1].argmax())
            if token in (tokenizer.eot_id, ord("\n")):
                break
            ids.append(token)
            text += bytes([token])
    return text.decode("utf-8", errors="replace")


def test_trained_model_completes_the_memorised_program(trained_model: GPT, tokenizer: ByteTokenizer) -> None:
    contexts = ["def add(a, b):\n", "def add(a, b):\n    return a + b\n", "return a + b\ndef add(a, b):\n"]
    completions = complete_lines(trained_model, tokenizer, contexts, 24, 4)
    assert completions == ["    return a + b", "def add(a, b):", "    return a + b"]
    assert completions == [reference_greedy(trained_model, tokenizer, c, 24) for c in contexts]


def test_completions_are_deterministic_and_batching_changes_nothing(random_model: GPT,
                                                                    tokenizer: ByteTokenizer) -> None:
    contexts = ["x = 1\n", "def f(a):\n", "import os\n" * 10, "y\n", "print(z)\n" * 9, "class A:\n", "q = 2\n"]
    batched = complete_lines(random_model, tokenizer, contexts, 16, 3)
    assert batched == complete_lines(random_model, tokenizer, contexts, 16, 3)
    assert batched == [complete_lines(random_model, tokenizer, [c], 16, 1)[0] for c in contexts]
    assert batched == [reference_greedy(random_model, tokenizer, c, 16) for c in contexts]
    assert all("\n" not in text and len(text) <= 16 for text in batched)


def test_completion_rejects_a_window_too_small(random_model: GPT, tokenizer: ByteTokenizer) -> None:
    with pytest.raises(ValueError, match="max_new_tokens = 48"):
        complete_lines(random_model, tokenizer, ["x\n"], 48, 1)


def test_evaluate_downstream_scores_a_saved_checkpoint(trained_model: GPT, tmp_path) -> None:
    save_weights(trained_model.state_dict(), tmp_path / "best.safetensors")
    write_json(tmp_path / "model.json", {**trained_model.config.to_dict(), "n_params": n_params(trained_model)})
    train_tokenizer({"kind": "byte"}, [], tmp_path / "tokenizer.json")
    tasks = make_line_completion_tasks([PROGRAM * 3], 5, 40, seed=0)
    result = evaluate_downstream(tmp_path / "best.safetensors", tmp_path / "model.json", tmp_path / "tokenizer.json",
                                 tasks, batch_size=8, max_new_tokens=24)
    assert result["n"] == 5
    assert result["bleu"] == pytest.approx(100.0) and result["exact_match"] == 1.0
    assert result["chrf"] == pytest.approx(100.0)
