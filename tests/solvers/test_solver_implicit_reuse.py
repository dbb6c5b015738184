"""The implicit methods keep the Jacobian from step to step (odespec.solvers.implicit.JacobianReuse):
fewer Jacobians than steps, the same solution as a Jacobian at every step, a fresh Jacobian where
the kept one stops converging, and none kept where the iteration count is fixed."""

from __future__ import annotations

import warnings

import pytest
import torch

import odespec.solvers.implicit as implicit
from odespec.solvers import odeint, odeint_adjoint
from odespec.solvers.tableaus import IMPLICIT_METHODS

F64 = torch.float64
NAMES = [t.name for t in IMPLICIT_METHODS]


@pytest.fixture
def jacobians(monkeypatch):
    """Counts the Jacobians the solves take."""
    count = [0]
    real = implicit.state_jacobian

    def counted(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(implicit, "state_jacobian", counted)
    return count


def _nonlinear(t, y):
    return -y ** 3 + torch.cos(t) * y.flip(-1)


@pytest.mark.parametrize("name", NAMES)
def test_kept_jacobian_gives_the_solution_of_a_fresh_one(name, jacobians):
    y0 = torch.tensor([[1.5, -0.5], [0.3, 0.8]], dtype=F64)
    t = torch.tensor([0.0, 0.7, 2.0], dtype=F64)
    kept = odeint(_nonlinear, y0, t, method=name, options={"step_size": 0.05})
    n_kept = jacobians[0]
    # newton_tol=0: a fresh Jacobian every step, and iterations enough for round-off
    fresh = odeint(_nonlinear, y0, t, method=name, options={"step_size": 0.05, "newton_tol": 0.0, "max_iters": 40})
    steps = jacobians[0] - n_kept
    assert steps == 14 + 26  # 0.7 / 0.05 and 1.3 / 0.05 steps
    assert n_kept <= steps // 4
    assert torch.allclose(kept, fresh, rtol=1e-12, atol=1e-12)


def test_a_fresh_jacobian_where_the_kept_one_fails(jacobians):
    """The dynamics turn stiff at t = 0.5, a step's start (rate 1 -> 2e4, h * rate = 1000). The
    Gauss method's stages lie inside the steps, so the step before 0.5 is soft and its Jacobian
    is kept; it cannot steer the iteration of the next step, which is taken again with a fresh
    Jacobian, without a warning. (A Jacobian at every step converges there too.)"""
    def f(t, y):
        rate = torch.where(t < 0.5, torch.ones_like(t), torch.full_like(t, 2e4))
        return -rate * (y - torch.cos(t))

    y0 = torch.tensor([1.0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = odeint(f, y0, t, method="gl4", options={"step_size": 0.05})
    assert 2 <= jacobians[0] < 10
    fresh = odeint(f, y0, t, method="gl4", options={"step_size": 0.05, "newton_tol": 0.0, "max_iters": 30})
    assert torch.allclose(y, fresh, rtol=1e-10, atol=1e-10)


def test_fixed_iteration_count_takes_a_jacobian_every_step(jacobians):
    y0 = torch.tensor([[1.5, -0.5]], dtype=F64)
    odeint(_nonlinear, y0, torch.tensor([0.0, 1.0], dtype=F64), method="gl4",
           options={"steps": 10, "newton_tol": 0.0, "max_iters": 5})
    assert jacobians[0] == 10


@pytest.mark.parametrize("gradient", ["backprop", "adjoint"])
def test_gradients_with_a_kept_jacobian(gradient):
    """The Jacobian only steers the iteration: gradients are those of a Jacobian every step."""
    w = torch.tensor([[0.3, -1.2], [0.8, 0.1]], dtype=F64, requires_grad=True)

    def f(t, y):
        return torch.tanh(y @ w) - y

    y0 = torch.tensor([[0.4, -0.7]], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    solver = odeint if gradient == "backprop" else (lambda *a, **k: odeint_adjoint(*a, adjoint_params=(w,), **k))

    def grads(options):
        y = solver(f, y0, t, method="radauIIA3", options=options)
        return torch.autograd.grad(y[-1].square().sum(), (y0, w))

    kept = grads({"step_size": 0.05})
    fresh = grads({"step_size": 0.05, "newton_tol": 0.0, "max_iters": 40})
    for a, b in zip(kept, fresh, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
