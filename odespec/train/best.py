"""Keeping the best weights of a run that evaluates: which evaluation counts as best, and the
weights it was made with.

The rule (:func:`criterion_for`): a classifier (``cross_entropy``) is judged by its evaluation
accuracy, what a classifier is used for, with ties (common once a small evaluation set is
classified perfectly) going to the lower evaluation loss; every other loss (``mse``, ``l1``, the
latent ODE's negative ELBO) by the lowest evaluation loss. Only a strictly better evaluation
replaces the best one, so of equal ones the earliest is kept; a non-finite metric is never
best.

The tracker's state (the iteration, its evaluation, a CPU copy of the weights) goes into every
checkpoint, so a resumed run keeps the same best as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch

__all__ = ["Criterion", "criterion_for", "BestWeights", "TENSOR_PREFIX"]

#: the best weights' keys in a checkpoint's tensors file
TENSOR_PREFIX = "best."


@dataclass(frozen=True)
class Criterion:
    """Which evaluation metric decides, and in which direction."""

    #: the deciding metric, as logged (``eval_loss``, ``eval_accuracy``)
    metric: str
    higher_is_better: bool
    #: the metric that decides between equal values of ``metric`` (lower is better)
    tie_break: Optional[str] = None

    def describe(self) -> str:
        """``highest eval_accuracy, ties to the lowest eval_loss`` or ``lowest eval_loss``."""
        text = f"{'highest' if self.higher_is_better else 'lowest'} {self.metric}"
        return text + (f", ties to the lowest {self.tie_break}" if self.tie_break else "")

    def key(self, evaluation: Mapping[str, Any]) -> Optional[tuple[float, ...]]:
        """The evaluation as a tuple where smaller is better; None if a deciding value is missing
        or not finite."""
        names = [self.metric] + ([self.tie_break] if self.tie_break else [])
        values: list[float] = []
        for name in names:
            v = evaluation.get(name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                return None
            values.append(float(v))
        if self.higher_is_better:
            values[0] = -values[0]
        return tuple(values)


def criterion_for(loss_kind: str) -> Criterion:
    """The rule that picks the best evaluation for a loss (see the module's docstring)."""
    if loss_kind == "cross_entropy":
        return Criterion("eval_accuracy", higher_is_better=True, tie_break="eval_loss")
    return Criterion("eval_loss", higher_is_better=False)


class BestWeights:
    """The best evaluation so far and a copy of the weights that made it."""

    def __init__(self, criterion: Criterion):
        self.criterion = criterion
        self.iteration: Optional[int] = None
        self.evaluation: dict[str, Any] = {}
        self.state: Optional[dict[str, torch.Tensor]] = None

    def offer(self, iteration: int, evaluation: Mapping[str, Any], model: torch.nn.Module) -> bool:
        """Keep ``model``'s weights if ``evaluation`` (made with them after ``iteration``
        iterations) is strictly better than the best so far; True if it was."""
        new = self.criterion.key(evaluation)
        if new is None:
            return False
        old = self.criterion.key(self.evaluation) if self.iteration is not None else None
        if old is not None and not new < old:
            return False
        self.iteration, self.evaluation = iteration, dict(evaluation)
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return True

    def to_json(self) -> Optional[dict[str, Any]]:
        """The best evaluation for run.json and checkpoints: ``{"iteration", "evaluation"}``,
        or None before any finite one."""
        if self.iteration is None:
            return None
        return {"iteration": self.iteration, "evaluation": dict(self.evaluation)}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The kept weights under :data:`TENSOR_PREFIX`, for a checkpoint's tensors file."""
        return {TENSOR_PREFIX + k: v for k, v in (self.state or {}).items()}

    def restore(self, doc: Optional[Mapping[str, Any]], tensors: Mapping[str, torch.Tensor]) -> None:
        """Take back what :meth:`to_json` and :meth:`tensors` saved in a checkpoint."""
        if doc is None:
            return
        n = len(TENSOR_PREFIX)
        self.iteration, self.evaluation = int(doc["iteration"]), dict(doc["evaluation"])
        self.state = {k[n:]: v for k, v in tensors.items() if k.startswith(TENSOR_PREFIX)}
