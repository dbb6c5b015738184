"""Gradients with respect to the output times ``t``, the same for every gradient method.

The integrators keep time as Python floats, so no gradient method sees ``t``. The derivative of
the solution with respect to the times is known in closed form instead (Chen et al. 2018,
Appendix B): for an output ``y_i = y(t_i)`` with ``i >= 1``,

    dy_i/dt_i = f(t_i, y_i)        so  dL/dt_i = <dL/dy_i, f(t_i, y_i)>,

and moving the start ``t_0`` with ``y0`` held moves every later output by ``-J_i f(t_0, y0)``,
``J_i = dy_i/dy0``, so ``dL/dt_0 = -<a_0, f(t_0, y0)>`` with ``a_0`` the gradient that reaches
``y0`` *through the solve* (not through ``ys[0]``, which is ``y0`` itself and does not move with
``t_0``). Both hold for decreasing times too.

Two identity ``autograd.Function`` s bracket the solve: :class:`_TimeIn` on ``y0`` (its backward
sees ``a_0``, whatever the gradient method computed it with) and :class:`_TimeOut` on ``ys``
(its backward sees every ``dL/dy_i``; it routes ``dL/dy_0`` straight to ``y0`` so that ``a_0``
excludes it). Each evaluates ``f`` at the output points in its backward pass, one call per
output, counted in ``stats.backward.nfe``. Only a solve whose ``t`` requires grad is bracketed.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch.autograd.function import once_differentiable

from odespec.solvers.solution import BackwardStats

__all__ = ["TimeGradient"]

Func = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TimeGradient:
    """The time gradient of one solve: wrap ``y0`` with :meth:`input` before solving and the
    stacked outputs with :meth:`output` after."""

    def __init__(self, func: Func, t: torch.Tensor, stats: BackwardStats):
        self.func = func
        self.t = t
        self.stats = stats

    @staticmethod
    def wanted(t: torch.Tensor) -> bool:
        """True when the solve must carry gradients to ``t``."""
        return t.requires_grad and torch.is_grad_enabled()

    def input(self, y0: torch.Tensor) -> torch.Tensor:
        """``y0`` unchanged, with ``dL/dt_0`` added to ``t``'s gradient in the backward pass."""
        out: torch.Tensor = _TimeIn.apply(self, y0, self.t)
        return out

    def output(self, ys: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
        """``ys`` unchanged (``ys[0]`` being ``y0``), with ``dL/dt_i`` (``i >= 1``) added to
        ``t``'s gradient in the backward pass. ``y0``: the state before :meth:`input`."""
        out: torch.Tensor = _TimeOut.apply(self, ys, y0, self.t)
        return out

    def derivative(self, i: int, y: torch.Tensor) -> torch.Tensor:
        """``f(t_i, y)``, counted as a backward evaluation."""
        self.stats.nfe += 1
        with torch.no_grad():
            return self.func(self.t[i].detach(), y)


def _dot(g: torch.Tensor, f: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``<g, f>`` as torch's real-valued gradient convention has it, in ``like``'s dtype."""
    prod = g * f.conj() if g.is_complex() or f.is_complex() else g * f
    return prod.real.sum().to(like.dtype)


class _TimeIn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tg: TimeGradient, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx.tg = tg
        ctx.save_for_backward(y0)
        return y0.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        (y0,) = ctx.saved_tensors
        tg: TimeGradient = ctx.tg
        grad_t = torch.zeros_like(tg.t)
        grad_t[0] = -_dot(grad, tg.derivative(0, y0), grad_t)
        return None, grad, grad_t


class _TimeOut(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tg: TimeGradient, ys: torch.Tensor, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx.tg = tg
        ctx.save_for_backward(ys)
        return ys.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        (ys,) = ctx.saved_tensors
        tg: TimeGradient = ctx.tg
        grad_t = torch.zeros_like(tg.t)
        # after a failure (return_on_failure) ys stops early: the times not reached get 0
        for i in range(1, ys.shape[0]):
            grad_t[i] = _dot(grad[i], tg.derivative(i, ys[i]), grad_t)
        grad_solve = grad.clone()
        grad_solve[0] = 0.0  # ys[0] is y0 itself: its gradient goes to y0, not into the solve
        return None, grad_solve, grad[0], grad_t
