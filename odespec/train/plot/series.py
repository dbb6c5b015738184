"""Irregular time series (a model with ``input: {times, mask, query}``): for a few evaluation
series, each feature against time: the observed values at the sample's own observation times
(missing ones left out), the targets at its query times, and the model's outputs there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from odespec.train.plot.render import figure, save_png
from odespec.train.plot.trained import TrainedRun

__all__ = ["is_series_model", "plot_series"]

#: the most features drawn per series (one row of panels each)
MAX_FEATURES = 3


def is_series_model(run: TrainedRun) -> bool:
    """Whether the run's model reads series and outputs a value sequence at its query times."""
    series = run.spec.series
    out = run.spec.output_shape
    return series is not None and series.query is not None and len(out) == 2 and out[0] == series.query


def _eval_series(run: TrainedRun) -> dict[str, np.ndarray]:
    data = run.data
    series = data.series_eval if data.x_eval is not None else data.series
    assert series is not None  # a series model's data always has them
    return series


def plot_series(run: TrainedRun, path: Path, count: int = 4) -> Path:
    """``count`` evaluation series in columns, one row per feature (at most :data:`MAX_FEATURES`)."""
    series = _eval_series(run)
    n = min(count, len(run.eval_x))
    inputs = {k: torch.as_tensor(np.asarray(v[:n]), dtype=run.dtype) for k, v in series.items()
              if k in ("times", "mask", "query_times")}
    with torch.no_grad():
        pred = run.model(torch.as_tensor(np.asarray(run.eval_x[:n]), dtype=run.dtype), **inputs).numpy()
    x, y = np.asarray(run.eval_x[:n]), np.asarray(run.eval_y[:n])
    times = np.asarray(series["times"][:n])
    query = np.asarray(series.get("query_times", series["times"])[:n])
    mask = np.asarray(series["mask"][:n]) if "mask" in series else np.ones_like(x)
    y_mask = np.asarray(series["y_mask"][:n]) if "y_mask" in series else np.ones_like(y)
    features = min(pred.shape[-1], MAX_FEATURES)
    fig = figure(4 * n, 2.6 * features)
    axes = np.asarray(fig.subplots(features, n, squeeze=False))
    for i in range(n):
        for f in range(features):
            ax = axes[f, i]
            seen = mask[i, :, f] > 0 if f < x.shape[-1] else np.zeros(len(times[i]), bool)
            if seen.any():
                ax.scatter(times[i, seen], x[i, seen, f], s=10, color="k", label="observed")
            wanted = y_mask[i, :, f] > 0
            ax.scatter(query[i, wanted], y[i, wanted, f], s=14, marker="x", color="0.5", label="target")
            ax.plot(query[i], pred[i, :, f], color="C0", lw=1.4, label="model")
            ax.set_title(f"evaluation series {i}, feature {f}", fontsize=9)
            ax.set_xlabel("t")
    axes[0, 0].legend(fontsize=7, loc="best")
    return save_png(fig, path)
