"""The ``transfer-scaling`` console script.

``fit``, ``joint-law``, ``advise`` and ``figures`` need only numpy, scipy, pandas and seaborn: heavy modules
(torch, deepspeed) are imported inside the subcommands that train, never at module level, so a fit of a runs
table answers in seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence

from .fit.options import FitOptions
from .fit.study import fit_file, load_draws, load_fit, to_jsonable
from .fit.table import FitError, read_runs
from .io import write_json
from .fit.jointlaw import fit_scratch_runs, law_summary
from .fit.scratch import ESTIMATORS
from .report.advice import advise


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``error: ...`` line and exit status 2, like every other error."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message}")


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _fit(args: argparse.Namespace) -> None:
    result = fit_file(args.runs, args.out, tolerance=args.tolerance, low_data_fraction=args.low_data_fraction,
                      n_bootstrap=args.bootstrap, seed=args.seed, slope_tolerance=args.slope_tolerance,
                      joint_law=args.joint_law, estimator=args.estimator)
    summary = {}
    for source, blocks in result["sources"].items():
        summary[source] = {method: _law_summary(blocks[method]) for method in ("appendix_c", "huber")}
        summary[source]["n_points_used"] = blocks["n_points_used"]
    print(json.dumps({"out": str(args.out), "sources": summary}, indent=2))


def _law_summary(block: dict) -> dict:
    if not block["identifiable"]:
        return {"not identifiable": block["reason"]}
    return {name: block[name] for name in ("k", "alpha", "beta", "k_ci", "alpha_ci", "beta_ci")}


def _joint_law(args: argparse.Namespace) -> None:
    """The joint law alone, for a table the transfer fit refuses (no fine-tuned runs, one D per N)."""
    from .report.figures import draw_joint_law

    law = to_jsonable(fit_scratch_runs(read_runs(args.runs), n_bootstrap=args.bootstrap, seed=args.seed))
    law["runs_csv"] = str(args.runs)
    out = Path(args.out)
    write_json(out / "joint_law.json", law)
    figures = draw_joint_law(law, out / "joint_law")
    print(json.dumps({"out": str(out), "figures": [str(path) for path in figures], **law_summary(law)}, indent=2))


def _advise(args: argparse.Namespace) -> None:
    """The advice with the interval of every quantity over the bootstrap draws written beside the fit."""
    print(json.dumps(advise(load_fit(args.fit), args.source, args.n_params, args.d_f_chars, load_draws(args.fit)),
                     indent=2))


def _figures(args: argparse.Namespace) -> None:
    from .report.figures import make_figures

    for path in make_figures(args.runs, args.fit, args.out):
        print(path)


DEFAULTS = FitOptions()
"""The fit's defaults, which ``FitOptions`` reads from the config schema."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="transfer-scaling", description="Measure the scaling laws for transfer.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    fit = commands.add_parser("fit", help="fit D_T = k D_F^alpha N^beta to a runs table")
    fit.add_argument("runs", help="runs table (CSV)")
    fit.add_argument("--out", required=True, help="directory for transfer_fit.json, points.csv, bootstrap.csv")
    fit.add_argument("--tolerance", type=float, default=DEFAULTS.tolerance,
                     help="D(N): L_N(D) within this of L_inf (relative)")
    fit.add_argument("--low-data-fraction", type=float, default=DEFAULTS.low_data_fraction,
                     help="fit only D_F <= this * D(N)")
    _add_bootstrap_options(fit)
    fit.add_argument("--slope-tolerance", type=float, default=DEFAULTS.slope_tolerance,
                     help="flag D_E where the scratch curve is flatter than this (nats per e-fold of D)")
    fit.add_argument("--joint-law", action=argparse.BooleanOptionalAction, default=DEFAULTS.joint_law,
                     help="the joint L(N, D) diagnostic")
    fit.add_argument("--estimator", choices=ESTIMATORS, default=DEFAULTS.estimator,
                     help="how D_E is read off the same-N scratch curve: interpolation through its points (the "
                          "paper's), or the inverse of its fitted L_N (scratch_law) or of the joint law (joint_law)")
    fit.set_defaults(handler=_fit)

    joint = commands.add_parser("joint-law", help="fit L(N, D) = E + A/N^alpha + B/D^beta to the scratch runs alone")
    joint.add_argument("runs", help="runs table (CSV) with kind, n_params, data_chars, test_loss; kind 'scratch' rows")
    joint.add_argument("--out", required=True, help="directory for joint_law.json and joint_law.png/.svg")
    _add_bootstrap_options(joint)
    joint.set_defaults(handler=_joint_law)

    advice = commands.add_parser("advise", help="what 10x more data buys against 10x more parameters, each quantity "
                                 "with its bootstrap interval (from bootstrap.csv beside the fit), or why the study "
                                 "does not resolve it")
    advice.add_argument("fit", help="transfer_fit.json (or the directory holding it)")
    advice.add_argument("--source", required=True)
    advice.add_argument("--n-params", type=float, required=True, help="non-embedding parameters N")
    advice.add_argument("--d-f-chars", type=float, required=True, help="fine-tuning data D_F in characters")
    advice.set_defaults(handler=_advise)

    figures = commands.add_parser("figures", help="draw the figures of a fit (PNG and SVG)")
    figures.add_argument("runs", help="runs table (CSV)")
    figures.add_argument("--fit", required=True, help="directory written by `fit`")
    figures.add_argument("--out", required=True, help="directory for the figures")
    figures.set_defaults(handler=_figures)

    train = commands.add_parser("train", help="one resumable training run from a spec JSON (as the workflow runs it)")
    train.add_argument("--spec", required=True, help="a run record (spec.json in any run directory) or a bare trainer spec (JSON)")
    train.add_argument("--out", required=True, help="run directory (resumes from its checkpoint if one is there)")
    train.set_defaults(handler=_train)
    return parser


def _add_bootstrap_options(parser: argparse.ArgumentParser) -> None:
    """Resamples and seed of the intervals, for both the transfer fit and the joint law, at the fit's defaults."""
    parser.add_argument("--bootstrap", type=int, default=DEFAULTS.n_bootstrap,
                        help="bootstrap resamples for the intervals")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)


def _train(args: argparse.Namespace) -> None:
    from .train.run import main as train_main  # torch and deepspeed load only for this subcommand

    raise SystemExit(train_main(["--spec", args.spec, "--out", args.out]))


HANDLED_ERRORS: tuple[type[Exception], ...] = (FitError, ValueError, OSError)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], None] = args.handler
    try:
        handler(args)
    except HANDLED_ERRORS as error:
        fail(str(error))


if __name__ == "__main__":
    main()
