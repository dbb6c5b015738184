"""The fixed-step grid as plain numbers, for code that lays steps out itself (ONNX export,
ResNet blocks, NFE accounting). Same rule as :func:`odespec.solvers.fixed.integrate_fixed`."""

from __future__ import annotations

from typing import Sequence

from odespec.solvers.fixed import steps_for_interval
from odespec.solvers.options import FixedStepOptions


def fixed_grid(times: Sequence[float], steps: int) -> list[list[tuple[float, float]]]:
    """For each output interval, its steps as ``(t_start, h)``: ``steps`` equal steps per
    interval, starting at ``t0 + j * h`` exactly as the fixed-step solver walks them."""
    opts = FixedStepOptions(steps=steps)
    grid = []
    for t0, t1 in zip(times[:-1], times[1:]):
        n = steps_for_interval(t1 - t0, opts)
        h = (t1 - t0) / n
        grid.append([(t0 + j * h, h) for j in range(n)])
    return grid


def grid_steps(times: Sequence[float], steps: int) -> int:
    """Total number of steps of :func:`fixed_grid`."""
    return sum(len(interval) for interval in fixed_grid(times, steps))
