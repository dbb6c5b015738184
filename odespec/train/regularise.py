"""Controlling the cost of solves in training: RNODE regularisers and the NFE budget.

Both are attached to a compiled model's ODE blocks as a :class:`TrainingSolveHook`
(``ODEBlock.solve_hook``), which the block consults only while autograd is on, so evaluation,
export and every model built outside training solve exactly as compiled.

**Regularisers** (Finlay et al., *How to train your neural ODE*, 2020). Per sample, the kinetic
energy ``K = int |f(t, y)|^2 dt`` and the Jacobian term ``J = int |df/dy|_F^2 dt`` over the
block's time span. They are integrated as extra per-sample state channels, ``dK/dt = |f|^2``
and ``dJ/dt = |e^T df/dy|^2``, by the block's own solver and gradient method (so with the
adjoint their gradients come from the adjoint too). ``e`` is one Hutchinson probe per solve,
Gaussian or Rademacher (``E[e e^T] = I``, so ``E|e^T A|^2 = |A|_F^2``); it stays fixed through
the solve, so forward and adjoint solves integrate the same vector field.

The channels are left out of the adaptive step-size control (their atol is infinite, as in
FFJORD/RNODE), and the state's own tolerances are scaled by ``sqrt(n_state / n_total)`` so that
the RMS error norm over the longer state equals the norm over the state alone: the solver takes
exactly the steps it would take without the channels. Only the adjoint's backward solve still
sees the channels in its error norm.

**NFE budget** (``train.max_nfe``): an adaptive solve may not take more steps than the budget
pays for: its ``max_num_steps`` becomes at most ``(max_nfe - fixed-step blocks' evaluations - 2)
// evaluations per step`` (two evaluations start a solve: the first derivative and the initial
step-size probe). A forward pass that runs into that limit, or that counts more than ``max_nfe``
evaluations over all blocks, raises :class:`NfeBudgetExceeded`; the loop stops training and
records the iteration in the metrics (``nfe_budget_exceeded: true``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import torch
from torch import nn

from odespec.compile.ode_block import ODEBlock, SolveCall
from odespec.solvers.options import AdaptiveOptions
from odespec.spec.model import RegulariseSpec
from odespec.train.errors import TrainError, TrainingFailed

__all__ = ["RegularisedDynamics", "TrainingSolveHook", "NfeBudgetExceeded", "attach", "hutchinson_probe",
           "REGULARISERS"]

#: the regulariser names, in the order of their state channels and metrics (``reg_<name>``)
REGULARISERS = ("kinetic", "jacobian")
#: evaluations that start every adaptive solve: f(t0, y0) and the initial-step probe
_START_EVALS = 2


class NfeBudgetExceeded(TrainingFailed):
    """A training forward pass needed more function evaluations than ``train.max_nfe``."""

    def __init__(self, message: str, hint: Optional[str] = None, *, nfe: int = 0):
        self.nfe = nfe
        super().__init__(message, hint)


def hutchinson_probe(like: torch.Tensor, kind: str) -> torch.Tensor:
    """A probe ``e`` with ``E[e e^T] = I``, shaped like ``like``: standard normal entries
    (``gaussian``) or random signs (``rademacher``). Drawn from the global RNG, which training
    checkpoints, so a resumed run draws the same probes."""
    if kind == "gaussian":
        return torch.randn_like(like)
    if kind == "rademacher":
        return torch.empty_like(like).bernoulli_(0.5).mul_(2.0).sub_(1.0)
    raise ValueError(f"unknown Hutchinson noise {kind!r}")


def _per_sample_sq(x: torch.Tensor) -> torch.Tensor:
    """``|x_b|^2`` of every sample b: shape (batch,)."""
    return x.reshape(x.shape[0], -1).square().sum(dim=1)


class RegularisedDynamics(nn.Module):
    """The vector field of the state ``(y, K?, J?)``: ``(f(t, y), |f|^2, |e^T df/dy|^2)``.

    ``probe`` (the Hutchinson ``e``) is given when the Jacobian term is on. An ``nn.Module``
    holding the block's dynamics, so the adjoint finds the same parameters; it is built per solve
    and never registered in the model (the weights' names do not change).
    """

    def __init__(self, dynamics: nn.Module, *, kinetic: bool, probe: Optional[torch.Tensor]):
        super().__init__()
        self.dynamics = dynamics
        self.kinetic = kinetic
        self.probe = probe

    def forward(self, t: torch.Tensor, state: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        y = state[0]
        if self.probe is None:
            f = self.dynamics(t, y)
            return f, _per_sample_sq(f)
        outer = torch.is_grad_enabled()
        # The vector-Jacobian product needs autograd even where the solver runs without it (the
        # adjoint's forward solve); it keeps its graph only when the caller differentiates
        # through it (backprop, or the adjoint's backward evaluations: second derivatives).
        with torch.enable_grad():
            y_in = y if y.requires_grad else y.detach().requires_grad_(True)
            f = self.dynamics(t, y_in)
            (ej,) = torch.autograd.grad(f, y_in, self.probe, create_graph=outer, allow_unused=True)
        if ej is None:  # f does not depend on y
            ej = torch.zeros_like(y)
        if not outer:
            f = f.detach()
        out = [f]
        if self.kinetic:
            out.append(_per_sample_sq(f))
        out.append(_per_sample_sq(ej))
        return tuple(out)


class TrainingSolveHook:
    """What an ODE block's training solves go through (see the module docstring).

    After each forward solve, :attr:`integrals` holds the regularisers' per-sample integrals,
    ``{name: tensor (batch,)}`` (empty without regularisers).
    """

    def __init__(self, regularise: Optional[RegulariseSpec], max_num_steps: Optional[int]):
        self.kinetic = regularise is not None and regularise.kinetic > 0
        self.jacobian = regularise is not None and regularise.jacobian > 0
        self.noise = regularise.noise if regularise is not None else "gaussian"
        self.max_num_steps = max_num_steps
        self.integrals: dict[str, torch.Tensor] = {}

    @property
    def regularised(self) -> bool:
        return self.kinetic or self.jacobian

    def prepare(self, block: ODEBlock, call: SolveCall) -> SolveCall:
        """The block's next solve: at most the budget's steps, with the regulariser channels."""
        self.integrals = {}
        options = call.options
        if self.max_num_steps is not None and isinstance(options, AdaptiveOptions):
            call = dataclasses.replace(call, options=dataclasses.replace(
                options, max_num_steps=min(options.max_num_steps, self.max_num_steps)))
        if not self.regularised:
            return call
        y0, rtol, atol = call.y0, call.rtol, call.atol
        probe = hutchinson_probe(y0, self.noise) if self.jacobian else None
        func = RegularisedDynamics(block.dynamics, kinetic=self.kinetic, probe=probe)
        k = int(self.kinetic) + int(self.jacobian)
        zero = y0.new_zeros(y0.shape[0])
        # keep the solver's steps those of the state alone: see the module docstring
        c = math.sqrt(y0.numel() / (y0.numel() + k * y0.shape[0]))
        return SolveCall(func, (y0,) + (zero,) * k, (rtol * c,) + (0.0,) * k, (atol * c,) + (math.inf,) * k,
                         call.options)

    def finish(self, block: ODEBlock, sol: Any) -> torch.Tensor:
        """The block's states ``(len(t), batch, *state)``; keeps the integrals."""
        if not self.regularised:
            return sol.ys
        ys, *channels = sol.ys
        # integrals over the span: a block solved backwards in time integrates with dt < 0
        # (a t: query block runs forwards: query times are at or after its start)
        sign = 1.0 if block.spec.query or block.spec.t[-1] > block.spec.t[0] else -1.0
        names = [n for n, on in zip(REGULARISERS, (self.kinetic, self.jacobian), strict=True) if on]
        self.integrals = {n: ch[-1] * sign for n, ch in zip(names, channels, strict=True)}
        return ys


def attach(model: nn.Module, blocks: Sequence[Any], regularise: Optional[RegulariseSpec],
           max_nfe: Optional[int]) -> list[TrainingSolveHook]:
    """Attach a :class:`TrainingSolveHook` to every solved ODE block (none when there is
    nothing to do). Raises :class:`TrainError` if fixed-step blocks alone exceed ``max_nfe``."""
    solved = [b for b in blocks if isinstance(b, ODEBlock)]
    cap: Optional[int] = None
    if max_nfe is not None:
        fixed = sum(b.spec.nfe() or 0 for b in solved)
        if fixed > max_nfe:
            raise TrainError(f"max_nfe is {max_nfe}, but the fixed-step ODE blocks alone take {fixed} function "
                             "evaluations per forward pass", f"raise train.max_nfe to {fixed} or more, or take "
                             "fewer steps")
        cap = max(1, (max_nfe - fixed - _START_EVALS) // _most_evals_per_step(solved))
    if regularise is None and cap is None:
        return []
    hooks = []
    for block in solved:
        block.solve_hook = TrainingSolveHook(regularise, cap)
        hooks.append(block.solve_hook)
    return hooks


def _most_evals_per_step(blocks: Sequence[ODEBlock]) -> int:
    from odespec.solvers.tableaus import get_tableau

    per = [get_tableau(b.spec.solver.method).evals_per_step for b in blocks if b.spec.solver.adaptive]
    return max(per, default=1)


def regularisation_loss(hooks: Sequence[TrainingSolveHook], spec: Optional[RegulariseSpec]
                        ) -> tuple[Optional[torch.Tensor], dict[str, float]]:
    """The weighted regularisers of the last forward pass (batch means, summed over blocks) and
    their unweighted values as metrics ``reg_kinetic``, ``reg_jacobian``."""
    if spec is None:
        return None, {}
    total: Optional[torch.Tensor] = None
    sums: dict[str, torch.Tensor] = {}
    for hook in hooks:
        for name, integral in hook.integrals.items():
            mean = integral.mean()
            sums[name] = sums[name] + mean if name in sums else mean
    for name, value in sums.items():
        term = getattr(spec, name) * value
        total = term if total is None else total + term
    return total, {f"reg_{name}": value.item() for name, value in sums.items()}
