"""The dynamics network f(t, y) of an ODE block, with its evaluation counter."""

from __future__ import annotations

import torch
from torch import nn

from odespec.layers import LayerContext, registry
from odespec.spec.model import DynamicsSpec, Shape


class DynamicsNet(nn.Module):
    """f(t, y): the block's layers in order; layers built with ``time: concat`` also receive t.

    ``nfe`` counts calls (function evaluations). It is a plain Python int, not a tensor, so
    counting adds no tensor operation to the solve.
    """

    def __init__(self, spec: DynamicsSpec, state_shape: Shape):
        super().__init__()
        self.time = spec.time
        layers = []
        takes_t = []
        shape = state_shape
        for layer in spec.layers:
            ltype = registry.get(layer.kind)
            ctx = LayerContext(in_dynamics=True, time_concat=spec.time == "concat" and ltype.takes_time)
            layers.append(ltype.build(layer.options, shape, ctx))
            takes_t.append(ctx.time_concat)
            shape = layer.out_shape
        from odespec.layers.torch_modules import inplace_activations

        inplace_activations(layers)
        self.layers = nn.ModuleList(layers)
        self.takes_t = tuple(takes_t)
        self.nfe = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        for layer, with_t in zip(self.layers, self.takes_t):
            y = layer(t, y) if with_t else layer(y)
        return y
