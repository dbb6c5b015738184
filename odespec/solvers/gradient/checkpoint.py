"""Checkpointed backpropagation: the gradient of plain backprop through the very same steps,
with memory sub-linear in the number of steps.

The forward pass solves without recording a graph, records the accepted steps ``(t, h,
t_new)`` and which outputs each produced (a few Python floats per step, no tensors), and keeps
the state at checkpoint steps: about ``sqrt(n)`` of them by default, or ``checkpoints=N``. The
backward pass goes through the segments between checkpoints in reverse; for each it replays the
recorded steps with autograd from the segment's checkpoint (stage evaluations, FSAL reuse and
dense output exactly as the integrator did them) and backpropagates the incoming gradient of the
segment's end state and of its outputs. Peak memory is one segment's graph plus the
checkpoints, ``O(sqrt(n))`` each by default; the price is one more forward pass (without
rejected steps) in the backward.

Because the steps replayed are the steps the forward took, and an adaptive forward pass
without autograd takes bit-for-bit the steps a forward pass with autograd takes, the gradient
equals ``gradient="backprop"``'s up to the order of floating-point summation.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import torch
from torch.autograd.function import once_differentiable

from odespec.solvers.config import CHECKPOINT
from odespec.solvers.grid import count_steps
from odespec.solvers.gradient.base import (
    ParamsGradientMethod,
    Problem,
    Solved,
    SolveRun,
    plain_solve,
    register_gradient,
)
from odespec.solvers.gradient.vjp import vjp
from odespec.solvers.options import FixedStepOptions, InvalidOptionError
from odespec.solvers.replay import StepRecorder, replay, sqrt_cap
from odespec.solvers.solution import BackwardStats
from odespec.solvers.tableau import ButcherTableau

__all__ = ["Checkpoint"]


@register_gradient
class Checkpoint(ParamsGradientMethod):
    """``gradient="checkpoint"``: exact (backprop's) gradients in sub-linear memory.

    ``checkpoints``: how many states to keep (fixed steps: exactly that many segments, at most
    one per step; adaptive: between ``checkpoints/2`` and ``checkpoints``, since the number of
    steps is only known at the end). Default about ``sqrt(steps)``. ``params``: the tensors to
    differentiate besides ``y0`` (default: an ``nn.Module``'s parameters, or the leaves ``func``
    depends on).
    """

    name = "checkpoint"
    decl = CHECKPOINT

    def __init__(self, *, checkpoints: Optional[int] = None, params: Optional[Iterable[torch.Tensor]] = None):
        if checkpoints is not None and (
            isinstance(checkpoints, bool) or not isinstance(checkpoints, int) or checkpoints < 1
        ):
            raise InvalidOptionError(f"checkpoints must be a positive int, got {checkpoints!r}", key="checkpoints")
        self.checkpoints = checkpoints
        self.params = None if params is None else tuple(params)

    def solve(self, problem: Problem, stats: BackwardStats) -> Solved:
        params = self.grad_params(problem)
        if params is None:
            return plain_solve(problem)
        if not isinstance(problem.setup.tableau, ButcherTableau):
            raise InvalidOptionError(f"gradient='checkpoint' replays Runge-Kutta steps; {problem.setup.tableau.name!r} "
                                     "is no Runge-Kutta method: use gradient='backprop' or 'adjoint'", key="gradient")
        run = _CheckpointRun(problem, self.recorder(problem), params, stats)
        ys = _CheckpointFunction.apply(run, problem.y0, *params)
        return Solved(ys, run.outcome, run.nfe)

    def recorder(self, problem: Problem) -> StepRecorder:
        """A recorder keeping the configured number of checkpoints."""
        setup = problem.setup
        if isinstance(setup.opts, FixedStepOptions):
            total = max(1, count_steps(problem.times, setup.opts))
            wanted = self.checkpoints or math.ceil(math.sqrt(total))
            return StepRecorder(stride=math.ceil(total / min(wanted, total)))
        if self.checkpoints is None:
            return StepRecorder(cap=sqrt_cap)
        n = self.checkpoints
        return StepRecorder(cap=lambda _steps: n)


class _CheckpointRun(SolveRun):
    """State shared by the forward and backward of one checkpointed solve."""

    def __init__(self, problem: Problem, recorder: StepRecorder, params: tuple[torch.Tensor, ...],
                 stats: BackwardStats):
        super().__init__(problem, params, stats)
        self.recorder = recorder

    def forward(self, y0: torch.Tensor, **integrate_kw: Any) -> torch.Tensor:
        return super().forward(y0, recorder=self.recorder, **integrate_kw)

    def segments(self, n_out: int) -> list[tuple[int, int]]:
        """``[start, end)`` step ranges from each checkpoint, up to the last step that produced
        one of the ``n_out`` outputs reached."""
        steps = self.recorder.steps
        last = len(steps)
        while last > 0 and steps[last - 1].first >= n_out:
            last -= 1
        starts = sorted(k for k in self.recorder.states if k < last)
        return list(zip(starts, starts[1:] + [last], strict=True))

    def backward(self, grad_ys: torch.Tensor) -> tuple[torch.Tensor, list[Optional[torch.Tensor]]]:
        p = self.problem
        tableau = p.setup.tableau
        assert isinstance(tableau, ButcherTableau)  # checked by Checkpoint.solve
        f = p.timed()
        n_out = grad_ys.shape[0]
        adj: Optional[torch.Tensor] = None
        grads: list[Optional[torch.Tensor]] = [None] * len(self.params)
        steps, states = self.recorder.steps, self.recorder.states
        stats = self.stats
        stats.passes += 1
        for start, end in reversed(self.segments(n_out)):
            y = states[start].detach().requires_grad_(True)
            with torch.enable_grad():
                y_end, outs = replay(f, tableau, steps[start:end], y, p.times, n_out,
                                     p.setup.opts if isinstance(p.setup.opts, FixedStepOptions) else None)
            outputs, seeds = [], []
            if adj is not None:
                outputs.append(y_end)
                seeds.append(adj)
            for idx, value in outs:
                outputs.append(value)
                seeds.append(grad_ys[idx])
            got = vjp(outputs, (y,) + self.params, seeds)
            del outputs, outs, y_end  # free this segment's graph before replaying the next
            adj = torch.zeros_like(y) if got[0] is None else got[0]
            grads = [g if new is None else (new if g is None else g + new)
                     for g, new in zip(grads, got[1:], strict=True)]
            stats.n_steps += end - start
        stats.n_accepted = stats.n_steps
        stats.nfe += f.nfe
        grad_y0 = grad_ys[0] if adj is None else adj + grad_ys[0]
        return grad_y0, grads


class _CheckpointFunction(torch.autograd.Function):
    """``ys = solve(y0; params)`` with checkpointed backprop as its backward."""

    @staticmethod
    def forward(ctx: Any, run: _CheckpointRun, y0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ys = run.forward(y0)
        ctx.run = run
        ctx.n_out = ys.shape[0]
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_ys: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        grad_y0, grads = ctx.run.backward(grad_ys)
        return (None, grad_y0, *grads)
