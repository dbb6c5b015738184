"""Training curves from ``metrics.jsonl``: the loss (training, evaluation, regularisers), the
accuracy of a classifier, every other logged metric (one panel each: the loss's own terms,
the objective, the learning rate, the gradient norm, ...) and the function evaluations per
iteration (forward, backward, and the NFE budget if there is one).

Per-batch values are noisy, so each is drawn thin and faint with a smoothed line over it
(:func:`smooth`); evaluations, made once in a while on a fixed set, are drawn as they are, as
points. The x axis counts epochs when the run's length was given in epochs, else iterations
(:func:`x_axis`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from odespec.train.plot.render import figure, save_png

__all__ = ["read_metrics", "XAxis", "x_axis", "smooth", "plot_loss", "plot_accuracy", "plot_metrics", "plot_nfe",
           "other_metrics"]

#: the fraction of a series' points a smoothing window spans
SMOOTH_FRACTION = 0.02
#: record keys that are not metrics, or that have a figure of their own
_NOT_METRICS = {"iteration", "seconds", "loss", "eval_loss", "accuracy", "eval_accuracy", "reg_kinetic",
                "reg_jacobian", "nfe_forward", "nfe_backward", "max_nfe", "nfe_budget_exceeded"}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file (unreadable lines are skipped)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("iteration"), int):
            out.append(rec)
    return out


@dataclass(frozen=True)
class XAxis:
    """What the x axis counts: ``x = iteration * per_iteration``."""

    label: str = "iteration"
    per_iteration: float = 1.0


def x_axis(info: Mapping[str, Any]) -> XAxis:
    """Epochs for a run given in epochs (run.json says how many samples an epoch has and a batch
    takes), else iterations."""
    n, batch = info.get("samples_per_epoch"), info.get("batch_size")
    if info.get("length_unit") == "epochs" and isinstance(n, int) and isinstance(batch, int) and n > 0:
        return XAxis("epoch", batch / n)
    return XAxis()


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _series(records: list[dict[str, Any]], key: str, axis: XAxis) -> tuple[list[float], list[float]]:
    pts = [(r["iteration"] * axis.per_iteration, float(r[key])) for r in records if _number(r.get(key))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _positive(values: Sequence[float]) -> bool:
    return bool(values) and min(values) > 0


def smooth(values: Sequence[float], *, log: bool = False, fraction: float = SMOOTH_FRACTION) -> list[float]:
    """A centred moving average over a window of ``fraction`` of the points (at least 1, odd),
    shrinking at the ends so that the line starts and ends where the data do, and lagging
    nowhere. ``log``: average the logarithms (a geometric mean), so that on a log-scaled axis a
    few spikes do not lift the whole line."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    half = int(len(v) * fraction) // 2
    if half == 0 or len(v) == 0:
        return [float(x) for x in v]
    if log:
        v = np.log(v)
    sums = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(len(v))
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half + 1, len(v))
    out = (sums[hi] - sums[lo]) / (hi - lo)
    return [float(x) for x in (np.exp(out) if log else out)]


def _per_batch(ax: Any, xs: list[float], ys: list[float], label: str, *, log: bool, **style: Any) -> None:
    """Raw values thin and faint, the smoothed line over them in the same colour (too few
    values to smooth: one plain line)."""
    smoothed = smooth(ys, log=log)
    if smoothed == list(ys):
        ax.plot(xs, ys, lw=1.0, label=label, **style)
        return
    (raw,) = ax.plot(xs, ys, lw=0.6, alpha=0.3, **style)
    ax.plot(xs, smoothed, lw=1.4, color=raw.get_color(), label=label + " (smoothed)", **style)


def _evaluated(ax: Any, xs: list[float], ys: list[float], label: str) -> None:
    ax.plot(xs, ys, marker="o", ms=3, lw=1.0, label=label)


def _finish(ax: Any, axis: XAxis, ylabel: str, title: str) -> None:
    ax.set_xlabel(axis.label)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def _mark_kept(ax: Any, kept: Optional[Mapping[str, Any]], metric: str, axis: XAxis) -> None:
    """A star on the evaluation whose weights model.safetensors holds (a run that kept its best)."""
    if not kept or kept.get("choice") != "best" or kept.get("metric") != metric or not _number(kept.get("value")):
        return
    x = kept["iteration"] * axis.per_iteration
    where = f"iteration {kept['iteration']}" + (f" (epoch {x:.3g})" if axis.label == "epoch" else "")
    ax.plot([x], [kept["value"]], "*", ms=13, color="gold", mec="black", mew=0.6, zorder=5, label=f"kept: {where}")


def plot_loss(records: list[dict[str, Any]], path: Path, title: str, axis: XAxis = XAxis(),
              kept: Optional[Mapping[str, Any]] = None) -> Path:
    """Training loss per iteration (smoothed over the raw values), evaluation loss where
    evaluated, regularisers if any, the kept evaluation starred; log scale when every value is
    positive."""
    fig = figure()
    ax = fig.add_subplot()
    train_keys = [("loss", "training loss", {}), ("reg_kinetic", "kinetic energy (unweighted)", {"ls": "--"}),
                  ("reg_jacobian", "Jacobian norm (unweighted)", {"ls": ":"})]
    series = {key: _series(records, key, axis) for key, _, _ in train_keys}
    evals = _series(records, "eval_loss", axis)
    logy = all(_positive(ys) for _, ys in [*series.values(), evals] if ys)
    for key, label, style in train_keys:
        xs, ys = series[key]
        if xs:
            _per_batch(ax, xs, ys, label, log=logy, **style)
    if evals[0]:
        _evaluated(ax, *evals, "evaluation loss")
    _mark_kept(ax, kept, "eval_loss", axis)
    if logy:
        ax.set_yscale("log")
    _finish(ax, axis, "loss", title)
    return save_png(fig, path)


def has_accuracy(records: list[dict[str, Any]]) -> bool:
    """Whether the run logged an accuracy (a classifier)."""
    return any(_number(r.get("accuracy")) or _number(r.get("eval_accuracy")) for r in records)


def plot_accuracy(records: list[dict[str, Any]], path: Path, title: str, axis: XAxis = XAxis(),
                  kept: Optional[Mapping[str, Any]] = None) -> Path:
    """A classifier's accuracy: per training batch (smoothed over the raw values) and on the
    evaluation set; the kept evaluation starred."""
    fig = figure()
    ax = fig.add_subplot()
    xs, ys = _series(records, "accuracy", axis)
    if xs:
        _per_batch(ax, xs, ys, "training accuracy", log=False)
    evals = _series(records, "eval_accuracy", axis)
    if evals[0]:
        _evaluated(ax, *evals, "evaluation accuracy")
    _mark_kept(ax, kept, "eval_accuracy", axis)
    ax.set_ylim(-0.02, 1.02)
    _finish(ax, axis, "accuracy (fraction classified right)", title)
    return save_png(fig, path)


def other_metrics(records: list[dict[str, Any]]) -> list[str]:
    """The logged metrics without a figure of their own, in the order first logged; an
    evaluation metric ``eval_X`` shares the panel of ``X``."""
    names: list[str] = []
    for r in records:
        for k, v in r.items():
            name = k[len("eval_"):] if k.startswith("eval_") else k
            if k not in _NOT_METRICS and _number(v) and name not in names:
                names.append(name)
    return names


#: values the run sets rather than measures on a batch: nothing to smooth
_SET_VALUES = {"lr"}
_TITLES = {"nll": "negative log-likelihood", "kl": "KL(q(z0) || N(0, I))", "objective": "objective (loss + weighted "
           "regularisers)", "lr": "learning rate", "grad_norm": "gradient norm (before clipping)"}


def plot_metrics(records: list[dict[str, Any]], path: Path, title: str, axis: XAxis = XAxis(),
                 clip: Optional[float] = None) -> Optional[Path]:
    """One panel per metric of :func:`other_metrics` (training values smoothed over the raw
    ones, evaluations as points; log scale where positive values span two decades); the
    clipping limit on the gradient norm's panel. None when there is no such metric."""
    names = other_metrics(records)
    if not names:
        return None
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = figure(4.2 * cols, 3.2 * rows)
    fig.suptitle(title)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        xs, ys = _series(records, name, axis)
        ex, ey = _series(records, "eval_" + name, axis)
        values = ys + ey
        log = _positive(values) and max(values) > 100 * min(values)
        if xs and name in _SET_VALUES:
            ax.plot(xs, ys, lw=1.0, label="training")
        elif xs:
            _per_batch(ax, xs, ys, "training", log=log)
        if ex:
            _evaluated(ax, ex, ey, "evaluation")
        panel = _TITLES.get(name, name)
        if name == "grad_norm" and clip is not None:
            panel += f"; limit {clip:g}"
            if values and clip <= 10 * max(values):  # a limit far above the norms would squash them
                ax.axhline(clip, color="red", ls="--", lw=1, label="clip_grad_norm")
        if log:
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", useOffset=False)
        _finish(ax, axis, name, panel)
        if len(ax.get_legend_handles_labels()[0]) < 2 and ax.get_legend() is not None:
            ax.get_legend().remove()  # one line needs no legend
    return save_png(fig, path)


def plot_nfe(records: list[dict[str, Any]], path: Path, title: str, max_nfe: Optional[int] = None,
             axis: XAxis = XAxis()) -> Path:
    """Forward and backward function evaluations per iteration; the budget as a line; iterations
    that exceeded it marked."""
    fig = figure()
    ax = fig.add_subplot()
    for key, label in (("nfe_forward", "forward"), ("nfe_backward", "backward")):
        xs, ys = _series(records, key, axis)
        if xs and any(ys):
            ax.plot(xs, ys, lw=0.8, label=f"{label} NFE")
    if max_nfe is not None:
        ax.axhline(max_nfe, color="red", ls="--", lw=1, label=f"max_nfe {max_nfe}")
    over = [r for r in records if r.get("nfe_budget_exceeded")]
    if over:
        ax.plot([r["iteration"] * axis.per_iteration for r in over], [r.get("nfe_forward") or 0 for r in over], "rx",
                ms=8, label="budget exceeded")
    ax.set_ylim(bottom=0)
    _finish(ax, axis, "function evaluations per pass", title)
    return save_png(fig, path)
