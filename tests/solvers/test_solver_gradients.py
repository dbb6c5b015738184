"""Gradients by plain autograd through the solver (discretise-then-optimise)."""

from __future__ import annotations

import pytest
import torch

from odespec.solvers import odeint

F64 = torch.float64


def _demo_with_param(a):
    def f(t, y):
        return (y**3) @ a

    return f


@pytest.mark.parametrize(
    "method, kwargs",
    [
        ("rk4", {"options": {"step_size": 0.05}}),
        ("dopri5", {"rtol": 1e-10, "atol": 1e-12}),
        ("dopri8", {"rtol": 1e-10, "atol": 1e-12}),
    ],
)
def test_gradcheck_wrt_y0_and_parameter(method, kwargs):
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    y0 = torch.tensor([1.2, -0.3], dtype=F64, requires_grad=True)
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64, requires_grad=True)

    def run(y0, a):
        return odeint(_demo_with_param(a), y0, ts, method=method, **kwargs)

    # Step-size decisions are constants to autograd but move with the inputs in the finite
    # differences; at these tolerances that discrepancy is far below gradcheck's tolerance.
    assert torch.autograd.gradcheck(run, (y0, a), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradient_matches_analytic():
    """y' = -k y: dy(T)/dy0 = exp(-kT), dy(T)/dk = -T y0 exp(-kT)."""
    k = torch.tensor(0.7, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.5], dtype=F64, requires_grad=True)
    ts = torch.linspace(0, 2, 5, dtype=F64)  # T = 2 is reached by dense output + end clipping
    ys = odeint(lambda t, y: -k * y, y0, ts, rtol=1e-10, atol=1e-12)
    ys[-1].sum().backward()
    expected = torch.exp(-k.detach() * 2)
    assert y0.grad.item() == pytest.approx(expected.item(), rel=1e-7)
    assert k.grad.item() == pytest.approx((-2 * 1.5 * expected).item(), rel=1e-7)


def test_gradient_through_dense_output_times():
    """Intermediate outputs (interpolated inside steps) carry gradients too."""
    k = torch.tensor(0.3, dtype=F64, requires_grad=True)
    ts = torch.linspace(0, 3, 31, dtype=F64)
    ys = odeint(lambda t, y: -k * y, torch.ones(1, dtype=F64), ts, rtol=1e-10, atol=1e-12)
    (grad,) = torch.autograd.grad(ys[13, 0], k)
    t = ts[13].item()
    assert grad.item() == pytest.approx(-t * torch.exp(-k.detach() * t).item(), rel=1e-6)


def test_module_parameters_receive_gradients():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    ys = odeint(lambda t, y: net(y), torch.randn(4, 2), torch.linspace(0, 1, 3))
    ys.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
