"""A model's training solvers as report fields and in words, for the build report, its text
and the messages of export and calibration.

Imports no torch at module level: the text rendering of a build report (:mod:`odespec.report`)
uses :func:`settings_words`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from odespec.compile.model import ODENet
    from odespec.spec.model import SolverSpec

__all__ = ["solver_settings", "settings_words", "solver_words", "training_solvers"]


def solver_settings(solver: "SolverSpec") -> dict[str, Any]:
    """The method and what sets its accuracy: ``rtol`` and ``atol`` for an adaptive method,
    ``steps`` and ``step_size`` for a fixed-step one (the one not given is ``None``)."""
    if solver.adaptive:
        return {"method": solver.method, "rtol": solver.rtol, "atol": solver.atol}
    return {"method": solver.method, "steps": solver.steps, "step_size": solver.step_size}


def settings_words(settings: Mapping[str, Any]) -> str:
    """A :func:`solver_settings` mapping (as the build report stores it) in words, e.g.
    ``dopri5 rtol=1e-07 atol=1e-09`` or ``rk4 steps=4``."""
    given = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
             for k, v in settings.items() if k != "method" and v is not None]
    return " ".join([settings["method"], *given])


def solver_words(solver: "SolverSpec") -> str:
    """A solver in words: :func:`settings_words` of its :func:`solver_settings`."""
    return settings_words(solver_settings(solver))


def training_solvers(model: "ODENet") -> list[str]:
    """Each ODE block's training solver in words (a ResNet block: its own Euler steps)."""
    from odespec.compile.ode_block import ResNetBlock

    return [f"resnet ({len(b.dynamics)} Euler steps, own weights)" if isinstance(b, ResNetBlock)
            else solver_words(b.spec.solver) for b in model.ode_blocks]
