"""The continuous adjoint (Chen et al. 2018, Appendix B), optionally with seminorms (Kidger,
Chen & Lyons 2021).

The forward pass solves without recording a graph and keeps only the outputs. The backward pass
solves the augmented system ``z = [y, a, g]`` backwards in time, interval by interval between
the output times::

    dy/dt = f(t, y),   da/dt = -a^T df/dy,   dg/dt = -a^T df/dtheta,

from ``y(t_N)``, ``a(t_N) = dL/dy(t_N)``, ``g = 0``; at each output time ``y`` is reset to the
forward value and ``dL/dy(t_i)`` is added to ``a``. At ``t_0``, ``a = dL/dy0`` and
``g = dL/dtheta``. Each evaluation of the augmented dynamics is one evaluation of ``f`` with
autograd and one vector-Jacobian product. Memory does not grow with the number of steps: no
graph outlives one evaluation, and the integrator keeps only the current state.

Error control of the backward solve uses a *mixed* norm, the largest scaled RMS norm over the
channels ``y``, ``a`` and each parameter tensor (as torchdiffeq). ``seminorm=True`` drops the
parameter channels from it: nothing else depends on them, so their local error only adds up,
and the step size is set by ``y`` and ``a`` alone, which takes fewer steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch.autograd.function import once_differentiable

from odespec.errors import SolverError
from odespec.solvers.callbacks import Callbacks
from odespec.solvers.checks import check_tolerance
from odespec.solvers.common import TimedFunc
from odespec.solvers.config import ADJOINT
from odespec.solvers.gradient.base import (
    ParamsGradientMethod,
    Problem,
    Solved,
    SolveRun,
    plain_solve,
    register_gradient,
)
from odespec.solvers.gradient.vjp import vjp
from odespec.solvers.integrate import Setup, make_setup
from odespec.solvers.norms import CallableNorm, ErrorNorm, MixedNorm, Tol
from odespec.solvers.options import AdaptiveOptions, AnyMethod, InvalidOptionError, OptionsArg
from odespec.solvers.solution import BackwardStats
from odespec.solvers.tableau import ButcherTableau
from odespec.solvers.tableaus import OtherMethod, get_tableau, other_method

__all__ = ["Adjoint"]


@register_gradient
class Adjoint(ParamsGradientMethod):
    """``gradient="adjoint"``: the continuous adjoint, memory independent of the step count.

    ``rtol``/``atol``/``method``/``options`` of the backward solve default to the forward
    ones (``options`` only when the method is the same, as torchdiffeq). ``params``: the tensors
    to differentiate besides ``y0`` (default: an ``nn.Module``'s parameters, or the leaves
    ``func`` depends on). ``seminorm``: leave the parameter-gradient channels out of error
    control. ``norm``: the backward solve's error norm, a callable given the scaled error
    estimate as torchdiffeq gives its adjoint norm, the tuple ``(t, y, adj_y, *adj_params)``
    (``t`` is 0: odespec integrates no channel for the time's adjoint, whose gradient it gets
    in closed form).
    """

    name = "adjoint"
    decl = ADJOINT

    def __init__(
        self,
        *,
        rtol: Optional[Tol] = None,
        atol: Optional[Tol] = None,
        method: Union[str, ButcherTableau, OtherMethod, None] = None,
        options: Optional[Mapping[str, Any]] = None,
        params: Optional[Iterable[torch.Tensor]] = None,
        seminorm: bool = False,
        norm: Optional[Callable[[tuple[torch.Tensor, ...]], Any]] = None,
    ):
        if not isinstance(seminorm, bool):
            raise InvalidOptionError(f"seminorm must be a bool, got {seminorm!r}", key="seminorm")
        if norm is not None and (seminorm or not callable(norm)):
            raise InvalidOptionError("the adjoint's norm is a callable or the seminorm, not both"
                                     if callable(norm) else f"the adjoint's norm must be callable, got {norm!r}",
                                     key="norm")
        self.norm = norm
        self.rtol = rtol
        self.atol = atol
        self.method = method
        self.options = options
        self.params = None if params is None else tuple(params)
        self.seminorm = seminorm

    def solve(self, problem: Problem, stats: BackwardStats) -> Solved:
        setup = self.backward_setup(problem)  # validate now, not in the middle of .backward()
        params = self.grad_params(problem)
        if params is None:
            return plain_solve(problem)
        run = _AdjointRun(problem, setup, params, self.seminorm, stats, self.norm)
        ys = _AdjointFunction.apply(run, problem.y0, *params)
        return Solved(ys, run.outcome, run.nfe)

    def backward_setup(self, problem: Problem) -> Setup:
        """The method, options and tolerances of the backward solves."""
        fwd = problem.setup
        tableau = fwd.tableau if self.method is None else _tableau(self.method)
        options: OptionsArg = self.options
        if options is None:
            if tableau is not fwd.tableau and problem.options:
                raise InvalidOptionError(
                    "adjoint_method differs from method, so the forward options cannot be reused "
                    "for the backward solve; pass adjoint_options as well",
                    key="adjoint_options",
                )
            options = problem.options if tableau is fwd.tableau else None
        rtol = fwd.rtol if self.rtol is None else self.rtol
        atol = fwd.atol if self.atol is None else self.atol
        setup = make_setup(tableau, options, rtol, atol)
        if not setup.fixed:
            check_tolerance("adjoint_rtol", rtol, problem.y0)
            check_tolerance("adjoint_atol", atol, problem.y0)
        return setup


def _tableau(method: Union[str, ButcherTableau, OtherMethod]) -> AnyMethod:
    if isinstance(method, (ButcherTableau, OtherMethod)):
        return method
    return other_method(method) or get_tableau(method)


# the attribute by which a derivative of the augmented dynamics carries its quadrature integrand
_QUAD = "_odespec_dg"


class _Augmented:
    """The augmented dynamics ``[f, -a^T df/dy, -a^T df/dtheta]`` on a flat state, or, with
    ``quadrature=True``, ``[f, -a^T df/dy]`` with ``-a^T df/dtheta`` attached to the returned
    tensor for :class:`_ParamQuadrature`."""

    def __init__(self, func: Callable, shape: torch.Size, params: Sequence[torch.Tensor],
                 quadrature: bool = False):
        self.func = func
        self.shape = shape
        self.n = shape.numel()
        self.params = tuple(params)
        self.quadrature = quadrature

    def __call__(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        n = self.n
        if self.quadrature:
            # z is [y, a]: one view and one unbind instead of two slices and two views
            y, a = z.view((2,) + self.shape).unbind(0)
        else:
            y = z[:n].view(self.shape)
            a = z[n : 2 * n].view(self.shape)
        inputs: tuple[torch.Tensor, ...]
        with torch.enable_grad():
            y_ = y.detach().requires_grad_(True)
            fy = self.func(t, y_)
            inputs = (y_,) + self.params
            if fy.requires_grad:
                grads = vjp((fy,), inputs, (-a,))
            else:
                grads = (None,) * len(inputs)
        dense = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs, strict=True)]
        # no autograd here: fy's graph is not extended, so it needs no detach
        if self.quadrature:
            out = torch.cat((fy.reshape(-1), dense[0].reshape(-1)))
            setattr(out, _QUAD, dense[1:])
            return out
        return torch.cat([fy.reshape(-1)] + [g.reshape(-1) for g in dense])


    def odespec_newton_jacobian(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The Newton matrix's Jacobian for an implicit method's backward steps (``(N, N)`` over
        the flat state): ``[[J, 0], [0, -J^T]]`` on ``[y, a]`` with ``J = df/dy``, zero for the
        parameter channels. The second-order block ``d(-a^T J)/dy`` is left out: it only slows
        the iteration (which measures its own convergence), and leaving it out spares
        differentiating through the vector-Jacobian product."""
        from odespec.solvers.implicit import state_jacobian  # the implicit step imports this module's users

        n = self.n
        y = z[:n].view(self.shape)
        _, jac = state_jacobian(self.func, t, y, batch=False)
        j = jac[0]
        out = torch.zeros(z.numel(), z.numel(), dtype=z.dtype, device=z.device)
        out[:n, :n] = j
        out[n:2 * n, n:2 * n] = -j.t()
        return out


class _ParamQuadrature:
    """``dL/dtheta = int -a^T df/dtheta dt``, summed with the method's weights ``b`` over the
    accepted steps of the backward solves (a quadrature: nothing depends on it, so keeping it
    out of the state spares every stage combination its size, and the integrand of stages with
    ``b_i = 0`` is never summed). One fused ``_foreach_add_`` per weight and step."""

    def __init__(self, tableau: ButcherTableau, params: Sequence[torch.Tensor], like: torch.Tensor):
        self.b_terms = tableau.b_terms
        self.g = [torch.zeros(q.shape, dtype=like.dtype, device=like.device) for q in params]

    def accept(self, h: float, ks: Sequence[torch.Tensor]) -> None:
        if not self.g:
            return  # no parameters (adjoint_params=()): torch's foreach ops refuse empty lists
        for j, b in self.b_terms:
            torch._foreach_add_(self.g, getattr(ks[j], _QUAD), alpha=h * b)


class _AdjointRun(SolveRun):
    """State shared by the forward and backward of one adjoint solve."""

    #: integrate the parameter gradient as a quadrature where error control allows (tests
    #: switch it off to compare with the parameter channels carried in the state)
    quadrature = True

    def __init__(self, problem: Problem, setup: Setup, params: tuple[torch.Tensor, ...],
                 seminorm: bool, stats: BackwardStats, norm: Optional[Callable[..., Any]] = None):
        super().__init__(problem, params, stats)
        self.setup = setup
        self.seminorm = seminorm
        self.norm = norm

    def backward(self, ys: torch.Tensor, grad_ys: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(dL/dy0, [dL/dtheta])`` by the backward solves; raises :class:`SolverError`.

        Where the parameter channels are outside error control (fixed steps, or a seminorm)
        they are a quadrature beside the state ``[y, a]``; otherwise they are part of the
        state, so the mixed norm sees their local error.
        """
        p = self.problem
        shape, n = p.y0.shape, p.y0.numel()
        setup = self.setup
        quad = None
        # the quadrature sums a Runge-Kutta step's stages with its weights b; a norm of the
        # caller's sees every channel
        if (self.quadrature and self.norm is None and (setup.fixed or self.seminorm)
                and isinstance(setup.tableau, ButcherTableau)):
            quad = _ParamQuadrature(setup.tableau, self.params, ys)
        aug = _Augmented(p.func, shape, self.params, quadrature=quad is not None)
        f = TimedFunc(aug, p.y0.dtype.to_real(), p.y0.device, Callbacks.of(p.func, "_adjoint"))
        sizes = [n, n] + ([] if quad is not None else [q.numel() for q in self.params])
        norm: Optional[ErrorNorm] = None
        if not setup.fixed:
            z0 = torch.zeros(sum(sizes), dtype=ys.dtype, device=ys.device)
            rtol, atol = _aug_tol(setup.rtol, shape, sizes), _aug_tol(setup.atol, shape, sizes)
            if self.norm is not None:
                norm = _ChannelsNorm(z0, rtol, atol, self.norm, [shape, shape, *(q.shape for q in self.params)])
            else:
                norm = MixedNorm(z0, rtol, atol, sizes, 2 if self.seminorm else len(sizes))
        times = p.times
        a = grad_ys[-1].reshape(-1)
        g = torch.zeros(sum(sizes[2:]), dtype=ys.dtype, device=ys.device)
        stats = self.stats
        stats.passes += 1
        for i in range(ys.shape[0] - 1, 0, -1):
            z = torch.cat([ys[i].reshape(-1), a, g])
            outcome = setup.integrate(f, z, [times[i], times[i - 1]], norm=norm, quad=quad)
            stats.n_steps += outcome.n_steps
            stats.n_accepted += outcome.n_accepted
            stats.n_rejected += outcome.n_rejected
            if outcome.error is not None:
                stats.nfe += f.nfe
                e = outcome.error
                raise SolverError(
                    e.reason, e.t, e.h,
                    f"the adjoint (backward) solve from t={times[i]:.6g} to t={times[i - 1]:.6g} failed: "
                    f"{str(e).split(' (t=')[0]}",
                    e.hint,
                )
            z = outcome.outs[-1]
            a = z[n : 2 * n] + grad_ys[i - 1].reshape(-1)
            g = z[2 * n :]
            if isinstance(setup.opts, AdaptiveOptions) and setup.opts.first_step is None:
                # start the next interval with the step this one ended with, instead of
                # spending evaluations on the initial-step heuristic again
                setup = dataclasses.replace(
                    setup, opts=dataclasses.replace(setup.opts, first_step=_first_step(outcome, setup.opts))
                )
        stats.nfe += f.nfe
        if quad is not None:
            return a.view(shape), quad.g
        grads = list(g.split(sizes[2:])) if self.params else []
        return a.view(shape), [gr.view_as(q) for gr, q in zip(grads, self.params, strict=True)]


class _ChannelsNorm(CallableNorm):
    """The caller's adjoint norm (torchdiffeq's ``adjoint_options["norm"]``), given the scaled
    error of the flat augmented state as the tuple ``(t, y, adj_y, *adj_params)`` in their
    shapes; ``t`` is a zero (no channel here, see :class:`Adjoint`)."""

    def __init__(self, z0: torch.Tensor, rtol: Tol, atol: Tol, norm: Callable[..., Any],
                 shapes: Sequence[torch.Size]):
        super().__init__(z0, rtol, atol, norm)
        self.shapes = list(shapes)
        self.sizes = [s.numel() for s in self.shapes]

    def _apply(self, q: torch.Tensor) -> torch.Tensor:
        parts = q.reshape(-1).split(self.sizes)
        t = torch.zeros((), dtype=q.dtype, device=q.device)
        value = self.norm((t, *(p.view(s) for p, s in zip(parts, self.shapes, strict=True))))
        return torch.as_tensor(value, dtype=q.dtype.to_real(), device=q.device).reshape(())


def _first_step(outcome: Any, opts: AdaptiveOptions) -> Optional[float]:
    h = abs(outcome.step_size)
    return h if h > 0.0 and h >= opts.min_step else None


def _aug_tol(tol: Tol, shape: torch.Size, sizes: Sequence[int]) -> Tol:
    """A tolerance of the forward state's shape, extended to the augmented state: the same per
    element for ``y`` and ``a``, its smallest entry for the parameter channels."""
    if not isinstance(tol, torch.Tensor) or tol.ndim == 0:
        return tol
    per = tol.expand(shape).reshape(-1)
    rest = sum(sizes[2:])
    return torch.cat([per, per, per.min().expand(rest)])


class _AdjointFunction(torch.autograd.Function):
    """``ys = solve(y0; params)`` with the adjoint as its backward."""

    @staticmethod
    def forward(ctx: Any, run: _AdjointRun, y0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ys = run.forward(y0)
        ctx.run = run
        ctx.save_for_backward(ys)
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_ys: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        (ys,) = ctx.saved_tensors
        with torch.no_grad():
            grad_y0, grad_params = ctx.run.backward(ys, grad_ys)
        return (None, grad_y0, *grad_params)
