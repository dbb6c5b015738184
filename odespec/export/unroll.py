"""The PyTorch fixed-step twin of a model: same weights, every ODE block (and every ODE-RNN's
hidden-state ODE) solved with one explicit fixed-step method and step count. The ONNX graph
computes this function; parity is checked against it.
"""

from __future__ import annotations

from odespec.compile.model import ODENet
from odespec.compile.ode_block import ODEBlock
from odespec.layers.series_modules import ODERNN
from odespec.solvers.config import GradientConfig, SolverConfig


def fixed_step_model(model: ODENet, method: str, steps: int) -> ODENet:
    """A model whose ODE blocks use ``method`` with ``steps`` steps per output interval (a
    ``t: query`` block: per interval of each sample's own query times), and whose ODE-RNN
    encoders use them per gap between observations.

    Weights are shared with ``model`` (no copy), so training the original and exporting the
    twin stay in sync. The twin serves inference and parity: plain autograd is enough (and
    exact), so its blocks backpropagate.
    """
    solver = SolverConfig.fixed(method, steps)
    modules = [m.with_solver(solver, GradientConfig()) if isinstance(m, (ODEBlock, ODERNN)) else m for m in model]
    out = ODENet(model.spec, modules)
    out.train(model.training)
    return out
