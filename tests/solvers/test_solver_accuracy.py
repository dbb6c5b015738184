"""Accuracy against analytic solutions and SciPy's DOP853 at rtol = atol = 1e-12."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from solver_problems import (
    decay,
    demo_np,
    harmonic,
    harmonic_exact,
    lotka_volterra,
    lotka_volterra_np,
    make_demo,
    scipy_reference,
    van_der_pol,
    van_der_pol_np,
)

from odespec.solvers import solve

F64 = torch.float64


def _problem(name: str, n_out: int = 100):
    """(func, y0, ts, reference ys, numpy rhs or None)"""
    if name == "decay":
        ts = torch.linspace(0, 5, 50, dtype=F64)
        y0 = torch.tensor([1.0, -2.0], dtype=F64)
        return decay, y0, ts, torch.exp(-ts)[:, None] * y0, None
    if name == "harmonic":
        ts = torch.linspace(0, 20, 100, dtype=F64)
        return harmonic, torch.tensor([1.0, 0.0], dtype=F64), ts, harmonic_exact(ts), None
    table = {
        "van_der_pol": (van_der_pol, van_der_pol_np, [2.0, 0.0], 10.0),
        "lotka_volterra": (lotka_volterra, lotka_volterra_np, [10.0, 5.0], 10.0),
        "ode_demo": (make_demo(), demo_np, [2.0, 0.0], 25.0),
    }
    f, f_np, y0, t_end = table[name]
    ts = torch.linspace(0, t_end, n_out, dtype=F64)
    return f, torch.tensor(y0, dtype=F64), ts, scipy_reference(f_np, y0, ts.numpy()), f_np


PROBLEMS = ["decay", "harmonic", "van_der_pol", "lotka_volterra", "ode_demo"]
# method: (rtol, allowed max relative global error as a multiple of rtol). Global error grows
# past the local tolerance on these problems; SciPy's RK23/RK45 show the same factors.
ADAPTIVE = {"bosh3": (1e-6, 1000), "dopri5": (1e-8, 30), "tsit5": (1e-8, 30), "dopri8": (1e-10, 30)}


def _relerr(ys, ref):
    return ((ys - ref).abs() / (1 + ref.abs())).max().item()


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("method", list(ADAPTIVE))
def test_adaptive_accuracy(problem, method):
    f, y0, ts, ref, _ = _problem(problem)
    rtol, factor = ADAPTIVE[method]
    sol = solve(f, y0, ts, method=method, rtol=rtol, atol=rtol * 1e-2)
    assert sol.ys.shape == (len(ts), 2) and sol.ys.dtype == F64
    assert sol.stats.status == "success"
    assert torch.equal(sol.ys[0], y0)
    err = _relerr(sol.ys, ref)
    assert err < factor * rtol, err


@pytest.mark.parametrize("method, scipy_method, rtol", [("dopri5", "RK45", 1e-8), ("bosh3", "RK23", 1e-6)])
@pytest.mark.parametrize("problem", ["lotka_volterra", "ode_demo"])
def test_step_control_as_efficient_as_scipy(method, scipy_method, rtol, problem):
    """Same pair, same tolerance: our controller should not need noticeably more evaluations."""
    f, y0, ts, ref, f_np = _problem(problem)
    sol = solve(f, y0, ts, method=method, rtol=rtol, atol=rtol * 1e-2)
    sp = solve_ivp(f_np, (0.0, ts[-1].item()), y0.numpy(), method=scipy_method, rtol=rtol,
                   atol=rtol * 1e-2, t_eval=ts.numpy())
    assert sol.stats.nfe <= 1.25 * sp.nfev, (sol.stats.nfe, sp.nfev)
    sp_err = _relerr(torch.from_numpy(sp.y.T.copy()), ref)
    assert _relerr(sol.ys, ref) <= 3 * sp_err


FIXED = {  # method: (step size, allowed error on van der Pol over [0, 10])
    "euler": (1e-3, 2e-2),
    "midpoint": (1e-2, 1e-3),
    "heun": (1e-2, 1e-3),
    "ralston": (1e-2, 1e-3),
    "rk4": (2e-2, 1e-6),
    "rk4_38": (2e-2, 1e-6),
}


@pytest.mark.parametrize("method", list(FIXED))
def test_fixed_step_accuracy(method):
    f, y0, ts, ref, _ = _problem("van_der_pol", n_out=101)  # outputs every 0.1
    step, bound = FIXED[method]
    sol = solve(f, y0, ts, method=method, options={"step_size": step})
    assert sol.stats.n_steps == round(10.0 / step)
    assert _relerr(sol.ys, ref) < bound


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "dopri8", "bosh3"])
def test_dense_output_at_many_times(method):
    """1000 output times inside the steps (dense output) are as accurate as the solution."""
    f = make_demo()
    ts = torch.linspace(0, 25, 1000, dtype=F64)
    ref = scipy_reference(demo_np, [2.0, 0.0], ts.numpy())
    rtol, factor = {"bosh3": (1e-5, 1000), "dopri8": (1e-10, 100)}.get(method, (1e-8, 100))
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    dense = solve(f, y0, ts, method=method, rtol=rtol, atol=rtol * 1e-2)
    forced = solve(f, y0, ts, method=method, rtol=rtol, atol=rtol * 1e-2,
                   options={"force_output_steps": True})
    assert dense.ys.shape == (1000, 2)
    # outputs do not shorten the steps unless forced to
    assert dense.stats.n_accepted < 999 <= forced.stats.n_accepted
    assert _relerr(dense.ys, ref) < factor * rtol
    assert _relerr(forced.ys, ref) < factor * rtol


def test_dense_output_agrees_with_step_endpoints():
    """An output time that coincides with a step end returns that state itself."""
    ts = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    sol = solve(decay, torch.tensor([1.0], dtype=F64), ts, method="dopri5",
                options={"force_output_steps": True})
    assert sol.stats.n_accepted >= 2
    assert abs(sol.ys[1].item() - np.exp(-0.3)) < 1e-8
