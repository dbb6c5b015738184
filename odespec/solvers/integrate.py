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
from odespec.solvers.options import AdaptiveOptions, AnyMethod, FixedStepOptions, OptionsArg, ScipyOptions, SolverOptions, parse_options
from odespec.solvers.replay import StepRecorder
from odespec.solvers.tableaus import OtherMethod

__all__ = ["Setup", "make_setup"]


@dataclass(frozen=True)
class Setup:
    """Method, parsed options and tolerances of one solve. ``tableau`` is the method: a Runge-Kutta
    tableau, or one of ``odeint``'s other methods (:class:`~odespec.solvers.tableaus.OtherMethod`)."""

    tableau: AnyMethod
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
        if isinstance(self.tableau, OtherMethod):
            return self._integrate_other(self.tableau, f, y0, times, recorder, quad)
        if isinstance(self.opts, FixedStepOptions):
            return integrate_fixed(f, y0, times, self.tableau, self.opts, recorder=recorder, quad=quad)
        assert isinstance(self.opts, AdaptiveOptions)  # parse_options gives a tableau fixed or adaptive options
        return integrate_adaptive(f, y0, times, self.tableau, self.opts, self.rtol, self.atol,
                                  norm=norm, recorder=recorder, quad=quad)


    def _integrate_other(self, method: OtherMethod, f: TimedFunc, y0: torch.Tensor, times: list[float],
                         recorder: Optional[StepRecorder], quad: Optional[Quadrature]) -> Outcome:
        # the callers keep the checkpoint recorder and the adjoint's quadrature to Runge-Kutta methods
        assert recorder is None and quad is None, "checkpoints and quadratures need a Runge-Kutta method"
        if isinstance(self.opts, ScipyOptions):
            from odespec.solvers.scipy_solver import integrate_scipy  # SciPy is optional

            return integrate_scipy(f, y0, times, self.opts, self.rtol, self.atol)
        from odespec.solvers.multistep import integrate_adams

        assert isinstance(self.opts, FixedStepOptions)
        return integrate_adams(f, y0, times, method, self.opts, self.rtol, self.atol)


def make_setup(tableau: AnyMethod, options: OptionsArg, rtol: Tol, atol: Tol) -> Setup:
    """A :class:`Setup` with validated options (tolerances are checked by the caller)."""
    return Setup(tableau, parse_options(tableau, options), rtol, atol)
