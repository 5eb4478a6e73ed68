"""Which fine-tuning learning rate: fine-tune one pretrained size at a few D_F over a few peak learning rates.

Issue 10 asked whether the pretraining learning rate (2e-3) suits fine-tuning, since small-D_F fine-tunes
peaked after 20-100 steps. This prints, for each (D_F, lr), the best validation loss (what a user would choose
on), the test loss (nats per character) and the steps, so the choice in config.yaml is a measured one.

Needs the study's pretraining of ``--source``/``--size`` and the target corpus built, e.g.

    bash scripts/run.sh results/default/runs/pretrain/text_code/m/summary.json \\
        results/default/corpora/python/tokens/test.bin
    .venv/bin/python benchmarks/finetune_lr.py --source text_code --size m --d-f 10000 100000 \\
        --lr 0.002 0.001 0.0005
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from draw_variance import REPO, load_config, run_spec, subset, train_and_test
from transfer_scaling.logs import log_to_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results/default"),
                        help="the study's folder, results/<study>/ (default: the default study's)")
    parser.add_argument("--config", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--source", default="text_code")
    parser.add_argument("--size", default="m")
    parser.add_argument("--d-f", type=int, nargs="+", default=[10_000, 100_000], help="D_F, characters")
    parser.add_argument("--lr", type=float, nargs="+", default=[0.002, 0.001, 0.0005], help="peak learning rates")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    log_to_file(None)
    config = load_config(args.config)
    weights = args.results / "runs" / "pretrain" / args.source / args.size / "best.safetensors"
    print(f"fine-tuning {args.size} from {weights}; seed {args.seed}")
    print("d_f_chars  lr        best_val_loss  test_loss  steps  best_step")
    with tempfile.TemporaryDirectory(prefix="finetune_lr-") as work:
        for d_f_chars in args.d_f:
            train_bin, _ = subset(config, args.results, d_f_chars, args.seed, Path(work))
            for lr in args.lr:
                spec = run_spec(config, "finetune", args.size, args.seed, lr=lr)
                summary, test_loss = train_and_test(config, args.results, spec, train_bin,
                                                    Path(work) / f"d{d_f_chars}_lr{lr}", init_from=weights)
                print(f"{d_f_chars:<10} {lr:<9g} {summary['best_val_loss']:<14.4f} {test_loss:<10.4f} "
                      f"{summary['steps']:<6} {summary['best_step']}", flush=True)


if __name__ == "__main__":
    main()
