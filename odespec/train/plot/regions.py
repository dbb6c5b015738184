"""2-D classifiers: the decision regions over the input plane with the evaluation points."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from odespec.train.plot.render import figure, save_png
from odespec.train.plot.trained import TrainedRun

__all__ = ["is_2d_classifier", "plot_regions"]


def is_2d_classifier(run: TrainedRun) -> bool:
    """Inputs are points of the plane and the targets class labels."""
    ts = run.spec.train
    return ts is not None and ts.loss.kind == "cross_entropy" and tuple(run.spec.input_shape) == (2,)


def plot_regions(run: TrainedRun, path: Path, size: int = 200) -> Path:
    """Probability of class 1 (two classes) or the predicted class (more) on a grid; the
    evaluation points coloured by their label; the accuracy in the title."""
    x = np.asarray(run.eval_x, dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(run.eval_y).reshape(-1)
    lo, hi = x.min(axis=0), x.max(axis=0)
    pad = 0.15 * (hi - lo) + 1e-6
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], size)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], size)
    gx, gy = np.meshgrid(xs, ys)
    grid = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=run.dtype)
    with torch.no_grad():
        scores = torch.cat([run.model(c) for c in grid.split(4096)])
        pred = run.model(torch.as_tensor(x, dtype=run.dtype)).argmax(dim=-1).numpy()
    classes = int(max(scores.shape[-1], labels.max() + 1))
    fig = figure(6, 5.4)
    ax = fig.add_subplot()
    if scores.shape[-1] == 2:
        p1 = torch.softmax(scores, dim=-1)[:, 1].numpy().reshape(gx.shape)
        cf = ax.contourf(gx, gy, p1, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.7)
        ax.contour(gx, gy, p1, levels=[0.5], colors="k", linewidths=1)
        fig.colorbar(cf, ax=ax, label="p(class 1)")
    else:
        regions = scores.argmax(dim=-1).numpy().reshape(gx.shape)
        ax.contourf(gx, gy, regions, levels=np.arange(classes + 1) - 0.5, cmap="tab10", alpha=0.5)
    for c in range(classes):
        sel = labels == c
        if sel.any():
            ax.scatter(x[sel, 0], x[sel, 1], s=6, color=f"C{c}", edgecolors="none", label=f"class {c}")
    ax.set_aspect("equal")
    ax.set_title(f"decision regions (evaluation accuracy {np.mean(pred == labels):.1%})")
    ax.legend(fontsize=8, markerscale=2)
    return save_png(fig, path)
