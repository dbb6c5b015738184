"""Choosing how many Newton iterations an exported implicit solve unrolls per step.

An implicit method's graph takes a fixed number of simplified-Newton iterations per step
(:mod:`odespec.export.implicit_graph`); like the step count, the number is chosen by measuring
the PyTorch twin (:func:`~odespec.export.unroll.fixed_step_model`, the function the graph
computes), never by exporting each candidate:

* with ``steps: auto``, calibration (:mod:`odespec.export.calibrate`) finds the step count with
  :data:`~odespec.spec.schema.MAX_EXPORT_NEWTON_ITERS` iterations, then the fewest iterations
  whose output stays within ``match_tol`` of the training solver (:func:`fewest_iterations`);
* with a given step count, :func:`converged_iterations` takes the fewest iterations whose output
  is the converged iteration's up to float rounding (:data:`~odespec.export.calibrate.ROUNDING_ULPS`
  ulps of the output's magnitude): the iteration then adds no error of its own.

The scan runs upwards from one iteration: simplified Newton's error falls geometrically with the
iterations (a factor of the contraction per iteration), so the first passing count is the
smallest, and a scan costs about as many twin evaluations as the count it finds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from odespec.compile.model import ODENet
from odespec.errors import ExportError, SolverError
from odespec.export.inputs import InputSet, model_dtype
from odespec.export.metrics import Match, model_outputs
from odespec.spec.schema import MAX_EXPORT_NEWTON_ITERS

__all__ = ["NewtonChoice", "fewest_iterations", "converged_iterations"]


@dataclass
class NewtonChoice:
    """The Newton iterations per step of an exported implicit solve and where the count came
    from: ``given``, ``calibrated`` (within ``match_tol`` of the training solver) or
    ``converged`` (within float rounding of the converged iteration)."""

    iters: int
    source: str
    #: the largest error accepted (``given``: None)
    tolerance: Optional[float] = None
    #: what the error is measured against, in words
    against: str = ""
    #: (iterations, error) as evaluated, in order
    evaluations: list[tuple[int, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report's ``newton_iters`` entry."""
        return {"iters": self.iters, "source": self.source, "tolerance": self.tolerance, "against": self.against,
                "evaluations": [[k, e if np.isfinite(e) else None] for k, e in self.evaluations]}


def fewest_iterations(error: Callable[[int], float], tolerance: float,
                      most: int = MAX_EXPORT_NEWTON_ITERS) -> tuple[Optional[int], list[tuple[int, float]]]:
    """The fewest iterations ``k`` in ``1..most`` with ``error(k) <= tolerance`` (None: none),
    scanning upwards, and every ``(k, error)`` evaluated."""
    seen: list[tuple[int, float]] = []
    for k in range(1, most + 1):
        e = error(k)
        seen.append((k, e))
        if e <= tolerance:
            return k, seen
    return None, seen


def twin_outputs(model: ODENet, method: str, steps: int, iters: int, inputs: InputSet) -> list[np.ndarray]:
    """The outputs of the twin with ``iters`` Newton iterations per step (non-finite values on
    a failed solve)."""
    from odespec.export.unroll import fixed_step_model

    try:
        return model_outputs(fixed_step_model(model, method, steps, newton_iters=iters), inputs)
    except SolverError:
        return [np.full(1, np.inf)]


def converged_iterations(model: ODENet, method: str, steps: int, inputs: InputSet,
                         most: int = MAX_EXPORT_NEWTON_ITERS) -> NewtonChoice:
    """The fewest iterations whose twin's output is within float rounding of the twin's with
    ``most`` iterations (:class:`ExportError` when even ``most`` have not converged: the
    steps are too large for the dynamics' stiffness or nonlinearity)."""
    from odespec.export.calibrate import ROUNDING_ULPS

    want = twin_outputs(model, method, steps, most, inputs)
    scale = max(float(np.abs(y).max(initial=0.0)) for y in want)
    eps = float(torch.finfo(model_dtype(model)).eps)
    tol = float(f"{ROUNDING_ULPS * eps * max(scale, 1.0):.2g}")
    match = Match("max_abs", tol)
    if not np.isfinite(scale) or match.error(twin_outputs(model, method, steps, most - 1, inputs), want) > tol:
        raise ExportError(f"the Newton iteration of {method} x {steps} steps does not converge in {most} iterations "
                          "per step on the calibration inputs",
                          "take more steps (export.onnx.steps), or calibrate them with steps: auto")
    k, seen = fewest_iterations(lambda n: match.error(twin_outputs(model, method, steps, n, inputs), want), tol, most)
    assert k is not None  # most - 1 passed above, and most is the reference itself
    return NewtonChoice(k, "converged", tol, f"{method} x {steps} steps with {most} iterations "
                        f"({ROUNDING_ULPS} ulps of max |output| {scale:.3g})", seen)
