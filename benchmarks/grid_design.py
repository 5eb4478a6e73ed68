"""Choose the default grid on paper first: synthetic studies through the fitter, before any CPU hour.

A synthetic world close to what the default study measures: from-scratch losses L(N, D) = E + A / N^a + B / D^b,
fine-tuned losses at D_E = D_F + k D_F^alpha N^beta read through the same law, and Gaussian noise of ``--noise``
(relative) on every run's loss. For each candidate design (sizes, D_F, scratch D, seeds) this draws ``--replicates``
tables, fits each with ``transfer_scaling.fit.study.fit_runs`` and prints the spread (standard deviation) of the
fitted alpha and beta, the median width of their 95% intervals, how often those intervals cover the true values,
and how many replicates gave a fit at all.

    .venv/bin/python benchmarks/grid_design.py --replicates 40 --noise 0.005 0.01
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pandas as pd

from transfer_scaling.fit.study import fit_runs

E, A, EXP_N, B, EXP_D = 0.8, 20.0, 0.3, 20.0, 0.3
TRUE = {"k": 24.0, "alpha": 0.15, "beta": 0.5}


def n_params(n_layer: int, d_model: int) -> int:
    return 12 * n_layer * d_model**2 + 13 * n_layer * d_model + 2 * d_model


SIZES = {"d16": n_params(2, 16), "s": n_params(2, 32), "m": n_params(2, 64), "l": n_params(2, 112)}
D_F_FULL = [3e3, 1e4, 3e4, 1e5, 3e5]
SCRATCH = [3e3, 1e4, 3e4, 1e5, 3e5, 1e6]
DESIGNS = {
    "current: s m l, D_F to 3e5, 1 seed": (["s", "m", "l"], D_F_FULL, SCRATCH, 1),
    "s m l, D_F to 1e5, 1 seed": (["s", "m", "l"], D_F_FULL[:4], SCRATCH, 1),
    "d16 s m l, D_F to 1e5, 1 seed": (["d16", "s", "m", "l"], D_F_FULL[:4], SCRATCH, 1),
    "s m l, D_F to 1e5, 2 seeds": (["s", "m", "l"], D_F_FULL[:4], SCRATCH, 2),
}


def scratch_loss(n: float, d: float) -> float:
    return E + A / n**EXP_N + B / d**EXP_D


def table(design: tuple, noise: float, rng: np.random.Generator) -> pd.DataFrame:
    sizes, d_f, scratch, seeds = design
    rows = []
    for seed in range(seeds):
        for size in sizes:
            n = SIZES[size]
            for d in scratch:
                rows.append(("scratch", "", n, d, seed, scratch_loss(n, d)))
            for d in d_f:
                d_effective = d + TRUE["k"] * d**TRUE["alpha"] * n**TRUE["beta"]
                rows.append(("finetune", "src", n, d, seed, scratch_loss(n, d_effective)))
    runs = pd.DataFrame(rows, columns=["kind", "source", "n_params", "data_chars", "seed", "test_loss"])
    runs["test_loss"] *= 1 + noise * rng.standard_normal(len(runs))
    return runs


def summarize(fits: list[dict | None]) -> str:
    ok = [fit for fit in fits if fit is not None]
    if not ok:
        return "no fit"
    out = [f"{len(ok)}/{len(fits)} fitted"]
    for name in ("alpha", "beta"):
        values = np.array([fit[name] for fit in ok])
        intervals = np.array([fit[f"{name}_ci"] for fit in ok], dtype=float)
        covered = np.mean((intervals[:, 0] <= TRUE[name]) & (TRUE[name] <= intervals[:, 1]))
        out.append(f"{name} sd {values.std():.3f} bias {values.mean() - TRUE[name]:+.3f} "
                   f"CI width {np.median(intervals[:, 1] - intervals[:, 0]):.3f} coverage {covered:.0%}")
    out.append(f"R^2 {np.median([fit['r_squared'] for fit in ok]):.2f}")
    out.append(f"points used {np.median([fit['n_points_used'] for fit in ok]):.0f}")
    return "; ".join(out)


def one_fit(runs: pd.DataFrame, n_bootstrap: int) -> dict | None:
    """The Appendix C fit of the synthetic source, or None where the fitter found it not identifiable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = fit_runs(runs, n_bootstrap=n_bootstrap, joint_law=False)["sources"]["src"]
    block = source["appendix_c"]
    return {**block, "n_points_used": source["n_points_used"]} if block.get("identifiable") else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicates", type=int, default=40)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.005, 0.01])
    parser.add_argument("--bootstrap", type=int, default=200)
    args = parser.parse_args()
    for noise in args.noise:
        for name, design in DESIGNS.items():
            rng = np.random.default_rng(0)
            fits = [one_fit(table(design, noise, rng), args.bootstrap) for _ in range(args.replicates)]
            print(f"noise {noise:.1%} | {name}: {summarize(fits)}", flush=True)


if __name__ == "__main__":
    main()
