"""Training curves from ``metrics.jsonl``: the loss (training, evaluation, regularisers) and the
function evaluations per iteration (forward, backward, and the NFE budget if there is one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from odespec.train.plot.render import figure, save_png

__all__ = ["read_metrics", "plot_loss", "plot_nfe"]


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


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["iteration"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def _positive(values: list[float]) -> bool:
    return bool(values) and min(values) > 0


def plot_loss(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Training loss per iteration, evaluation loss where evaluated, regularisers if any; log
    scale when every value is positive."""
    fig = figure()
    ax = fig.add_subplot()
    logy = True
    for key, style in (("loss", {"lw": 0.8, "label": "training loss"}),
                       ("eval_loss", {"marker": "o", "ms": 3, "lw": 1.2, "label": "evaluation loss"}),
                       ("reg_kinetic", {"lw": 0.8, "ls": "--", "label": "kinetic energy (unweighted)"}),
                       ("reg_jacobian", {"lw": 0.8, "ls": ":", "label": "Jacobian norm (unweighted)"})):
        xs, ys = _series(records, key)
        if xs:
            ax.plot(xs, ys, **style)
            logy = logy and _positive(ys)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_png(fig, path)


def plot_nfe(records: list[dict[str, Any]], path: Path, title: str, max_nfe: Optional[int] = None) -> Path:
    """Forward and backward function evaluations per iteration; the budget as a line; iterations
    that exceeded it marked."""
    fig = figure()
    ax = fig.add_subplot()
    for key, label in (("nfe_forward", "forward"), ("nfe_backward", "backward")):
        xs, ys = _series(records, key)
        if xs and any(ys):
            ax.plot(xs, ys, lw=0.8, label=f"{label} NFE")
    if max_nfe is not None:
        ax.axhline(max_nfe, color="red", ls="--", lw=1, label=f"max_nfe {max_nfe}")
    over = [r for r in records if r.get("nfe_budget_exceeded")]
    if over:
        ax.plot([r["iteration"] for r in over], [r.get("nfe_forward") or 0 for r in over], "rx", ms=8,
                label="budget exceeded")
    ax.set_xlabel("iteration")
    ax.set_ylabel("function evaluations per pass")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_png(fig, path)
