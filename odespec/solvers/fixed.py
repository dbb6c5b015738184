"""Fixed-step integration.

Output times are hit exactly by construction: each output interval ``[t_i, t_{i+1}]`` is divided
into ``n`` equal steps, with ``n`` the fewest steps no longer than ``step_size`` (or ``n = steps``,
or ``n = 1`` when neither is given). Unlike torchdiffeq (one global grid of ``step_size`` with a
shortened last step and linear interpolation at the outputs), no output is ever interpolated and
no sliver step is taken; when the outputs are multiples of ``step_size`` both coincide.

torchdiffeq's ``grid_constructor`` is the other way to give the steps: the grid it returns is
walked as it is, and an output inside a step is interpolated (``interp``: linear, or cubic
Hermite from the derivatives at both ends). ``perturb`` evaluates ``func`` one float inside the
step at the step's ends (:class:`_Perturbed`), and ``callback_step`` on ``func`` is called before
every step (:mod:`odespec.solvers.callbacks`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from odespec.solvers.callbacks import Callbacks, nudge
from odespec.solvers.common import Outcome, Quadrature, TimedFunc, nonfinite_start, solver_error
from odespec.solvers.grid import hermite_weights, steps_for_interval
from odespec.solvers.options import FixedStepOptions, InvalidOptionError
from odespec.solvers.replay import StepRecorder
from odespec.solvers.step import Stepper, own, stepper
from odespec.solvers.tableau import ButcherTableau

__all__ = ["integrate_fixed"]

# a stage time within this fraction of a step of the step's end counts as the end (t + 1.0 * h
# need not round to the next grid time)
_END_TOL = 1e-9


class _Perturbed:
    """``f`` for one step from ``t0`` to ``t1``, with the stages at the step's ends evaluated one
    float of the state's dtype inside the step (torchdiffeq's ``perturb``): a discontinuity of
    ``func`` at a grid time is then seen from the step's side on both of its ends."""

    __slots__ = ("f", "t0", "t1", "tol", "jac_hook")

    def __init__(self, f: TimedFunc, t0: float, t1: float):
        self.f, self.t0, self.t1 = f, t0, t1
        self.tol = _END_TOL * abs(t1 - t0)
        hook = f.jac_hook
        # an implicit step's Jacobian is taken at the step's start: nudged as well
        self.jac_hook = None if hook is None else (lambda t, y: hook(self._time(t), y))

    def _time(self, t: Any) -> Any:
        if abs(t - self.t0) <= self.tol:
            return nudge(self.t0, self.t1, self.f.dtype)
        if abs(t - self.t1) <= self.tol:
            return nudge(self.t1, self.t0, self.f.dtype)
        return t

    def __call__(self, t: Any, y: torch.Tensor) -> torch.Tensor:
        return self.f(self._time(t), y)


def _take_step(step: Stepper, f: TimedFunc, t0: float, y: torch.Tensor, h: float, k1: Optional[torch.Tensor],
               perturb: bool, quad: Optional[Quadrature]) -> Any:
    """One fixed step, with its callback, perturbation and quadrature."""
    callbacks = f.callbacks
    if callbacks is not None:
        Callbacks.call(callbacks.step, t0, y, h)
    res = step(_Perturbed(f, t0, t0 + h) if perturb else f, t0, y, h, k1)
    if quad is not None:
        quad.accept(h, res.ks)
    return res

def integrate_fixed(
    f: TimedFunc,
    y0: torch.Tensor,
    times: list[float],
    tableau: ButcherTableau,
    opts: FixedStepOptions,
    *,
    recorder: Optional[StepRecorder] = None,
    quad: Optional[Quadrature] = None,
) -> Outcome:
    """Integrate through ``times`` (monotonic, either direction) with fixed steps.

    No per-step host syncs: finiteness is checked once at the end (one sync); the first
    non-finite output ends the returned outputs and sets ``Outcome.error``. ``recorder`` is
    told every step (the checkpoint gradient method); the output at the end of an interval is
    recorded as lying exactly at that step's end. ``quad`` accumulates over every step.
    """
    if opts.grid_constructor is not None:
        if recorder is not None:
            raise InvalidOptionError("option 'grid_constructor' does not work with the checkpoint gradient method "
                                     "(use backprop or adjoint)", key="grid_constructor")
        outcome = _integrate_grid(f, y0, times, tableau, opts, quad)
        return _check_finite(f, y0, times, outcome)
    outcome = Outcome(outs=[y0], t_last=times[0], y_last=y0)
    y = y0
    k1 = None
    h = 0.0
    step = stepper(tableau, y0, with_error=False, options=opts)
    # a perturbed step's last stage is not f at the next step's start: no FSAL reuse
    fsal = tableau.fsal and not opts.perturb
    for i, (t0, t1) in enumerate(zip(times[:-1], times[1:], strict=True)):
        span = t1 - t0
        n = steps_for_interval(span, opts)
        h = span / n
        for j in range(n):
            res = _take_step(step, f, t0 + j * h, y, h, k1, opts.perturb, quad)
            if recorder is not None:
                end = j == n - 1
                recorder.accept(t0 + j * h, h, t1 if end else t0 + (j + 1) * h, y,
                                i + 1, i + 2 if end else i + 1)
            y = res.y_next
            # FSAL: the last stage is f(t + h, y_next), the next step's first stage
            k1 = res.ks[-1] if fsal else None
        outcome.n_steps += n
        outcome.outs.append(own(y))
    outcome.n_accepted = outcome.n_steps
    outcome.step_size = h
    outcome.t_last, outcome.y_last = times[-1], y
    return _check_finite(f, y0, times, outcome)


def _grid(f: TimedFunc, y0: torch.Tensor, times: list[float], opts: FixedStepOptions) -> list[float]:
    """The step times ``grid_constructor(func, y0, t)`` returns, checked: 1-D, from ``times[0]``
    to ``times[-1]``, strictly monotonic in the direction of the solve."""
    assert opts.grid_constructor is not None
    t = torch.tensor(times, dtype=f.dtype, device=y0.device)
    grid = opts.grid_constructor(f.func, y0, t)
    values = torch.as_tensor(grid).detach().reshape(-1).tolist() if isinstance(grid, torch.Tensor) else list(grid)
    direction = 1.0 if times[-1] > times[0] else -1.0
    t_first, t_last = float(t[0]), float(t[-1])
    ok = (len(values) >= 2 and values[0] == t_first and values[-1] == t_last
          and all(direction * (b - a) > 0 for a, b in zip(values, values[1:], strict=False)))
    if not ok:
        raise InvalidOptionError(f"grid_constructor must return a 1-D grid from t[0]={times[0]:g} to t[-1]={times[-1]:g}, "
                                 "strictly monotonic in the direction of t", key="grid_constructor")
    # the ends exactly as the solve's times (the tensor rounded them to the state's dtype)
    return [times[0], *values[1:-1], times[-1]]


def _integrate_grid(f: TimedFunc, y0: torch.Tensor, times: list[float], tableau: ButcherTableau,
                    opts: FixedStepOptions, quad: Optional[Quadrature]) -> Outcome:
    """Walk ``grid_constructor``'s grid; an output inside a step is interpolated."""
    grid = _grid(f, y0, times, opts)
    direction = 1.0 if times[-1] > times[0] else -1.0
    outcome = Outcome(outs=[y0], t_last=times[0], y_last=y0)
    step = stepper(tableau, y0, with_error=False, options=opts)
    fsal = tableau.fsal and not opts.perturb
    y, k1, h, j = y0, None, 0.0, 1
    for t0, t1 in zip(grid[:-1], grid[1:], strict=True):
        h = t1 - t0
        res = _take_step(step, f, t0, y, h, k1, opts.perturb, quad)
        y1 = res.y_next

        def slopes(res: Any = res, t1: float = t1, y1: torch.Tensor = y1) -> tuple[torch.Tensor, torch.Tensor]:
            # an implicit step's stages hold f(t0, y) last; a FSAL step's last stage is f(t1, y1)
            f0 = res.ks[-1] if tableau.implicit else res.ks[0]
            return f0, res.ks[-1] if tableau.fsal else f(t1, y1)

        j = outputs_in_step(outcome, times, j, direction, opts.interp, t0, y, t1, y1, slopes)
        y = y1
        k1 = res.ks[-1] if fsal else None
        outcome.n_steps += 1
    outcome.n_accepted = outcome.n_steps
    outcome.step_size = h
    outcome.t_last, outcome.y_last = times[-1], y
    return outcome


def outputs_in_step(outcome: Outcome, times: list[float], j: int, direction: float, interp: str, t0: float,
                    y: torch.Tensor, t1: float, y1: torch.Tensor,
                    slopes: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Append to ``outcome.outs`` the outputs ``times[j], ...`` that the step from ``(t0, y)`` to
    ``(t1, y1)`` reaches: the step's end itself, or a point inside it interpolated (``linear``,
    or cubic Hermite from ``slopes()`` = ``(f(t0, y), f(t1, y1))``, asked at most once per step).
    Returns the index of the first output beyond the step."""
    ends: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    while j < len(times) and direction * (times[j] - t1) <= 0.0:
        if times[j] == t1:
            outcome.outs.append(own(y1))
        elif interp == "linear":
            outcome.outs.append(torch.lerp(y, y1, (times[j] - t0) / (t1 - t0)))
        else:
            ends = ends if ends is not None else slopes()
            outcome.outs.append(_hermite(t0, y, ends[0], t1, y1, ends[1], times[j]))
        j += 1
    return j


def _hermite(t0: float, y0: torch.Tensor, f0: torch.Tensor, t1: float, y1: torch.Tensor, f1: torch.Tensor,
             t: float) -> torch.Tensor:
    """The cubic Hermite interpolant through ``(t0, y0, f0)`` and ``(t1, y1, f1)`` at ``t``
    (its weights: :func:`~odespec.solvers.grid.hermite_weights`, as the grid solve's)."""
    a0, b0, a1, b1 = hermite_weights(t0, t1, t)
    return a0 * y0 + b0 * f0 + a1 * y1 + b1 * f1


def _check_finite(f: TimedFunc, y0: torch.Tensor, times: list[float], outcome: Outcome) -> Outcome:
    """Cut the outputs at the first non-finite one and set ``outcome.error`` (one host sync)."""
    h = outcome.step_size
    with torch.no_grad():
        stacked = torch.stack([o.detach() for o in outcome.outs])
        finite = torch.isfinite(stacked).reshape(len(outcome.outs), -1).all(dim=1).tolist()
    if not all(finite):
        bad = finite.index(False)
        # from the start (the initial state, or the first interval from it): say what is not finite
        message, hint = nonfinite_start(f, y0, fixed=True) if bad <= 1 else ("", None)
        if bad > 0:
            del outcome.outs[bad:]
            outcome.t_last, outcome.y_last = times[bad - 1], outcome.outs[-1]
            where = f"the fixed-step solution became non-finite between t={times[bad - 1]:.6g} and t={times[bad]:.6g}"
            message = where if not message or message.startswith("the derivative at the initial state is not "
                                                                  "finite, though") else f"{where}: {message}"
        else:
            outcome.outs[1:] = []
            outcome.t_last, outcome.y_last = times[0], y0
        outcome.error = solver_error("non-finite", times[bad], h, message, hint)
    return outcome
