"""Torch modules of the layers' export forms (:meth:`odespec.layers.LayerType.export_form`): each
computes its layer's function, written so that the traced ONNX graph runs faster. Imported only
when exporting.
"""

from __future__ import annotations

import itertools
import math
from typing import Optional, Sequence, Union

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


def _channel_affine(module: nn.Module, gn: nn.GroupNorm, shape: Sequence[int]) -> bool:
    """Register ``gn``'s per-channel scale and shift on ``module`` as buffers shaped to broadcast
    over a sample of ``shape`` (channels first); whether ``gn`` has them."""
    if gn.affine:
        view = (shape[0],) + (1,) * (len(shape) - 1)
        module.register_buffer("weight", gn.weight.detach().reshape(view).clone())
        module.register_buffer("bias", gn.bias.detach().reshape(view).clone())
    return gn.affine


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
        self.affine = _channel_affine(self, gn, self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_group = 1
        for d in self.shape:
            per_group *= d
        z = x.reshape((-1, self.groups, per_group // self.groups))
        z = torch.nn.functional.instance_norm(z, weight=self.ones, bias=self.zeros, eps=self.eps)
        z = z.reshape((-1,) + self.shape)
        return z * self.weight + self.bias if self.affine else z


# -- float64 forms -------------------------------------------------------------------------------
# onnxruntime's CPU provider has no double kernels for Softplus, Elu, InstanceNormalization,
# Conv, AveragePool/GlobalAveragePool, RNN and GRU (NOT_IMPLEMENTED when the session loads).
# The forms below compute the same functions with operators it does run in double (Exp, Log,
# Where, ReduceMean, Pad, Slice, MatMul, Tanh, Sigmoid); the layer types use them only for a
# float64 export, so float32 graphs keep the native operators.


class Softplus64(nn.Module):
    """``torch.nn.Softplus``: ``log(1 + exp(beta x)) / beta``, and ``x`` where ``beta x > threshold``.

    Written as ``(max(z, 0) + log(1 + exp(-|z|))) / beta`` with ``z = beta x``: no overflow for
    large ``z``, and the same values up to float rounding.
    """

    def __init__(self, beta: float, threshold: float):
        super().__init__()
        self.beta = beta
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x * self.beta
        smooth = (torch.relu(z) + torch.log(1 + torch.exp(-torch.abs(z)))) / self.beta
        return torch.where(z > self.threshold, x, smooth)


class Elu64(nn.Module):
    """``torch.nn.ELU``: ``x`` where ``x > 0``, else ``alpha (exp(x) - 1)`` (exp of ``min(x, 0)``:
    the branch not taken never overflows)."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, self.alpha * (torch.exp(torch.clamp(x, max=0.0)) - 1))


class GroupNorm64(nn.Module):
    """``nn.GroupNorm`` written with ReduceMean: each group's mean and biased variance, then
    ``(x - mean) / sqrt(var + eps)``, times the per-channel weight plus bias."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, gn: nn.GroupNorm, shape: Shape):
        super().__init__()
        self.shape = tuple(int(d) for d in shape)
        self.groups = gn.num_groups
        self.eps = gn.eps
        self.affine = _channel_affine(self, gn, self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.reshape((-1, self.groups, math.prod(self.shape) // self.groups))
        centred = z - z.mean(dim=-1, keepdim=True)
        z = centred / torch.sqrt((centred * centred).mean(dim=-1, keepdim=True) + self.eps)
        z = z.reshape((-1,) + self.shape)
        return z * self.weight + self.bias if self.affine else z


def _patches(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
             dilation: Sequence[int], out: Sequence[int]) -> list[torch.Tensor]:
    """The strided windows of ``x`` (batch, channels, *spatial), one per kernel offset, each
    (batch, channels, *out): ``x`` zero-padded, then sliced (Pad and Slice in the graph)."""
    pads: list[int] = []
    for p in reversed(padding):  # F.pad lists the last dimension first
        pads += [p, p]
    if any(pads):
        x = torch.nn.functional.pad(x, pads)
    windows = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        index = [slice(None), slice(None)]
        for o, d, s, n in zip(offset, dilation, stride, out, strict=True):
            index.append(slice(o * d, o * d + s * (n - 1) + 1, s))
        windows.append(x[tuple(index)])
    return windows


class Conv64(nn.Module):
    """``nn.Conv1d``/``nn.Conv2d`` (zero padding, any groups) as im2col and one MatMul: the
    kernel-offset windows of the input stacked to (batch, groups, c_in/groups * k, positions) and
    multiplied by the weight (groups, c_out/groups, c_in/groups * k)."""

    weight: torch.Tensor
    bias: Optional[torch.Tensor]

    def __init__(self, conv: Union[nn.Conv1d, nn.Conv2d], shape: Shape):
        super().__init__()
        w = conv.weight.detach()
        self.kernel = tuple(int(k) for k in conv.kernel_size)
        self.stride = tuple(int(s) for s in conv.stride)
        self.padding = tuple(int(p) for p in conv.padding)  # build gives sizes, never 'same'
        self.dilation = tuple(int(d) for d in conv.dilation)
        self.groups = conv.groups
        self.out = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
                         zip(shape[1:], self.kernel, self.stride, self.padding, self.dilation, strict=True))
        c_out = w.shape[0]
        # rows ordered (input channel, kernel offset) as the stacked windows below
        self.register_buffer("weight", w.reshape(self.groups, c_out // self.groups, -1).clone())
        bias = None if conv.bias is None else conv.bias.detach().reshape((c_out,) + (1,) * len(self.out)).clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols = torch.stack(_patches(x, self.kernel, self.stride, self.padding, self.dilation, self.out), dim=2)
        cols = cols.reshape((-1, self.groups, cols.shape[1] // self.groups * cols.shape[2], math.prod(self.out)))
        y = torch.matmul(self.weight, cols).reshape((-1, self.weight.shape[0] * self.weight.shape[1]) + self.out)
        return y if self.bias is None else y + self.bias


class AvgPool64(nn.Module):
    """``nn.AvgPool1d/2d`` (zero padding counted, as torch's default) as the mean of the windows,
    or the global average as a ReduceMean over the spatial dimensions (``kernel`` None)."""

    def __init__(self, shape: Shape, kernel: Optional[Sequence[int]] = None, stride: Sequence[int] = (),
                 padding: Sequence[int] = ()):
        super().__init__()
        self.spatial = tuple(range(2, len(shape) + 1))
        self.kernel = None if kernel is None else tuple(kernel)
        self.stride = tuple(stride)
        self.padding = tuple(padding)
        self.out = () if kernel is None else tuple(
            (n + 2 * p - k) // s + 1 for n, k, s, p in zip(shape[1:], kernel, stride, padding, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is None:
            return x.mean(dim=self.spatial, keepdim=True)
        windows = _patches(x, self.kernel, self.stride, self.padding, (1,) * len(self.kernel), self.out)
        total = windows[0]
        for w in windows[1:]:
            total = total + w
        return total / math.prod(self.kernel)


class Recurrent64(nn.Module):
    """:class:`~odespec.layers.torch_modules.RecurrentEncoder` (a one-layer Elman RNN or GRU)
    written out step by step with MatMul, Tanh and Sigmoid, over the sequence length known at
    export time; ``torch.nn.GRU``'s gate order (reset, update, new)."""

    # buffers
    w_ih: torch.Tensor
    w_hh: torch.Tensor
    b_ih: torch.Tensor
    b_hh: torch.Tensor

    def __init__(self, rnn: Union[nn.RNN, nn.GRU], steps: int, *, reverse: bool, sequence: bool):
        super().__init__()
        self.gru = isinstance(rnn, nn.GRU)
        self.steps = steps
        self.reverse = reverse
        self.sequence = sequence
        self.hidden = int(rnn.hidden_size)
        w_ih = rnn.get_parameter("weight_ih_l0").detach()
        self.register_buffer("w_ih", w_ih.t().clone())
        self.register_buffer("w_hh", rnn.get_parameter("weight_hh_l0").detach().t().clone())
        zeros = torch.zeros(w_ih.shape[0], dtype=w_ih.dtype)
        self.register_buffer("b_ih", rnn.get_parameter("bias_ih_l0").detach().clone() if rnn.bias else zeros)
        self.register_buffer("b_hh", rnn.get_parameter("bias_hh_l0").detach().clone() if rnn.bias else zeros.clone())

    def _cell(self, x_k: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        gi = torch.matmul(x_k, self.w_ih) + self.b_ih
        gh = torch.matmul(h, self.w_hh) + self.b_hh
        if not self.gru:
            return torch.tanh(gi + gh)
        n_h = self.hidden
        r = torch.sigmoid(gi[:, :n_h] + gh[:, :n_h])
        z = torch.sigmoid(gi[:, n_h:2 * n_h] + gh[:, n_h:2 * n_h])
        n = torch.tanh(gi[:, 2 * n_h:] + r * gh[:, 2 * n_h:])
        return (1 - z) * n + z * h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros_like(x[:, 0, :1]) * torch.zeros((1, self.hidden), dtype=x.dtype)
        states = []
        order = range(self.steps - 1, -1, -1) if self.reverse else range(self.steps)
        for k in order:
            h = self._cell(x[:, k], h)
            states.append(h)
        return torch.stack(states, dim=1) if self.sequence else h
