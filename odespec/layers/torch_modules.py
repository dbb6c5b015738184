"""Small torch modules the layer builders need beyond torch.nn. Imported only when building."""

from __future__ import annotations

import torch
from torch import nn


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


class RecurrentEncoder(nn.Module):
    """An RNN/GRU over ``(batch, time, features)``, returning the last hidden state or all of
    them. ``reverse`` reads the sequence last-to-first (the latent ODE's recognition network)."""

    def __init__(self, kind: str, features: int, hidden: int, *, reverse: bool, sequence: bool, bias: bool):
        super().__init__()
        self.rnn = getattr(nn, kind)(features, hidden, batch_first=True, bias=bias)
        self.reverse = reverse
        self.sequence = sequence

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reverse:
            x = torch.flip(x, dims=[1])
        out, _ = self.rnn(x)
        return out if self.sequence else out[:, -1]


class GaussianSample(nn.Module):
    """Reparameterised sample of N(mean, exp(logvar)) from ``(batch, 2L)``; the mean in eval.

    ``last_mean``/``last_logvar`` keep the latest distribution for the ELBO's KL term.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_mean: torch.Tensor | None = None
        self.last_logvar: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, logvar = x.chunk(2, dim=-1)
        self.last_mean, self.last_logvar = mean, logvar
        if not self.training:
            return mean
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
