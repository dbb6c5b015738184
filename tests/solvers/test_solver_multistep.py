"""torchdiffeq's Adams methods (explicit_adams, implicit_adams, fixed_adams) and scipy_solver."""

import math
import sys

import pytest
import torch

from odespec.solvers import odeint, odeint_adjoint, solve
from odespec.solvers.multistep import bashforth, moulton
from odespec.solvers.options import InvalidOptionError

F64 = torch.float64


def forced(t, y):
    return -y + torch.sin(t)


def forced_exact(t):
    return 1.5 * math.exp(-t) + (math.sin(t) - math.cos(t)) / 2


def test_coefficients_are_the_classic_ones():
    from fractions import Fraction

    assert bashforth(4) == tuple(Fraction(x, 24) for x in (55, -59, 37, -9))
    assert moulton(4) == tuple(Fraction(x, 24) for x in (9, 19, -5, 1))
    # consistency: every formula integrates a constant exactly
    assert all(sum(bashforth(k)) == 1 and sum(moulton(k)) == 1 for k in range(1, 13))


def _order(method, options, steps):
    errs = []
    for n in steps:
        y = odeint(forced, torch.ones(1, dtype=F64), torch.tensor([0.0, 2.0], dtype=F64), method=method,
                   options={"steps": n, **options}, rtol=1e-13, atol=1e-15)
        errs.append(abs(y[-1].item() - forced_exact(2.0)))
    return math.log2(errs[0] / errs[1]), errs


@pytest.mark.parametrize("method,options,order", [
    ("explicit_adams", {"max_order": 4}, 3),   # AB3 after two RK4 steps
    ("explicit_adams", {"max_order": 5}, 4),
    ("implicit_adams", {"max_order": 4, "max_iters": 20}, 4),  # AB3 predictor, AM4 corrector
    ("fixed_adams", {"max_order": 4, "max_iters": 20}, 4),
])
def test_order_of_convergence(method, options, order):
    observed, errs = _order(method, options, (20, 40))
    assert abs(observed - order) < 0.35, (errs, observed)


def test_below_order_four_the_method_is_rk4():
    a = odeint(forced, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method="explicit_adams",
               options={"steps": 10, "max_order": 3})
    b = odeint(forced, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method="rk4_38",
               options={"steps": 10})
    assert torch.allclose(a, b, atol=1e-14)


def test_history_restarts_where_the_step_changes():
    """Output intervals of different lengths: equal-step formulas are not applied across them."""
    t = torch.tensor([0.0, 0.3, 2.0], dtype=F64)
    y = odeint(forced, torch.ones(1, dtype=F64), t, method="implicit_adams", options={"step_size": 0.02},
               rtol=1e-12, atol=1e-14)
    assert abs(y[-1].item() - forced_exact(2.0)) < 1e-8


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
def test_adams_gradients_backprop_and_adjoint(method):
    a = torch.tensor(-1.0, dtype=F64, requires_grad=True)
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    opts = {"steps": 100, "max_order": 5}
    y = odeint(lambda t, y: a * y, y0, t, method=method, options=opts)
    g = torch.autograd.grad(y[-1].sum(), (y0, a))
    assert torch.allclose(g[0], torch.full((2,), math.exp(-1.0), dtype=F64), atol=1e-7)
    assert abs(g[1].item() - 2 * math.exp(-1.0)) < 1e-7
    y = odeint_adjoint(lambda t, y: a * y, y0, t, method=method, options=opts, adjoint_params=(a,))
    g = torch.autograd.grad(y[-1].sum(), (y0, a))
    assert abs(g[1].item() - 2 * math.exp(-1.0)) < 1e-6
    with pytest.raises(InvalidOptionError, match="checkpoint"):
        solve(lambda t, y: a * y, y0, t, method=method, options=opts, gradient="checkpoint")


def test_adams_options():
    with pytest.raises(InvalidOptionError, match="max_iters"):
        odeint(forced, torch.ones(1), [0.0, 1.0], method="explicit_adams", options={"max_iters": 3})
    with pytest.raises(InvalidOptionError, match="max_order"):
        odeint(forced, torch.ones(1), [0.0, 1.0], method="implicit_adams", options={"max_order": 13})


@pytest.mark.parametrize("solver", ["RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA"])
def test_scipy_solver_both_directions(solver):
    pytest.importorskip("scipy")
    t = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    y = odeint(forced, torch.ones(1, dtype=F64), t, method="scipy_solver", options={"solver": solver},
               rtol=1e-9, atol=1e-11)
    assert y.shape == (3, 1) and y.dtype == F64 and not y.requires_grad
    assert abs(y[-1].item() - forced_exact(2.0)) < 1e-6
    back = odeint(forced, y[-1], t.flip(0), method="scipy_solver", options={"solver": solver}, rtol=1e-9,
                  atol=1e-11)
    assert abs(back[-1].item() - 1.0) < 1e-5


def test_scipy_solver_gradients_only_by_the_adjoint():
    pytest.importorskip("scipy")
    a = torch.tensor(-1.0, dtype=F64, requires_grad=True)
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    y = odeint(lambda t, y: a * y, y0, t, method="scipy_solver")
    assert not y.requires_grad  # as torchdiffeq: the forward solve is SciPy's, outside autograd
    y = odeint_adjoint(lambda t, y: a * y, y0, t, method="scipy_solver", options={"solver": "RK45"},
                       adjoint_params=(a,), rtol=1e-9, atol=1e-11)
    g = torch.autograd.grad(y[-1].sum(), (y0, a))
    assert abs(g[1].item() - 2 * math.exp(-1.0)) < 1e-6


def test_scipy_solver_options_and_a_missing_scipy(monkeypatch):
    with pytest.raises(InvalidOptionError, match="solver"):
        odeint(forced, torch.ones(1), [0.0, 1.0], method="scipy_solver", options={"solver": "Euler"})
    with pytest.raises(InvalidOptionError, match="steps"):
        odeint(forced, torch.ones(1), [0.0, 1.0], method="scipy_solver", options={"steps": 3})
    monkeypatch.setitem(sys.modules, "scipy.integrate", None)
    with pytest.raises(ImportError, match=r"pip install 'odespec\[scipy\]'"):
        odeint(forced, torch.ones(1), [0.0, 1.0], method="scipy_solver")
