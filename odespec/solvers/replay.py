"""Recording the accepted steps of a solve, and replaying them exactly.

The checkpoint gradient method solves once without autograd, recording every accepted step
``(t, h, t_new)`` and which outputs it produced, and keeping the state at a few *checkpoint*
steps. Its backward pass replays one segment of steps at a time, with autograd, from the
segment's checkpoint. The replay must take exactly the steps the integrator took (same stage
times, same FSAL reuse, same dense output), so that the gradient equals plain backprop's to
round-off; that is why the integrators and :func:`replay` share :func:`step_outputs`. (The
forward solve, without autograd, sums the stages in another order than the replay, with
autograd: the two trajectories agree to round-off, not bit for bit.)
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence

import torch

from odespec.solvers.options import FixedStepOptions
from odespec.solvers.dense import dense_weights, needs_end_derivative
from odespec.solvers.step import dense_stages, interpolate, own, stepper
from odespec.solvers.tableau import ButcherTableau

__all__ = ["StepRecord", "StepRecorder", "step_outputs", "replay"]


class StepRecord(NamedTuple):
    """One accepted step: it started at ``t`` with size ``h``, ended at ``t_new`` (which may
    differ from ``t + h`` in the last bit when the step was clipped onto a target), and produced
    the outputs ``times[first:last]``."""

    t: float
    h: float
    t_new: float
    first: int
    last: int


def step_outputs(
    f: Callable,
    tableau: ButcherTableau,
    t: float,
    y: torch.Tensor,
    h: float,
    t_new: float,
    y_next: torch.Tensor,
    ks: Sequence[torch.Tensor],
    taus: Sequence[float],
    outs: list,
    f1: Optional[torch.Tensor],
) -> Optional[torch.Tensor]:
    """Append the outputs at ``taus`` (all inside the step ``[t, t_new]``) to ``outs``.

    An output at ``t_new`` is ``y_next`` itself; any other is interpolated (extra interpolant
    stages or, for the cubic Hermite fallback of a non-FSAL method, ``f(t_new, y_next)`` are
    evaluated on first need). Returns ``f1``, the derivative at ``(t_new, y_next)`` if known
    (the next step's first stage), which the Hermite evaluation may have supplied.
    """
    ks_dense = None
    for tau in taus:
        if tau == t_new:
            outs.append(own(y_next))
            continue
        if ks_dense is None:
            ks_dense = dense_stages(f, t, y, h, tableau, ks)
            if needs_end_derivative(tableau):
                f1 = f(t_new, y_next)
                ks_dense.append(f1)
        outs.append(interpolate(y, h, ks_dense, dense_weights(tableau, (tau - t) / h)))
    return f1


class StepRecorder:
    """Collects the accepted steps of one solve and keeps the state at checkpoint steps.

    With ``stride`` given the checkpoints are the steps ``0, stride, 2*stride, ...`` (the
    fixed-step case: the number of steps is known in advance). Otherwise the number of steps is
    not known until the end, so the stride starts at 1 and doubles, dropping every other
    checkpoint, whenever more than ``cap(steps so far)`` are held: the count stays within a
    factor of two of ``cap`` without storing every state first.
    """

    __slots__ = ("steps", "states", "stride", "cap")

    def __init__(self, *, stride: int = 1, cap: Optional[Callable[[int], int]] = None):
        self.steps: list[StepRecord] = []
        self.states: dict[int, torch.Tensor] = {}
        self.stride = max(1, stride)
        self.cap = cap

    def accept(self, t: float, h: float, t_new: float, y: torch.Tensor, first: int, last: int) -> None:
        """Record an accepted step that started from state ``y``."""
        j = len(self.steps)
        self.steps.append(StepRecord(t, h, t_new, first, last))
        if j % self.stride:
            return
        self.states[j] = own(y)
        if self.cap is not None and len(self.states) > self.cap(j + 1):
            self.stride *= 2
            self.states = {k: v for k, v in self.states.items() if k % self.stride == 0}


def sqrt_cap(n: int) -> int:
    """Default checkpoint budget: about ``sqrt(n)`` (between ``sqrt(n)`` and ``2 sqrt(n)``
    checkpoints, segments of ``sqrt(n)/2`` to ``sqrt(n)`` steps)."""
    return max(2, math.ceil(2.0 * math.sqrt(n)))


def replay(
    f: Callable,
    tableau: ButcherTableau,
    steps: Sequence[StepRecord],
    y: torch.Tensor,
    times: Sequence[float],
    n_out: int,
    options: Optional[FixedStepOptions] = None,
) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]:
    """Take the recorded ``steps`` again from state ``y``; returns the final state and the
    ``(index, value)`` of every output (index below ``n_out``) the steps produce.

    Mirrors the integrators: FSAL reuse within the replayed steps, first stage recomputed at the
    start (mathematically the same value the integrator carried over), outputs through
    :func:`step_outputs`. ``options``: a fixed-step solve's (an implicit method's iteration).
    """
    outs: list[tuple[int, torch.Tensor]] = []
    k1 = None
    fsal = tableau.fsal
    step = stepper(tableau, y, with_error=False, options=options)
    for rec in steps:
        res = step(f, rec.t, y, rec.h, k1)
        y_next = res.y_next
        f1 = res.ks[-1] if fsal else None
        last = min(rec.last, n_out)
        if rec.first < last:
            vals: list = []
            f1 = step_outputs(f, tableau, rec.t, y, rec.h, rec.t_new, y_next, res.ks,
                              times[rec.first:last], vals, f1)
            outs.extend(zip(range(rec.first, last), vals, strict=True))
        y, k1 = y_next, f1
    return y, outs
