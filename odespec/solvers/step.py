"""The one generic explicit Runge-Kutta step, shared by fixed-step, adaptive and ONNX unrolling.

All arithmetic on state values goes through a *combiner*::

    combine(base, h, terms) == base + h * sum(c * k for c, k in terms)   # base None -> h * sum

so the ONNX exporter can run the very same :func:`rk_step` over symbolic values by passing its
own combiner. ``rk_step`` itself only does Python arithmetic on ``t`` and ``h`` (stage times)
and never touches ``y`` or the stage derivatives directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Generic, Optional, Sequence, TypeVar, Union, cast

import torch

from odespec.solvers.options import FixedStepOptions
from odespec.solvers.tableau import ButcherTableau

__all__ = [
    "Y",
    "H",
    "Combine",
    "StepResult",
    "torch_combine",
    "rk_step",
    "stepper",
    "error_estimates",
    "dense_stages",
    "interpolate",
    "own",
    "const_tensor",
]

Y = TypeVar("Y")
#: a step size: a Python float, or a 0-d tensor
H = Union[float, torch.Tensor]
S = TypeVar("S", bound=H)
#: ``combine(base, h, terms) == base + h * sum(c * k for c, k in terms)``, generic in the state
#: values ``Y`` and the step size ``S`` it takes (the ONNX exporter's combiners take float steps)
Combine = Callable[[Optional[Y], S, Sequence[tuple[float, Y]]], Y]
#: the vector field as the step sees it: ``func(t_stage, y_stage) -> dy/dt``. A time is a float,
#: a 0-d tensor, or the exporter's symbolic time: the step only computes ``t + c_i * h`` with it
StageFunc = Callable[[Any, Y], Y]


@dataclass(slots=True)
class StepResult(Generic[Y]):
    """What one RK step produced.

    ``ks`` are the stage derivatives (for an FSAL method the last one is ``f(t + h, y_next)``,
    the next step's first stage). ``error`` is ``h * sum(b_err_i k_i)`` or ``None`` (no
    estimator, or not requested); ``error_aux`` is DOP853's companion estimate.
    """

    y_next: Y
    error: Optional[Y]
    ks: list[Y]
    error_aux: Optional[Y] = None


# Stacking copies every k and the matmul has a fixed dispatch cost, so a chain of
# torch.add(acc, k, alpha=c*h) wins for short sums and one stacked addmv for long sums over small
# states; on CPU (states of 2 to 65k elements, with and without autograd) the two cross near 8
# terms. Only DOP853 (12-16 terms) takes that branch.
_STACK_MIN_TERMS = 8
_STACK_MAX_NUMEL = 1 << 16
_WEIGHT_CACHE: dict[tuple, torch.Tensor] = {}
_WEIGHT_CACHE_MAX = 256


def const_tensor(values: object, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor of Python numbers on ``device`` without making the host wait for the device.

    ``torch.tensor(values, device="cuda")`` copies synchronously: the host waits for every
    queued kernel, once per dense output here. Built on the host and sent with a non-blocking
    copy instead: from pageable memory CUDA stages the data before the call returns (so the
    host tensor may go), and the copy is ordered after the queued kernels on the stream.
    """
    host = torch.tensor(values, dtype=dtype)
    return host if device.type == "cpu" else host.to(device, non_blocking=True)


def _weights(coeffs: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    key = (coeffs, like.dtype, like.device)
    w = _WEIGHT_CACHE.get(key)
    if w is None:
        w = const_tensor(coeffs, like.dtype, like.device)
        if len(_WEIGHT_CACHE) >= _WEIGHT_CACHE_MAX:
            # dense-output weights change with every theta; don't let them grow the cache
            _WEIGHT_CACHE.clear()
        _WEIGHT_CACHE[key] = w
    return w


def torch_combine(
    base: Optional[torch.Tensor], h: H, terms: Sequence[tuple[float, torch.Tensor]]
) -> torch.Tensor:
    """``base + h * sum(c * k)`` with as few aten ops as possible (see the measurements above).

    With a Python-float ``h`` the step size is folded into each ``alpha``, so a term costs one
    ``add``; with a tensor ``h`` the terms are summed first and scaled once.
    """
    n = len(terms)
    if type(h) is float and 0 < n < _STACK_MIN_TERMS:
        # hot path: every stage of every built-in method except DOP853. The first term makes a
        # fresh tensor; the others accumulate into it in place (no allocation; autograd allows
        # it because no add saves its output).
        c, k = terms[0]
        acc = torch.mul(k, c * h) if base is None else torch.add(base, k, alpha=c * h)
        for i in range(1, n):
            c, k = terms[i]
            acc.add_(k, alpha=c * h)
        return acc
    if n == 0:
        if base is None:
            raise ValueError("combine needs a base or at least one term")
        return base
    k0 = terms[0][1]
    if n >= _STACK_MIN_TERMS and k0.numel() <= _STACK_MAX_NUMEL:
        w = _weights(tuple(c for c, _ in terms), k0)
        stacked = torch.stack([k for _, k in terms]).reshape(n, -1)
        if base is not None and not isinstance(h, torch.Tensor):
            flat = torch.addmv(base.reshape(-1), stacked.t(), w, alpha=h)
            return flat.view(base.shape)
        acc = torch.mv(stacked.t(), w).view(k0.shape)
    else:
        acc = torch.mul(k0, terms[0][0])
        for c, k in terms[1:]:
            acc.add_(k, alpha=c)
    if base is None:
        return acc * h
    return torch.addcmul(base, acc, h) if isinstance(h, torch.Tensor) else torch.add(base, acc, alpha=h)


def rk_step(
    func: StageFunc,
    t: Any,
    y: Y,
    h: H,
    tableau: ButcherTableau,
    *,
    combine: Combine = torch_combine,
    k1: Optional[Y] = None,
    with_error: bool = True,
) -> StepResult[Y]:
    """Take one explicit RK step of size ``h`` from ``(t, y)``.

    ``func(t_stage, y_stage)`` is called with ``t_stage = t + c_i * h`` (plain arithmetic on
    ``t`` and ``h``, which may be floats or 0-d tensors). ``k1``, when given, is ``func(t, y)``
    already known (FSAL reuse). ``with_error=False`` skips the error estimate, e.g. so the
    adaptive solver can compute it outside autograd. All state arithmetic goes through
    ``combine``; zero coefficients are never passed to it.
    """
    if tableau.implicit and not (combine is torch_combine and type(h) is float):
        raise ValueError(f"{tableau.name!r} is an implicit method: its step solves the stage equations by "
                         "Newton's method on torch tensors with a float step; it has no form for another combiner "
                         "(the ONNX export of implicit methods is not implemented yet)")
    if combine is torch_combine and type(h) is float:
        # torch_combine combines tensors: here y and k1 are tensors
        y_t, k1_t = cast(torch.Tensor, y), cast(Optional[torch.Tensor], k1)
        return stepper(tableau, y_t, with_error)(func, t, y_t, h, k1_t)
    return _generic_rk_step(func, t, y, h, k1, tableau=tableau, combine=combine, with_error=with_error)


#: ``step(func, t, y, h, k1) -> StepResult``: one step of a fixed tableau, for a float ``h``
Stepper = Callable[[StageFunc, float, torch.Tensor, float, Optional[torch.Tensor]], StepResult]


def stepper(tableau: ButcherTableau, y: torch.Tensor, with_error: bool = True,
            options: Optional[FixedStepOptions] = None) -> Stepper:
    """:func:`rk_step` for torch tensors and float step sizes, with its code path chosen once.

    The integrators call this once per solve (autograd mode, state size and tableau do not
    change during one) instead of letting every step choose again: the choice reads the grad
    mode and looks up a plan keyed on tableau, dtype, device and rank, about 4 us a step under
    a line profiler, beside ~60 us of a tiny state's whole step.

    An implicit tableau gets :func:`odespec.solvers.implicit.implicit_step`, its Newton iteration
    set by ``options`` (``max_iters``, ``newton_tol``, ``jacobian``; defaults where None).
    """
    if tableau.implicit:
        # imported on use: the implicit step builds on this module's combiner
        from odespec.solvers.implicit import implicit_stepper

        return implicit_stepper(tableau, options)
    if not torch.is_grad_enabled() and y.numel() <= _EAGER_MAX_NUMEL:
        plan = _eager_plan(tableau, with_error and tableau.adaptive, y)
        if plan is not None:
            return partial(_eager_rk_step, plan=plan)
    if tableau.stages < _STACK_MIN_TERMS:
        return partial(_torch_rk_step, tableau=tableau, with_error=with_error)
    return partial(_generic_rk_step, tableau=tableau, combine=torch_combine, with_error=with_error)


def _generic_rk_step(
    func: StageFunc, t: Any, y: Y, h: H, k1: Optional[Y], *,
    tableau: ButcherTableau, combine: Combine, with_error: bool,
) -> StepResult[Y]:
    ks = [func(t, y) if k1 is None else k1]
    a_terms, c = tableau.a_terms, tableau.c
    s = len(c)
    # An FSAL method's last stage is f(t + h, y_next): y_next is built once and used twice.
    last = s - 1 if tableau.fsal else s
    for i in range(1, last):
        row = a_terms[i]
        y_i = combine(y, h, [(coef, ks[j]) for j, coef in row]) if row else y
        ks.append(func(t + c[i] * h, y_i))
    y_next = combine(y, h, [(coef, ks[j]) for j, coef in tableau.b_terms])
    if last < s:
        ks.append(func(t + h, y_next))
    error = error_aux = None
    if with_error and tableau.adaptive:
        error, error_aux = error_estimates(h, tableau, ks, combine=combine)
    return StepResult(y_next=y_next, error=error, ks=ks, error_aux=error_aux)


def _torch_rk_step(
    func: StageFunc, t: Any, y: torch.Tensor, h: float, k1: Optional[torch.Tensor], *,
    tableau: ButcherTableau, with_error: bool,
) -> StepResult[torch.Tensor]:
    """:func:`rk_step` for torch tensors and a float ``h``, the solvers' hot path: the very
    operations ``torch_combine`` performs (hence bitwise the same results), inlined so that a
    stage costs one ``add`` plus one ``add_`` per further term, without building term lists."""
    ks = [func(t, y) if k1 is None else k1]
    a_terms, c = tableau.a_terms, tableau.c
    s = len(c)
    last = s - 1 if tableau.fsal else s
    add = torch.add
    for i in range(1, last):
        row = a_terms[i]
        if row:
            j, coef = row[0]
            y_i = add(y, ks[j], alpha=coef * h)
            for j, coef in row[1:]:
                y_i.add_(ks[j], alpha=coef * h)
        else:
            y_i = y
        ks.append(func(t + c[i] * h, y_i))
    b_terms = tableau.b_terms
    j, coef = b_terms[0]
    y_next = add(y, ks[j], alpha=coef * h)
    for j, coef in b_terms[1:]:
        y_next.add_(ks[j], alpha=coef * h)
    if last < s:
        ks.append(func(t + h, y_next))
    error = error_aux = None
    if with_error and tableau.adaptive:
        error, error_aux = error_estimates(h, tableau, ks)
    return StepResult(y_next=y_next, error=error, ks=ks, error_aux=error_aux)


# -- the no-autograd path: eager accumulation ------------------------------------------------------
#
# Without autograd the step can push each stage derivative, as soon as it is known, into every
# combination that uses it: one buffer holds a row per later stage input, one for y_next and one
# per error estimate, initialised to (y, ..., y, 0), and stage j adds h * A[:, j] * k_j to all rows
# in ONE broadcast ``addcmul_``. A DOPRI5 step then costs 8 aten ops of arithmetic (error
# estimate included) instead of 20 adds plus 2 for the estimate -- on small states, where every
# op is dispatch overhead, that is most of the solver's own time. It needs in-place updates of
# tensors ``func`` has already seen, which autograd forbids; the autograd path keeps the chain of
# adds above. The two agree to round-off (the same sums, rounded differently).
_EAGER_MAX_NUMEL = 1 << 14
# Above this many elements a stage updates only the rows from its first nonzero coefficient on
# (a slice costs one view op; below this, touching the finished rows costs less than that op).
_EAGER_SLICE_NUMEL = 1 << 13
_EAGER_PLANS: dict[tuple, Optional["_EagerPlan"]] = {}


@dataclass(frozen=True)
class _EagerPlan:
    """Per tableau, dtype, device and state rank: the buffer layout of an eager step. Rows
    ``0 .. last-2`` are the inputs of stages ``1 .. last-1``, row ``last-1`` is y_next, then the
    error estimate(s). ``push0`` is how stage 0's derivative enters the buffer, ``schedule``
    the later stages in order: ``(c_i, input row, push)``. A push is ``(column, first row)``:
    the stage's coefficient in every row (shape ``(rows, 1, ...)``) from its first nonzero row
    on (earlier rows are inputs of stages already evaluated; ``None``: all rows), or ``None``
    where the stage has no coefficient in any row."""

    tableau: ButcherTableau  # kept so that the id in the cache key stays taken
    last: int
    n_err: int
    mask: torch.Tensor
    push0: Optional[tuple[torch.Tensor, Optional[int]]]
    schedule: tuple[tuple[float, int, Optional[tuple[torch.Tensor, Optional[int]]]], ...]


def _eager_plan(tableau: ButcherTableau, with_error: bool, y: torch.Tensor) -> Optional[_EagerPlan]:
    sliced = y.numel() > _EAGER_SLICE_NUMEL
    key = (id(tableau), with_error, y.dtype, y.device, y.dim(), sliced)
    if key in _EAGER_PLANS:
        return _EAGER_PLANS[key]
    s = tableau.stages
    last = s - 1 if tableau.fsal else s
    rows = [list(tableau.a[i]) for i in range(1, last)] + [list(tableau.b)]
    n_err = 0
    if with_error:
        errs = [e for e in (tableau.b_err, tableau.b_err_aux) if e is not None]
        rows += [list(e) for e in errs]
        n_err = len(errs)
    # the chain of adds costs one op per nonzero term (the estimate: stack + mm); this path one
    # op per stage plus two: take it only where that is fewer
    chain_ops = sum(len(r) for r in tableau.a_terms[1:last]) + len(tableau.b_terms) + (2 if n_err else 0)
    pushes = [j for j in range(s) if any(r[j] != 0.0 for r in rows)]
    plan = None
    if 2 + len(pushes) < chain_ops:
        shape = (len(rows),) + (1,) * y.dim()
        as_col = lambda v: const_tensor(v, y.dtype, y.device).reshape(shape)  # noqa: E731
        mask = as_col([1.0] * (len(rows) - n_err) + [0.0] * n_err)

        def push(j: int) -> Optional[tuple[torch.Tensor, Optional[int]]]:
            if j not in pushes:
                return None
            start = next(i for i, r in enumerate(rows) if r[j] != 0.0) if sliced else 0
            return as_col([r[j] for r in rows])[start:], start or None

        # an FSAL method's last stage is f(t + h, y_next)
        schedule = tuple((tableau.c[i], i - 1, push(i)) if i < last else (1.0, last - 1, push(i))
                         for i in range(1, s))
        plan = _EagerPlan(tableau, last, n_err, mask, push(0), schedule)
    if len(_EAGER_PLANS) > 64:
        _EAGER_PLANS.clear()
    _EAGER_PLANS[key] = plan
    return plan


def _eager_rk_step(
    func: StageFunc, t: Any, y: torch.Tensor, h: float, k1: Optional[torch.Tensor], *, plan: _EagerPlan,
) -> StepResult[torch.Tensor]:
    """:func:`rk_step` without autograd, by eager accumulation (see above). ``y_next`` and the
    error estimates are views of the step's buffer."""
    acc = plan.mask * y
    rows = acc.unbind(0)
    k = func(t, y) if k1 is None else k1
    ks = [k]
    if plan.push0 is not None:
        col, first = plan.push0
        (acc if first is None else acc[first:]).addcmul_(col, k, value=h)
    for c, src, push in plan.schedule:
        k = func(t + c * h, rows[src])
        if k._base is acc:
            # func returned its input (or a view of it), a row of the buffer that the push below
            # writes into: copy it out first
            k = k.clone()
        ks.append(k)
        if push is not None:
            col, first = push
            (acc if first is None else acc[first:]).addcmul_(col, k, value=h)
    last, n_err = plan.last, plan.n_err
    return StepResult(
        y_next=rows[last - 1],
        error=rows[last] if n_err else None,
        ks=ks,
        error_aux=rows[last + 1] if n_err > 1 else None,
    )


def own(y: torch.Tensor) -> torch.Tensor:
    """``y``, copied out of the step's buffer if it is a row of one: the no-autograd step's
    ``y_next`` is a view that keeps its whole buffer (a row per stage) alive, so anything held
    beyond the next step (outputs, checkpoints) is copied. Costs nothing on the autograd path."""
    return y.clone() if y._base is not None and not y.requires_grad else y


def _terms(pairs: Sequence[tuple[int, float]], ks: Sequence[Y]) -> list[tuple[float, Y]]:
    return [(coef, ks[j]) for j, coef in pairs]


def error_estimates(
    h: H, tableau: ButcherTableau, ks: Sequence[Y], *, combine: Combine = torch_combine
) -> tuple[Optional[Y], Optional[Y]]:
    """``(h*sum(b_err_i k_i), h*sum(b_err_aux_i k_i))``; ``None`` where the tableau has none."""
    err = None if tableau.err_terms is None else combine(None, h, _terms(tableau.err_terms, ks))
    aux = (
        None
        if tableau.err_aux_terms is None
        else combine(None, h, _terms(tableau.err_aux_terms, ks))
    )
    return err, aux


def dense_stages(
    func: StageFunc,
    t: Any,
    y: Y,
    h: H,
    tableau: ButcherTableau,
    ks: Sequence[Y],
    *,
    combine: Combine = torch_combine,
) -> list[Y]:
    """``ks`` extended by the interpolant's extra stages (none for most methods)."""
    out = list(ks)
    interp = tableau.interpolant
    if interp is None:
        return out
    for row, c in zip(interp.extra_a, interp.extra_c, strict=True):
        y_i = combine(y, h, [(a, out[j]) for j, a in enumerate(row) if a != 0.0])
        out.append(func(t + c * h, y_i))
    return out


def interpolate(
    y: Y, h: H, ks: Sequence[Y], weights: Sequence[float], *, combine: Combine = torch_combine
) -> Y:
    """``y + h * sum(w_i k_i)``: dense output for weights from :mod:`odespec.solvers.dense`."""
    return combine(y, h, [(w, k) for w, k in zip(weights, ks, strict=True) if w != 0.0])
