"""The latent ODE on spirals: for a few evaluation spirals, the noisy observations, the true
(noise-free) spiral, the model's reconstruction over the observation times and its
extrapolation beyond them (the latent ODE solved further, then decoded)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from odespec.compile.ode_block import ODEBlock
from odespec.layers.torch_modules import GaussianSample
from odespec.train.plot.render import figure, save_png
from odespec.train.plot.trained import TrainedRun

__all__ = ["latent_block_index", "plot_latent"]

#: extrapolate to this many times the observed span
EXTRAPOLATE = 2.5


def latent_block_index(run: TrainedRun) -> Optional[int]:
    """Index of the trajectory ODE block of a spirals latent ODE (a gaussian layer before it)."""
    ts = run.spec.train
    if ts is None or ts.data.source != "spirals":
        return None
    items = list(run.model)
    for i, m in enumerate(items):
        if isinstance(m, ODEBlock) and m.trajectory:
            return i if any(isinstance(e, GaussianSample) for e in items[:i]) else None
    return None


def plot_latent(run: TrainedRun, index: int, path: Path, count: int = 4) -> Path:
    """``count`` evaluation spirals in a row of panels."""
    from odespec.solvers import solve
    from odespec.train.generators import spiral_truth

    ts = run.spec.train
    assert ts is not None
    o = ts.data.options
    evaluated_apart = o["eval_count"] > 0
    n = min(count, len(run.eval_x))
    truth = spiral_truth(o["eval_count"] if evaluated_apart else o["count"], points=o["points"],
                         observed=o["observed"], stop=o["stop"], a=o["a"], b=o["b"],
                         seed=[ts.seed, 1 if evaluated_apart else 0])[:n]
    items = list(run.model)
    block = items[index]
    assert isinstance(block, ODEBlock)  # see latent_block_index
    dt = o["stop"] / (o["points"] - 1)
    t_obs = np.asarray(block.spec.t)
    steps = int(round(EXTRAPOLATE * (o["observed"] - 1)))
    t_ext = t_obs[0] + dt * np.arange(steps + 1)
    x = torch.as_tensor(np.asarray(run.eval_x[:n]), dtype=run.dtype)
    s = block.spec.solver
    with torch.no_grad():
        z0 = x
        for m in items[:index]:
            z0 = m(z0)  # the encoder; eval mode: z0 is the mean of q(z0)
        if block.augmenter is not None:
            z0 = block.augmenter(z0)
        sol = solve(block.dynamics, z0, torch.as_tensor(t_ext, dtype=run.dtype), method=s.method, rtol=s.rtol,
                    atol=s.atol, options=s.integration_options(), return_on_failure=True)
        xs = sol.ys.movedim(0, 1)
        for m in items[index + 1:]:
            xs = m(xs)  # the decoder, at every time
    pred = xs.numpy()
    fig = figure(4 * n, 4.2)
    axes = np.atleast_1d(fig.subplots(1, n))
    k_obs = len(t_obs)
    for i, ax in enumerate(axes):
        true = truth[i][: len(t_ext)]
        ax.plot(true[:, 0], true[:, 1], color="0.6", lw=1.5, label="true spiral")
        obs = np.asarray(run.eval_x[i])
        ax.scatter(obs[:, 0], obs[:, 1], s=4, color="k", alpha=0.5, label="observations")
        ax.plot(pred[i, :k_obs, 0], pred[i, :k_obs, 1], color="C0", lw=1.5, label="reconstruction")
        ax.plot(pred[i, k_obs - 1:, 0], pred[i, k_obs - 1:, 1], color="C3", lw=1.2, ls="--",
                label=f"extrapolation to t={t_ext[-1]:.2f}")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(f"evaluation spiral {i}")
    axes[0].legend(fontsize=7, loc="best")
    return save_png(fig, path)
