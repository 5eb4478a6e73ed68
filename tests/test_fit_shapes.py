"""The fitter on tables shaped the way other people's tables are: each gets an answer or one FitError line, through
the Python API and through ``transfer-scaling fit``, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
from test_fitting import N_VALUES, TRUE_LAW, synthetic_runs

from transfer_scaling import cli
from transfer_scaling.fit.study import fit_runs
from transfer_scaling.fit.table import FitError

CHINCHILLA = Path("/work/shared/data/chinchilla_svg_extracted.csv")
SCALE = 1e4
"""N and D multiplied by SCALE (1e9-1e11 parameters, up to 3e12 characters) keep alpha and beta and multiply k by
SCALE^(1 - alpha - beta)."""


def chinchilla_runs() -> pd.DataFrame:
    """Hoffmann et al.'s 245 from-scratch runs (scratch-only, 1 to 5 D per N), tokens D = C / (6 N) as the data."""
    if not CHINCHILLA.exists():
        pytest.skip(f"{CHINCHILLA} is not on this machine")
    table = pd.read_csv(CHINCHILLA)
    return pd.DataFrame({"kind": "scratch", "source": "", "n_params": table["Model Size"],
                         "data_chars": table["Training FLOP"] / (6 * table["Model Size"]), "test_loss": table["loss"]})


def one_d_per_size(runs: pd.DataFrame) -> pd.DataFrame:
    """Three seeds of one scratch D per N, as in a compute-optimal sweep."""
    scratch = runs[(runs["kind"] == "scratch") & (runs["data_chars"] == 1e6)]
    return pd.concat([scratch.assign(seed=seed) for seed in range(3)], ignore_index=True)


def alpha_of(fit: dict) -> float:
    """Appendix C's alpha. Scaling N, D or the loss leaves it unchanged, but for ``slope_tolerance``, which is in
    units of loss: on error rates (losses / 5) the flat parts of the scratch curves are flagged ill_conditioned."""
    return fit["sources"]["text"]["appendix_c"]["alpha"]


REFERENCE_ALPHA = alpha_of(fit_runs(synthetic_runs(finetune_seeds=1), n_bootstrap=0, joint_law=False))

SHAPES: dict[str, tuple[Callable[[], pd.DataFrame], Callable[[dict], bool] | str]] = {
    "single source": (lambda: synthetic_runs(finetune_seeds=1),
                      lambda fit: list(fit["sources"]) == ["text"] and abs(alpha_of(fit) - TRUE_LAW["alpha"]) < 0.03),
    "single size": (lambda: synthetic_runs().query("n_params == 1e6"),
                    lambda fit: "single N" in fit["sources"]["text"]["huber"]["reason"]
                    and fit["sources"]["text"]["held_out_prediction"]["status"].startswith("not_available: 0 smaller")),
    "one D per size, scratch only": (lambda: one_d_per_size(synthetic_runs()),
                                     lambda fit: fit["transfer_law_status"].startswith("nothing_to_fit")
                                     and len(fit["scratch"]) == len(N_VALUES)),
    "one D per size, fine-tuned": (
        lambda: pd.concat([one_d_per_size(synthetic_runs()), synthetic_runs().query("kind == 'finetune'")]),
        "N = 100000: scratch runs at 1 value of data_chars; at least 2 are needed"),
    "many seeds": (lambda: synthetic_runs(finetune_seeds=10, scratch_seeds=10, scratch_noise=0.005),
                   lambda fit: {p["n_seeds"] for p in fit["points"]} == {10}
                   and fit["bootstrap"]["scratch_cells_several_seeds"] == 10 * len(N_VALUES)
                   and abs(alpha_of(fit) - TRUE_LAW["alpha"]) < 0.03),
    "huge N and D": (lambda: synthetic_runs(finetune_seeds=1).assign(n_params=lambda r: r["n_params"] * SCALE,
                                                                    data_chars=lambda r: r["data_chars"] * SCALE),
                     lambda fit: abs(alpha_of(fit) - REFERENCE_ALPHA) < 1e-6),
    "error rates in [0, 1]": (lambda: synthetic_runs(finetune_seeds=1).assign(test_loss=lambda r: r["test_loss"] / 5),
                              lambda fit: abs(alpha_of(fit) - TRUE_LAW["alpha"]) < 0.03
                              and fit["sources"]["text"]["n_points_excluded"]["ill_conditioned"] > 0),
    "an error rate of 0": (lambda: synthetic_runs().assign(test_loss=lambda r: r["test_loss"].where(r.index != 5, 0.0)),
                           "row 5: column 'test_loss' is 0.0; a run with status ok needs a finite positive loss"),
    "extra columns": (lambda: synthetic_runs(finetune_seeds=1).assign(lr=3e-4, notes="first sweep", gpu="H100"),
                      lambda fit: abs(alpha_of(fit) - REFERENCE_ALPHA) < 1e-6),
    "no optional column": (lambda: synthetic_runs(finetune_seeds=1)[["kind", "source", "n_params", "data_chars",
                                                                    "test_loss"]],
                           lambda fit: abs(alpha_of(fit) - REFERENCE_ALPHA) < 1e-6),
    "Chinchilla's runs": (chinchilla_runs, lambda fit: fit["transfer_law_status"].startswith("nothing_to_fit")
                          and len(fit["scratch"]) == 142),
    "header only": (lambda: pd.DataFrame(columns=["kind", "source", "n_params", "data_chars", "test_loss"]),
                    lambda fit: fit["transfer_law_status"].startswith("nothing_to_fit") and fit["scratch"] == {}),
    "fine-tunes of a mistyped kind": (lambda: synthetic_runs().replace({"kind": {"finetune": "Finetune"}}),
                                      "kind 'Finetune' in rows 11, 12, 13"),
    "no data_chars column": (lambda: synthetic_runs().drop(columns="data_chars"),
                             "runs table lacks column(s) ['data_chars']"),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_python_api_answers_or_names_the_fault(shape):
    make, expected = SHAPES[shape]
    if isinstance(expected, str):
        with pytest.raises(FitError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            fit_runs(make(), n_bootstrap=20, joint_law=False)
    else:
        fit = fit_runs(make(), n_bootstrap=20, joint_law=False)
        json.dumps(fit, allow_nan=False)
        assert expected(fit)


@pytest.mark.parametrize("shape", SHAPES)
def test_console_fit_answers_or_prints_one_error_line(shape, tmp_path, capsys):
    make, expected = SHAPES[shape]
    make().to_csv(tmp_path / "runs.csv", index=False)
    argv = ["fit", str(tmp_path / "runs.csv"), "--out", str(tmp_path / "fit"), "--bootstrap", "20", "--no-joint-law"]
    if isinstance(expected, str):
        with pytest.raises(SystemExit) as stopped:
            cli.main(argv)
        error = capsys.readouterr().err
        assert stopped.value.code == 2 and error.count("\n") == 1 and error.startswith("error: ")
        assert expected in error
    else:
        cli.main(argv)
        assert set(json.loads(capsys.readouterr().out)["sources"]) <= {"text"}
        assert expected(json.loads((tmp_path / "fit" / "transfer_fit.json").read_text()))
