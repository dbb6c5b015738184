"""Gradients with respect to the output times ``t`` (odespec.solvers.time_grad), for every
gradient method, fixed-step and adaptive, forward and reversed time, tensor and tuple states."""

from __future__ import annotations

import math

import pytest
import torch

from odespec.solvers import odeint, odeint_adjoint, solve

F64 = torch.float64
GRADIENTS = ("backprop", "checkpoint", "adjoint")
# (method, options, tolerance): tight, so that the discrete solution's dependence on t is the
# continuous one to well within gradcheck's tolerance
SOLVERS = [("dopri5", None, 1e-12), ("rk4", {"step_size": 0.004}, None)]


class _Dyn(torch.nn.Module):
    """Non-autonomous, nonlinear, with a parameter (so adjoint/checkpoint run their Functions)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w = torch.nn.Parameter(0.5 * torch.randn(2, 2, dtype=F64, generator=g))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(y @ self.w) + torch.sin(2.0 * t) * y


def _kw(method, options, tol, gradient):
    kw = dict(method=method, options=options, gradient=gradient)
    if tol is not None:
        kw.update(rtol=tol, atol=tol)
    return kw


def _times(reverse: bool) -> torch.Tensor:
    t = torch.tensor([0.1, 0.45, 1.1], dtype=F64)
    return (t.flip(0) if reverse else t).requires_grad_(True)


@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("method,options,tol", SOLVERS, ids=["dopri5", "rk4"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gradcheck_y0_and_t(gradient, method, options, tol, reverse):
    func = _Dyn()
    y0 = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    kw = _kw(method, options, tol, gradient)
    assert torch.autograd.gradcheck(lambda y, t: solve(func, y, t, **kw).ys, (y0, _times(reverse)),
                                    atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_gradcheck_tuple_state(gradient):
    w = torch.tensor([[0.0, 1.3], [-1.1, -0.2]], dtype=F64, requires_grad=True)

    def func(t, ys):
        a, b = ys
        return (b.sum(0, keepdim=True) * torch.cos(t), torch.stack([a.sum(), (b @ w).sum()]) * 0.3)

    a0 = torch.tensor([0.7], dtype=F64, requires_grad=True)
    b0 = torch.tensor([0.2, -0.4], dtype=F64, requires_grad=True)
    kw = dict(rtol=1e-12, atol=1e-12, gradient=gradient)

    def fn(a, b, t):
        ya, yb = solve(func, (a, b), t, **kw).ys
        return ya, yb

    assert torch.autograd.gradcheck(fn, (a0, b0, _times(False)), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_analytic_time_gradients(gradient):
    """y' = k y: y(t1) = y0 exp(k (t1 - t0)), so dy1/dt1 = k y1 and dy1/dt0 = -k y1."""
    k = torch.tensor(-0.8, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.5, -0.5], dtype=F64, requires_grad=True)
    t = torch.tensor([0.3, 1.7], dtype=F64, requires_grad=True)
    ys = solve(lambda t, y: k * y, y0, t, rtol=1e-12, atol=1e-12, gradient=gradient).ys
    ys[-1].sum().backward()
    y1 = (y0 * torch.exp(k * 1.4)).detach()
    expected = float(k.detach()) * float(y1.sum())
    assert t.grad is not None
    assert t.grad.tolist() == pytest.approx([-expected, expected], rel=1e-8)


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_t0_excludes_the_initial_output(gradient):
    """A loss on ys[0] alone (y0 itself) gives t no gradient, and y0 the identity."""
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    w = torch.tensor(0.5, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0, 2.0], dtype=F64, requires_grad=True)
    ys = solve(lambda t, y: -w * y, y0, t, rtol=1e-10, atol=1e-10, gradient=gradient).ys
    ys[0].sum().backward()
    assert t.grad is not None and y0.grad is not None
    assert t.grad.tolist() == [0.0, 0.0, 0.0]
    assert y0.grad.tolist() == [1.0, 1.0]


def test_time_gradient_counts_backward_evaluations():
    """One evaluation of f per output time, in stats.backward.nfe (backprop's backward has no
    other evaluation)."""
    t = torch.linspace(0.0, 1.0, 5, dtype=F64, requires_grad=True)
    sol = solve(lambda t, y: -y, torch.ones(2, dtype=F64), t, method="rk4", options={"steps": 3})
    sol.ys.sum().backward()
    assert sol.stats.backward.nfe == 5


def test_no_time_gradient_without_requires_grad():
    """A t without requires_grad costs nothing: no backward evaluation."""
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    sol = solve(lambda t, y: -y, y0, torch.linspace(0.0, 1.0, 4, dtype=F64), method="rk4", options={"steps": 3})
    sol.ys.sum().backward()
    assert sol.stats.backward.nfe == 0


def test_odeint_adjoint_time_gradient_float32_state_float64_times():
    """torchdiffeq's spelling; t's gradient comes in t's dtype."""
    func = torch.nn.Linear(2, 2).float()
    y0 = torch.tensor([1.0, -1.0], requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64, requires_grad=True)
    ys = odeint_adjoint(lambda t, y: func(y), y0, t, adjoint_params=tuple(func.parameters()))
    ys.sum().backward()
    assert t.grad is not None and t.grad.dtype == F64
    # compare with backprop
    t2 = t.detach().clone().requires_grad_(True)
    odeint(lambda t, y: func(y), y0, t2).sum().backward()
    assert t2.grad is not None
    assert torch.allclose(t.grad, t2.grad, rtol=1e-4, atol=1e-5)
    assert not math.isnan(float(t.grad.sum()))
