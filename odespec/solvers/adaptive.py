"""Adaptive-step integration with an embedded Runge-Kutta pair.

Design notes (why it looks like this):

* Time and step size are Python floats. The only host sync per step is reading the error ratio
  (the accept/reject decision); every step-size computation after that is plain Python.
* The error estimate and its norm are computed under ``torch.no_grad``: the decision is not
  differentiable anyway, and skipping autograd bookkeeping for those ops is a measurable saving.
* ``|y|`` of the accepted state is kept for the next step's error scale, saving one op per step.
* Output times are served by dense output inside the step that covers them, so requested outputs
  do not shorten the steps (unless ``force_output_steps``).

Error norm: Hairer's RMS norm ``sqrt(mean((err / (atol + rtol * max(|y0|, |y1|)))**2))`` over
all elements (a batch shares one step size, as in torchdiffeq). DOP853 combines its two
estimators as in Hairer's code. The next step's size comes from a step-size controller
(:mod:`odespec.solvers.controller`), the PI or the I controller as the ``controller`` option says.

:func:`integrate_adaptive` runs the loop; an :class:`_AdaptiveRun` holds the solve between its
steps, with one method per decision: may a step be taken, where does it end (clipped onto a
target), and what follows an accepted, a rejected or a non-finite step.

torchdiffeq's options: ``step_t`` times are targets too (a step that would pass one ends on it);
a ``jump_t`` time is a target whose step evaluates its end stages one float before the jump,
after which the next step starts from a fresh evaluation one float after it (the FSAL stage
would be ``func`` from the wrong side). ``norm`` replaces the error norm. A step no longer
than ``min_step`` is accepted whatever its error (as torchdiffeq: ``min_step`` is a floor on
the work, not a failure). The callbacks on ``func`` are called around every attempt.
"""

from __future__ import annotations

import math
import sys
from typing import NoReturn, Optional

import torch

from odespec.solvers.callbacks import Callbacks, nudge
from odespec.solvers.common import Outcome, Quadrature, TimedFunc, nonfinite_start, solver_error
from odespec.solvers.controller import make_controller
from odespec.solvers.norms import CallableNorm, ErrorNorm, Tol
from odespec.solvers.options import AdaptiveOptions
from odespec.solvers.replay import StepRecorder, step_outputs
from odespec.solvers.step import StepResult, const_tensor, error_estimates, stepper
from odespec.solvers.tableau import ButcherTableau

__all__ = ["integrate_adaptive", "ErrorNorm"]

_MAX_NONFINITE_RETRIES = 10  # after that many consecutive non-finite estimates, give up
_STRETCH = 1.01  # stretch the last step by up to 1% rather than leave a sliver (Hairer)
# The step underflows when |h| <= _UNDERFLOW * |t|, 10 eps (Hairer: 0.1|h| <= uround|x|), eps that of
# the integrator's own time, Python floats, whatever t's dtype: func sees a float32 t rounded
# (steps below ~1 ulp give stages at equal times), but the solve still moves, as torchdiffeq's
# does. (Testing against float32's eps made a stiff float32 solve at t = 1000 fail with steps
# below 1.2e-3 that torchdiffeq takes.)
_UNDERFLOW = 10.0 * sys.float_info.epsilon


# Up to this many state elements the error estimate is one stack + one matmul over the stages
# it uses (2 aten ops) rather than one add per stage; above it the copy that stacking makes costs
# more than the adds it saves (on CPU, with 7 stages, the two cross near 10k elements).
_ERR_STACK_MAX_NUMEL = 8192
# keyed by id (hashing a tableau hashes all its coefficients); the entry keeps the tableau, so
# its id cannot be reused while the entry exists
_ERR_WEIGHTS: dict[tuple, tuple[ButcherTableau, tuple[int, ...], torch.Tensor]] = {}


def _error_weights(tableau: ButcherTableau, like: torch.Tensor) -> tuple[tuple[int, ...], torch.Tensor]:
    """The stages an error estimate uses and its weight matrix (one row per estimator)."""
    key = (id(tableau), like.dtype, like.device)
    hit = _ERR_WEIGHTS.get(key)
    if hit is None:
        rows = [r for r in (tableau.b_err, tableau.b_err_aux) if r is not None]
        idx = tuple(j for j in range(tableau.stages) if any(r[j] != 0.0 for r in rows))
        w = const_tensor([[r[j] for j in idx] for r in rows], like.dtype, like.device)
        if len(_ERR_WEIGHTS) > 64:
            _ERR_WEIGHTS.clear()
        hit = _ERR_WEIGHTS[key] = (tableau, idx, w)
    return hit[1], hit[2]


def _error_ratio(
    tableau: ButcherTableau, norm: ErrorNorm, h: float, res: StepResult[torch.Tensor], y_abs: torch.Tensor
) -> tuple[float, torch.Tensor]:
    """The step's error ratio (accept if <= 1) as a Python float, and ``|y1|``. One host sync.

    Computed outside autograd (the accept decision is not differentiable anyway). Uses the
    estimate the step made when it has one (the no-autograd step gets it for free); otherwise
    the estimates are formed here without the factor ``h`` (the norm is homogeneous: it is
    applied to the Python float at the end, saving an op).
    """
    if res.error is not None and res.error_aux is None:
        # the hot path: the no-autograd step's own estimate (it includes h)
        y1_abs = norm.abs(res.y_next)
        return norm.rms(res.error, norm.scale(y_abs, y1_abs)).item() * norm.inv_sqrt_n, y1_abs
    if torch.is_grad_enabled():
        with torch.no_grad():
            return _error_ratio(tableau, norm, h, res, y_abs)
    ks = res.ks
    k0 = ks[0]
    y1_abs = norm.abs(res.y_next)
    scale = norm.scale(y_abs, y1_abs)
    if res.error is not None and res.error_aux is not None:  # the hot path above took the error alone
        est = torch.stack([res.error.reshape(-1), res.error_aux.reshape(-1)])
        factor = norm.inv_sqrt_n  # the step's estimates include h
    elif k0.numel() <= _ERR_STACK_MAX_NUMEL:
        idx, w = _error_weights(tableau, k0)
        est = torch.mm(w, torch.stack([ks[j] for j in idx]).view(len(idx), -1))
        factor = abs(h) * norm.inv_sqrt_n
    else:
        err, aux = error_estimates(1.0, tableau, ks)
        assert err is not None  # an adaptive tableau has an estimator
        est = err.view(1, -1) if aux is None else torch.stack([err.reshape(-1), aux.reshape(-1)])
        factor = abs(h) * norm.inv_sqrt_n
    rows = norm.rows(est, scale)
    if rows.shape[0] == 1:
        return rows.item() * factor, y1_abs
    # DOP853: err5^2 / sqrt(err5^2 + w * err3^2), both as scaled RMS norms
    e5, e3 = rows.tolist()
    e5 *= factor
    e3 *= factor
    den = e5 * e5 + tableau.aux_weight * e3 * e3
    if not math.isfinite(den):
        return math.nan, y1_abs
    return (e5 * e5 / math.sqrt(den) if den > 0.0 else 0.0), y1_abs


def _initial_step(
    f: TimedFunc,
    t0: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    direction: float,
    order: int,
    norm: ErrorNorm,
) -> float:
    """Hairer, Norsett & Wanner, *Solving ODEs I*, II.4: a first step from the size of y0, f0
    and a finite-difference estimate of the second derivative. Returns |h| (NaN when f0 is not
    finite; the caller reports that).

    With a mixed norm the rule runs per channel and the smallest step wins, as the norm's
    largest channel decides acceptance. Mixing the channels first would divide the size of one
    channel by the derivative of another: the adjoint's parameter-gradient channels start at
    zero with large derivatives, and the pooled rule then proposed steps four orders of
    magnitude below what the error test accepts (in float32, below the step-size underflow
    limit at t = 10). A channel that starts at zero (beside others that do not) is bounded by
    its derivatives alone: the rule's other bound, "change the state by 1 %", means nothing for
    it, and its fallback (100 x 1e-6) would start every adjoint solve at 1e-4.
    """
    if torch.is_grad_enabled():
        with torch.no_grad():
            return _initial_step(f, t0, y0, f0, direction, order, norm)
    y0_abs = norm.abs(y0)
    scale = norm.scale(y0_abs, y0_abs)
    inv = norm.inv_sqrt_n
    c0, c1 = torch.stack([norm.channels(y0, scale), norm.channels(f0, scale)]).tolist()
    d0s = [x * inv for x in c0]
    d1s = [x * inv for x in c1]
    if not all(math.isfinite(x) for x in d0s + d1s):
        return math.nan
    h0s = [1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1 for d0, d1 in zip(d0s, d1s, strict=True)]
    # channels at zero drop their 1e-6 fallback where another channel gives a real first guess
    moving = [h0c for h0c, d0 in zip(h0s, d0s, strict=True) if d0 >= 1e-5]
    at_zero = [d0 < 1e-5 and len(moving) > 0 for d0 in d0s]
    h0 = min(moving) if moving else min(h0s)
    y1 = torch.add(y0, f0, alpha=direction * h0)
    f1 = f(t0 + direction * h0, y1)
    d2s = [x * inv / h0 for x in norm.channels(f1 - f0, scale).tolist()]
    if not all(math.isfinite(x) for x in d2s):
        return h0
    h = math.inf
    for h0c, d1, d2, zero in zip(h0s, d1s, d2s, at_zero, strict=True):
        if zero and max(d1, d2) <= 1e-15:
            continue  # a channel at rest (an unused parameter's gradient) sets no bound
        if max(d1, d2) <= 1e-15:
            h1 = max(1e-6, h0c * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
        h = min(h, h1) if zero else min(h, 100.0 * h0c, h1)
    return h


def integrate_adaptive(
    f: TimedFunc,
    y0: torch.Tensor,
    times: list[float],
    tableau: ButcherTableau,
    opts: AdaptiveOptions,
    rtol: Tol,
    atol: Tol,
    *,
    norm: Optional[ErrorNorm] = None,
    recorder: Optional[StepRecorder] = None,
    quad: Optional[Quadrature] = None,
) -> Outcome:
    """Integrate from ``times[0]`` through ``times[-1]`` (monotonic, either direction) and
    return the state at every time. Failures are returned in ``Outcome.error``, not raised.

    ``norm`` replaces the default error norm (the adjoint's mixed norm or seminorm);
    ``recorder`` is told every accepted step (the checkpoint gradient method); ``quad``
    accumulates over the accepted steps, outside error control (the adjoint with seminorm).
    """
    outcome = Outcome(outs=[y0], t_last=times[0], y_last=y0)
    if len(times) == 1:
        return outcome
    if norm is None:
        norm = ErrorNorm(y0, rtol, atol) if opts.norm is None else CallableNorm(y0, rtol, atol, opts.norm)
    k1 = f(times[0], y0)
    if k1.shape != y0.shape:
        raise ValueError(f"func returned shape {tuple(k1.shape)} for a state of shape {tuple(y0.shape)}")
    run = _AdaptiveRun(f, y0, k1, times, tableau, opts, norm, outcome, recorder, quad)
    try:
        h = run.first_step(k1)
        while run.out_idx < len(times):
            h = run.attempt(h)
    except _Failed:
        return outcome
    run.stop(h)
    return outcome


class _BeforeJump:
    """``f`` for a step ending on a jump of ``func`` at ``t1``: stages at ``t1`` are evaluated
    one float before it, on the step's side of the discontinuity (torchdiffeq's ``jump_t``)."""

    __slots__ = ("f", "t1", "before", "tol")

    def __init__(self, f: TimedFunc, t0: float, t1: float):
        self.f, self.t1 = f, t1
        self.before = nudge(t1, t0, f.dtype)
        self.tol = 1e-9 * abs(t1 - t0)

    def __call__(self, t: float, y: torch.Tensor) -> torch.Tensor:
        return self.f(self.before if abs(t - self.t1) <= self.tol else t, y)


class _Failed(Exception):
    """The solve failed; raised by :meth:`_AdaptiveRun.fail` once the failure is in the
    outcome, and caught by :func:`integrate_adaptive`, which returns that outcome."""


class _AdaptiveRun:
    """One adaptive solve between its steps: where it stands (``t``, ``y``, ``|y|``, the next
    step's first stage ``k1`` if known, the next output ``out_idx``), its step-size controller
    and how many non-finite error estimates it met in a row.

    The step methods return the signed size of the next step to attempt; a failure ends the
    solve through :meth:`fail`.
    """

    __slots__ = ("f", "times", "tableau", "opts", "norm", "outcome", "recorder", "quad",
                 "controller", "direction", "step", "t", "y", "y_abs", "k1", "out_idx",
                 "n_nonfinite", "last_nonfinite", "stops", "jumps")

    def __init__(self, f: TimedFunc, y0: torch.Tensor, k1: torch.Tensor, times: list[float],
                 tableau: ButcherTableau, opts: AdaptiveOptions, norm: ErrorNorm, outcome: Outcome,
                 recorder: Optional[StepRecorder], quad: Optional[Quadrature]) -> None:
        self.f, self.times, self.tableau, self.opts, self.norm = f, times, tableau, opts, norm
        self.outcome, self.recorder, self.quad = outcome, recorder, quad
        self.controller = make_controller(opts, tableau.order)
        self.direction = 1.0 if times[-1] > times[0] else -1.0
        self.t, self.y = times[0], y0
        self.k1: Optional[torch.Tensor] = k1
        self.y_abs = norm.abs(y0.detach())
        # without autograd the step forms the error estimate itself, at no cost (step.py)
        self.step = stepper(tableau, y0, with_error=not torch.is_grad_enabled())
        self.out_idx = 1
        self.n_nonfinite = 0  # consecutive non-finite error estimates
        self.last_nonfinite = False  # the last rejection was for a non-finite estimate
        # step_t and jump_t strictly inside the span, in the order the solve meets them (popped
        # from the end as they are passed)
        d = self.direction
        inside = [x for x in opts.step_t + opts.jump_t if d * (x - times[0]) > 0.0 and d * (times[-1] - x) > 0.0]
        self.stops = sorted(inside, key=lambda x: -d * x)
        self.jumps = frozenset(opts.jump_t)

    def first_step(self, k1: torch.Tensor) -> float:
        """The first step's signed size (``k1``: the derivative at the start)."""
        t, y0, direction = self.t, self.y, self.direction
        span = abs(self.times[-1] - t)
        h = self.controller.init(
            span, lambda: _initial_step(self.f, t, y0, k1, direction, self.tableau.order, self.norm)
        )
        if math.isnan(h):
            self.fail("non-finite", 0.0, *nonfinite_start(self.f, y0, fixed=False))
        return direction * h

    def attempt(self, h: float) -> float:
        """Attempt a step of signed size ``h`` (shortened onto the next target when it
        reaches, or nearly reaches, it) and decide on it."""
        self._check_may_step(h)
        h_step, t_new, clipped = self._aim(h)
        callbacks = self.f.callbacks
        if callbacks is not None:
            Callbacks.call(callbacks.step, self.t, self.y, h_step)
        jump = t_new in self.jumps
        f = _BeforeJump(self.f, self.t, t_new) if jump else self.f
        res = self.step(f, self.t, self.y, h_step, self.k1)
        ratio, y1_abs = _error_ratio(self.tableau, self.norm, h_step, res, self.y_abs)
        self.outcome.n_steps += 1
        if not math.isfinite(ratio):
            return self._nonfinite(h_step, res.ks[0])
        self.n_nonfinite = 0
        controller = self.controller
        if controller.accepts(ratio) or abs(h_step) <= self.opts.min_step:
            if callbacks is not None:
                Callbacks.call(callbacks.accept, self.t, self.y, h_step)
            self._accept(h_step, t_new, res, y1_abs)
            if self.stops and t_new == self.stops[-1]:
                self.stops.pop()
                if jump:
                    # past a discontinuity: the next step starts from func on its far side
                    self.k1 = self.f(nudge(t_new, t_new + self.direction, self.f.dtype), self.y)
            return self.direction * controller.accepted(ratio, abs(h_step), abs(h), clipped)
        if callbacks is not None:
            Callbacks.call(callbacks.reject, self.t, self.y, h_step)
        self.outcome.n_rejected += 1
        self.last_nonfinite = False
        h_next = controller.rejected(ratio, abs(h_step))
        if h_next is None:
            self.fail("step-size-underflow", h_step,
                      f"error test failed at the minimum step size min_step={self.opts.min_step:.3g}")
        return self.direction * h_next

    def _check_may_step(self, h: float) -> None:
        """Fail when no step of size ``h`` may be taken: the step budget is spent, or ``h`` no
        longer moves ``t``."""
        max_num_steps = self.opts.max_num_steps
        if self.outcome.n_steps >= max_num_steps:
            self.fail("max-steps", h, f"reached max_num_steps={max_num_steps} before t={self.times[-1]:.6g}")
        if abs(h) <= _UNDERFLOW * abs(self.t) or h == 0.0:
            if self.last_nonfinite:
                # shrinking away from NaN/inf values until t stopped moving: that is the cause
                self.fail("non-finite", h, "the dynamics are not finite just past this time")
            self.fail("step-size-underflow", h, "step size underflow: the step no longer changes t")

    def _aim(self, h: float) -> tuple[float, float, bool]:
        """The step to take, its end time and whether it was clipped: ``h``, or exactly onto
        the target (the end of the span, or the next output time when ``force_output_steps``)
        when ``h`` would reach it or stop within ``_STRETCH`` of it."""
        t = self.t
        target = self.times[self.out_idx] if self.opts.force_output_steps else self.times[-1]
        if self.stops and self.direction * (self.stops[-1] - target) < 0.0:
            target = self.stops[-1]  # a step_t or jump_t before the target
        remaining = target - t
        if self.direction * (t + _STRETCH * h - target) >= 0.0 and abs(remaining) <= self.opts.max_step:
            return remaining, target, True
        return h, t + h, False

    def _accept(self, h_step: float, t_new: float, res: StepResult, y1_abs: torch.Tensor) -> None:
        """Move to the end of an accepted step, serving the outputs it covers."""
        self.outcome.n_accepted += 1
        if self.quad is not None:
            self.quad.accept(h_step, res.ks)
        t, y, times = self.t, self.y, self.times
        y_next = res.y_next
        f1 = res.ks[-1] if self.tableau.fsal else None
        first = last = self.out_idx
        while last < len(times) and self.direction * (times[last] - t_new) <= 0.0:
            last += 1
        if first < last:
            f1 = step_outputs(self.f, self.tableau, t, y, h_step, t_new, y_next, res.ks,
                              times[first:last], self.outcome.outs, f1)
        if self.recorder is not None:
            self.recorder.accept(t, h_step, t_new, y, first, last)
        self.out_idx = last
        self.t, self.y, self.y_abs = t_new, y_next, y1_abs
        self.k1 = f1  # None for a non-FSAL method: the next step evaluates it

    def _nonfinite(self, h_step: float, k1: torch.Tensor) -> float:
        """After a step whose error estimate is NaN or infinite: retry smaller, or fail.
        ``k1``: the step's first stage, the derivative at the current state."""
        self.outcome.n_rejected += 1
        self.n_nonfinite += 1
        self.last_nonfinite = True
        # A non-finite first stage cannot be cured by a smaller step: fail at once.
        if self.n_nonfinite == 1 and not bool(torch.isfinite(k1).all()):
            self.fail("non-finite", h_step, "the derivative at the current state is not finite")
        if self.n_nonfinite > _MAX_NONFINITE_RETRIES:
            self.fail("non-finite", h_step,
                      f"error estimate stayed non-finite after {_MAX_NONFINITE_RETRIES} smaller steps")
        h_next = self.controller.nonfinite(abs(h_step))
        if h_next is None:
            self.fail("non-finite", h_step, "error estimate not finite at the minimum step size")
        return self.direction * h_next

    def stop(self, h: float) -> None:
        """Record where the solve stands and the step size it would take next."""
        self.outcome.t_last, self.outcome.y_last, self.outcome.step_size = self.t, self.y, h

    def fail(self, reason: str, h: float, message: str, hint: Optional[str] = None) -> NoReturn:
        """End the solve with a failure at the current time (``h``: the step size it had)."""
        self.stop(h)
        self.outcome.error = solver_error(reason, self.t, h, message, hint)
        raise _Failed
