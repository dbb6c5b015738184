"""Implicit fixed-step Runge-Kutta methods: tableau invariants, order of convergence, stiff
stability against explicit RK4, agreement with SciPy's Radau/BDF, the Newton iteration's
options, batched (block-diagonal) Jacobians, and gradients by all three methods."""

import math
import warnings

import pytest
import torch

from odespec.solvers import odeint, solve
from odespec.solvers.options import InvalidOptionError
from odespec.solvers.tableau import ButcherTableau
from odespec.solvers.tableaus import IMPLICIT_METHODS, get_tableau

F64 = torch.float64
NAMES = [t.name for t in IMPLICIT_METHODS]


def forced(t, y):
    return -y + torch.sin(t)


def forced_exact(t):
    # y(0) = 1
    return 1.5 * math.exp(-t) + (math.sin(t) - math.cos(t)) / 2


@pytest.mark.parametrize("name", NAMES)
def test_order_of_convergence(name):
    tab = get_tableau(name)
    errs = []
    steps = (4, 8) if tab.order >= 5 else (8, 16)
    for n in steps:
        y = odeint(forced, torch.ones(1, dtype=F64), torch.tensor([0.0, 2.0], dtype=F64), method=name,
                   options={"steps": n})
        errs.append(abs(y[-1].item() - forced_exact(2.0)))
    observed = math.log2(errs[0] / errs[1])
    assert abs(observed - tab.order) < 0.3, (name, errs, observed)


def stiff(t, y):
    # eigenvalues -1 and -1000
    lam = torch.tensor([-1.0, -1000.0], dtype=y.dtype)
    return lam * y


@pytest.mark.parametrize("name", ["implicit_euler", "radauIIA3", "radauIIA5", "sdirk2", "trbdf2"])
def test_stiff_linear_system_where_rk4_blows_up(name):
    """h = 0.05: h * 1000 = 50, far outside RK4's stability region; the L-stable implicit methods
    damp the fast mode and follow the slow one."""
    y0 = torch.ones(2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    explicit = odeint(stiff, y0, t, method="rk4", options={"step_size": 0.05})
    assert explicit[-1, 1].abs().item() > 1e50  # |R(-50)| ~ 2.4e5 per step
    y = odeint(stiff, y0, t, method=name, options={"step_size": 0.05})
    tol = 0.03 if get_tableau(name).order == 1 else 2e-3
    assert abs(y[-1, 0].item() - math.exp(-1.0)) < tol
    assert abs(y[-1, 1].item()) < 1e-6


def test_a_stable_but_not_l_stable_methods_stay_bounded_on_the_stiff_system():
    y0 = torch.ones(2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    for name in ("implicit_midpoint", "trapezoid", "gl4", "gl6"):
        y = odeint(stiff, y0, t, method=name, options={"step_size": 0.05})
        assert torch.isfinite(y).all() and y.abs().max() <= 1.0 + 1e-12, name


def van_der_pol(t, y, mu=50.0):
    return torch.stack([y[..., 1], mu * (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], dim=-1)


@pytest.mark.parametrize("name", ["radauIIA5", "radauIIA3", "trbdf2"])
def test_agrees_with_scipy_radau_and_bdf_on_a_stiff_nonlinear_problem(name):
    scipy_integrate = pytest.importorskip("scipy.integrate")
    import numpy as np

    def rhs(t, y):
        return van_der_pol(None, torch.as_tensor(y)).numpy()

    ref = {m: scipy_integrate.solve_ivp(rhs, (0.0, 1.0), [2.0, 0.0], method=m, rtol=1e-10, atol=1e-12).y[:, -1]
           for m in ("Radau", "BDF")}
    assert np.allclose(ref["Radau"], ref["BDF"], atol=1e-6)
    y = odeint(van_der_pol, torch.tensor([2.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method=name,
               options={"steps": 200})
    tol = 1e-6 if name == "radauIIA5" else 1e-3
    assert np.allclose(y[-1].numpy(), ref["Radau"], atol=tol)


def test_batched_jacobian_gives_the_dense_solution():
    torch.manual_seed(0)
    w = torch.randn(3, 3, dtype=F64)

    def f(t, y):
        return torch.tanh(y @ w.T) - 5.0 * y

    y0 = torch.randn(6, 3, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    ys = {j: odeint(f, y0, t, method="radauIIA5", options={"steps": 5, "jacobian": j})
          for j in ("batch", "dense", "auto")}
    assert torch.allclose(ys["batch"], ys["dense"], atol=1e-12)
    assert torch.equal(ys["auto"], ys["batch"])
    # each sample alone gives the same answer: the samples' blocks are solved independently
    alone = torch.stack([odeint(f, y0[i:i + 1], t, method="radauIIA5", options={"steps": 5})[-1, 0]
                         for i in range(6)])
    assert torch.allclose(alone, ys["batch"][-1], atol=1e-12)


def test_fixed_iteration_count_and_non_convergence_warning():
    def f(t, y):
        return -y ** 3 + torch.cos(t)

    y0 = torch.tensor([2.0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    calls = []

    def counted(t, y):
        calls.append(1)
        return f(t, y)

    ref = odeint(f, y0, t, method="gl4", options={"steps": 10})
    # newton_tol=0: exactly max_iters iterations a step, each evaluating both stages, plus the
    # Jacobian's evaluation
    fixed = odeint(counted, y0, t, method="gl4", options={"steps": 10, "newton_tol": 0.0, "max_iters": 6})
    assert len(calls) == 10 * (1 + 6 * 2)
    assert torch.allclose(fixed, ref, atol=1e-12)
    with pytest.warns(RuntimeWarning, match="did not converge in 1 iterations"):
        odeint(f, y0, t, method="gl4", options={"steps": 2, "max_iters": 1, "newton_tol": 1e-14})


def test_options_belong_to_implicit_methods():
    y0 = torch.ones(1, dtype=F64)
    with pytest.raises(InvalidOptionError, match="for implicit methods"):
        odeint(forced, y0, [0.0, 1.0], method="rk4", options={"max_iters": 3})
    with pytest.raises(InvalidOptionError, match="jacobian"):
        odeint(forced, y0, [0.0, 1.0], method="gl4", options={"jacobian": "sparse"})


@pytest.mark.parametrize("gradient", ["backprop", "checkpoint", "adjoint"])
def test_gradients_match_a_tight_reference(gradient):
    class F(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([[-1.0, 0.3], [0.2, -2.0]], dtype=F64))

        def forward(self, t, y):
            return torch.tanh(y @ self.w.T)

    f = F()
    y0 = torch.tensor([[1.0, -0.5], [0.3, 0.2]], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    ys = solve(f, y0, t, method="radauIIA5", options={"steps": 10}, gradient=gradient).ys
    gy0, gw = torch.autograd.grad((ys ** 2).sum(), (y0, f.w))
    ref = odeint(f, y0, t, method="dopri8", rtol=1e-12, atol=1e-12)
    ry0, rw = torch.autograd.grad((ref ** 2).sum(), (y0, f.w))
    assert torch.allclose(gy0, ry0, atol=1e-8) and torch.allclose(gw, rw, atol=1e-8)


def test_gradcheck_through_the_newton_iteration():
    w = torch.tensor([[-1.0, 0.5], [0.0, -3.0]], dtype=F64, requires_grad=True)
    y0 = torch.tensor([0.7, -0.2], dtype=F64, requires_grad=True)

    def run(y0, w):
        return odeint(lambda t, y: torch.tanh(w @ y), y0, torch.tensor([0.0, 1.0], dtype=F64), method="sdirk2",
                      options={"steps": 3, "newton_tol": 0.0, "max_iters": 4})

    assert torch.autograd.gradcheck(run, (y0, w))


def test_tableau_invariants_of_implicit_methods():
    with pytest.raises(ValueError, match="implicit=True"):
        ButcherTableau(name="x", order=1, a=((1,),), b=(1,), c=(1,))
    with pytest.raises(ValueError, match="explicit"):
        ButcherTableau(name="x", order=1, a=((0,),), b=(1,), c=(0,), implicit=True)
    with pytest.raises(ValueError, match="sums to"):
        ButcherTableau(name="x", order=1, a=((0.5,),), b=(1,), c=(1,), implicit=True)
    with pytest.raises(ValueError, match="fixed steps"):
        ButcherTableau(name="x", order=1, a=((1,),), b=(1,), c=(1,), b_err=(0,), implicit=True)
    assert get_tableau("sdirk2").diagonally_implicit and not get_tableau("gl4").diagonally_implicit
    assert get_tableau("trbdf2").explicit_stages == (0,)


def test_float32_and_perturb_and_grid_interp():
    y0 = torch.tensor([1.0, 2.0])
    ts = []

    def f(t, y):
        ts.append(float(t))
        return -y

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = odeint(f, y0, torch.tensor([0.0, 1.0]), method="trbdf2", options={"step_size": 0.5, "perturb": True})
    assert 0.0 not in ts and 0.5 not in ts
    assert torch.allclose(y[-1], y0 * math.exp(-1.0), atol=1e-2)
    y = odeint(f, y0.double(), torch.tensor([0.0, 0.3, 1.0], dtype=F64), method="gl6",
               options={"grid_constructor": lambda f, y0, t: torch.linspace(0, 1, 11, dtype=F64), "interp": "cubic"})
    assert torch.allclose(y[1], y0.double() * math.exp(-0.3), atol=1e-5)
