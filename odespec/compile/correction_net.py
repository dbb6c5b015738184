"""The learned step correction's network (a hypersolver's g, Poli et al. 2020): a torch module
built from a correction's options, as compile builds every module. Training it and laying it
into the graph are the export's (:mod:`odespec.export.correction`)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from odespec.errors import BuildError

__all__ = ["CorrectionNet"]


class CorrectionNet(nn.Module):
    """g(t, h, y, k1): the correction of one ODE block's step, shaped like its state.

    A vector state (``(d,)``): a dense net ``2d + 2 -> hidden -> hidden -> d`` with tanh. An image
    or sequence state (``(C, H, W)`` or ``(C, L)``): ``3x3`` (``3``) convolutions ``2C + 2 ->
    hidden -> C`` with tanh, padding 1. ``t`` and ``h`` enter as two constant features (channels).
    The features are standardised with the fit data's mean and spread, and the output scaled by
    the targets' spread (buffers); the last layer starts at zero, so an untrained net adds
    nothing.
    """

    # buffers
    in_shift: torch.Tensor
    in_scale: torch.Tensor
    out_scale: torch.Tensor

    def __init__(self, state_shape: Sequence[int], hidden: int):
        super().__init__()
        rank = len(state_shape)
        channels = int(state_shape[0])
        inp = 2 * channels + 2
        self.rank = rank
        if rank == 1:
            self.net: nn.Sequential = nn.Sequential(nn.Linear(inp, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                                    nn.Tanh(), nn.Linear(hidden, channels))
        elif rank in (2, 3):
            conv = nn.Conv1d if rank == 2 else nn.Conv2d
            self.net = nn.Sequential(conv(inp, hidden, 3, padding=1), nn.Tanh(), conv(hidden, channels, 3, padding=1))
        else:
            raise BuildError(f"the correction network takes a state of rank 1, 2 or 3 (features, (C, L) or "
                              f"(C, H, W)); this ODE block's state has shape {tuple(state_shape)}",
                              "remove the correction")
        last = self.net[-1]
        assert isinstance(last, (nn.Linear, nn.Conv1d, nn.Conv2d))
        nn.init.zeros_(last.weight)
        assert last.bias is not None
        nn.init.zeros_(last.bias)
        feat = (1, inp) + (1,) * (rank - 1)
        self.register_buffer("in_shift", torch.zeros(feat))
        self.register_buffer("in_scale", torch.ones(feat))
        self.register_buffer("out_scale", torch.ones((1, channels) + (1,) * (rank - 1)))

    def features(self, t: torch.Tensor, h: torch.Tensor, y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``[y, k1, t, h]`` along the feature (channel) axis; ``t`` and ``h`` are 0-d, or one
        value per row."""
        ones = torch.ones_like(y[:, :1])
        shape = (-1,) + (1,) * (y.dim() - 1)
        return torch.cat([y, k, ones * t.reshape(shape), ones * h.reshape(shape)], dim=1)

    def forward(self, t: torch.Tensor, h: torch.Tensor, y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        x = (self.features(t, h, y, k) - self.in_shift) / self.in_scale
        return self.net(x) * self.out_scale

    def standardise(self, feats: torch.Tensor, targets: torch.Tensor) -> None:
        """Set the feature shift and scale, and the output scale, from the fit data (a constant
        feature, such as ``h`` on a uniform grid, keeps scale 1)."""
        dims = [0] + list(range(2, feats.dim()))
        with torch.no_grad():
            self.in_shift.copy_(feats.mean(dim=dims, keepdim=True))
            spread = feats.std(dim=dims, keepdim=True) if feats.shape[0] > 1 else torch.ones_like(self.in_scale)
            self.in_scale.copy_(torch.where(spread > 0, spread, torch.ones_like(spread)))
            out = targets.pow(2).mean(dim=dims, keepdim=True).sqrt()
            self.out_scale.copy_(torch.where(out > 0, out, torch.ones_like(out)))

    def parameter_count(self) -> int:
        """Trainable parameters (the graph also stores the three scaling buffers)."""
        return sum(p.numel() for p in self.parameters())
