"""Terminal events: solve until ``event_fn(t, y)`` crosses zero, with gradients through the
event time (torchdiffeq's ``odeint(..., event_fn=...)`` and ``odeint_event``).

How an event solve runs:

1. *Locate*, without autograd: integrate from ``t0`` in the direction ``t[1] - t[0]`` gives,
   with no end time (adaptive: until ``max_num_steps``; fixed-step: ``step_size`` steps, at
   most :data:`MAX_FIXED_EVENT_STEPS`), and check the event function at the end of every
   accepted step. The step in which it changes sign is taken again to get its dense output
   (the method's interpolant, or cubic Hermite, :mod:`odespec.solvers.dense`), on which the
   root is found by the Illinois method to the resolution of the time. The Adams methods
   (``explicit_adams``, ``implicit_adams``) walk steps of ``step_size`` with one history, as
   their solve does, and interpolate the crossing step by cubic Hermite from its ends' states
   and derivatives (a multistep step cannot be taken again from its start alone).
2. *Solve to the event time* ``t*`` with the requested gradient method (backprop, adjoint,
   checkpoint): the returned state is exactly ``solve(func, y0, [t0, t*])``, so every gradient
   method and the gradient to ``t0`` work as for any solve. The price is a second forward solve.
3. *The event time's gradient* by the implicit function theorem on ``g(t*, y(t*)) = 0``:
   ``dt*/dp = -(dg/dp + dg/dy . dy/dp) / (dg/dt + dg/dy . f)``, an ``autograd.Function`` on
   ``(t*, y(t*))`` that reroutes the gradients of both outputs onto ``y(t*)`` (whose own
   gradient reaches ``y0``, ``t0`` and the parameters through the solve) and onto the tensors
   the event function itself depends on.

Several event functions (an event function returning more than one value) end the solve at
the first that crosses zero, as in torchdiffeq: each is signed to start positive and their
minimum is the one event function.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
from torch.autograd.function import once_differentiable

from odespec.errors import SolverError
from odespec.solvers.checks import check_state, check_times, check_tolerance
from odespec.solvers.common import Outcome, TimedFunc, solver_error
from odespec.solvers.dense import dense_weights, needs_end_derivative
from odespec.solvers.fixed import _hermite
from odespec.solvers.gradient import GradientMethod, make_gradient
from odespec.solvers.gradient.params import discover_params
from odespec.solvers.integrate import Setup, make_setup
from odespec.solvers.multistep import adams_steps
from odespec.solvers.options import FixedStepOptions, InvalidOptionError
from odespec.solvers.step import dense_stages, interpolate, stepper
from odespec.solvers.tableau import ButcherTableau
from odespec.solvers.tableaus import OtherMethod

__all__ = ["solve_until_event", "odeint_event", "MAX_FIXED_EVENT_STEPS"]

EventFn = Callable[[torch.Tensor, Any], torch.Tensor]

#: the most fixed steps an event search takes before it gives up (adaptive: ``max_num_steps``)
MAX_FIXED_EVENT_STEPS = 100_000
_CHUNK = 64  # fixed steps per integrator call while searching
_MAX_ROOT_ITERS = 200
_EPS = sys.float_info.epsilon


def solve_until_event(
    func: Callable,
    y0: Any,
    t: Union[torch.Tensor, Any],
    event_fn: EventFn,
    *,
    method: Union[str, ButcherTableau, None],
    rtol: Any,
    atol: Any,
    options: Any,
    gradient: Union[str, GradientMethod],
) -> tuple[torch.Tensor, Any]:
    """``(event_t, solution)``: the first time ``event_fn`` crosses zero after ``t[0]``, in the
    direction of ``t[1]`` (whose value is otherwise ignored), and ``solution`` of shape ``(2,
    *y0.shape)``, ``[y0, y(event_t)]`` (tuples for a tuple ``y0``). Both carry gradients (see
    the module doc). Raises :class:`~odespec.errors.SolverError` when the solve fails, or no
    event occurs within the step budget."""
    # imported here: _odeint imports this module for odeint(event_fn=...)
    from odespec.solvers._odeint import _resolve_method, _TupleState, solve

    grad = make_gradient(gradient).for_function(func)
    tableau = _resolve_method(method)
    packed = _TupleState(func, y0, rtol, atol) if isinstance(y0, (tuple, list)) else None
    flat_event: EventFn
    if packed is not None:
        flat_func, flat_y0, rtol, atol = packed.func, packed.y0, packed.rtol, packed.atol
        split = packed._split

        def tuple_event(tt: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return event_fn(tt, split(y))

        flat_event = tuple_event
    else:
        flat_func, flat_y0, flat_event = func, check_state(y0), event_fn
    t = check_times(t, flat_y0)
    if t.numel() != 2:
        raise ValueError(f"an event solve needs t = [t0, t1] (t1 only gives the direction), got {t.numel()} times")
    t0, t1 = (float(x) for x in t.tolist())
    if not (math.isfinite(t0) and math.isfinite(t1)) or t0 == t1:
        raise ValueError("t = [t0, t1] must be finite and t1 != t0 (t1 - t0 gives the direction of the solve)")
    if isinstance(tableau, OtherMethod) and tableau.kind != "adams":
        raise InvalidOptionError(f"events need a method whose steps odespec takes (Runge-Kutta or Adams: the event "
                                 f"is located inside the step that crosses it); {tableau.name!r} leaves its steps to "
                                 "SciPy: use e.g. dopri5, rk4 or radauIIA5", key="method")
    setup = make_setup(tableau, options, rtol, atol)
    if not setup.fixed:
        check_tolerance("rtol", rtol, flat_y0)
        check_tolerance("atol", atol, flat_y0)
    g = _combined(flat_event, t[0].detach(), flat_y0.detach())
    t_star, crossing = _locate(flat_func, flat_y0.detach(), t0, 1.0 if t1 > t0 else -1.0, g, setup, t.dtype)
    event_t = torch.tensor(t_star, dtype=t.dtype, device=t.device)
    if float(event_t) == t0:  # the event function is zero at the start: nothing to solve
        ys = torch.stack([flat_y0, flat_y0])
    else:
        velocity = None
        if crossing is None:
            times = torch.stack([t[0], event_t])
            ys = solve(flat_func, flat_y0, times, method=tableau, rtol=rtol, atol=atol, options=options,
                       gradient=grad).ys
            y_end = ys[1]
        else:
            ys = solve(flat_func, flat_y0, crossing.times(t), method=tableau, rtol=rtol, atol=atol,
                       options=crossing.options, gradient=grad).ys
            y_end, velocity = crossing.interpolate(flat_func, ys[-2], ys[-1], t_star)
        params = discover_params(g, y_end.detach(), event_t)
        event_t, y_star = _EventTime.apply(_Event(flat_func, g, event_t, params, velocity), y_end, *params)
        ys = torch.stack([ys[0], y_star])
    return event_t, (ys if packed is None else packed._split(ys))


def odeint_event(
    func: Callable,
    y0: Any,
    t0: Union[torch.Tensor, float],
    *,
    event_fn: EventFn,
    reverse_time: bool = False,
    odeint_interface: Optional[Callable[..., Any]] = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """torchdiffeq's ``odeint_event``: solve from ``t0`` (forwards, or backwards with
    ``reverse_time``) until ``event_fn(t, y)`` crosses zero; returns ``(event_t, solution)``
    with ``solution = [y0, y(event_t)]``. ``odeint_interface``: :func:`~odespec.solvers.odeint`
    (the default) or :func:`~odespec.solvers.odeint_adjoint`; ``kwargs`` go to it. Gradients
    reach ``event_t`` and the final state from ``y0``, ``t0``, ``func``'s parameters and the
    tensors ``event_fn`` depends on, whichever the interface."""
    if odeint_interface is None:
        from odespec.solvers._odeint import odeint

        odeint_interface = odeint
    t0 = torch.as_tensor(t0)
    if not t0.is_floating_point():
        t0 = t0.to(torch.get_default_dtype())
    start = t0.reshape(-1)
    t = torch.cat([start, start.detach() + (-1.0 if reverse_time else 1.0)])
    result: tuple[torch.Tensor, Any] = odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)
    return result


def _combined(event_fn: EventFn, t0: torch.Tensor, y0: torch.Tensor) -> EventFn:
    """One scalar event function, positive at the start: every component of ``event_fn`` signed
    to start positive, then their minimum (the first to cross zero ends the solve)."""
    with torch.no_grad():
        signs = torch.sign(torch.as_tensor(event_fn(t0, y0)))

    def g(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.min(torch.as_tensor(event_fn(t, y)) * signs)

    return g


class _Crossed(Exception):
    """Raised by :class:`_Watcher` to stop the integrator once a step crossed the event."""


class _Watcher:
    """Told every accepted step as a :class:`~odespec.solvers.replay.StepRecorder` is (with
    the state at the step's *start*), it checks the event at each step's start, that is at
    the end of the step before, and stops the solve (:class:`_Crossed`) when it has crossed.
    ``step``: the last step seen, ``(t, h, t_new, y)``."""

    def __init__(self, g: Callable[[float, torch.Tensor], float]):
        self.g = g
        self.step: Optional[tuple[float, float, float, torch.Tensor]] = None
        self.checked: Optional[float] = None  # the time whose state was checked last
        self.n_steps = 0

    def accept(self, t: float, h: float, t_new: float, y: torch.Tensor, first: int, last: int) -> None:
        if self.step is not None and t != self.checked and self.crossed(t, y):
            raise _Crossed
        self.step = (t, h, t_new, y)
        self.n_steps += 1

    def crossed(self, t: float, y: torch.Tensor) -> bool:
        self.checked = t
        return self.g(t, y) <= 0.0


def _locate(func: Callable, y0: torch.Tensor, t0: float, direction: float, g: EventFn, setup: Setup,
            dtype: torch.dtype) -> tuple[float, Optional[_Crossing]]:
    """The event time (Python float): search the step that crosses, then its dense output.
    Also, for the Adams methods, the step that crossed (:func:`_locate_adams`), else None."""
    # func gets t in the state's dtype, as in every solve; event_fn in the times' dtype
    f = TimedFunc(func, y0.dtype.to_real(), y0.device)

    def g_at(t: float, y: torch.Tensor) -> float:
        return float(g(torch.scalar_tensor(t, dtype=dtype, device=y0.device), y))

    with torch.no_grad():
        g0 = g_at(t0, y0)
        if not math.isfinite(g0):
            raise ValueError(f"event_fn is not finite at the start t={t0:.6g}")
        if g0 <= 0.0:
            return t0, None
        if isinstance(setup.tableau, OtherMethod):
            return _locate_adams(f, y0, t0, direction, setup, g_at)
        watcher = _Watcher(g_at)
        _search(f, y0, t0, direction, setup, watcher)
        assert watcher.step is not None
        t_a, h, t_b, y_a = watcher.step
        y_at = _rk_interpolant(f, setup.tableau, t_a, h, t_b, y_a,
                               setup.opts if isinstance(setup.opts, FixedStepOptions) else None)
        return _root(t_a, h, t_b, g_at(t_a, y_a), y_at, g_at), None


def _fixed_step_size(opts: FixedStepOptions) -> float:
    """The step size of a fixed-step event search; raises when the options give none."""
    if opts.step_size is None or opts.steps is not None:
        raise InvalidOptionError(
            "an event solve with a fixed-step method needs options={'step_size': h}: the event time is not "
            "known in advance, so a number of steps per interval means nothing",
            key="step_size",
        )
    return opts.step_size


def _locate_adams(f: TimedFunc, y0: torch.Tensor, t0: float, direction: float, setup: Setup,
                  g_at: Callable[[float, torch.Tensor], float]) -> tuple[float, _Crossing]:
    """The event time of an Adams solve, and the step that crossed. A step of a multistep
    method cannot be taken again from its start alone (it needs the history before it), so the
    walk keeps one history from ``t0``, as the solve does, and the root is found on the cubic
    Hermite interpolant between the ends of the step that crosses (their states and
    derivatives). The state at the event is that interpolant too (:class:`_Crossing`)."""
    assert isinstance(setup.opts, FixedStepOptions) and isinstance(setup.tableau, OtherMethod)
    h = direction * _fixed_step_size(setup.opts)
    steps = adams_steps(f, y0, t0, h, setup.tableau, setup.opts, setup.rtol, setup.atol)
    g_a = g_at(t0, y0)
    for n, (t_a, y_a, f_a, t_b, y_b) in zip(range(MAX_FIXED_EVENT_STEPS), steps, strict=False):
        g_b = g_at(t_b, y_b)
        if not math.isfinite(g_b):
            raise solver_error("non-finite", t_a, h, f"the event search became non-finite between t={t_a:.6g} and "
                               f"t={t_b:.6g} (the state, or event_fn at it)")
        if g_b <= 0.0:
            f_b = f(t_b, y_b)

            def y_at(theta: float, t_a: float = t_a, y_a: torch.Tensor = y_a, f_a: torch.Tensor = f_a,
                     t_b: float = t_b, y_b: torch.Tensor = y_b, f_b: torch.Tensor = f_b) -> torch.Tensor:
                return y_b if theta == 1.0 else _hermite(t_a, y_a, f_a, t_b, y_b, f_b, t_a + theta * (t_b - t_a))

            t_star = _root(t_a, t_b - t_a, t_b, g_a, y_at, g_at)
            grid = _SearchGrid([t0 + k * h for k in range(1, n + 2)], h)
            return t_star, _Crossing(t_a, t_b, dataclasses.replace(setup.opts, step_size=None, grid_constructor=grid))
        g_a = g_b
    raise SolverError("max-steps", t0 + MAX_FIXED_EVENT_STEPS * h, h,
                      f"no event within {MAX_FIXED_EVENT_STEPS} fixed steps of size {abs(h):.3g} from t={t0:.6g}",
                      "check that event_fn changes sign along the solution, or take a larger step_size")


def _search(f: TimedFunc, y0: torch.Tensor, t0: float, direction: float, setup: Setup, watcher: _Watcher) -> None:
    """Integrate until ``watcher`` sees the event cross; raise :class:`SolverError` if the
    solve fails or runs out of steps first."""
    if not isinstance(setup.opts, FixedStepOptions):
        # no end time: the step budget (max_num_steps) ends a search that finds nothing
        if _integrate(setup, f, y0, [t0, direction * math.inf], watcher, t0) is None:
            return
        raise AssertionError("an adaptive search without end stops at an event or a failure")  # pragma: no cover
    h = _fixed_step_size(setup.opts)
    t, y = t0, y0
    while watcher.n_steps < MAX_FIXED_EVENT_STEPS:
        # chunks of _CHUNK steps of exactly h; the watcher sees every step's start, the chunk's
        # end is checked here
        end = t + direction * _CHUNK * h
        outcome = _integrate(setup, f, y, [t, end], watcher, t0)
        if outcome is None:
            return
        t, y = end, outcome.y_last
        if watcher.crossed(t, y):
            return
    raise SolverError("max-steps", t, direction * h,
                      f"no event within {MAX_FIXED_EVENT_STEPS} fixed steps of size {h:.3g} from t={t0:.6g}",
                      "check that event_fn changes sign along the solution, or take a larger step_size")


def _integrate(setup: Setup, f: TimedFunc, y: torch.Tensor, times: list[float], watcher: _Watcher,
               t0: float) -> Optional[Outcome]:
    """One integrator call over ``times`` under ``watcher``: ``None`` when it saw the event,
    else the outcome; a failure is raised."""
    try:
        outcome = setup.integrate(f, y, times, recorder=watcher)  # type: ignore[arg-type]
    except _Crossed:
        return None
    if outcome.error is not None:
        e = outcome.error
        if e.reason == "max-steps":
            raise SolverError(e.reason, e.t, e.h, f"no event within max_num_steps steps from t={t0:.6g}",
                              "check that event_fn changes sign along the solution, or raise "
                              "options['max_num_steps']") from None
        raise e
    return outcome


@dataclass
class _Crossing:
    """The step ``[t_a, t_b]`` of an Adams solve in which the event function crossed zero, and
    the options that take the search's steps again (:class:`_SearchGrid`).

    The state at the event is the search's: the cubic Hermite interpolant of that step at the
    event time, from ``y(t_a)`` and ``y(t_b)`` solved on the search's grid (with gradients)
    and ``func`` at both (as torchdiffeq's fixed-grid events do). Solving to the event time
    itself would take another last step, whose state misses the event where the Adams
    solution has drifted from the flow of ``func`` (a high-order ``explicit_adams`` amplifies
    its round-off)."""

    t_a: float
    t_b: float
    options: FixedStepOptions

    def times(self, t: torch.Tensor) -> torch.Tensor:
        """The output times of the solve: ``t0``, ``t_a`` (unless it is ``t0``) and ``t_b``, in
        float64 so that they are the search's grid times exactly, whatever ``t``'s dtype."""
        ends = [self.t_b] if self.t_a == float(t[0].detach()) else [self.t_a, self.t_b]
        return torch.cat([t[:1].to(torch.float64), torch.tensor(ends, dtype=torch.float64, device=t.device)])

    def interpolate(self, func: Callable, y_a: torch.Tensor, y_b: torch.Tensor,
                    t_star: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The state at ``t_star`` (with gradients) and its time derivative (without)."""
        dtype = y_a.dtype.to_real()
        f_a = func(torch.scalar_tensor(self.t_a, dtype=dtype, device=y_a.device), y_a)
        f_b = func(torch.scalar_tensor(self.t_b, dtype=dtype, device=y_a.device), y_b)
        y_star = y_b if t_star == self.t_b else _hermite(self.t_a, y_a, f_a, self.t_b, y_b, f_b, t_star)
        dt = self.t_b - self.t_a
        s = (t_star - self.t_a) / dt
        with torch.no_grad():
            slope = ((6 * s * s - 6 * s) / dt) * (y_a - y_b) + (3 * s * s - 4 * s + 1) * f_a \
                + (3 * s * s - 2 * s) * f_b
        return y_star, slope


class _SearchGrid:
    """``grid_constructor`` of the solve through an Adams event's step: the start, the ends of
    the steps the search took (``inner``), and the solve's end; walked back in the adjoint's
    backward solve. The grid's ends are the solve's times as given (the integrator checks them
    in the state's dtype); steps not strictly inside them are left out."""

    def __init__(self, inner: list[float], h: float):
        self.inner, self.h = inner, h

    def __call__(self, func: Callable, y0: torch.Tensor, t: torch.Tensor) -> list[float]:
        first, last = float(t[0]), float(t[-1])
        # the ends may come rounded to a float32 state's dtype: no sliver step beside them
        margin = 1e-3 * abs(self.h)
        lo, hi = min(first, last) + margin, max(first, last) - margin
        inner = [x for x in self.inner if lo < x < hi]
        if (last - first) * self.h < 0:
            inner.reverse()
        return [first, *inner, last]


def _rk_interpolant(f: TimedFunc, tableau: ButcherTableau, t_a: float, h: float, t_b: float, y_a: torch.Tensor,
                    options: Optional[FixedStepOptions]) -> Callable[[float], torch.Tensor]:
    """The dense output of the Runge-Kutta step ``[t_a, t_b]`` (size ``h``, from ``y_a``), as
    a function of ``theta`` in [0, 1]. (The integrator's step is taken again for its stages.)"""
    res = stepper(tableau, y_a, with_error=False, options=options)(f, t_a, y_a, h, None)
    ks = dense_stages(f, t_a, y_a, h, tableau, res.ks)
    if needs_end_derivative(tableau):
        ks.append(f(t_b, res.y_next))

    def y_at(theta: float) -> torch.Tensor:
        return interpolate(y_a, h, ks, dense_weights(tableau, theta))

    return y_at


def _root(t_a: float, h: float, t_b: float, g_a: float, y_at: Callable[[float], torch.Tensor],
          g_at: Callable[[float, torch.Tensor], float]) -> float:
    """The event time inside the step ``[t_a, t_b]`` (size ``h``), where the event function
    goes from ``g_a > 0`` to <= 0: the Illinois method on the step's interpolant ``y_at(theta)``,
    to the resolution of the time."""

    def at(theta: float) -> float:
        t = t_b if theta == 1.0 else t_a + theta * h
        return g_at(t, y_at(theta))

    a, b = 0.0, 1.0
    ga, gb = g_a, at(1.0)
    if gb > 0.0:  # the interpolant's end misses y_next by round-off: the event is at the end
        return t_b
    tol = 4.0 * _EPS * max(abs(t_a), abs(t_b)) / abs(h) + _EPS
    side = 0
    for _ in range(_MAX_ROOT_ITERS):
        if gb == 0.0 or b - a <= tol:
            break
        theta = (a * gb - b * ga) / (gb - ga)
        if not a < theta < b:
            theta = 0.5 * (a + b)
        gm = at(theta)
        if not math.isfinite(gm):
            raise ValueError(f"event_fn is not finite at t={t_a + theta * h:.6g}, inside the step that crosses it")
        if gm > 0.0:
            a, ga = theta, gm
            if side == 1:
                gb *= 0.5  # Illinois: halve the stale end's value so that it moves too
            side = 1
        else:
            b, gb = theta, gm
            if side == -1:
                ga *= 0.5
            side = -1
    # b: the first point known to have crossed (<= 0), within tol of the root
    return t_b if b == 1.0 else t_a + b * h


@dataclass
class _Event:
    """What the event time's backward pass needs: ``func``, the combined event function
    ``g``, the event time and the tensors ``g`` depends on."""

    func: Callable
    g: EventFn
    t: torch.Tensor
    params: tuple[torch.Tensor, ...]
    #: dy/dt at the event, where it is not ``func(t, y)`` (an interpolated state)
    velocity: Optional[torch.Tensor] = None


class _EventTime(torch.autograd.Function):
    """``(t*, y(t*))`` unchanged; backward by the implicit function theorem on
    ``g(t*, y(t*)) = 0`` (see the module doc)."""

    @staticmethod
    def forward(ctx: Any, ev: _Event, y: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.ev = ev
        ctx.save_for_backward(y)
        return ev.t.clone(), y.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_t: torch.Tensor, grad_y: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        (y,) = ctx.saved_tensors
        ev: _Event = ctx.ev
        t = ev.t.detach()
        # no autograd in a once_differentiable backward; func gets t in the state's dtype
        fy = ev.func(t.to(y.dtype.to_real()), y) if ev.velocity is None else ev.velocity
        with torch.enable_grad():
            t_ = t.clone().requires_grad_(True)
            y_ = y.detach().requires_grad_(True)
            c = ev.g(t_, y_)
            # retain_graph: the event function may hold tensors with a graph of their own (a
            # target computed from parameters), which later backward passes still need
            got = torch.autograd.grad(c, (t_, y_, *ev.params), allow_unused=True, retain_graph=True)
        dg_dt, dg_dy = (torch.zeros_like(x) if d is None else d for d, x in zip(got[:2], (t_, y_), strict=True))
        # d g(t, y(t)) / dt along the solution; zero when the solution only touches the surface
        dcdt = dg_dt + _dot(dg_dy, fy)
        # the whole gradient that reaches the event time: directly, and through y(t*) moving with it
        total = grad_t + _dot(grad_y, fy)
        scale = -total / dcdt
        grads = [None if d is None else (scale * d).to(q.dtype) for d, q in zip(got[2:], ev.params, strict=True)]
        return (None, grad_y + (scale * dg_dy).to(grad_y.dtype), *grads)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum()
