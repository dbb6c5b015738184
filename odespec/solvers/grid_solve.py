"""A fixed-step solve on a :class:`~odespec.solvers.grid.StepGrid`, generic in the state values.

Like :func:`~odespec.solvers.step.rk_step`, which it calls for every step, the walk does all state
arithmetic through a *combiner* (``combine(base, h, terms) == base + h * sum(c * k)``), so the
same code computes the PyTorch twin of an exported graph (torch tensors, with the step points as
tensors when the grid search differentiates through them) and lays the ONNX graph (symbolic
values): the two compute one function by construction.

An output inside a step is the cubic Hermite interpolant through the step's ends
(:func:`~odespec.solvers.grid.hermite_weights`). The derivative at the end of a step is the next
step's first stage, evaluated once and handed to that step as its ``k1``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from odespec.solvers.grid import GridStep, hermite_weights
from odespec.solvers.step import Combine, rk_step
from odespec.solvers.tableau import ButcherTableau

__all__ = ["grid_solve"]


def grid_solve(
    func: Callable[[Any, Any], Any],
    y0: Any,
    times: Sequence[Any],
    points: Sequence[Any],
    walk: Sequence[GridStep],
    tableau: ButcherTableau,
    combine: Combine,
) -> list[Any]:
    """The states at ``times`` (``y0`` at ``times[0]`` first) of the explicit fixed-step solve
    through the step ``points`` (``walk``: :meth:`StepGrid.walk <odespec.solvers.grid.StepGrid.walk>`
    of their float values, which says where each output lies).

    ``points`` and ``times`` may be floats or 0-d tensors; ``func(t, y)`` is called with
    ``t = point + c_i * h``."""
    outs: list[Any] = [None] * len(times)
    outs[0] = y0
    y, k1 = y0, None
    for step in walk:
        t0, t1 = points[step.index], points[step.index + 1]
        res = rk_step(func, t0, y, t1 - t0, tableau, combine=combine, k1=k1, with_error=False)
        y1 = res.y_next
        f1: Optional[Any] = res.ks[-1] if tableau.fsal else None
        if step.interpolates:
            f1 = f1 if f1 is not None else func(t1, y1)
            f0 = res.ks[0]
            for j, at_end in step.outputs:
                if not at_end:
                    a0, b0, a1, b1 = hermite_weights(t0, t1, times[j])
                    outs[j] = combine(None, 1.0, [(a0, y), (b0, f0), (a1, y1), (b1, f1)])
        for j, at_end in step.outputs:
            if at_end:
                outs[j] = y1
        y, k1 = y1, f1
    return outs
