"""``train.init``: re-initialise the linear layers of every ODE block's dynamics.

torchdiffeq's ode_demo draws its MLP's weights from N(0, 0.1) and sets the biases to 0; layers
themselves keep torch's initialisation, so this lives with training. Draws come from a
generator seeded with the spec's top-level seed (which also seeds the initial weights), on the
CPU, so the result is the same on every device and never touches the global RNG.
"""

from __future__ import annotations

import torch
from torch import nn

from odespec.spec.model import InitSpec

__all__ = ["apply_init"]


def apply_init(model: nn.Module, init: InitSpec, seed: int) -> int:
    """Apply ``init`` to ``model`` (an ODENet); returns how many linear layers were changed."""
    if init.weights == "default":
        return 0
    from odespec.compile.ode_block import BlockBase

    gen = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for block in (m for m in model.modules() if isinstance(m, BlockBase)):
            for layer in block.modules():
                if isinstance(layer, nn.Linear):
                    w = torch.randn(layer.weight.shape, generator=gen, dtype=torch.float64) * init.std
                    layer.weight.copy_(w)
                    if layer.bias is not None:
                        layer.bias.zero_()
                    count += 1
    return count
