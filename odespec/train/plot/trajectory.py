"""2-D trajectory models (a model that is one ODE block on a 2-D state, such as ode_demo):
learned against true trajectories, and the learned vector field in the phase plane."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from odespec.compile.ode_block import ODEBlock
from odespec.train.plot.render import figure, save_png
from odespec.train.plot.trained import TrainedRun

__all__ = ["is_trajectory_model", "plot_trajectories", "plot_vector_field"]


def is_trajectory_model(run: TrainedRun) -> bool:
    """One ODE block, solved by a solver, on a 2-D state, outputting its trajectory."""
    items = list(run.model)
    return (len(items) == 1 and isinstance(items[0], ODEBlock) and items[0].augmenter is None
            and items[0].trajectory and tuple(run.spec.input_shape) == (2,))


def _solve(block: ODEBlock, y0: np.ndarray, times: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The learned dynamics from ``y0`` (batch, 2) through ``times``, with the block's solver;
    a failed solve returns what it reached (the rest NaN)."""
    from odespec.solvers import solve

    s = block.spec.solver
    with torch.no_grad():
        sol = solve(block.dynamics, torch.as_tensor(y0, dtype=dtype), torch.as_tensor(times, dtype=dtype),
                    method=s.method, rtol=s.rtol, atol=s.atol, options=s.integration_options(), return_on_failure=True)
    out = np.full((len(times),) + y0.shape, np.nan)
    out[: sol.ys.shape[0]] = sol.ys.numpy()
    return out


def _truth(run: TrainedRun) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(times, states) of the true trajectory when the data source knows it (ode_demo)."""
    ts = run.spec.train
    if ts is None or ts.data.source != "ode_demo":
        return None
    from odespec.train.generators import ode_demo_trajectory

    o = ts.data.options
    return np.linspace(0.0, o["stop"], o["points"]), ode_demo_trajectory(o["points"], o["stop"])


def plot_trajectories(run: TrainedRun, path: Path) -> Path:
    """ode_demo: the whole true trajectory and the learned one from the same initial state,
    against time and in the phase plane. Other sources: a few evaluation samples' targets and
    predictions."""
    block = run.model[0]
    assert isinstance(block, ODEBlock)  # see is_trajectory_model
    fig = figure(11, 4.5)
    ax_t, ax_p = fig.subplots(1, 2)
    truth = _truth(run)
    if truth is not None:
        times, true = truth
        learned = _solve(block, true[:1], times, run.dtype)[:, 0]
        for k, name in enumerate("xy"):
            ax_t.plot(times, true[:, k], color=f"C{k}", lw=1.5, label=f"true {name}")
            ax_t.plot(times, learned[:, k], color=f"C{k}", lw=1.2, ls="--", label=f"learned {name}")
        ax_p.plot(true[:, 0], true[:, 1], color="k", lw=1.5, label="true")
        ax_p.plot(learned[:, 0], learned[:, 1], color="C3", lw=1.2, ls="--", label="learned")
    else:
        x, y = run.eval_x[:6], run.eval_y[:6]
        times = np.asarray(block.spec.t)
        learned = _solve(block, np.asarray(x), times, run.dtype)
        for i in range(len(x)):
            ax_t.plot(times, y[i][:, 0], color=f"C{i}", lw=1.5)
            ax_t.plot(times, learned[:, i, 0], color=f"C{i}", lw=1.2, ls="--")
            ax_p.plot(y[i][:, 0], y[i][:, 1], color=f"C{i}", lw=1.5, label="target" if i == 0 else None)
            ax_p.plot(learned[:, i, 0], learned[:, i, 1], color=f"C{i}", lw=1.2, ls="--",
                      label="learned" if i == 0 else None)
    ax_t.set_xlabel("t")
    ax_t.set_ylabel("state")
    ax_t.set_title("trajectories (solid: true, dashed: learned)")
    ax_t.legend(fontsize=8, ncol=2)
    ax_p.set_xlabel("x")
    ax_p.set_ylabel("y")
    ax_p.set_title("phase plane")
    ax_p.set_aspect("equal", adjustable="datalim")
    ax_p.legend(fontsize=8)
    return save_png(fig, path)


def _field(f: Any, grid: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    with torch.no_grad():
        return f(torch.zeros((), dtype=dtype), torch.as_tensor(grid, dtype=dtype)).numpy()


def plot_vector_field(run: TrainedRun, path: Path, size: int = 25) -> Path:
    """The learned vector field f(0, y) on a grid over the data (streamlines, coloured by
    speed), beside the true field when known (ode_demo: y**3 A)."""
    block = run.model[0]
    truth = _truth(run)
    pts = truth[1] if truth is not None else np.asarray(run.eval_y).reshape(-1, 2)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pad = 0.1 * (hi - lo) + 1e-6
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], size)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], size)
    gx, gy = np.meshgrid(xs, ys)
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    fields = [("learned f(y)", _field(block.dynamics, grid, run.dtype))]
    if truth is not None:
        from odespec.train.generators import ODE_DEMO_A

        fields.append(("true f(y) = y³A", grid**3 @ np.asarray(ODE_DEMO_A)))
    fig = figure(5.5 * len(fields), 5)
    axes = np.atleast_1d(fig.subplots(1, len(fields)))
    for ax, (title, v) in zip(axes, fields, strict=True):
        u, w = v[:, 0].reshape(gx.shape), v[:, 1].reshape(gx.shape)
        speed = np.hypot(u, w)
        ax.streamplot(xs, ys, u, w, color=speed, cmap="viridis", density=1.2, linewidth=0.8)
        ax.plot(pts[:, 0], pts[:, 1], color="k", lw=0.6, alpha=0.5)
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_aspect("equal")
    return save_png(fig, path)
