"""Which estimator of the effective data D_E gives the tightest honest interval on alpha and beta (issue 17, item 3)?

D_E of a fine-tuned point is the data a from-scratch model of the same N needs to reach its loss. The fit reads it
off the scratch points of that N (``transfer_scaling.fit.scratch.ESTIMATORS``): by monotone interpolation (the paper's
way, the default), by inverting the fitted L_N(D) = L_inf + A / D^a of that N (``scratch_law``), or by inverting the
slice at N of one joint law L(N, D) = E + A / N^alpha + B / D^beta fitted to every size (``joint_law``; refused
where that law is degenerate). This draws synthetic runs tables of the default design (sizes xs, s, m, l; D_F 3e3,
1e4, 3e4, 1e5; scratch D 3e3 ... 1e6; one seed; relative noise ``--noise`` on every run's loss) from a known law
D_T = k D_F^alpha N^beta, fits each with every estimator through ``fit_runs`` (its bootstrap included) and prints,
per world, noise and estimator: how many tables gave a fit, the points fitted, the rms error of ln D_T at the fitted
points, and for alpha and beta the bias, spread, median 95% interval width and coverage of the true value.

Two worlds for the scratch curves, so that no estimator is judged only where its own form is the truth:
- ``power_law``: L(N, D) = 0.8 + 20 / N^0.3 + 20 / D^0.3 (as ``grid_design.py``); the joint law is exact, each L_N
  too.
- ``measured_shape``: each size's curve is the monotone PCHIP (in ln D) through the default study's measured scratch
  losses (README, the 4 sizes x 6 D): a plateau, then a steep fall, then flattening; no power law is exact, and the
  joint law is usually degenerate there (then ``joint_law`` is counted as no fit).

``--runs`` also fits real runs tables with each estimator (estimates and interval widths only: the truth is
unknown). The JSON (``--out``) holds every table's estimates and intervals and the summary rows.

    .venv/bin/python benchmarks/estimator_choice.py --out results/default/benchmarks/estimator_choice.json
    .venv/bin/python benchmarks/estimator_choice.py --tables 20 --estimators interpolation scratch_law  # ~1 min

The full default (100 tables x 2 worlds x 2 noise levels x 3 estimators, 200 resamples each) took 24 minutes
(1,413 s) on one core of a busy 2-core machine, most of it the joint law's start grid (about 3 s a table); without
``joint_law``, about a quarter of that. ``--seeds 2`` draws two seeds per run, whose deviations then set the
bootstrap's noise (with one seed it is the residuals of the fitted L_N, which on the measured-shape curves are
mostly the law's misfit: 5% in ln L against the 0.5% drawn).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.interpolate import PchipInterpolator

from transfer_scaling.fit.study import fit_runs
from transfer_scaling.fit.table import FitError
from transfer_scaling.fit.scratch import ESTIMATORS

SIZES = {"xs": 6592, "s": 25472, "m": 100096, "l": 304192}
"""The default config's sizes (non-embedding parameters)."""
D_F = (3e3, 1e4, 3e4, 1e5)
SCRATCH_D = (3e3, 1e4, 3e4, 1e5, 3e5, 1e6)
TRUE = {"k": 100.0, "alpha": 0.1, "beta": 0.38}
"""Close to the paper's text+code -> Python (alpha 0.096, beta 0.38), with k putting every D_E inside the scratch D
(D_T / D_F from 0.4 to 3 over the grid)."""
MEASURED_SCRATCH = {
    "xs": (2.925, 2.687, 2.479, 2.137, 2.054, 2.015),
    "s": (2.857, 2.615, 2.314, 1.860, 1.664, 1.609),
    "m": (2.858, 2.584, 2.341, 1.815, 1.542, 1.371),
    "l": (2.881, 2.607, 2.293, 1.793, 1.505, 1.227),
}
"""The default study's from-scratch test losses at SCRATCH_D (README, one seed), each size's curve monotone."""


def power_law_world(n_params: float, d_chars: float) -> float:
    return 0.8 + 20.0 / n_params**0.3 + 20.0 / d_chars**0.3


MEASURED_CURVES = {SIZES[size]: PchipInterpolator(np.log(SCRATCH_D), losses) for size, losses in
                   MEASURED_SCRATCH.items()}


def measured_shape_world(n_params: float, d_chars: float) -> float:
    return float(MEASURED_CURVES[n_params](np.log(d_chars)))


WORLDS = {"power_law": power_law_world, "measured_shape": measured_shape_world}


def true_d_transferred(n_params: float, d_f_chars: float) -> float:
    return TRUE["k"] * d_f_chars ** TRUE["alpha"] * n_params ** TRUE["beta"]


def table(world, noise: float, rng: np.random.Generator, seeds: int = 1) -> pd.DataFrame:
    """One runs table of the default design, every run's loss times (1 + noise * a standard normal)."""
    rows = []
    for seed in range(seeds):
        for n_params in SIZES.values():
            rows += [("scratch", "", n_params, d, seed, world(n_params, d)) for d in SCRATCH_D]
            rows += [("finetune", "src", n_params, d, seed, world(n_params, d + true_d_transferred(n_params, d)))
                     for d in D_F]
    runs = pd.DataFrame(rows, columns=["kind", "source", "n_params", "data_chars", "seed", "test_loss"])
    runs["test_loss"] *= 1 + noise * rng.standard_normal(len(runs))
    return runs


def one_fit(runs: pd.DataFrame, estimator: str, n_bootstrap: int, seed: int, source: str = "src") -> dict:
    """The Appendix C fit of a source (alpha, beta, their intervals, R^2, points used, ln D_T error at the fitted
    points against the truth), or why there is none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = fit_runs(runs, n_bootstrap=n_bootstrap, seed=seed, joint_law=False, estimator=estimator)
    except FitError as error:
        return {"fitted": False, "reason": str(error)}
    block = fit["sources"][source]["appendix_c"]
    if not block.get("identifiable"):
        return {"fitted": False, "reason": block.get("reason")}
    used = [point for point in fit["points"] if point["source"] == source and point["status"] == "ok"]
    errors = [math.log(point["d_transferred"] / true_d_transferred(point["n_params"], point["d_f_chars"]))
              for point in used] if source == "src" else []
    return {"fitted": True, "points_used": len(used), "r_squared": block["r_squared"],
            "ln_d_transferred_errors": errors,
            **{name: block[name] for name in ("alpha", "beta", "alpha_ci", "beta_ci")}}


def summarize(fits: list[dict]) -> dict:
    """Fitted share, points used, rms ln D_T error, and per parameter bias, spread, median interval width and
    coverage of the truth (over the tables that gave a fit)."""
    ok = [fit for fit in fits if fit["fitted"]]
    row = {"tables": len(fits), "fitted": len(ok)}
    if not ok:
        return row
    errors = np.concatenate([fit["ln_d_transferred_errors"] for fit in ok])
    row.update({"points_used": float(np.median([fit["points_used"] for fit in ok])),
                "rms_ln_d_transferred_error": float(np.sqrt(np.mean(errors**2))) if errors.size else None})
    for name in ("alpha", "beta"):
        values = np.array([fit[name] for fit in ok])
        low, high = np.array([fit[f"{name}_ci"] for fit in ok], dtype=float).T
        row.update({f"{name}_bias": float(values.mean() - TRUE[name]),
                    f"{name}_sd": float(values.std(ddof=1)) if len(values) > 1 else None,
                    f"{name}_width": float(np.median(high - low)),
                    f"{name}_coverage": float(np.mean((low <= TRUE[name]) & (TRUE[name] <= high)))})
    return row


HEADER = (f"{'world':<15} {'noise':>5} {'estimator':<14} {'fit':>7} {'pts':>4} {'rmsLnDT':>7} | "
          f"{'alpha bias':>10} {'sd':>6} {'width':>6} {'cover':>5} | {'beta bias':>9} {'sd':>6} {'width':>6} "
          f"{'cover':>5}")


def line(world: str, noise: float, estimator: str, row: dict) -> str:
    if not row.get("fitted"):
        return f"{world:<15} {noise:>5.1%} {estimator:<14} {row['fitted']:>3}/{row['tables']:<3} no fit"
    rms = row["rms_ln_d_transferred_error"]
    return (f"{world:<15} {noise:>5.1%} {estimator:<14} {row['fitted']:>3}/{row['tables']:<3} "
            f"{row['points_used']:>4.0f} {rms if rms is not None else math.nan:>7.3f} | "
            f"{row['alpha_bias']:>+10.3f} {row['alpha_sd'] or math.nan:>6.3f} {row['alpha_width']:>6.3f} "
            f"{row['alpha_coverage']:>5.0%} | {row['beta_bias']:>+9.3f} {row['beta_sd'] or math.nan:>6.3f} "
            f"{row['beta_width']:>6.3f} {row['beta_coverage']:>5.0%}")


def real_tables(paths: list[str], estimators: list[str], n_bootstrap: int) -> list[dict]:
    """Each source of each real runs table, fitted with each estimator: estimates and interval widths."""
    found = []
    for path in paths:
        runs = pd.read_csv(path)
        sources = sorted(runs.loc[runs["kind"] == "finetune", "source"].dropna().unique())
        for estimator in estimators:
            for source in sources:
                fit = one_fit(runs, estimator, n_bootstrap, 0, source)
                found.append({"runs": path, "source": source, "estimator": estimator, **fit})
                if fit["fitted"]:
                    print(f"{path} {source:<10} {estimator:<14} points {fit['points_used']:>2}  "
                          f"alpha {fit['alpha']:+.3f} [{fit['alpha_ci'][0]:+.3f}, {fit['alpha_ci'][1]:+.3f}]  "
                          f"beta {fit['beta']:+.3f} [{fit['beta_ci'][0]:+.3f}, {fit['beta_ci'][1]:+.3f}]  "
                          f"R^2 {fit['r_squared']:.2f}", flush=True)
                else:
                    print(f"{path} {source:<10} {estimator:<14} no fit: {fit['reason']}", flush=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=int, default=100, help="synthetic tables per world and noise level")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.005, 0.01], help="relative noise per run")
    parser.add_argument("--worlds", nargs="+", default=list(WORLDS), choices=list(WORLDS))
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=list(ESTIMATORS))
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per fit")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per run (the default study has 1)")
    parser.add_argument("--runs", nargs="*", default=[], help="real runs tables to fit with each estimator too")
    parser.add_argument("--out", type=Path, help="JSON with every fit and the summary rows")
    args = parser.parse_args()
    began = time.perf_counter()
    summary, tables = [], []
    print(HEADER, flush=True)
    for world in args.worlds:
        for noise in args.noise:
            rng = np.random.default_rng(0)
            drawn = [table(WORLDS[world], noise, rng, args.seeds) for _ in range(args.tables)]
            for estimator in args.estimators:
                fits = [one_fit(runs, estimator, args.bootstrap, index) for index, runs in enumerate(drawn)]
                row = {"world": world, "noise": noise, "estimator": estimator, **summarize(fits)}
                summary.append(row)
                tables.append({"world": world, "noise": noise, "estimator": estimator, "fits": fits})
                print(line(world, noise, estimator, row), flush=True)
    real = real_tables(args.runs, args.estimators, args.bootstrap)
    seconds = time.perf_counter() - began
    print(f"{seconds:.0f} s", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"true_law": TRUE, "design": {"sizes": SIZES, "d_f_chars": D_F,
                                                                     "scratch_d_chars": SCRATCH_D, "seeds": args.seeds},
                                        "options": vars(args) | {"out": str(args.out)}, "seconds": seconds,
                                        "summary": summary, "real": real, "tables": tables}, indent=1))


if __name__ == "__main__":
    main()
