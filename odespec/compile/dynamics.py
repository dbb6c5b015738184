"""The dynamics network f(t, y) of an ODE block, with its evaluation counter."""

from __future__ import annotations

import torch
from torch import nn

from odespec.layers import LayerContext, LayerUse, registry
from odespec.spec.model import DynamicsSpec, Shape


class DynamicsNet(nn.Module):
    """f(t, y): the block's layers in order; layers built with ``time: concat`` also receive t.

    ``uses`` pairs each layer with what its layer type built it from (later stages ask the
    type about the module, e.g. for its export form). ``nfe`` counts calls (function
    evaluations). It is a plain Python int, not a tensor, so counting adds no tensor operation
    to the solve.
    """

    def __init__(self, spec: DynamicsSpec, state_shape: Shape):
        super().__init__()
        self.time = spec.time
        uses = []
        shape = state_shape
        for layer in spec.layers:
            takes_time = spec.time == "concat" and registry.get(layer.kind).takes_time
            uses.append(LayerUse(layer, shape, LayerContext(in_dynamics=True, time_concat=takes_time)))
            shape = layer.out_shape
        from odespec.layers.torch_modules import inplace_activations

        layers = [use.build() for use in uses]
        inplace_activations(layers)
        self.layers = nn.ModuleList(layers)
        self.uses: tuple[LayerUse, ...] = tuple(uses)
        self.takes_t = tuple(use.ctx.time_concat for use in uses)
        self.nfe = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        for layer, with_t in zip(self.layers, self.takes_t, strict=True):
            y = layer(t, y) if with_t else layer(y)
        return y
