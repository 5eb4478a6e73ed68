"""The bootstrap of the transfer fit: resampled tables drawn from a world in which the fitted laws hold.

Every point (a cell: kind, source, N, D) keeps its place and its number of seeds; only its noise is redrawn, from
the seeds' deviations where points have several, else from the residuals of the fitted law. Each resample
rebuilds the scratch curves (``ScratchCurves``, as the point estimate does), D_E, D_T, statuses and both fits, so
the error that one scratch curve shares with all the points read off it is counted.

Only numpy and pandas: fitting a runs table must never import torch or deepspeed.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from .scratch import SCRATCH_LAW_PARAMETERS, ScratchCurves, fit_joint_laws, read_off, scratch_law_loss
from .transferlaw import PARAMETERS, PointResamples, exp_or_inf, transferred_data

if TYPE_CHECKING:
    from .options import FitOptions


def seed_deviations(run_cell: np.ndarray, run_loss: np.ndarray) -> np.ndarray:
    """ln L of each seed minus the mean ln L of its point, for the points with n > 1 seeds, scaled by
    sqrt(n / (n - 1)) so that their spread estimates that of a single seed."""
    n_seeds = np.bincount(run_cell)
    log_loss = np.log(run_loss)
    centred = log_loss - (np.bincount(run_cell, weights=log_loss) / np.maximum(n_seeds, 1))[run_cell]
    several = n_seeds[run_cell] > 1
    return (centred * np.sqrt(n_seeds / np.maximum(n_seeds - 1, 1))[run_cell])[several]


def noise_pool(deviations: np.ndarray, residuals: Callable[[], np.ndarray]) -> tuple[str, np.ndarray]:
    """The log-loss noise that one kind of point is redrawn with: its seeds' deviations where some point has
    several seeds, else the residuals of the fitted law (``residuals()``, as one seed has no spread of its own)."""
    if deviations.size:
        return "seeds", deviations
    pool = residuals()
    return ("residuals" if pool.size else "none"), pool


def redraw_cells(rng: np.random.Generator, centre: np.ndarray, n_seeds: np.ndarray, pool: np.ndarray,
                 n_resamples: int) -> np.ndarray:
    """(resamples, cells) losses: each cell (a point: an N and a D) is ``centre``, its loss in the bootstrap
    world, times the mean of e^d over its n seeds, each d drawn from ``pool`` (``noise_pool``).

    The pool gathers the noise of all points of a kind, so that a point's spread does not rest on its own two or
    three seeds: over 100 synthetic tables of 3 seeds, redrawing each point's own seeds (variances of 2 degrees of
    freedom) covered alpha and beta in 88-92% of them, the pool in 91-93%.
    """
    slot_cell = np.repeat(np.arange(centre.size), n_seeds)
    shape = (n_resamples, slot_cell.size)
    noise = np.exp(rng.choice(pool, shape)) if pool.size else np.ones(shape)
    return centre * (noise @ np.eye(centre.size)[slot_cell]) / np.maximum(n_seeds, 1)


def _dof_scale(n_points: int, n_fitted: int) -> float:
    """sqrt(n / (n - p)): the residuals of p fitted parameters on n points understate the noise by that factor."""
    return math.sqrt(n_points / (n_points - n_fitted)) if n_points > n_fitted else 1.0


def _sd(pool: np.ndarray) -> float | None:
    return float(np.sqrt(np.mean(pool**2))) if pool.size else None


class Bootstrap:
    """Resampled tables drawn from a world in which the fitted laws hold, for the intervals of k, alpha and beta.

    Each point (a cell: kind, source, N, D) keeps its place and its number of seeds; only their noise is redrawn
    (``redraw_cells``). In the world, a scratch curve follows its fitted L_N, and a fitted fine-tuned point lies at
    L_N(D_F + D_T) of the law being bootstrapped. The noise is the seeds' where points have several; with one
    seed, the scratch points' residuals against L_N, pooled over N, and the fitted fine-tuned points' against the
    loss that law predicts on the measured scratch curve (these also hold some of the scratch noise, so with one
    seed the intervals err wide). Drawing the runs of an N instead left out a third of a one-seed D grid per
    resample, and beta's interval came out 1.5-2.2x as wide as the spread of its estimates over replicate tables.
    The resampled scratch curves are drawn once and shared by every source and both methods; every resample
    rebuilds D_E, D_T, statuses and the fit as the point estimate does, by the fit's estimator (``joint``, the joint
    law of the measured curves, starts the joint law refitted to every resample of every size).
    """

    def __init__(self, runs: pd.DataFrame, curves: dict[float, ScratchCurves], scratch: dict[float, dict],
                 points: pd.DataFrame, options: FitOptions, joint: np.ndarray | None = None):
        self.rng = np.random.default_rng(options.seed)
        self.curves, self.scratch, self.options = curves, scratch, options
        ok = runs[runs["status"] == "ok"]
        self.finetune = ok[ok["kind"] == "finetune"]
        scratch_runs = {n: group for n, group in ok[ok["kind"] == "scratch"].groupby("n_params")}
        self.seeds = {n: np.bincount(np.searchsorted(curve.d_chars, scratch_runs[n]["data_chars"].to_numpy()),
                                     minlength=curve.d_chars.size) for n, curve in curves.items()}
        deviations = [seed_deviations(np.searchsorted(curves[n].d_chars, group["data_chars"].to_numpy()),
                                      group["test_loss"].to_numpy()) for n, group in scratch_runs.items()]
        noise, pool = noise_pool(np.concatenate([np.zeros(0), *deviations]), self._scratch_residuals)
        read_off_sizes = sorted(points.loc[points["status"] != "failed", "n_params"].unique())
        self.resampled = {n: self._resample_curve(n, pool)
                          for n in (sorted(curves) if joint is not None else read_off_sizes)}
        if joint is not None:
            fit_joint_laws(self.resampled, start=joint[0])
        counts = np.concatenate([np.zeros(0, int), *self.seeds.values()])
        self.summary = {"unit": "points: their seeds' noise redrawn around the fitted laws (seed deviations, or "
                                "residuals of the fitted law where points have one seed)",
                        "n_resamples": options.n_bootstrap, "scratch_cells_several_seeds": int((counts > 1).sum()),
                        "scratch_cells_one_seed": int((counts == 1).sum()), "scratch_noise": noise,
                        "scratch_noise_sd": _sd(pool)}

    def world_loss(self, n_params: float, d_chars: Any) -> np.ndarray:
        """The loss at N and D (an array) in the bootstrap world: the fitted L_N, else the measured curve (NaN
        outside its D)."""
        d_chars = np.atleast_1d(np.asarray(d_chars, float))
        if self.scratch[n_params]["law"]["ok"]:
            return scratch_law_loss(self.scratch[n_params]["law"], d_chars)
        return self.curves[n_params].loss_at(d_chars)[0]

    def _scratch_residuals(self) -> np.ndarray:
        """ln L - ln L_N(D) of the one-seed scratch points, pooled over the N with a fitted L_N."""
        pooled, n_points, n_fitted = [], 0, 0
        for n_params, summary in self.scratch.items():
            if summary["law"]["ok"]:
                curve = self.curves[n_params]
                pooled.append(np.log(curve.test_loss[0] / self.world_loss(n_params, curve.d_chars)))
                n_points, n_fitted = n_points + curve.d_chars.size, n_fitted + SCRATCH_LAW_PARAMETERS
        return np.concatenate([np.zeros(0), *pooled]) * _dof_scale(n_points, n_fitted)

    def _resample_curve(self, n_params: float, pool: np.ndarray) -> ScratchCurves:
        """The scratch curve of N in every resample; a curve without L_N keeps its measured points as centres
        (a conservative world: they carry their own noise and a drawn one)."""
        curve = self.curves[n_params]
        has_law = self.scratch[n_params]["law"]["ok"]
        centre = self.world_loss(n_params, curve.d_chars) if has_law else curve.test_loss[0]
        test_loss = redraw_cells(self.rng, centre, self.seeds[n_params], pool, self.options.n_bootstrap)
        return ScratchCurves(n_params, curve.d_chars, test_loss, self.options.tolerance, self.options.low_data_fraction,
                             self.options.estimator)

    def source(self, source: str, points: pd.DataFrame,
               rng: np.random.Generator | None = None) -> Callable[[np.ndarray], PointResamples]:
        """The resampler of one source's fine-tuned points (all of them, or a subset such as the sizes a held-out
        prediction is fitted on), for ``fit_transfer_law``; ``rng`` draws its noise where the draws must not shift
        the stream that the other sources' intervals come from."""
        cells = points[points["status"] != "failed"].reset_index(drop=True)
        runs = self.finetune[self.finetune["source"] == source]
        keys = cells[["n_params", "d_f_chars"]].rename(columns={"d_f_chars": "data_chars"}).reset_index()
        matched = runs[["n_params", "data_chars", "test_loss"]].merge(keys, how="inner")
        deviations = seed_deviations(matched["index"].to_numpy(int), matched["test_loss"].to_numpy())
        return partial(self._resample_source, cells, deviations, rng or self.rng)

    def held_out(self, source: str) -> Callable[[pd.DataFrame], Callable[[np.ndarray], PointResamples]]:
        """The resampler of a subset of a source's points (the smaller sizes of a held-out prediction), drawn from a
        stream of its own so that the main fits' intervals stay those of a fit without it."""
        return partial(self.source, source, rng=np.random.default_rng([self.options.seed, 1]))

    def _resample_source(self, cells: pd.DataFrame, deviations: np.ndarray, rng: np.random.Generator,
                         estimate: np.ndarray) -> PointResamples:
        """Redraw the fine-tuned cells around the law ``estimate`` (ln k, alpha, beta) and read each resampled
        point off its N's resampled scratch curve."""
        n_params, d_f_chars = cells["n_params"].to_numpy(float), cells["d_f_chars"].to_numpy(float)
        observed = cells["test_loss"].to_numpy(float)
        k, alpha, beta = exp_or_inf(estimate[0]), estimate[1], estimate[2]
        d_effective = d_f_chars + transferred_data(k, alpha, beta, n_params, d_f_chars)
        world = np.array([self.world_loss(n, d)[0] for n, d in zip(n_params, d_effective)])
        fitted = (cells["status"] == "ok").to_numpy()

        def residuals() -> np.ndarray:
            measured = np.array([self.curves[n].estimated_loss_at(d)[0, 0] for n, d in zip(n_params, d_effective)])
            scale = _dof_scale(int(fitted.sum()), len(PARAMETERS))
            return np.log(observed / measured)[fitted & np.isfinite(measured)] * scale

        noise, pool = noise_pool(deviations, residuals)
        centre = np.where(fitted & np.isfinite(world), world, observed)
        test_loss = redraw_cells(rng, centre, cells["n_seeds"].to_numpy(), pool, self.options.n_bootstrap)
        d_transferred, in_fit = np.empty(test_loss.shape), np.empty(test_loss.shape, bool)
        for n, columns in cells.groupby("n_params").indices.items():
            _, _, d_transferred[:, columns], status = read_off(self.resampled[n], d_f_chars[columns],
                                                               test_loss[:, columns], self.options.slope_tolerance)
            in_fit[:, columns] = status == "ok"
        return PointResamples(n_params, d_f_chars, in_fit.astype(float), np.log(np.where(in_fit, d_transferred, 1.0)),
                              noise, _sd(pool))
