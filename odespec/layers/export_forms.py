"""Torch modules of the layers' export forms (:meth:`odespec.layers.LayerType.export_form`): each
computes its layer's function, written so that the traced ONNX graph runs faster. Imported only
when exporting.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import nn

from odespec.layers.base import Shape


class SplitTimeConv(nn.Module):
    """``conv(cat([y, t * ones]))`` computed as ``conv(y; W_y) + t * S``.

    The time channel is constant over space, so its contribution is ``t`` times a fixed map
    ``S = conv(ones; W_t)`` (not constant near the borders when padded), computed here once from
    the per-sample input ``shape``. Why: with the extra channel a 64-channel conv has 65 input
    channels, which keeps onnxruntime off its blocked (NCHWc) convolution kernels, and every stage
    pays for building and concatenating the channel; with it the MNIST ODE-Net ran about 1.5x
    slower than PyTorch at batch 256. Same function up to float rounding (the parity check covers
    it). ``conv`` must have one group and zero padding.
    """

    time_map: torch.Tensor

    def __init__(self, conv: Union[nn.Conv1d, nn.Conv2d], shape: Shape):
        super().__init__()
        w = conv.weight.detach()
        # torch annotates the module's geometry as tuple[int, ...], its constructor's as
        # tuple[int] / tuple[int, int]: the same values
        self.conv = type(conv)(w.shape[1] - 1, w.shape[0], conv.kernel_size,  # type: ignore[arg-type]
                               stride=conv.stride, padding=conv.padding,  # type: ignore[arg-type]
                               dilation=conv.dilation, bias=conv.bias is not None,  # type: ignore[arg-type]
                               dtype=w.dtype)
        self.conv.weight.data.copy_(w[:, :-1])
        if conv.bias is not None and self.conv.bias is not None:  # both or neither, as made above
            self.conv.bias.data.copy_(conv.bias.detach())
        ones = torch.ones((1, 1, *shape[1:]), dtype=w.dtype)
        conv_fn = torch.nn.functional.conv2d if w.dim() == 4 else torch.nn.functional.conv1d
        time_map = conv_fn(ones, w[:, -1:], stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
        self.register_buffer("time_map", time_map[0])

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.conv(y) + t * self.time_map


class SplitTimeLinear(nn.Module):
    """``linear(cat([y, t]))`` computed as ``linear(y; W_y) + t * w_t`` (no concatenation)."""

    time_weight: torch.Tensor

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        self.linear = nn.Linear(w.shape[1] - 1, w.shape[0], bias=linear.bias is not None, dtype=w.dtype)
        self.linear.weight.data.copy_(w[:, :-1])
        if linear.bias is not None:
            self.linear.bias.data.copy_(linear.bias.detach())
        self.register_buffer("time_weight", w[:, -1].clone())

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.linear(y) + t * self.time_weight


class StaticGroupNorm(nn.Module):
    """``nn.GroupNorm`` with the per-sample ``shape`` written into the graph.

    torch exports GroupNorm as Reshape, InstanceNormalization, Reshape, Mul, Add, computing the
    reshapes' targets at run time from the input's shape (Shape, Gather, Concat, ... nodes on
    every evaluation of f). The per-sample shape is known at export time, so here the targets
    are constants (-1 for the batch dimension) and those nodes disappear: about a quarter
    fewer nodes in the MNIST ODE-Net, which shows at batch 1.
    """

    # buffers
    ones: torch.Tensor
    zeros: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, gn: nn.GroupNorm, shape: Shape, dtype: torch.dtype):
        super().__init__()
        self.shape = tuple(int(d) for d in shape)
        self.groups = gn.num_groups
        self.eps = gn.eps
        # instance_norm's exporter needs its scale and bias to know the channel count
        self.register_buffer("ones", torch.ones(self.groups, dtype=dtype))
        self.register_buffer("zeros", torch.zeros(self.groups, dtype=dtype))
        self.affine = gn.affine
        if gn.affine:
            view = (self.shape[0],) + (1,) * (len(self.shape) - 1)
            self.register_buffer("weight", gn.weight.detach().reshape(view).clone())
            self.register_buffer("bias", gn.bias.detach().reshape(view).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_group = 1
        for d in self.shape:
            per_group *= d
        z = x.reshape((-1, self.groups, per_group // self.groups))
        z = torch.nn.functional.instance_norm(z, weight=self.ones, bias=self.zeros, eps=self.eps)
        z = z.reshape((-1,) + self.shape)
        return z * self.weight + self.bias if self.affine else z
