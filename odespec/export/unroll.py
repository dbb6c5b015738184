"""The PyTorch fixed-step twin of a model: same weights, every ODE block solved with one
explicit fixed-step method and step count. The ONNX graph computes this function; parity is
checked against it.
"""

from __future__ import annotations

import copy
import dataclasses

from odespec.compile.model import ODENet
from odespec.compile.ode_block import ODEBlock
from odespec.spec.model import GradientSpec, SolverSpec


def fixed_step_model(model: ODENet, method: str, steps: int) -> ODENet:
    """A shallow copy of ``model`` whose ODE blocks use ``method`` with ``steps`` steps.

    Weights are shared with ``model`` (no copy), so training the original and exporting the
    twin stay in sync.
    """
    modules = []
    for m in model:
        if isinstance(m, ODEBlock):
            solver = SolverSpec(method=method, adaptive=False, steps=steps)
            # the twin serves inference and parity: plain autograd is enough (and exact)
            spec = dataclasses.replace(m.spec, solver=solver, gradient=GradientSpec())
            twin = copy.copy(m)  # shares parameters and buffers; only the spec changes
            twin._modules = dict(m._modules)
            object.__setattr__(twin, "spec", spec)
            modules.append(twin)
        else:
            modules.append(m)
    out = ODENet(model.spec, modules)
    out.train(model.training)
    return out
