"""A callable error norm for the adjoint's backward solve (torchdiffeq's
``adjoint_options={"norm": callable}``): what it is given, and that it steers the steps."""

from __future__ import annotations

import pytest
import torch

from odespec.solvers import InvalidOptionError, odeint_adjoint, solve
from odespec.solvers.gradient import Adjoint

F64 = torch.float64


def _field(w: torch.Tensor, b: torch.Tensor):
    def f(t, y):
        return torch.tanh(y * w[: y.numel()].view(y.shape)) + b * torch.cos(t)

    return f


def test_tensor_state_norm_gets_the_channels_in_their_shapes():
    w = torch.linspace(0.5, 1.5, 7, dtype=F64).requires_grad_(True)
    b = torch.tensor(0.3, dtype=F64, requires_grad=True)
    y0 = torch.tensor([[0.2, -0.4], [0.1, 0.9]], dtype=F64, requires_grad=True)
    seen = []

    def norm(channels):
        t, y, adj_y, adj_w, adj_b = channels
        seen.append((t.shape, float(t), y.shape, adj_y.shape, adj_w.shape, adj_b.shape))
        return max(y.pow(2).mean().sqrt(), adj_y.pow(2).mean().sqrt(), adj_w.pow(2).mean().sqrt(), adj_b.abs())

    t = torch.tensor([0.0, 1.0], dtype=F64)
    ys = odeint_adjoint(_field(w, b), y0, t, adjoint_params=(w, b), adjoint_options={"norm": norm})
    grads = torch.autograd.grad(ys[-1].sum(), (y0, w, b))
    assert seen and set(seen) == {(torch.Size([]), 0.0, (2, 2), (2, 2), (7,), torch.Size([]))}
    # the same norm as the default mixed one: the same gradients, to the tolerances
    ys = odeint_adjoint(_field(w, b), y0, t, adjoint_params=(w, b))
    reference = torch.autograd.grad(ys[-1].sum(), (y0, w, b))
    for g, r in zip(grads, reference, strict=True):
        assert torch.allclose(g, r, rtol=1e-6, atol=1e-9)


def test_tuple_state_norm_gets_the_tuple_parts():
    w = torch.linspace(0.5, 1.5, 7, dtype=F64).requires_grad_(True)
    b = torch.tensor(0.3, dtype=F64, requires_grad=True)
    seen = []

    def f(t, state):
        a, m = state
        return -a * w[0] + b, torch.tanh(m) * w[1:5].view(2, 2)

    def norm(channels):
        seen.append(tuple(c.shape for c in channels))
        return max(c.abs().max() for c in channels)

    state0 = (torch.tensor(1.0, dtype=F64), torch.tensor([[0.5, 0.5], [0.1, 0.1]], dtype=F64))
    xs = odeint_adjoint(f, state0, torch.tensor([0.0, 1.0], dtype=F64), adjoint_params=(w, b),
                        adjoint_options={"norm": norm})
    (xs[0].sum() + xs[1].sum()).backward()
    assert seen and set(seen) == {((), (), (2, 2), (), (2, 2), (7,), ())}
    assert w.grad is not None and b.grad is not None


def test_the_norm_steers_the_backward_steps():
    """A norm ten times larger makes the backward solve take more steps."""
    w = torch.linspace(0.5, 1.5, 4, dtype=F64).requires_grad_(True)
    b = torch.tensor(0.3, dtype=F64, requires_grad=True)
    y0 = torch.tensor([0.2, -0.4, 0.1, 0.9], dtype=F64)

    def backward_steps(scale):
        def norm(channels):
            return scale * max(c.abs().max() for c in channels)

        sol = solve(_field(w, b), y0, torch.tensor([0.0, 2.0], dtype=F64), rtol=1e-6, atol=1e-8,
                    gradient=Adjoint(params=(w, b), norm=norm))
        sol.ys[-1].sum().backward()
        return sol.stats.backward.n_steps

    assert backward_steps(10.0) > backward_steps(1.0)


def test_norm_must_be_the_seminorm_or_a_callable():
    f = torch.nn.Linear(2, 2).double()
    with pytest.raises(InvalidOptionError, match="'seminorm' or a callable"):
        odeint_adjoint(lambda t, y: f(y), torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                       adjoint_params=tuple(f.parameters()), adjoint_options={"norm": "max"})
    with pytest.raises(InvalidOptionError, match="not both"):
        Adjoint(seminorm=True, norm=lambda channels: channels[1].abs().max())
