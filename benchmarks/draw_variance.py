"""Spread of the test loss across subset draws: the largest default size from scratch at D = 1e5, K draws.

Issue 10: whole-file prefixes of the Python target's train split made the loss at one D depend on which
files were drawn (size l at D = 1e5: std 0.13 nats over four 1e5-character stretches), while draws of 100
pieces of 1,000 characters across the split gave std 0.011. Each draw here is one seed, as in the pipeline:
the seed picks the subset (``make_subset``, chunks of config ``subsets.chunk_chars``) and the run's
initialisation, so the printed standard deviation is what one point of the D curves varies by.

Needs the target corpus built (documents, tokenizer, validation and test tokens), e.g.

    bash scripts/run.sh results/default/corpora/python/tokens/test.bin

then, on a quiet machine (each draw is a from-scratch run of up to ~2,500 steps, about half an hour on one
thread; --results names another study's folder, results/<study>/):

    .venv/bin/python benchmarks/draw_variance.py --draws 4
    .venv/bin/python benchmarks/draw_variance.py --draws 2 --steps-cap 30    # end-to-end check, minutes
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import yaml

import transfer_scaling
from transfer_scaling.config import load_schema, validate_config
from transfer_scaling.plan import model_shapes, run_options
from transfer_scaling.data.subsets import make_subset
from transfer_scaling.evaluate.heldout import evaluate
from transfer_scaling.logs import log_to_file
from transfer_scaling.runs import run_record
from transfer_scaling.train.run import train

REPO = Path(__file__).resolve().parents[1]


def load_config(path: Path) -> dict:
    """The study's config with the schema's defaults filled, as the Snakefile sees it."""
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    return validate_config(config, load_schema(REPO / "workflow/schemas/config.schema.yaml"))


def run_spec(config: dict, kind: str, size: str, seed: int, steps_cap: int | None = None, **overrides) -> dict:
    """A run as common.smk's ``run_spec`` builds it, with option ``overrides``; ``steps_cap`` shortens it."""
    options = {**run_options(config, kind), **overrides}
    if steps_cap is not None:
        options["max_steps"] = min(options["max_steps"], steps_cap)
        options["min_steps"] = min(options["min_steps"], options["max_steps"])
    return {
        "kind": kind,
        "model": {**model_shapes(config)[size], "n_ctx": config["context"]},
        "options": options,
        "seed": seed,
        "package_version": transfer_scaling.__version__,
    }


def subset(config: dict, results: Path, d_chars: int, seed: int, work: Path) -> tuple[Path, dict]:
    """The pipeline's draw ``seed`` of ``d_chars`` characters of the target's train split."""
    subset_bin = work / f"seed{seed}" / f"{d_chars}.bin"
    meta = make_subset(results / "corpora" / config["target"] / "documents", results / "tokenizer" / "tokenizer.json",
                       d_chars, subset_bin, seed, chunk_chars=config["subsets"]["chunk_chars"])
    return subset_bin, meta


def train_and_test(config: dict, results: Path, spec: dict, train_bin: Path, run_dir: Path,
                   init_from: Path | None = None, threads: int | None = None) -> tuple[dict, float]:
    """Train a run on ``train_bin`` (validated on the target's validation split); its summary and test loss
    in nats per character."""
    target = results / "corpora" / config["target"]
    record = run_record(spec, train=train_bin, validation=target / "tokens" / "validation.bin",
                        tokenizer=results / "tokenizer" / "tokenizer.json", init_from=init_from,
                        threads=threads or config["training"]["threads"], source=None, size="probe")
    summary = train(record["trainer"], run_dir)
    evaluation = evaluate(run_dir / "best.safetensors", run_dir / "model.json", target / "tokens" / "test.bin",
                          batch_size=config["evaluation"]["batch_size"])
    return summary, evaluation["test_loss_per_char"]


def draw_loss(config: dict, args: argparse.Namespace, size: str, seed: int, work: Path) -> tuple[float, dict]:
    """Test loss (nats per character) of a from-scratch run on draw ``seed``, and the draw's subset metadata."""
    train_bin, meta = subset(config, args.results, args.d_chars, seed, work)
    _, loss = train_and_test(config, args.results, run_spec(config, "scratch", size, seed, args.steps_cap),
                             train_bin, work / f"seed{seed}" / "run", threads=args.threads)
    return loss, meta


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results/default"),
                        help="the study's folder, results/<study>/ (default: the default study's)")
    parser.add_argument("--config", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--draws", type=int, default=4, help="K draws (seeds 0..K-1); at least 2")
    parser.add_argument("--d-chars", type=int, default=100_000, help="D, characters of each subset")
    parser.add_argument("--steps-cap", type=int, default=None, help="cap every run at this many steps (a check)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: training.threads)")
    args = parser.parse_args()
    if args.draws < 2:
        parser.error(f"--draws {args.draws}: a standard deviation needs at least 2 draws")
    return args


def main() -> None:
    args = parse_args()
    log_to_file(None)
    config = load_config(args.config)
    size = config["models"][-1]["name"]
    print(f"size {size}, D = {args.d_chars} characters, {args.draws} draws, steps cap {args.steps_cap or 'none'}")
    losses = []
    with tempfile.TemporaryDirectory(prefix="draw_variance-") as work:
        for seed in range(args.draws):
            loss, subset = draw_loss(config, args, size, seed, Path(work))
            losses.append(loss)
            print(f"seed {seed}: test loss {loss:.4f} nats/char ({subset['chunks']} chunks from "
                  f"{subset['source_documents']} documents)", flush=True)
    print(f"mean {statistics.mean(losses):.4f}, standard deviation {statistics.stdev(losses):.4f} nats/char")


if __name__ == "__main__":
    main()
