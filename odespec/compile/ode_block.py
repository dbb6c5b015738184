"""ODE block modules: the continuous block (also an RK-Net with a fixed-step solver) and its
ResNet counterpart (Euler steps with separate weights per step)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from odespec.compile.dynamics import DynamicsNet
from odespec.errors import SeriesInputError
from odespec.layers.series_modules import Series
from odespec.solvers.config import GradientConfig, SolverConfig
from odespec.solvers.options import SolverOptions
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

    t: torch.Tensor  # a buffer

    def __init__(self, spec: OdeBlockSpec):
        super().__init__()
        self.spec = spec
        self.augmenter: Optional[Augment] = Augment(spec.augment) if spec.augment else None
        # a buffer, so .to(device, dtype) moves the times along with the weights
        self.register_buffer("t", torch.tensor(spec.t, dtype=torch.get_default_dtype()), persistent=False)
        self.trajectory = spec.output == "trajectory"
        self.nfe_forward = 0
        self.nfe_backward = 0
        #: a ``t: query`` block is called ``block(x, series)`` (the model's series protocol,
        #: :mod:`odespec.layers.series_modules`) and solves to each sample's query times
        self.reads_series = spec.query

    def forward(self, x: torch.Tensor, series: Optional[Series] = None) -> torch.Tensor:
        if self.augmenter is not None:
            x = self.augmenter(x)
        if self.reads_series:
            query = series.query_times if series is not None else None
            if query is None:
                raise SeriesInputError("this ODE block (t: query) solves to each sample's query times, but the "
                                       "call gave none", "call the model as model(input, ..., query_times=...)")
            ys = self.solve(x, query.to(x.dtype))  # (query, batch, *state)
        else:
            ys = self.solve(x)  # (len(t), batch, *state)
        # batch-first trajectories: (batch, len(t), *state), the layout every other layer expects
        return ys.movedim(0, 1) if self.trajectory else ys[-1]

    def solve(self, y0: torch.Tensor, query_times: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The states at the block's times, ``(len(t), batch, *state)``; a ``t: query`` block's at
        each sample's ``query_times`` (batch, K), ``(K, batch, *state)``."""
        raise NotImplementedError


@dataclass(frozen=True)
class SolveCall:
    """What one solve of an ODE block gets besides its times: the vector field, the initial
    state (a tensor, or a tuple of tensors when a hook adds channels), the tolerances (one per
    tensor of a tuple state) and the integrator's parsed options."""

    func: Callable[..., Any]
    y0: Any
    rtol: Any
    atol: Any
    options: SolverOptions


class SolveHook(Protocol):
    """Changes an ODE block's solves while autograd is on; training uses it for regularisers and
    the NFE budget (:mod:`odespec.train.regularise`). Evaluation and export never see it."""

    def prepare(self, block: "ODEBlock", call: SolveCall) -> SolveCall:
        """The solve to run instead of ``call``."""

    def finish(self, block: "ODEBlock", sol: Any) -> torch.Tensor:
        """The block's states ``(len(t), batch, *state)`` from the hooked solve's solution."""


class ODEBlock(BlockBase):
    """A continuous-depth block: y(t0) = input, output y(t_end) or the trajectory at ``t``.

    The solver and gradient method come from the spec, turned once into what a solve needs.
    ``nfe_forward`` / ``nfe_backward`` report function evaluations of the last forward /
    backward pass. ``dynamics`` shares an existing network (and so its weights) instead of
    building one: :meth:`with_solver` makes such twins.
    """

    def __init__(self, spec: OdeBlockSpec, dynamics: Optional[DynamicsNet] = None):
        super().__init__(spec)
        self.dynamics = dynamics if dynamics is not None else DynamicsNet(spec.dynamics, spec.state_shape)
        self.last_stats: Optional[Any] = None
        solver = spec.solver
        self._tableau = solver.tableau
        self._options = solver.integration_options()
        self._gradient = spec.gradient.for_solver(solver).make()
        #: set by training only; None: every solve is exactly as compiled
        self.solve_hook: Optional[SolveHook] = None

    def with_solver(self, solver: SolverConfig, gradient: Optional[GradientConfig] = None) -> "ODEBlock":
        """This block solved with ``solver`` (and ``gradient``, else its own): a new module that
        shares this one's dynamics network, times and mode."""
        twin = ODEBlock(self.spec.with_solver(solver, gradient), dynamics=self.dynamics)
        twin.t = self.t  # this block's dtype and device
        twin.train(self.training)
        return twin

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

    def solve(self, y0: torch.Tensor, query_times: Optional[torch.Tensor] = None) -> torch.Tensor:
        from odespec.solvers import solve, solve_per_sample

        before = self.dynamics.nfe
        grad_on = torch.is_grad_enabled()
        call = SolveCall(self.dynamics, y0, self.spec.solver.rtol, self.spec.solver.atol, self._options)
        hook = self.solve_hook if grad_on else None
        if hook is not None:
            call = hook.prepare(self, call)
        # without autograd every gradient method's forward is the same plain solve
        gradient = self._gradient if grad_on else "backprop"
        sol: Any
        if query_times is None:
            sol = solve(call.func, call.y0, self.t, method=self._tableau, rtol=call.rtol, atol=call.atol,
                        options=call.options, gradient=gradient)
        else:
            try:
                sol = solve_per_sample(call.func, call.y0, query_times, start=self.spec.start, method=self._tableau,
                                       rtol=call.rtol, atol=call.atol, options=call.options, gradient=gradient)
            except ValueError as e:  # the caller's times out of order or not finite
                raise SeriesInputError(f"ODE block (t: query, start {self.spec.start:g}): {e}",
                                       "each sample's query times must be non-decreasing and at or after the "
                                       "block's start") from None
        self.last_stats = sol.stats
        self.nfe_forward = self.dynamics.nfe - before
        return sol.ys if hook is None else hook.finish(self, sol)

    def extra_repr(self) -> str:
        s = self.spec.solver
        return (f"family={self.spec.family}, {self.spec.describe_times()}, "
                f"method={s.method}, {s.describe_options()}, gradient={self.spec.gradient.method}")


class ResNetBlock(BlockBase):
    """The ResNet twin of an ODE block: ``y_{k+1} = y_k + h f_k(t_k, y_k)`` with separate
    weights for every step k (Euler's method in disguise, as the paper puts it).

    Steps go through the solvers' one ``rk_step`` with the Euler tableau, on the same grid a
    fixed-step solve would use.
    """

    def __init__(self, spec: OdeBlockSpec):
        super().__init__(spec)
        from odespec.solvers.grid import fixed_grid

        assert spec.solver.steps is not None  # validate refuses a resnet block without steps
        self.grid = fixed_grid(spec.t, spec.solver.steps)
        n = sum(len(interval) for interval in self.grid)
        self.dynamics = nn.ModuleList(DynamicsNet(spec.dynamics, spec.state_shape) for _ in range(n))

    def solve(self, y0: torch.Tensor, query_times: Optional[torch.Tensor] = None) -> torch.Tensor:
        # the validator refuses t: query for a ResNet block (its weights are per step of one grid)
        assert query_times is None
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
