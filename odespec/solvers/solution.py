"""Result types of :func:`odespec.solvers.solve`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from odespec.errors import SolverError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["SolveStats", "Solution"]


@dataclass(frozen=True)
class SolveStats:
    """Counters of one solve.

    ``status`` is ``"success"`` or the failure reason (``"non-finite"``,
    ``"step-size-underflow"``, ``"max-steps"``). ``final_step_size`` is the step size the solver
    would take next (fixed-step: the last step's size); signed, negative for backward time.
    """

    method: str
    nfe: int
    n_steps: int
    n_accepted: int
    n_rejected: int
    final_step_size: float
    status: str


@dataclass(frozen=True)
class Solution:
    """The outcome of :func:`odespec.solvers.solve`.

    ``ts``/``ys`` hold the requested times reached and the states there; on success that is all
    of them (``ys.shape == (len(t), *y0.shape)``). After a failure with ``return_on_failure``,
    they stop at the last output time reached, and ``t_last``/``y_last`` give the last accepted
    state (possibly beyond that output time). ``error`` is the :class:`SolverError` that would
    have been raised. For a tuple ``y0``, ``ys`` and ``y_last`` are tuples too.
    """

    ts: "torch.Tensor"
    ys: "torch.Tensor"
    stats: SolveStats
    t_last: float
    y_last: "torch.Tensor"
    error: Optional[SolverError] = None

    @property
    def success(self) -> bool:
        """True when every requested time was reached."""
        return self.error is None

    @property
    def status(self) -> str:
        """Shortcut for ``stats.status``."""
        return self.stats.status
