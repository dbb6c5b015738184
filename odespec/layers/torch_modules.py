"""Small torch modules the layer builders need beyond torch.nn. Imported only when building."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence, cast

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def inplace_activations(modules: Sequence[nn.Module]) -> None:
    """Make each ELU/ReLU that directly follows a linear or conv layer in ``modules`` (layers
    applied in this order) work in place, as torchdiffeq's examples write them.

    The layer's output is a fresh tensor its own backward does not keep, so overwriting it is safe
    (autograd's version counters would refuse otherwise). It saves the activation's output tensor
    and, for ELU, half of its backward: in place, autograd differentiates ELU from its output
    (``grad * (y + alpha)`` where ``y <= 0``) instead of recomputing ``exp`` of the input, ~4x less
    time per call. An activation after anything else (the block's input, another activation, a
    norm, an ODE block) is left as it is.
    """
    for prev, layer in zip(modules, list(modules)[1:], strict=False):
        producer = prev.layer if isinstance(prev, TimeConcat) else prev
        if isinstance(layer, (nn.ELU, nn.ReLU)) and isinstance(producer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            layer.inplace = True


class TimeConcat(nn.Module):
    """Wrap a linear/conv layer so that t enters as one extra input feature/channel.

    This is the paper's code's ``ConcatConv2d`` (and its linear twin): the layer sees
    ``cat([x, t * ones_like(x[channel 0])], channel_dim)``. ``ones_like * t`` rather than
    ``expand`` keeps the exported ONNX graph shape-agnostic (dynamic batch).
    """

    def __init__(self, layer: nn.Module, channel_dim: int):
        super().__init__()
        self.layer = layer
        self.channel_dim = channel_dim

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        d = self.channel_dim
        tt = torch.ones_like(x.narrow(d, 0, 1)) * t
        return self.layer(torch.cat([x, tt], dim=d))


class Power(nn.Module):
    """Elementwise ``x ** exponent`` (torchdiffeq's ode_demo feeds the cubed state to its MLP)."""

    def __init__(self, exponent: float):
        super().__init__()
        self.exponent = exponent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x**self.exponent

    def extra_repr(self) -> str:
        return f"exponent={self.exponent}"


class Reshape(nn.Module):
    """Reshape the per-sample part of a batch; the batch dimension is kept."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape((x.shape[0],) + self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Residual(nn.Module):
    """``x + g(x)``: torchdiffeq's ResBlock and the paper's ResNet baseline."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


class KnownLinear(nn.Module):
    """``x A^T + g(x)`` with ``A`` fixed (a buffer, not a parameter: it is the spec's, so it is
    neither trained nor saved with the weights)."""

    matrix: torch.Tensor

    def __init__(self, matrix: Sequence[Sequence[float]], inner: nn.Module):
        super().__init__()
        self.register_buffer("matrix", torch.tensor(matrix, dtype=torch.get_default_dtype()), persistent=False)
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.matrix.t() + self.inner(x)


class RecurrentEncoder(nn.Module):
    """An RNN/GRU over ``(batch, time, features)``, returning the last hidden state or all of
    them. ``reverse`` reads the sequence last-to-first (the latent ODE's recognition network).

    The parameters are those of the wrapped ``torch.nn.RNN``/``GRU`` (state-dict keys
    ``rnn.weight_ih_l0`` ...), and that module is what the ONNX exporter traces. On the CPU an
    Elman RNN runs through :class:`_ElmanCPU` instead, the same function written out for small
    hidden sizes and large batches (about 2x faster forward and backward at the latent ODE's
    batch 1000, hidden 25, 100 steps); elsewhere (CUDA's cuDNN, GRUs) torch's module runs.
    """

    def __init__(self, kind: str, features: int, hidden: int, *, reverse: bool, sequence: bool, bias: bool):
        super().__init__()
        self.rnn = getattr(nn, kind)(features, hidden, batch_first=True, bias=bias)
        self.reverse = reverse
        self.sequence = sequence

    def _written_out(self, x: torch.Tensor) -> bool:
        """Whether :class:`_ElmanCPU` computes this call: a one-layer tanh RNN on the CPU, outside
        export and scripting (the exporters trace ``torch.nn.RNN`` into one ONNX RNN node)."""
        r = self.rnn
        return (type(r) is nn.RNN and r.nonlinearity == "tanh" and r.num_layers == 1 and not r.bidirectional
                and x.device.type == "cpu" and x.dim() == 3 and x.shape[1] > 0
                and not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._written_out(x):
            r = self.rnn
            return _ElmanCPU.apply(x, r.weight_ih_l0, r.weight_hh_l0, getattr(r, "bias_ih_l0", None),
                                   getattr(r, "bias_hh_l0", None), self.reverse, self.sequence)
        if self.reverse:
            x = torch.flip(x, dims=[1])
        out, _ = self.rnn(x)
        return out if self.sequence else out[:, -1]


class _ElmanCPU(torch.autograd.Function):
    """``h_k = tanh(W_ih x_k + b_ih + W_hh h_{k-1} + b_hh)``, ``h_0 = 0``, over a batch-first
    sequence (read last-to-first when ``reverse``): the last ``h`` (batch, hidden), or every step's
    (batch, time, hidden) when ``sequence``; ``torch.nn.RNN``'s function, with its gradient
    written out (backpropagation through time).

    Why it is faster than ``nn.RNN`` on the CPU (2.5x forward + backward at batch 1000, hidden
    25, 100 steps, one thread; ``benchmarks/rnn_bench.py`` compares the alternatives):

    * The states live feature-major, ``(time, hidden, batch)``: each step's product is then
      ``W_hh @ h`` with the long batch dimension contiguous, which MKL does in ~60% of the time of
      ``h @ W_hh.T`` on ``(batch, hidden)``. All input projections are one product up front,
      written straight into the state buffer, so a step is one in-place ``addmm_`` and one
      activation, with no allocation.
    * ``tanh(a) = 2 sigmoid(2a) - 1``: torch's float ``tanh`` kernel took ~6x the time of its
      ``sigmoid`` on the (AVX-512) CPU measured. The factor 2 is folded into the weights (an
      exact scaling); the result differs from ``tanh`` by about one unit in the last place of
      1.0 at most (float32: the last state is within 2.5e-7 of a float64 ``nn.RNN``, against
      1.2e-7 for float32 ``nn.RNN``).
    * The backward is one small product per step (``W_hh.T @ dA_k``); the weight gradients are
      batched products over all steps after the loop, instead of autograd's per-step graph.
      (Autograd through a loop that *indexes* a precomputed projection, ``xp[:, t]`` or ``xp[t]``,
      is ~4x slower than ``nn.RNN``: every indexing op's backward writes a zero-filled gradient
      the size of the whole projection, so the backward is quadratic in the number of steps.)

    Once differentiable: a gradient of the gradient through this layer raises (torch's module
    would give one; odespec's regularisers differentiate twice only through ODE dynamics).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: Optional[torch.Tensor],
                b_hh: Optional[torch.Tensor], reverse: bool, sequence: bool) -> torch.Tensor:
        batch, steps, _ = x.shape
        hidden = w_hh.shape[0]
        xs = x.flip(1) if reverse else x
        xin = xs.permute(1, 2, 0).contiguous()  # (time, features, batch) in reading order
        hs = x.new_empty(steps + 1, hidden, batch)  # hs[k + 1]: the state after k + 1 steps
        hs[0].zero_()
        # 2 (W_ih x_k + b) for every step at once; then each step adds 2 W_hh h_k in place
        torch.matmul(2.0 * w_ih, xin, out=hs[1:])
        if b_ih is not None or b_hh is not None:
            # a tensor: at least one term
            b = cast(torch.Tensor, sum(v for v in (b_ih, b_hh) if v is not None))
            hs[1:].add_((2.0 * b)[:, None])
        w2 = 2.0 * w_hh
        one = x.new_ones(())
        for k in range(steps):
            hk = hs[k + 1]
            if k:
                hk.addmm_(w2, hs[k])
            hk.sigmoid_().lerp_(one, -1.0)  # s + (-1) (1 - s) = 2 s - 1, in one pass
        ctx.save_for_backward(xin, w_ih, w_hh, hs)
        ctx.reverse, ctx.sequence = reverse, sequence
        if sequence:
            return hs[1:].permute(2, 0, 1).contiguous()  # (batch, time, hidden), in reading order
        return hs[steps].t().contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        xin, w_ih, w_hh, hs = ctx.saved_tensors
        steps = hs.shape[0] - 1
        states = hs[1:]
        # dA[k]: the gradient of step k's pre-activation; first 1 - h^2, then times dL/dh in place
        da = torch.addcmul(hs.new_ones(()), states, states, value=-1.0)
        w_t = w_hh.t()
        if ctx.sequence:
            g = grad.permute(1, 2, 0).contiguous()  # (time, hidden, batch)
            dh = g[steps - 1]
        else:
            g = None
            dh = grad.t()
        for k in range(steps - 1, -1, -1):
            dk = da[k]
            dk.mul_(dh)
            if k:
                dh = torch.mm(w_t, dk) if g is None else torch.addmm(g[k - 1], w_t, dk)
        need_x, need_ih, need_hh, need_bih, need_bhh = ctx.needs_input_grad[:5]
        dx = dw_ih = dw_hh = db = None
        if need_x:
            dx = torch.matmul(w_ih.t(), da).permute(2, 0, 1)
            if ctx.reverse:
                dx = dx.flip(1)
        if need_ih:
            dw_ih = torch.bmm(da, xin.transpose(1, 2)).sum(0)
        if need_hh and steps > 1:
            dw_hh = torch.bmm(da[1:], states[:-1].transpose(1, 2)).sum(0)
        elif need_hh:
            dw_hh = torch.zeros_like(w_hh)
        if need_bih or need_bhh:
            db = da.sum((0, 2))
        return (dx, dw_ih, dw_hh, db if need_bih else None, db if need_bhh else None, None, None)


class DiagonalGaussian(NamedTuple):
    """N(mean, diag(exp(logvar))), per sample: both ``(batch, L)``."""

    mean: torch.Tensor
    logvar: torch.Tensor


class GaussianSample(nn.Module):
    """Reparameterised sample of N(mean, exp(logvar)) from ``(batch, 2L)``; the mean in eval.

    ``forward`` is :meth:`distribution` then :meth:`sample`; a training forward pass that needs
    the distribution itself (the ELBO's KL term of q(z0)) calls the two and keeps it.
    """

    def distribution(self, x: torch.Tensor) -> DiagonalGaussian:
        """The distribution ``x`` holds: its first half the mean, its second the log-variance."""
        mean, logvar = x.chunk(2, dim=-1)
        return DiagonalGaussian(mean, logvar)

    def sample(self, q: DiagonalGaussian) -> torch.Tensor:
        """A reparameterised draw from ``q`` while training (from the global RNG); its mean in eval."""
        if not self.training:
            return q.mean
        return q.mean + torch.exp(0.5 * q.logvar) * torch.randn_like(q.mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sample(self.distribution(x))
