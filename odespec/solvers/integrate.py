"""One entry point over the fixed-step and adaptive integrators: a :class:`Setup` is everything
a solve needs besides the vector field and the initial state (method, options, tolerances), so
the gradient methods can run the forward solve, the adjoint's backward solves and the
checkpoint replays through the same code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from odespec.solvers.adaptive import integrate_adaptive
from odespec.solvers.common import Outcome, Quadrature, TimedFunc
from odespec.solvers.fixed import integrate_fixed
from odespec.solvers.norms import ErrorNorm, Tol
from odespec.solvers.options import FixedStepOptions, OptionsArg, SolverOptions, parse_options
from odespec.solvers.replay import StepRecorder
from odespec.solvers.tableau import ButcherTableau

__all__ = ["Setup", "make_setup"]


@dataclass(frozen=True)
class Setup:
    """Method, parsed options and tolerances of one solve."""

    tableau: ButcherTableau
    opts: SolverOptions
    rtol: Tol
    atol: Tol

    @property
    def fixed(self) -> bool:
        """True for fixed-step integration (also an adaptive method given ``steps``/``step_size``)."""
        return isinstance(self.opts, FixedStepOptions)

    def integrate(
        self,
        f: TimedFunc,
        y0: torch.Tensor,
        times: list[float],
        *,
        norm: Optional[ErrorNorm] = None,
        recorder: Optional[StepRecorder] = None,
        quad: Optional[Quadrature] = None,
    ) -> Outcome:
        """Integrate ``f`` from ``y0`` through ``times``; failures come back in the outcome."""
        if isinstance(self.opts, FixedStepOptions):
            return integrate_fixed(f, y0, times, self.tableau, self.opts, recorder=recorder, quad=quad)
        return integrate_adaptive(f, y0, times, self.tableau, self.opts, self.rtol, self.atol,
                                  norm=norm, recorder=recorder, quad=quad)


def make_setup(tableau: ButcherTableau, options: OptionsArg, rtol: Tol, atol: Tol) -> Setup:
    """A :class:`Setup` with validated options (tolerances are checked by the caller)."""
    return Setup(tableau, parse_options(tableau, options), rtol, atol)
