"""ODE block modules: the continuous block (also an RK-Net with a fixed-step solver) and its
ResNet counterpart (Euler steps with separate weights per step)."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from odespec.compile.dynamics import DynamicsNet
from odespec.spec.model import OdeBlockSpec


class Augment(nn.Module):
    """Append ``extra`` zero channels/features to dimension 1 (augmented neural ODEs).

    ``F.pad`` rather than ``cat`` with a zeros tensor: it exports to one ONNX Pad node that
    works for any batch size.
    """

    def __init__(self, extra: int):
        super().__init__()
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, [0, 0] * (x.dim() - 2) + [0, self.extra])

    def extra_repr(self) -> str:
        return f"extra={self.extra}"


class BlockBase(nn.Module):
    """What every ODE-block family shares: times, augmentation, output layout, NFE counters."""

    def __init__(self, spec: OdeBlockSpec):
        super().__init__()
        self.spec = spec
        self.augmenter: Optional[Augment] = Augment(spec.augment) if spec.augment else None
        # a buffer, so .to(device, dtype) moves the times along with the weights
        self.register_buffer("t", torch.tensor(spec.t, dtype=torch.get_default_dtype()), persistent=False)
        self.trajectory = spec.output == "trajectory"
        self.nfe_forward = 0
        self.nfe_backward = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.augmenter is not None:
            x = self.augmenter(x)
        ys = self.solve(x)  # (len(t), batch, *state)
        # batch-first trajectories: (batch, len(t), *state), the layout every other layer expects
        return ys.movedim(0, 1) if self.trajectory else ys[-1]

    def solve(self, y0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ODEBlock(BlockBase):
    """A continuous-depth block: y(t0) = input, output y(t_end) or the trajectory at ``t``.

    The solver and gradient method come from the spec. ``nfe_forward`` / ``nfe_backward``
    report function evaluations of the last forward / backward pass.
    """

    def __init__(self, spec: OdeBlockSpec):
        super().__init__(spec)
        self.dynamics = DynamicsNet(spec.dynamics, spec.state_shape)
        self.last_stats: Optional[Any] = None
        #: set by training only (:mod:`odespec.train.regularise`), and only consulted while
        #: autograd is on: it may replace the solve's vector field, state, tolerances and options
        #: (extra state channels for regularisers, a step limit for an NFE budget) and maps the
        #: solution back to the block's states. None: every solve is exactly as compiled.
        self.solve_hook: Optional[Any] = None

    @property
    def nfe_backward(self) -> int:
        """Function evaluations of the backward pass through the last forward solve, read from
        the solve's ``stats.backward``, which the gradient method fills in while ``.backward()``
        runs (0 until then). ``adjoint``: evaluations of the augmented dynamics, each one
        ``f`` plus one vector-Jacobian product; ``checkpoint``: ``f`` re-evaluations while
        replaying the steps; ``backprop``: always 0, since autograd replays recorded operations
        and calls no ``f``."""
        stats = self.last_stats
        return 0 if stats is None else stats.backward.nfe

    @nfe_backward.setter
    def nfe_backward(self, value: int) -> None:
        # BlockBase.__init__ initialises the counter; here it is derived from last_stats
        if value:
            raise AttributeError("ODEBlock.nfe_backward is read from the last solve's stats")

    def solve(self, y0: torch.Tensor) -> torch.Tensor:
        from odespec.solvers import solve

        s = self.spec.solver
        before = self.dynamics.nfe
        # without autograd every gradient method's forward is the same plain solve
        grad = _gradient_kwargs(self.spec.gradient, s) if torch.is_grad_enabled() else {}
        hook = self.solve_hook if torch.is_grad_enabled() else None
        func, state, rtol, atol, options = self.dynamics, y0, s.rtol, s.atol, s.options() or None
        if hook is not None:
            func, state, rtol, atol, options = hook.prepare(self, y0, rtol, atol, options)
        sol = solve(func, state, self.t, method=s.method, rtol=rtol, atol=atol, options=options, **grad)
        self.last_stats = sol.stats
        self.nfe_forward = self.dynamics.nfe - before
        return sol.ys if hook is None else hook.finish(self, sol)

    def extra_repr(self) -> str:
        s = self.spec.solver
        how = f"steps={s.steps}" if s.steps else (f"step_size={s.step_size}" if s.step_size else f"rtol={s.rtol:g}, atol={s.atol:g}")
        return (f"family={self.spec.family}, t=[{self.spec.t[0]:g}..{self.spec.t[-1]:g}] ({len(self.spec.t)} times), "
                f"method={s.method}, {how}, gradient={self.spec.gradient.method}")


class ResNetBlock(BlockBase):
    """The ResNet twin of an ODE block: ``y_{k+1} = y_k + h f_k(t_k, y_k)`` with separate
    weights for every step k (Euler's method in disguise, as the paper puts it).

    Steps go through the solvers' one ``rk_step`` with the Euler tableau, on the same grid a
    fixed-step solve would use.
    """

    def __init__(self, spec: OdeBlockSpec):
        super().__init__(spec)
        from odespec.solvers.grid import fixed_grid

        self.grid = fixed_grid(spec.t, spec.solver.steps)
        n = sum(len(interval) for interval in self.grid)
        self.dynamics = nn.ModuleList(DynamicsNet(spec.dynamics, spec.state_shape) for _ in range(n))

    def solve(self, y0: torch.Tensor) -> torch.Tensor:
        from odespec.solvers.step import rk_step
        from odespec.solvers.tableaus import get_tableau

        euler = get_tableau("euler")
        outs = [y0]
        y = y0
        k = 0
        for interval in self.grid:
            for t0, h in interval:
                y = rk_step(self.dynamics[k], t0, y, h, euler, with_error=False).y_next
                k += 1
            outs.append(y)
        self.nfe_forward = k
        return torch.stack(outs)

    def extra_repr(self) -> str:
        return f"family=resnet, {len(self.dynamics)} Euler steps with separate weights"


def make_block(spec: OdeBlockSpec) -> BlockBase:
    """The module for an ODE block of any family."""
    return ResNetBlock(spec) if spec.family == "resnet" else ODEBlock(spec)


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
