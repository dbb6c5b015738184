"""The PyTorch fixed-step twin of a model: same weights, every ODE block (and every ODE-RNN's
hidden-state ODE) solved with one explicit fixed-step method and step count. The ONNX graph
computes this function; parity is checked against it.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

import torch
from torch import nn

from odespec.compile.model import ODENet
from odespec.compile.ode_block import ODEBlock
from odespec.solvers.config import GradientConfig, SolverConfig


@runtime_checkable
class PerSampleEncoder(Protocol):
    """What the export needs of an encoder that solves an ODE per sample between its updates
    (the ``ode_rnn`` layer's module): its configuration, its parts, the one-slot update the
    graph repeats, and a twin with another solver. The exporter knows the layer through this
    and no layer class."""

    hidden: int
    start: float
    reverse: bool
    sequence: bool
    use_mask: bool
    solver: SolverConfig
    cell: nn.Module
    #: f(h): its ``layers`` in order (autonomous)
    dynamics: nn.Module

    def update(self, x: torch.Tensor, h: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor: ...

    def with_solver(self, solver: SolverConfig, gradient: Optional[GradientConfig] = None) -> Any: ...

    def parameters(self, recurse: bool = True) -> Any: ...


def encoder_solver(rnn: PerSampleEncoder, method: str, steps: int) -> SolverConfig:
    """The solver of an ODE-RNN encoder in the exported model: its own when it is fixed-step with
    ``steps`` per gap (the default, ``rk4`` x 1: the encoder was trained as that very map, and
    the graph computes it exactly), else ``method`` with ``steps`` per gap (an adaptive solver,
    or a ``step_size`` whose step count would follow each batch's longest gap)."""
    return SolverConfig.fixed(method, steps) if takes_export_steps(rnn) else rnn.solver


def takes_export_steps(rnn: PerSampleEncoder) -> bool:
    """Whether an ODE-RNN encoder is exported with the export's method and steps
    (:func:`encoder_solver`): its own solver has no fixed step count per gap."""
    return rnn.solver.adaptive or rnn.solver.steps is None


def fixed_step_model(model: ODENet, method: str, steps: int) -> ODENet:
    """A model whose ODE blocks use ``method`` with ``steps`` steps per output interval (a
    ``t: query`` block: per interval of each sample's own query times), and whose ODE-RNN
    encoders use :func:`encoder_solver` per gap between observations.

    Weights are shared with ``model`` (no copy), so training the original and exporting the
    twin stay in sync. The twin serves inference and parity: plain autograd is enough (and
    exact), so its blocks backpropagate.
    """
    solver = SolverConfig.fixed(method, steps)
    modules = [m.with_solver(solver, GradientConfig()) if isinstance(m, ODEBlock)
               else m.with_solver(encoder_solver(m, method, steps), GradientConfig()) if isinstance(m, PerSampleEncoder)
               else m for m in model]
    out = ODENet(model.spec, modules)
    out.train(model.training)
    return out
