"""Public entry points: :func:`odeint` (torchdiffeq-compatible) and :func:`solve` (with stats).

Gradients flow by plain autograd through the solver's operations (discretise-then-optimise);
step-size decisions are treated as constants. Time is not differentiable (it is handled as
Python floats).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

from odespec.solvers.adaptive import integrate_adaptive
from odespec.solvers.common import Outcome, TimedFunc
from odespec.solvers.fixed import integrate_fixed
from odespec.solvers.options import FixedStepOptions, InvalidOptionError, parse_options
from odespec.solvers.solution import Solution, SolveStats
from odespec.solvers.tableau import ButcherTableau
from odespec.solvers.tableaus import get_tableau

__all__ = ["odeint", "solve", "DEFAULT_METHOD"]

DEFAULT_METHOD = "dopri5"

Func = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Tol = Union[float, torch.Tensor]
Method = Union[str, ButcherTableau, None]


def odeint(
    func: Func,
    y0: torch.Tensor,
    t: Union[torch.Tensor, Sequence[float]],
    *,
    rtol: Tol = 1e-7,
    atol: Tol = 1e-9,
    method: Method = None,
    options: Optional[Mapping[str, Any]] = None,
) -> torch.Tensor:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0``, and return ``y`` at every time in ``t``.

    Same semantics as ``torchdiffeq.odeint``: ``t`` is 1-D and strictly increasing or
    decreasing, the result has shape ``(len(t), *y0.shape)`` and ``result[0] == y0``. ``method``
    is a registered name or a :class:`ButcherTableau` (default ``"dopri5"``). ``options``:
    ``step_size`` or ``steps`` for fixed steps; ``first_step``, ``min_step``, ``max_step``,
    ``max_num_steps``, ``controller`` ("pi"/"i"), ``force_output_steps``, ``safety``,
    ``ifactor``, ``dfactor`` for adaptive methods. Raises :class:`~odespec.errors.SolverError`
    when the solve fails. ``y0`` may also be a tuple of tensors (solved as one flat state; the
    result is then a tuple, and ``rtol``/``atol`` may be tuples with one entry per tensor).
    """
    return solve(func, y0, t, method=method, rtol=rtol, atol=atol, options=options).ys


def solve(
    func: Func,
    y0: torch.Tensor,
    t: Union[torch.Tensor, Sequence[float]],
    *,
    method: Method = None,
    rtol: Tol = 1e-7,
    atol: Tol = 1e-9,
    options: Optional[Mapping[str, Any]] = None,
    return_on_failure: bool = False,
) -> Solution:
    """Like :func:`odeint` but returns a :class:`Solution` with statistics.

    With ``return_on_failure=True`` a failed solve returns the outputs reached, the last accepted
    state and ``stats.status`` set to the failure reason instead of raising.
    """
    tableau = _resolve_method(method)
    opts = parse_options(tableau, options)
    if isinstance(y0, (tuple, list)):
        packed = _TupleState(func, y0, rtol, atol)
        sol = solve(packed.func, packed.y0, t, method=tableau, rtol=packed.rtol, atol=packed.atol,
                    options=options, return_on_failure=return_on_failure)
        return packed.unpack(sol)
    y0 = _check_state(y0)
    t = _check_times(t, y0)
    times = t.tolist()
    if len(times) > 1:
        _check_monotonic(times)
    f = TimedFunc(func, t.dtype, y0.device)

    if isinstance(opts, FixedStepOptions):
        outcome = integrate_fixed(f, y0, times, tableau, opts)
    else:
        _check_tolerance("rtol", rtol, y0)
        _check_tolerance("atol", atol, y0)
        outcome = integrate_adaptive(
            f, y0, times, tableau, opts, rtol, atol, time_eps=torch.finfo(t.dtype).eps
        )
    if outcome.error is not None and not return_on_failure:
        raise outcome.error
    return _solution(outcome, tableau, t, f.nfe)


def _solution(outcome: Outcome, tableau: ButcherTableau, t: torch.Tensor, nfe: int) -> Solution:
    n = len(outcome.outs)
    stats = SolveStats(
        method=tableau.name,
        nfe=nfe,
        n_steps=outcome.n_steps,
        n_accepted=outcome.n_accepted,
        n_rejected=outcome.n_rejected,
        final_step_size=float(outcome.step_size),
        status="success" if outcome.error is None else outcome.error.reason,
    )
    return Solution(
        ts=t[:n],
        ys=torch.stack(outcome.outs),
        stats=stats,
        t_last=float(outcome.t_last),
        y_last=outcome.y_last,
        error=outcome.error,
    )


class _TupleState:
    """A tuple of state tensors solved as one flat tensor (as torchdiffeq does): one shared
    step size, one error norm over all components."""

    def __init__(self, func: Callable, y0: Sequence[torch.Tensor], rtol: Any, atol: Any):
        if not y0 or not all(isinstance(y, torch.Tensor) for y in y0):
            raise TypeError("a tuple y0 must hold at least one tensor, and only tensors")
        dtypes = {y.dtype for y in y0}
        if len(dtypes) != 1 or len({y.device for y in y0}) != 1:
            raise TypeError(f"all tensors of a tuple y0 must share dtype and device, got {sorted(map(str, dtypes))}")
        self.shapes = [y.shape for y in y0]
        self.sizes = [y.numel() for y in y0]
        self.y0 = torch.cat([y.reshape(-1) for y in y0])
        self.rtol = self._tol(rtol)
        self.atol = self._tol(atol)

        def flat_func(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = func(t, self._split(y))
            return torch.cat([o.reshape(-1) for o in out])

        self.func = flat_func

    def _split(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        lead = flat.shape[:-1]
        return tuple(p.reshape(*lead, *s) for p, s in zip(flat.split(self.sizes, dim=-1), self.shapes))

    def _tol(self, tol: Any) -> Any:
        if not isinstance(tol, (tuple, list)):
            return tol
        if len(tol) != len(self.sizes):
            raise InvalidOptionError(f"a tuple tolerance needs {len(self.sizes)} entries, got {len(tol)}")
        return torch.cat([torch.as_tensor(x, dtype=self.y0.abs().dtype).expand(s).reshape(-1)
                          for x, s in zip(tol, self.shapes)])

    def unpack(self, sol: Solution) -> Solution:
        return dataclasses.replace(sol, ys=self._split(sol.ys), y_last=self._split(sol.y_last))


def _resolve_method(method: Method) -> ButcherTableau:
    if method is None:
        return get_tableau(DEFAULT_METHOD)
    if isinstance(method, ButcherTableau):
        return method
    if isinstance(method, str):
        return get_tableau(method)
    raise TypeError(f"method must be a name or a ButcherTableau, got {type(method).__name__}")


def _check_state(y0: Any) -> torch.Tensor:
    if not isinstance(y0, torch.Tensor):
        raise TypeError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
    if not (y0.is_floating_point() or y0.is_complex()):
        raise TypeError(f"y0 must be a floating point tensor, got dtype {y0.dtype}")
    return y0


def _check_times(t: Any, y0: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t, dtype=y0.abs().dtype)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"t must be a non-empty 1-D tensor of times, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(y0.abs().dtype)
    return t.to(y0.device)


def _check_monotonic(times: list[float]) -> None:
    if not all(math.isfinite(x) for x in times):
        raise ValueError("t must be finite")
    increasing = times[1] > times[0]
    for a, b in zip(times, times[1:]):
        if (b > a) != increasing or a == b:
            raise ValueError("t must be strictly increasing or strictly decreasing")


def _check_tolerance(name: str, tol: Tol, y0: torch.Tensor) -> None:
    if isinstance(tol, torch.Tensor):
        try:
            shape = torch.broadcast_shapes(tol.shape, y0.shape)
        except RuntimeError:
            shape = None
        if shape != y0.shape:
            raise InvalidOptionError(
                f"{name} of shape {tuple(tol.shape)} does not broadcast to the state shape "
                f"{tuple(y0.shape)}",
                key=name,
            )
        if bool((tol < 0).any()):
            raise InvalidOptionError(f"{name} must be >= 0", key=name)
        return
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (tol >= 0) or math.isinf(tol):
        raise InvalidOptionError(f"{name} must be a finite number >= 0 or a tensor, got {tol!r}", key=name)
