"""The fixed-step grid as plain numbers: how many steps each output interval takes, where they
lie, and what a fixed-step solve costs; and non-uniform grids (:class:`StepGrid`), free step
points over a block's whole span with the outputs between them interpolated. Torch-free: the
fixed-step integrator, ResNet blocks, the ONNX export, calibration, the NFE budget and the spec
validator's step limit all count with these functions, so they agree on every grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from odespec.solvers.options import DEFAULT_NEWTON_ITERS, FixedStepOptions
from odespec.solvers.tableau import ButcherTableau

__all__ = ["steps_for_interval", "count_steps", "fixed_grid", "grid_steps", "fixed_nfe", "implicit_step_nfe",
           "GridStep", "StepGrid", "hermite_weights"]

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


# -- non-uniform grids: free step points over a block's whole span -----------------------------------


@dataclass(frozen=True)
class GridStep:
    """One step of a :class:`StepGrid` walked through a block's output times: its index, and the
    outputs it reaches as ``(j, at_end)``: ``times[j]`` is the step's end (``at_end``), or lies
    inside the step and is interpolated."""

    index: int
    outputs: tuple[tuple[int, bool], ...]

    @property
    def interpolates(self) -> bool:
        """Whether an output lies strictly inside this step (it then needs f at the step's end)."""
        return any(not at_end for _, at_end in self.outputs)


@dataclass(frozen=True)
class StepGrid:
    """The step points of one ODE block's fixed-step solve over the block's whole span, from its
    first output time to its last, strictly monotonic in the direction of the solve.

    Unlike :func:`fixed_grid` (a whole number of equal steps per output interval), a step may
    span several output times: an output inside a step is the cubic Hermite interpolant
    (:func:`hermite_weights`) through the step's ends and the derivatives there, as
    torchdiffeq's ``grid_constructor`` with ``interp='cubic'`` computes it. The derivative at a
    step's end is the next step's first stage, so the interpolation costs one extra f-evaluation
    only when an output lies inside the last step (:meth:`nfe`). A uniform grid is the special
    case :meth:`uniform`.
    """

    points: tuple[float, ...]

    def __post_init__(self) -> None:
        p = self.points
        if len(p) < 2 or not all(math.isfinite(x) for x in p):
            raise ValueError(f"a step grid needs at least two finite points, got {list(p)}")
        direction = 1.0 if p[-1] > p[0] else -1.0
        if not all(direction * (b - a) > 0 for a, b in zip(p[:-1], p[1:], strict=True)):
            raise ValueError(f"a step grid's points must be strictly monotonic, got {list(p)}")

    @classmethod
    def uniform(cls, times: Sequence[float], steps: int) -> "StepGrid":
        """``steps`` equal steps per output interval, as :func:`fixed_grid` walks them."""
        points = [float(times[0])]
        for interval, t1 in zip(fixed_grid(times, steps), times[1:], strict=True):
            points += [t0 for t0, _ in interval[1:]] + [float(t1)]
        return cls(tuple(points))

    @classmethod
    def from_widths(cls, start: float, stop: float, fractions: Sequence[float]) -> "StepGrid":
        """Steps whose widths are ``fractions`` (positive, summing to about 1) of ``stop - start``;
        the last point is ``stop`` exactly."""
        total = float(sum(fractions))
        points, acc = [float(start)], 0.0
        for w in fractions[:-1]:
            acc += float(w) / total
            points.append(start + acc * (stop - start))
        points.append(float(stop))
        return cls(tuple(points))

    @property
    def steps(self) -> int:
        """Number of steps."""
        return len(self.points) - 1

    def covers(self, times: Sequence[float]) -> bool:
        """Whether the grid runs from ``times[0]`` to ``times[-1]`` exactly."""
        return len(times) >= 2 and self.points[0] == times[0] and self.points[-1] == times[-1]

    def walk(self, times: Sequence[float]) -> list[GridStep]:
        """The steps in order with the outputs ``times[1:]`` each reaches (``times[0]`` is the
        start). :class:`ValueError` when the grid does not span ``times`` (:meth:`covers`)."""
        if not self.covers(times):
            raise ValueError(f"the grid {list(self.points)} does not run from {times[0]} to {times[-1]}")
        direction = 1.0 if times[-1] > times[0] else -1.0
        out, j = [], 1
        for i, t1 in enumerate(self.points[1:]):
            reached = []
            while j < len(times) and direction * (times[j] - t1) <= 0.0:
                reached.append((j, times[j] == t1))
                j += 1
            out.append(GridStep(i, tuple(reached)))
        return out

    def nfe(self, times: Sequence[float], tableau: ButcherTableau) -> int:
        """f-evaluations of a solve on this grid through ``times``: every stage of every step
        (a FSAL method's first stage after the first step is the previous step's last), plus
        f at the end of the last step when a non-FSAL method interpolates an output inside it."""
        n = self.steps
        walk = self.walk(times)
        extra = 1 if walk[-1].interpolates and not tableau.fsal else 0
        return n * tableau.stages - (n - 1 if tableau.fsal else 0) + extra

    def to_list(self) -> list[float]:
        """The points, for a report or metadata."""
        return list(self.points)


def hermite_weights(t0: Any, t1: Any, t: Any) -> tuple[Any, Any, Any, Any]:
    """Coefficients ``(a0, b0, a1, b1)`` of the cubic Hermite interpolant
    ``a0 * y0 + b0 * f0 + a1 * y1 + b1 * f1`` at ``t`` through ``(t0, y0, f0)`` and
    ``(t1, y1, f1)``: plain arithmetic, so the times may be floats or 0-d tensors (the grid
    search differentiates through them)."""
    dt = t1 - t0
    s = (t - t0) / dt
    return ((1 + 2 * s) * (1 - s) ** 2, s * (1 - s) ** 2 * dt, s * s * (3 - 2 * s), s * s * (s - 1) * dt)
