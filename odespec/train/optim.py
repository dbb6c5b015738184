"""Optimizers and learning-rate schedules from the spec.

A schedule is a pure function of the iteration (:func:`lr_at`; when the run counts epochs, of the
epoch the iteration's batch starts in, itself a function of the iteration), set on the optimizer
before each step, rather than a torch ``LRScheduler`` with state of its own: a resumed run then
needs no scheduler state, and nothing can drift between an interrupted and an uninterrupted run.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Iterable, Optional

import torch

from odespec.spec.model import OptimizerSpec, ScheduleSpec

__all__ = ["make_optimizer", "lr_at", "set_lr"]


def make_optimizer(spec: OptimizerSpec, params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The torch optimizer a spec names; unset options keep torch's defaults."""
    params = list(params)
    wd = spec.weight_decay
    eps: dict[str, Any] = {} if spec.eps is None else {"eps": spec.eps}
    if spec.method == "adam":
        return torch.optim.Adam(params, lr=lr, betas=spec.betas, weight_decay=wd or 0.0, **eps)
    if spec.method == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=spec.betas, weight_decay=0.01 if wd is None else wd, **eps)
    if spec.method == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=wd or 0.0)
    if spec.method == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=spec.alpha, momentum=spec.momentum, weight_decay=wd or 0.0, **eps)
    raise ValueError(f"unknown optimizer {spec.method!r}")  # the schema's enum prevents this


def lr_at(schedule: ScheduleSpec, lr: float, step: int, total: int, epoch: Optional[int] = None) -> float:
    """The rate for the optimizer step that follows ``step`` completed steps (0-based) of ``total``.
    ``epoch``: the pass over the training data that step's batch starts in (0-based), needed
    when the schedule counts epochs."""
    if schedule.kind in ("step", "multistep"):
        if schedule.unit == "epochs":
            if epoch is None:
                raise ValueError("this schedule counts epochs: give the step's epoch")
            now = epoch
        else:
            now = step
        if schedule.kind == "step":
            assert schedule.every is not None
            return lr * schedule.gamma ** (now // schedule.every)
        # torch's MultiStepLR: one factor of gamma per milestone reached
        return lr * schedule.gamma ** bisect.bisect_right(schedule.milestones, now)
    if schedule.kind == "cosine":
        frac = min(step / max(total - 1, 1), 1.0)  # the last step runs at min_lr
        return schedule.min_lr + (lr - schedule.min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))
    return lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr
