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
    """Each ODE-RNN encoder's and ODE block's training solver in words, in model order (a
    ResNet block: its own Euler steps)."""
    from odespec.compile.ode_block import BlockBase, ResNetBlock
    from odespec.export.unroll import PerSampleEncoder

    out = []
    for m in model:
        if isinstance(m, PerSampleEncoder):
            out.append(f"ode_rnn {m.solver.describe()} per gap")
        elif isinstance(m, ResNetBlock):
            out.append(f"resnet ({len(m.dynamics)} Euler steps, own weights)")
        elif isinstance(m, BlockBase):
            out.append(m.spec.solver.describe())
    return out
