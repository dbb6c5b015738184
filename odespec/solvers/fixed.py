"""Fixed-step integration.

Output times are hit exactly by construction: each output interval ``[t_i, t_{i+1}]`` is divided
into ``n`` equal steps, with ``n`` the fewest steps no longer than ``step_size`` (or ``n = steps``,
or ``n = 1`` when neither is given). Unlike torchdiffeq (one global grid of ``step_size`` with a
shortened last step and linear interpolation at the outputs), no output is ever interpolated and
no sliver step is taken; when the outputs are multiples of ``step_size`` both coincide.
"""

from __future__ import annotations

from typing import Optional

import torch

from odespec.solvers.common import Outcome, Quadrature, TimedFunc, nonfinite_start, solver_error
from odespec.solvers.grid import steps_for_interval
from odespec.solvers.options import FixedStepOptions
from odespec.solvers.replay import StepRecorder
from odespec.solvers.step import own, stepper
from odespec.solvers.tableau import ButcherTableau

__all__ = ["integrate_fixed"]

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
    outcome = Outcome(outs=[y0], t_last=times[0], y_last=y0)
    y = y0
    k1 = None
    h = 0.0
    step = stepper(tableau, y0, with_error=False)
    for i, (t0, t1) in enumerate(zip(times[:-1], times[1:], strict=True)):
        span = t1 - t0
        n = steps_for_interval(span, opts)
        h = span / n
        for j in range(n):
            res = step(f, t0 + j * h, y, h, k1)
            if quad is not None:
                quad.accept(h, res.ks)
            if recorder is not None:
                end = j == n - 1
                recorder.accept(t0 + j * h, h, t1 if end else t0 + (j + 1) * h, y,
                                i + 1, i + 2 if end else i + 1)
            y = res.y_next
            # FSAL: the last stage is f(t + h, y_next), the next step's first stage
            k1 = res.ks[-1] if tableau.fsal else None
        outcome.n_steps += n
        outcome.outs.append(own(y))
    outcome.n_accepted = outcome.n_steps
    outcome.step_size = h
    outcome.t_last, outcome.y_last = times[-1], y

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
