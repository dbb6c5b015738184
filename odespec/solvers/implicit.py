"""One step of an implicit Runge-Kutta method: the stage equations solved by simplified Newton.

A method with ``s`` stages defines its stage derivatives implicitly::

    k_i = f(t + c_i h, y + h * sum_j a_ij k_j),        y_next = y + h * sum_i b_i k_i.

Stages whose row of ``a`` is all zero (trapezoid's and TR-BDF2's first) are plain evaluations;
the others, ``K``, solve ``G(K) = K - F(K) = 0``. The iteration is *simplified* Newton (Hairer &
Wanner, *Solving ODEs II*, IV.8): a Jacobian ``J = df/dy`` at ``(t, y)``, the matrix
``I - h (A (x) J)`` factorised once, then each iteration evaluates every unknown stage once and
takes one solve. For a linear problem the first iteration is exact. ``J`` and the factors are
kept for the next steps while the iteration contracts fast with them (:class:`JacobianReuse`),
so a step costs ``iterations * stages`` evaluations of ``f`` and, now and then, a Jacobian.

Batched states: the samples of a batch ``(B, ...)`` are independent for the vector fields odespec
builds, so ``J`` is block diagonal. ``jacobian="batch"`` computes only the blocks (one batched
vector-Jacobian product with ``m`` seeds, ``m`` the size of one sample) and solves ``B`` systems of
``s*m`` unknowns in one batched call, instead of one of ``s*B*m``: memory ``B*(s*m)**2`` instead
of ``(s*B*m)**2``. The matrix only steers the iteration: convergence is measured on the
iteration's own updates, so a vector field that does couple samples still gets its solution
(with slower convergence), never a different one.

Gradients: the Jacobian is a constant to autograd (the Newton matrix changes how fast the
iteration converges, not where to), so backprop differentiates the iterations through ``f``
alone; at convergence that is the implicit function's gradient. ``newton_tol=0`` takes exactly
``max_iters`` iterations without reading any value back to the host: the form a graph unrolls.
"""

from __future__ import annotations

import math
import warnings
from functools import partial
from typing import Any, Callable, Optional

import torch

from odespec.solvers.options import DEFAULT_NEWTON_ITERS, FixedStepOptions
from odespec.solvers.step import StageFunc, StepResult, torch_combine
from odespec.solvers.tableau import ButcherTableau

__all__ = ["implicit_step", "implicit_stepper", "state_jacobian", "fd_jacobian", "fd_steps", "JacobianReuse",
           "NEWTON_TOL_EPS", "JACOBIAN_HOOK", "REUSE_RATE"]

#: the default ``newton_tol``, in machine epsilons of the state's dtype
NEWTON_TOL_EPS = 100.0
#: the attribute of an integrator's wrapped ``func`` holding a Jacobian hook ``(t, y) -> (N, N)``,
#: for a vector field whose output autograd cannot connect to its input (the adjoint's augmented
#: dynamics take their own vector-Jacobian products inside)
JACOBIAN_HOOK = "jac_hook"


def state_jacobian(func: Callable[[Any, torch.Tensor], torch.Tensor], t: Any, y: torch.Tensor,
                   batch: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f(t, y), J)``: ``J`` of shape ``(B, m, m)``, the blocks ``d f_b / d y_b`` of the samples
    along ``y``'s first dimension (``batch``), or ``(1, N, N)`` over the whole state.

    ``f(t, y)`` keeps its ordinary autograd history (it is a stage of the step and the
    iteration's first guess); ``J`` is detached. One evaluation of ``func`` and one batched
    vector-Jacobian product with ``m`` seeds (``torch.func``, which leaves the ordinary autograd
    graph as it is; a ``func`` that ``torch.func`` cannot transform gets plain autograd).
    """
    n_batch = y.shape[0] if batch and y.dim() >= 2 else 1
    m = y.numel() // max(n_batch, 1)
    eye = torch.eye(m, dtype=y.dtype, device=y.device)
    seeds = eye[:, None, :].expand(m, n_batch, m).reshape((m, *y.shape))
    # seed p picks output p of every sample; row p of sample b is then sum_b' df_b'p/dy_b, which
    # is df_bp/dy_b for independent samples
    try:
        got = torch.func.vjp(lambda x: func(t, x), y)
        fy, pullback = got[0], got[1]
        (rows,) = torch.func.vmap(pullback)(seeds)
    except RuntimeError:
        fy, rows = _autograd_rows(func, t, y, seeds)
    jac = rows.detach().reshape(m, n_batch, m).permute(1, 0, 2)
    return fy, jac


def fd_steps(y_flat: torch.Tensor) -> torch.Tensor:
    """The forward-difference step of each element of ``y_flat``: ``sqrt(eps) * max(1, |y|)``
    (``eps`` of its dtype), the step that balances truncation (``~step``) against rounding
    (``~eps / step``). The exported graph computes the same expression (:mod:`odespec.export.implicit_graph`)."""
    return torch.clamp(y_flat.abs(), min=1.0) * math.sqrt(torch.finfo(y_flat.dtype).eps)


def fd_jacobian(func: Callable[[Any, torch.Tensor], torch.Tensor], t: Any,
                y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f(t, y), J)`` with ``J`` of shape ``(B, m, m)``: each sample's block by forward
    differences, ``J[b, :, j] = (f(y_b + d_bj e_j) - f(y_b)) / d_bj`` (:func:`fd_steps`).

    One evaluation of ``func`` on the ``m * B`` perturbed states stacked along the first
    dimension (sample ``j * B + b`` is sample ``b`` nudged in element ``j``): the samples must be
    independent and ``t`` shared, as in an ODE block. This is the Jacobian an ONNX graph can
    compute (ONNX has no autodiff), so the PyTorch twin of an exported implicit solve uses it too.
    ``ValueError`` for a state without a batch dimension.
    """
    if y.dim() < 2:
        raise ValueError("jacobian='fd' needs a batched state (batch, ...) whose samples are independent; "
                         f"got shape {tuple(y.shape)}: use jacobian='dense'")
    f0 = func(t, y)
    n_batch, m = y.shape[0], y[0].numel()
    with torch.no_grad():
        y_flat = y.detach().reshape(n_batch, m)
        step = fd_steps(y_flat)
        eye = torch.eye(m, dtype=y.dtype, device=y.device)
        nudged = (y_flat[None] + eye[:, None, :] * step[None]).reshape((m * n_batch, *y.shape[1:]))
        f_nudged = func(t, nudged).reshape(m, n_batch, m)
        cols = (f_nudged - f0.detach().reshape(n_batch, m)[None]) / step.t()[:, :, None]
    return f0, cols.permute(1, 2, 0)


def _autograd_rows(func: Callable[[Any, torch.Tensor], torch.Tensor], t: Any, y: torch.Tensor,
                   seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`state_jacobian`'s products by plain autograd, one seed at a time."""
    grad_on = torch.is_grad_enabled()
    with torch.enable_grad():
        y_in = y.detach().requires_grad_(True)
        fy = func(t, y_in)
    if fy.requires_grad:
        got = [torch.autograd.grad(fy, y_in, seed, retain_graph=True, allow_unused=True)[0] for seed in seeds]
        rows = torch.stack([torch.zeros_like(y) if g is None else g for g in got])
    else:
        rows = torch.zeros_like(seeds)
    # fy hangs off the detached copy; the stage needs f(t, y) on y's own history
    f0 = func(t, y) if grad_on else fy.detach()
    return f0, rows


def _newton_matrix(tableau: ButcherTableau, unknown: list[int], h: float, jac: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The LU factors of ``I - h (A_UU (x) J)`` per block, ``A_UU`` the stage matrix among the
    unknown stages."""
    n_batch, m, _ = jac.shape
    s = len(unknown)
    a_uu = torch.tensor([[tableau.a[i][j] for j in unknown] for i in unknown], dtype=jac.dtype, device=jac.device)
    kron = torch.einsum("ij,bpq->bipjq", a_uu, jac).reshape(n_batch, s * m, s * m)
    eye = torch.eye(s * m, dtype=jac.dtype, device=jac.device)
    lu, pivots = torch.linalg.lu_factor(eye - h * kron)
    return lu, pivots


class JacobianReuse:
    """The Jacobian and the factorised Newton matrix of the last step, for the next one.

    Simplified Newton needs a matrix near the Jacobian, not the Jacobian at the step's start
    (Hairer & Wanner IV.8): the iteration measures its own convergence. Taking ``J`` again costs
    a batched vector-Jacobian product, many evaluations of ``func`` in time, so a solve keeps it
    while the iteration contracts quickly with it (rate <= :data:`REUSE_RATE`), refactorises only
    where the step size changes, and takes a fresh ``J`` for a step whose iteration fails with
    the kept one. One object serves one solve (``implicit_stepper`` makes it)."""

    __slots__ = ("jac", "h", "lu", "pivots", "keep")

    def __init__(self) -> None:
        self.jac: Optional[torch.Tensor] = None
        self.h: Optional[float] = None
        self.lu: Optional[tuple[torch.Tensor, ...]] = None
        self.keep = False

    def kept(self, y: torch.Tensor) -> Optional[torch.Tensor]:
        """The kept Jacobian, if it may serve a step from ``y``."""
        jac = self.jac
        if not self.keep or jac is None or jac.dtype != y.dtype or jac.device != y.device:
            return None
        return jac if jac.shape[0] * jac.shape[1] == y.numel() else None

    def matrix(self, tableau: ButcherTableau, unknown: list[int], h: float, jac: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The factorised Newton matrix of ``jac`` and ``h``, made again only when either changed."""
        if self.lu is None or self.jac is not jac or self.h != h:
            self.jac, self.h, self.lu = jac, h, _newton_matrix(tableau, unknown, h, jac)
        return self.lu


#: a kept Jacobian serves the next step while the iteration contracted at least this fast with it
#: (Hairer & Wanner's RADAU5 advises 0.1 where Jacobians are costly, as a batched vector-Jacobian
#: product with one seed per state component is)
REUSE_RATE = 0.1


def implicit_step(
    func: StageFunc, t: Any, y: torch.Tensor, h: float, k1: Optional[torch.Tensor], *,
    tableau: ButcherTableau, max_iters: int, newton_tol: Optional[float], jacobian: str,
    reuse: Optional[JacobianReuse] = None,
) -> StepResult[torch.Tensor]:
    """One step of the implicit ``tableau`` (see the module docstring).

    ``StepResult.ks`` holds the ``s`` stage derivatives (the converged iterates, so that
    ``y_next == y + h * sum b_i ks[i]`` exactly, as the dense output assumes) followed by
    ``f(t, y)``; whatever the vector field attached to the derivatives it returned (the adjoint's
    quadrature integrand) is carried over to the stage it belongs to. ``k1`` is unused (no FSAL).
    ``reuse``: the Jacobian kept from the step before (:class:`JacobianReuse`); not with
    ``newton_tol=0``, whose iteration reads nothing back to decide.
    """
    s = tableau.stages
    explicit = tableau.explicit_stages
    unknown = [i for i in range(s) if i not in explicit]
    tol = newton_tol if newton_tol is not None else NEWTON_TOL_EPS * torch.finfo(y.dtype).eps
    if tol == 0.0:
        reuse = None
    kept = reuse.kept(y) if reuse is not None else None
    if kept is not None:
        f0, jac = func(t, y), kept
    else:
        f0, jac = _jacobian(func, t, y, jacobian)
    c = tableau.c
    ks: list[torch.Tensor] = [f0] * s
    for i in explicit:
        if c[i] != 0.0:
            ks[i] = func(t + c[i] * h, y)
    lu = reuse.matrix(tableau, unknown, h, jac) if reuse is not None else _newton_matrix(tableau, unknown, h, jac)
    _predict(ks, f0, unknown, lu, y)
    converged, evals, rate = _iterate(func, t, y, h, ks, tableau, unknown, lu, jac.shape[0], jac.shape[1],
                                      max_iters, tol)
    if not converged and reuse is not None and kept is not None:
        # the kept Jacobian did not do: the step again from the start with a fresh one
        _, jac = _jacobian(func, t, y, jacobian)
        lu = reuse.matrix(tableau, unknown, h, jac)
        _predict(ks, f0, unknown, lu, y)
        converged, evals, rate = _iterate(func, t, y, h, ks, tableau, unknown, lu, jac.shape[0], jac.shape[1],
                                          max_iters, tol)
    if reuse is not None:
        reuse.keep = converged and rate <= REUSE_RATE
    if not converged:
        warnings.warn(f"{tableau.name}: the Newton iteration did not converge in {max_iters} iterations; the "
                      "step may be too large for the stiffness or nonlinearity of the problem: take more steps "
                      "(steps/step_size) or raise options['max_iters']", RuntimeWarning, stacklevel=2)
    for i, f in zip(unknown, evals, strict=True):
        # the stage's integrand (the adjoint's quadrature) rides on the derivative func returned
        if f.__dict__:
            ks[i].__dict__.update(f.__dict__)
    y_next = torch_combine(y, h, [(coef, ks[j]) for j, coef in tableau.b_terms])
    return StepResult(y_next=y_next, error=None, ks=ks + [f0])


def _jacobian(func: StageFunc, t: Any, y: torch.Tensor, jacobian: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f(t, y), J)`` as the Newton matrix takes it: from the vector field's own hook, by
    forward differences (:func:`fd_jacobian`, ``jacobian="fd"``), or :func:`state_jacobian` (blocks per sample with ``jacobian="batch"``, or ``"auto"`` and a
    state of two or more dimensions)."""
    hook = getattr(func, JACOBIAN_HOOK, None)
    if hook is not None:
        return func(t, y), hook(t, y).detach()[None]
    if jacobian == "fd":
        return fd_jacobian(func, t, y)
    batch = jacobian == "batch" or (jacobian == "auto" and y.dim() >= 2)
    return state_jacobian(func, t, y, batch)


def _predict(ks: list[torch.Tensor], f0: torch.Tensor, unknown: list[int], lu: tuple[torch.Tensor, ...],
             y: torch.Tensor) -> None:
    """The unknown stages' starting values (in ``ks``, in place): ``(I - h A_UU (x) J)^-1`` applied
    to ``f(t, y)`` in every stage, the first Newton iterate from stage values at ``y`` with
    ``f(t, y)`` standing for the stages' own evaluations (no extra evaluation of ``func``).

    Starting from ``k = f(t, y)`` instead, the stage values ``y + h c_i f(t, y)`` are an explicit
    Euler step, off by about ``h lambda`` in a stiff direction: on a fast rate of 1e6 the first
    iterate's error was 9e4. This start is exact for a linear autonomous problem, and within
    ``O(h^2)`` of the stages on a smooth one (``(A (x) J) f = c J f``), where ``f(t, y)`` is ``O(h)``
    off (Hairer & Wanner IV.8 start the stage increments from zero)."""
    n_u, n_batch = len(unknown), lu[0].shape[0]
    m = lu[0].shape[1] // n_u
    rhs = f0.reshape(n_batch, 1, m).expand(n_batch, n_u, m).reshape(n_batch, n_u * m, 1).to(lu[0].dtype)
    start = torch.linalg.lu_solve(lu[0], lu[1], rhs).reshape(n_batch, n_u, m).permute(1, 0, 2)
    for idx, i in enumerate(unknown):
        ks[i] = start[idx].reshape(y.shape).to(f0.dtype)


def _iterate(func: StageFunc, t: Any, y: torch.Tensor, h: float, ks: list[torch.Tensor], tableau: ButcherTableau,
             unknown: list[int], lu: tuple[torch.Tensor, ...], n_batch: int, m: int, max_iters: int,
             tol: float) -> tuple[bool, list[torch.Tensor], float]:
    """The simplified Newton iteration on the unknown stages of ``ks`` (updated in place):
    ``(converged, the last evaluations of func at the stages, the last contraction rate)``."""
    c = tableau.c
    n_u = len(unknown)
    scale = None
    d_prev: Optional[float] = None
    rate = 0.0
    converged = tol == 0.0
    evals: list[torch.Tensor] = []
    for _ in range(max_iters):
        evals = []
        for i in unknown:
            terms = [(coef, ks[j]) for j, coef in tableau.a_terms[i]]
            evals.append(func(t + c[i] * h, torch_combine(y, h, terms)))
        residual = torch.stack([ks[i] - f for i, f in zip(unknown, evals, strict=True)])
        # (s', B, m) -> (B, s' m, 1): each block's unknowns together
        # (in the Jacobian's dtype: a func that promotes, e.g. a float32 state with float64 times)
        rhs = residual.reshape(n_u, n_batch, m).permute(1, 0, 2).reshape(n_batch, n_u * m, 1).to(lu[0].dtype)
        delta = torch.linalg.lu_solve(lu[0], lu[1], rhs).reshape(n_batch, n_u, m).permute(1, 0, 2)
        delta = delta.reshape((n_u, *y.shape))
        for idx, i in enumerate(unknown):
            ks[i] = ks[i] - delta[idx]
        if tol == 0.0:
            continue
        if scale is None:
            scale = 1.0 + float(y.detach().abs().max()) if y.numel() else 1.0
        d = abs(h) * float(delta.detach().abs().max()) / scale
        if not d == d or d == float("inf"):
            return False, evals, math.inf  # non-finite: the integrator reports it
        if d_prev is not None:
            rate = d / d_prev if d_prev > 0.0 else 0.0
        if d <= tol or (d_prev is not None and d < d_prev and d * d / (d_prev - d) <= tol):
            # the second: the remaining error of a linearly converging iteration, theta/(1-theta)*d
            return True, evals, rate
        d_prev = d
    return converged, evals, rate


def implicit_stepper(tableau: ButcherTableau, options: Optional[FixedStepOptions] = None) -> Callable[..., StepResult]:
    """:func:`implicit_step` with the iteration's options (defaults where ``options`` is None or
    leaves them unset), in the integrators' ``step(func, t, y, h, k1)`` form."""
    opts = options if options is not None else FixedStepOptions()
    iters = opts.max_iters if opts.max_iters is not None else DEFAULT_NEWTON_ITERS
    return partial(implicit_step, tableau=tableau, max_iters=iters, newton_tol=opts.newton_tol,
                   jacobian=opts.jacobian, reuse=JacobianReuse())
