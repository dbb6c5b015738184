"""The fixed-step grid as plain numbers: how many steps each output interval takes, where they
lie, and what a fixed-step solve costs. Torch-free: the fixed-step integrator, ResNet blocks,
the ONNX export, calibration, the NFE budget and the spec validator's step limit all count with
these functions, so they agree on every grid.
"""

from __future__ import annotations

import math
from typing import Sequence

from odespec.solvers.options import DEFAULT_NEWTON_ITERS, FixedStepOptions
from odespec.solvers.tableau import ButcherTableau

__all__ = ["steps_for_interval", "count_steps", "fixed_grid", "grid_steps", "fixed_nfe", "implicit_step_nfe"]

# |span| / step_size within this relative distance of an integer counts as that integer, so that
# e.g. span 1.0 with step 0.1 (1/0.1 = 10.000000000000002) takes 10 steps, not 11.
_ROUND_TOL = 1e-9


def steps_for_interval(span: float, opts: FixedStepOptions) -> int:
    """Number of equal steps for one output interval of length ``|span|``."""
    if opts.steps is not None:
        return opts.steps
    if opts.step_size is None:
        return 1
    q = abs(span) / opts.step_size
    n = round(q)
    if abs(q - n) <= _ROUND_TOL * max(1.0, q):
        return max(1, int(n))
    return max(1, math.ceil(q))


def count_steps(times: Sequence[float], opts: FixedStepOptions) -> int:
    """Total number of steps a fixed-step solve through ``times`` takes."""
    return sum(steps_for_interval(t1 - t0, opts) for t0, t1 in zip(times[:-1], times[1:], strict=True))


def fixed_nfe(times: Sequence[float], opts: FixedStepOptions, tableau: ButcherTableau, jacobian_evals: int = 0) -> int:
    """f-evaluations of a fixed-step solve through ``times``: every stage of every step, less
    the first stage of each step after the first for a FSAL method (it is the previous step's
    last stage, carried across output intervals too). An implicit method: :func:`implicit_step_nfe`
    per step, with ``opts.max_iters`` iterations (the most it takes when ``newton_tol`` is not 0)."""
    n = count_steps(times, opts)
    if tableau.implicit:
        iters = opts.max_iters if opts.max_iters is not None else DEFAULT_NEWTON_ITERS
        return n * implicit_step_nfe(tableau, iters, jacobian_evals)
    return n * tableau.stages - (n - 1 if tableau.fsal and n else 0)


def implicit_step_nfe(tableau: ButcherTableau, iters: int, jacobian_evals: int = 0) -> int:
    """f-evaluations of one step of an implicit method taking ``iters`` Newton iterations
    (:mod:`odespec.solvers.implicit`): ``f(t, y)``, each explicit stage at a later time, each
    unknown stage once per iteration, and ``jacobian_evals`` for the Jacobian (a forward-difference
    Jacobian evaluates f on as many nudged copies of the state as a sample has elements; autograd's
    counts none)."""
    explicit = tableau.explicit_stages
    later = sum(1 for i in explicit if tableau.c[i] != 0.0)
    return 1 + later + iters * (tableau.stages - len(explicit)) + jacobian_evals


def fixed_grid(times: Sequence[float], steps: int) -> list[list[tuple[float, float]]]:
    """For each output interval, its steps as ``(t_start, h)``: ``steps`` equal steps per
    interval, starting at ``t0 + j * h`` exactly as the fixed-step solver walks them."""
    opts = FixedStepOptions(steps=steps)
    grid = []
    for t0, t1 in zip(times[:-1], times[1:], strict=True):
        n = steps_for_interval(t1 - t0, opts)
        h = (t1 - t0) / n
        grid.append([(t0 + j * h, h) for j in range(n)])
    return grid


def grid_steps(times: Sequence[float], steps: int) -> int:
    """Total number of steps of :func:`fixed_grid`."""
    return count_steps(times, FixedStepOptions(steps=steps))
