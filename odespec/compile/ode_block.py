"""The ODE block module: solves dy/dt = f(t, y) from the block's input over the spec's times."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from odespec.compile.dynamics import DynamicsNet
from odespec.spec.model import OdeBlockSpec


class ODEBlock(nn.Module):
    """A continuous-depth block: input y(t0), output y(t_end) or the trajectory at ``t``.

    The solver and gradient method come from the spec. ``nfe_forward`` / ``nfe_backward``
    report function evaluations of the last forward / backward pass.
    """

    def __init__(self, spec: OdeBlockSpec):
        super().__init__()
        self.spec = spec
        self.dynamics = DynamicsNet(spec.dynamics, spec.state_shape)
        # a buffer, so .to(device, dtype) moves the times along with the weights
        self.register_buffer("t", torch.tensor(spec.t, dtype=torch.get_default_dtype()), persistent=False)
        self.trajectory = spec.output == "trajectory"
        self.nfe_forward = 0
        self.nfe_backward = 0
        self.last_stats: Optional[Any] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from odespec.solvers import solve

        s = self.spec.solver
        g = self.spec.gradient
        before = self.dynamics.nfe
        sol = solve(
            self.dynamics,
            x,
            self.t,
            method=s.method,
            rtol=s.rtol,
            atol=s.atol,
            options=s.options() or None,
            **_gradient_kwargs(g, s),
        )
        self.last_stats = sol.stats
        self.nfe_forward = self.dynamics.nfe - before
        ys = sol.ys
        # batch-first trajectories: (batch, len(t), *state), the layout every other layer expects
        return ys.movedim(0, 1) if self.trajectory else ys[-1]

    def extra_repr(self) -> str:
        s = self.spec.solver
        how = f"steps={s.steps}" if s.steps else (f"step_size={s.step_size}" if s.step_size else f"rtol={s.rtol:g}, atol={s.atol:g}")
        return f"t=[{self.spec.t[0]:g}..{self.spec.t[-1]:g}] ({len(self.spec.t)} times), method={s.method}, {how}, gradient={self.spec.gradient.method}"


def _gradient_kwargs(g: Any, s: Any) -> dict[str, Any]:
    if g.method == "backprop":
        return {}
    out: dict[str, Any] = {"gradient": g.method}
    if g.method == "adjoint":
        out["adjoint_rtol"] = g.rtol if g.rtol is not None else s.rtol
        out["adjoint_atol"] = g.atol if g.atol is not None else s.atol
        out["seminorm"] = g.seminorm
    elif g.method == "checkpoint" and g.checkpoints is not None:
        out["checkpoints"] = g.checkpoints
    return out
