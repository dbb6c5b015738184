"""A model's training solvers in words, for the deployment error, calibration and their
messages. How one solver is described belongs to its configuration
(:meth:`odespec.solvers.config.SolverConfig.describe`); a ResNet block, which has no solver of
its own, is described here."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from odespec.compile.model import ODENet

__all__ = ["training_solvers"]


def training_solvers(model: "ODENet") -> list[str]:
    """Each ODE block's training solver in words (a ResNet block: its own Euler steps)."""
    from odespec.compile.ode_block import ResNetBlock

    return [f"resnet ({len(b.dynamics)} Euler steps, own weights)" if isinstance(b, ResNetBlock)
            else b.spec.solver.describe() for b in model.ode_blocks]
