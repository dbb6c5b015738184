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
estimators as in Hairer's code. Step-size control: PI controller (Hairer's DOPRI5 constants,
beta = 0.04) by default, or ``controller="i"``, the plain I controller with torchdiffeq's rule of
never shrinking after an accepted step. The controller exponent is ``1/order`` (for every built-in
pair this equals Hairer's ``1/(min(p, p_hat) + 1)``; DOP853's combined estimator behaves like
``h**8``).
"""

from __future__ import annotations

import math
import sys
from typing import Optional

import torch

from odespec.solvers.common import Outcome, Quadrature, TimedFunc, solver_error
from odespec.solvers.norms import ErrorNorm, Tol
from odespec.solvers.options import AdaptiveOptions
from odespec.solvers.replay import StepRecorder, step_outputs
from odespec.solvers.step import StepResult, const_tensor, error_estimates, stepper
from odespec.solvers.tableau import ButcherTableau

__all__ = ["integrate_adaptive", "ErrorNorm"]

_PI_BETA = 0.04  # Hairer's default for DOPRI5; with alpha = 1/q - 0.75 beta
_MIN_FACOLD = 1e-4  # Hairer: the previous error ratio is floored to keep the PI term bounded
_MAX_NONFINITE_RETRIES = 10  # after that many consecutive non-finite estimates, give up
_STRETCH = 1.01  # stretch the last step by up to 1% rather than leave a sliver (Hairer)
# The step underflows when |h| <= _UNDERFLOW * eps * |t| (Hairer: 0.1|h| <= uround|x|), eps that of
# the integrator's own time, Python floats, whatever t's dtype: func sees a float32 t rounded
# (steps below ~1 ulp give stages at equal times), but the solve still moves, as torchdiffeq's
# does. (Testing against float32's eps made a stiff float32 solve at t = 1000 fail with steps
# below 1.2e-3 that torchdiffeq takes.)
_UNDERFLOW = 10.0


# Up to this many state elements the error estimate is one stack + one matmul over the stages
# it uses (2 aten ops) rather than one add per stage; above it the copy that stacking makes costs
# more than the adds it saves (measured on CPU, torch 2.13, 7 stages: the two cross near 10k).
_ERR_STACK_MAX_NUMEL = 8192
# keyed by id (hashing a tableau hashes all its coefficients); the entry keeps the tableau, so
# its id cannot be reused while the entry exists
_ERR_WEIGHTS: dict[tuple, tuple[ButcherTableau, tuple[int, ...], torch.Tensor]] = {}


def _error_weights(tableau: ButcherTableau, like: torch.Tensor) -> tuple[tuple[int, ...], torch.Tensor]:
    """The stages an error estimate uses and its weight matrix (one row per estimator)."""
    key = (id(tableau), like.dtype, like.device)
    hit = _ERR_WEIGHTS.get(key)
    if hit is None:
        rows = [tableau.b_err] + ([tableau.b_err_aux] if tableau.b_err_aux is not None else [])
        idx = tuple(j for j in range(tableau.stages) if any(r[j] != 0.0 for r in rows))
        w = const_tensor([[r[j] for j in idx] for r in rows], like.dtype, like.device)
        if len(_ERR_WEIGHTS) > 64:
            _ERR_WEIGHTS.clear()
        hit = _ERR_WEIGHTS[key] = (tableau, idx, w)
    return hit[1], hit[2]


def _error_ratio(
    tableau: ButcherTableau, norm: ErrorNorm, h: float, res: StepResult, y_abs
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
    if res.error is not None:
        est = torch.stack([res.error.reshape(-1), res.error_aux.reshape(-1)])
        factor = norm.inv_sqrt_n  # the step's estimates include h
    elif k0.numel() <= _ERR_STACK_MAX_NUMEL:
        idx, w = _error_weights(tableau, k0)
        est = torch.mm(w, torch.stack([ks[j] for j in idx]).view(len(idx), -1))
        factor = abs(h) * norm.inv_sqrt_n
    else:
        err, aux = error_estimates(1.0, tableau, ks)
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
    h0s = [1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1 for d0, d1 in zip(d0s, d1s)]
    # channels at zero drop their 1e-6 fallback where another channel gives a real first guess
    moving = [h0c for h0c, d0 in zip(h0s, d0s) if d0 >= 1e-5]
    at_zero = [d0 < 1e-5 and len(moving) > 0 for d0 in d0s]
    h0 = min(moving) if moving else min(h0s)
    y1 = torch.add(y0, f0, alpha=direction * h0)
    f1 = f(t0 + direction * h0, y1)
    d2s = [x * inv / h0 for x in norm.channels(f1 - f0, scale).tolist()]
    if not all(math.isfinite(x) for x in d2s):
        return h0
    h = math.inf
    for h0c, d1, d2, zero in zip(h0s, d1s, d2s, at_zero):
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
    n_out = len(times)
    outcome = Outcome(outs=[y0], t_last=times[0], y_last=y0)
    if n_out == 1:
        return outcome
    t = times[0]
    t_end = times[-1]
    direction = 1.0 if t_end > t else -1.0
    if norm is None:
        norm = ErrorNorm(y0, rtol, atol)
    order = tableau.order
    if opts.controller == "pi":
        beta = _PI_BETA
        alpha = 1.0 / order - 0.75 * beta
    else:
        beta = 0.0
        alpha = 1.0 / order
    # torchdiffeq's I controller never shrinks the step after an accepted one
    no_shrink = opts.controller == "i"
    safety, ifactor, dfactor = opts.safety, opts.ifactor, opts.dfactor
    max_step, min_step = opts.max_step, opts.min_step
    max_num_steps, force_output_steps = opts.max_num_steps, opts.force_output_steps
    underflow = _UNDERFLOW * sys.float_info.epsilon

    y = y0
    k1 = f(t, y0)
    if k1.shape != y0.shape:
        raise ValueError(f"func returned shape {tuple(k1.shape)} for a state of shape {tuple(y0.shape)}")

    def fail(reason: str, h: float, message: str) -> Outcome:
        outcome.t_last, outcome.y_last, outcome.step_size = t, y, h
        outcome.error = solver_error(reason, t, h, message)
        return outcome

    span = abs(t_end - t)
    if opts.first_step is not None:
        h_abs = opts.first_step
    else:
        h_abs = _initial_step(f, t, y0, k1, direction, order, norm)
        if math.isnan(h_abs):
            return fail("non-finite", 0.0, "the derivative at the initial state is not finite")
    h = direction * max(min(h_abs, max_step, span), min_step)

    y_abs = norm.abs(y0.detach())
    # without autograd the step forms the error estimate itself, at no cost (step.py)
    eager = not torch.is_grad_enabled()
    step = stepper(tableau, y0, with_error=eager)
    out_idx = 1
    facold = _MIN_FACOLD
    last_rejected = False
    n_nonfinite = 0  # consecutive non-finite error estimates
    last_nonfinite = False  # the last rejection was for a non-finite estimate
    while out_idx < n_out:
        if outcome.n_steps >= max_num_steps:
            return fail("max-steps", h, f"reached max_num_steps={max_num_steps} before t={t_end:.6g}")
        if abs(h) <= underflow * abs(t) or h == 0.0:
            if last_nonfinite:
                # shrinking away from NaN/inf values until t stopped moving: that is the cause
                return fail("non-finite", h, "the dynamics are not finite just past this time")
            return fail("step-size-underflow", h, "step size underflow: the step no longer changes t")
        target = times[out_idx] if force_output_steps else t_end
        remaining = target - t
        clipped = direction * (t + _STRETCH * h - target) >= 0.0 and abs(remaining) <= max_step
        if clipped:
            # land exactly on the target (end of the span, or the next output time when forced)
            h_step, t_new = remaining, target
        else:
            h_step, t_new = h, t + h

        res = step(f, t, y, h_step, k1)
        ratio, y1_abs = _error_ratio(tableau, norm, h_step, res, y_abs)
        outcome.n_steps += 1

        if not math.isfinite(ratio):
            outcome.n_rejected += 1
            n_nonfinite += 1
            last_nonfinite = True
            # A non-finite first stage cannot be cured by a smaller step: fail at once.
            if n_nonfinite == 1 and not bool(torch.isfinite(k1).all()):
                return fail("non-finite", h_step, "the derivative at the current state is not finite")
            if n_nonfinite > _MAX_NONFINITE_RETRIES:
                return fail(
                    "non-finite",
                    h_step,
                    f"error estimate stayed non-finite after {_MAX_NONFINITE_RETRIES} smaller steps",
                )
            h = h_step * dfactor
            last_rejected = True
            if abs(h) < min_step:
                return fail("non-finite", h_step, "error estimate not finite at the minimum step size")
            continue
        n_nonfinite = 0

        if ratio <= 1.0:
            outcome.n_accepted += 1
            if quad is not None:
                quad.accept(h_step, res.ks)
            y_next = res.y_next
            f1 = res.ks[-1] if tableau.fsal else None
            first = out_idx
            while out_idx < n_out and direction * (times[out_idx] - t_new) <= 0.0:
                out_idx += 1
            if first < out_idx:
                f1 = step_outputs(f, tableau, t, y, h_step, t_new, y_next, res.ks,
                                  times[first:out_idx], outcome.outs, f1)
            if recorder is not None:
                recorder.accept(t, h_step, t_new, y, first, out_idx)

            # step-size proposal (Hairer's DOPRI5 PI controller / torchdiffeq's I controller)
            if ratio == 0.0:
                factor = ifactor
            else:
                factor = safety * ratio ** (-alpha) * (facold**beta)
                factor = min(ifactor, max(1.0 if no_shrink else dfactor, factor))
            h_new = h_step * factor
            if last_rejected:
                # no growth right after a rejection
                h_new = direction * min(abs(h_new), abs(h_step))
            if clipped and factor >= 1.0:
                # a comfortably accurate step that was shortened to hit a target: go back to
                # the step size proposed before the shortening
                h_new = direction * max(abs(h_new), abs(h))
            facold = max(ratio, _MIN_FACOLD)
            last_rejected = False
            t, y, y_abs = t_new, y_next, y1_abs
            k1 = f1  # None for a non-FSAL method: the next step evaluates it
            h = direction * max(min(abs(h_new), max_step), min_step)
        else:
            outcome.n_rejected += 1
            last_nonfinite = False
            factor = max(dfactor, safety * ratio ** (-alpha))
            h_new = abs(h_step) * factor
            if h_new < min_step:
                if abs(h_step) <= min_step * (1.0 + 1e-12):
                    return fail(
                        "step-size-underflow",
                        h_step,
                        f"error test failed at the minimum step size min_step={min_step:.3g}",
                    )
                h_new = min_step
            h = direction * h_new
            last_rejected = True

    outcome.t_last, outcome.y_last, outcome.step_size = t, y, h
    return outcome
