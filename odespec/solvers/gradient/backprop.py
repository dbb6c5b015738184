"""Plain backpropagation through the solver's operations (discretise-then-optimise)."""

from __future__ import annotations

from odespec.solvers.config import BACKPROP
from odespec.solvers.gradient.base import GradientMethod, Problem, Solved, plain_solve, register_gradient
from odespec.solvers.solution import BackwardStats

__all__ = ["Backprop"]


@register_gradient
class Backprop(GradientMethod):
    """``gradient="backprop"``: autograd records every operation of every accepted and rejected
    step (step-size decisions are constants to it). Exact gradients of the computed solution,
    the fastest backward pass, memory linear in the number of steps. Its backward pass calls no
    ``func``, so ``stats.backward`` stays zero."""

    name = "backprop"
    decl = BACKPROP

    def solve(self, problem: Problem, stats: BackwardStats) -> Solved:
        return plain_solve(problem)
