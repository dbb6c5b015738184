"""Result types of :func:`odespec.solvers.solve`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from odespec.errors import SolverError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["BackwardStats", "SolveStats", "Solution"]


@dataclass
class BackwardStats:
    """Work done by backward passes through one solve; filled in *during* ``.backward()``, so
    read it afterwards (it is shared, not copied, by :attr:`SolveStats.backward`).

    ``nfe`` counts evaluations of the user's ``func``: for ``gradient="adjoint"`` each is one
    evaluation of the augmented dynamics (``func`` plus one vector-Jacobian product); for
    ``"checkpoint"`` the re-evaluations while replaying the steps. ``"backprop"`` evaluates
    nothing in its backward pass (autograd replays recorded operations), so it stays 0. The step
    counters are the adjoint's backward solves (``"checkpoint"``: steps replayed, all
    accepted). ``passes`` counts backward passes (more than one with ``retain_graph``); every
    counter is a total over them.
    """

    nfe: int = 0
    n_steps: int = 0
    n_accepted: int = 0
    n_rejected: int = 0
    passes: int = 0


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
    #: the gradient method the solve used
    gradient: str = "backprop"
    #: the backward passes' work, filled in when they run
    backward: BackwardStats = field(default_factory=BackwardStats)


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
