"""Adaptive and fixed-step integration features: dtypes, direction, batching, options, stats."""

from __future__ import annotations

import math

import pytest
import torch
from solver_problems import (
    demo_np,
    harmonic,
    harmonic_exact,
    make_demo,
    scipy_reference,
    van_der_pol,
    van_der_pol_np,
)

from odespec.solvers import get_tableau, odeint, solve

F64 = torch.float64


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8", "rk4"])
def test_float32(method):
    f = make_demo(torch.float32)
    ts = torch.linspace(0, 25, 50)
    y0 = torch.tensor([2.0, 0.0])
    ref = scipy_reference(demo_np, [2.0, 0.0], ts.double().numpy())
    options = {"step_size": 0.01} if method == "rk4" else None
    ys = odeint(f, y0, ts, method=method, rtol=1e-5, atol=1e-7, options=options)
    assert ys.dtype == torch.float32 and ys.shape == (50, 2)
    assert torch.isfinite(ys).all()
    assert (ys.double() - ref).abs().max().item() < 5e-3


def test_float32_state_with_tight_tolerance_still_terminates():
    """rtol below float32 resolution: the solver must stop (success or a clean SolverError)."""
    f = make_demo(torch.float32)
    sol = solve(f, torch.tensor([2.0, 0.0]), torch.tensor([0.0, 5.0]), rtol=1e-12, atol=1e-14,
                return_on_failure=True, options={"max_num_steps": 2_000})
    assert sol.status in ("success", "step-size-underflow", "max-steps")


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8"])
def test_backward_time(method):
    ts = torch.linspace(10.0, 0.0, 41, dtype=F64)
    y0 = torch.tensor([0.5, -1.0], dtype=F64)
    ref = scipy_reference(van_der_pol_np, [0.5, -1.0], ts.numpy())
    sol = solve(van_der_pol, y0, ts, method=method, rtol=1e-9, atol=1e-11)
    assert sol.stats.final_step_size < 0
    tol = 1e-4 if method == "bosh3" else 1e-6
    assert (sol.ys - ref).abs().max().item() < tol


@pytest.mark.parametrize("method", ["rk4", "euler", "dopri5"])
def test_backward_time_fixed_step(method):
    ts = torch.linspace(0.0, -3.0, 7, dtype=F64)
    # an adaptive method takes fixed steps in its fixed-step form
    fixed = get_tableau(method).fixed_step() if get_tableau(method).adaptive else method
    ys = odeint(harmonic, torch.tensor([1.0, 0.0], dtype=F64), ts, method=fixed,
                options={"step_size": 1e-3})
    tol = 1e-2 if method == "euler" else 1e-10
    assert (ys - harmonic_exact(ts)).abs().max().item() < tol


def test_forward_then_backward_recovers_initial_state():
    f = make_demo()
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    y_end = odeint(f, y0, torch.tensor([0.0, 5.0], dtype=F64), rtol=1e-11, atol=1e-13)[-1]
    y_back = odeint(f, y_end, torch.tensor([5.0, 0.0], dtype=F64), rtol=1e-11, atol=1e-13)[-1]
    assert torch.allclose(y_back, y0, atol=1e-8)


def test_batched_states():
    """A batch of initial states is solved as one system (shared step size), each row right."""
    y0 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.5]], dtype=F64)
    ts = torch.linspace(0, 6, 30, dtype=F64)
    ys = odeint(harmonic, y0, ts, rtol=1e-10, atol=1e-12)
    assert ys.shape == (30, 3, 2)
    for b in range(3):
        exact = harmonic_exact(ts, tuple(y0[b].tolist()))
        assert (ys[:, b] - exact).abs().max().item() < 1e-8


def test_per_component_tolerances():
    """A tensor atol/rtol: tight on one component, loose on the other."""
    ts = torch.linspace(0, 10, 11, dtype=F64)
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    ref = scipy_reference(van_der_pol_np, [2.0, 0.0], ts.numpy())
    loose = solve(van_der_pol, y0, ts, rtol=1e-4, atol=1e-6)
    mixed = solve(van_der_pol, y0, ts, rtol=torch.tensor([1e-10, 1e-4], dtype=F64),
                  atol=torch.tensor([1e-12, 1e-6], dtype=F64))
    assert mixed.stats.nfe > 2 * loose.stats.nfe
    assert (mixed.ys - ref).abs().max() < (loose.ys - ref).abs().max() / 10


@pytest.mark.parametrize("controller", ["pi", "i"])
def test_controllers(controller):
    ts = torch.linspace(0, 25, 20, dtype=F64)
    ref = scipy_reference(demo_np, [2.0, 0.0], ts.numpy())
    sol = solve(make_demo(), torch.tensor([2.0, 0.0], dtype=F64), ts, rtol=1e-8, atol=1e-10,
                options={"controller": controller})
    assert (sol.ys - ref).abs().max().item() < 1e-6
    # the I controller never shrinks after an accepted step (torchdiffeq's rule), so it is
    # rejected more often than the PI controller
    assert sol.stats.n_rejected < (0.1 if controller == "pi" else 0.3) * sol.stats.n_accepted


def test_step_options():
    ts = torch.tensor([0.0, 4.0], dtype=F64)
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    base = solve(harmonic, y0, ts, rtol=1e-6, atol=1e-8)
    capped = solve(harmonic, y0, ts, rtol=1e-6, atol=1e-8, options={"max_step": 0.05})
    assert capped.stats.n_accepted >= 80 > base.stats.n_accepted
    first = solve(harmonic, y0, ts, rtol=1e-6, atol=1e-8, options={"first_step": 1e-4})
    assert first.stats.status == "success"
    # as torchdiffeq: a step at min_step is accepted whatever its error (a floor on the work)
    floor = solve(harmonic, y0, ts, rtol=1e-12, atol=1e-14, options={"min_step": 0.5},
                  return_on_failure=True)
    assert floor.stats.status == "success" and floor.stats.n_rejected == 0 and floor.stats.n_steps == 8


def test_stats_are_consistent():
    """dopri5 (FSAL, 6 new evaluations per step) + k1 + one probe for the initial step."""
    ts = torch.tensor([0.0, 3.0], dtype=F64)
    sol = solve(van_der_pol, torch.tensor([2.0, 0.0], dtype=F64), ts, method="dopri5")
    st = sol.stats
    assert st.n_steps == st.n_accepted + st.n_rejected
    assert st.nfe == 2 + 6 * st.n_steps
    assert st.method == "dopri5" and sol.success and sol.t_last == 3.0
    fixed = solve(van_der_pol, torch.tensor([2.0, 0.0], dtype=F64), ts, method="rk4",
                  options={"steps": 10})
    assert fixed.stats.nfe == 40 and fixed.stats.n_steps == 10
    assert fixed.stats.final_step_size == pytest.approx(0.3)


def test_fixed_step_lands_on_output_times_with_even_steps():
    seen = []

    def f(t, y):
        seen.append(t.item())
        return -y

    ts = torch.tensor([0.0, 0.25, 1.0], dtype=F64)
    odeint(f, torch.ones(1, dtype=F64), ts, method="euler", options={"step_size": 0.1})
    # [0, 0.25] in 3 steps of 1/12, [0.25, 1] in 8 steps of 0.09375: no sliver steps
    assert len(seen) == 11
    assert seen[:3] == pytest.approx([0.0, 1 / 12, 2 / 12])
    assert seen[3:5] == pytest.approx([0.25, 0.34375])


def test_fixed_step_fsal_reuse():
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    sol = solve(harmonic, torch.tensor([1.0, 0.0], dtype=F64), ts, method=get_tableau("dopri5").fixed_step(),
                options={"steps": 10})
    assert sol.stats.nfe == 1 + 10 * 6


def test_time_passed_to_func_is_a_tensor():
    seen = []

    def f(t, y):
        seen.append(t)
        return torch.cos(t) * torch.ones_like(y)

    ts = torch.tensor([0.0, 2.0], dtype=F64)
    ys = odeint(f, torch.zeros(1, dtype=F64), ts, rtol=1e-10, atol=1e-12)
    assert all(isinstance(t, torch.Tensor) and t.dtype == F64 and t.ndim == 0 for t in seen)
    assert ys[-1].item() == pytest.approx(math.sin(2.0), abs=1e-9)


def test_non_autonomous_and_many_outputs():
    ts = torch.linspace(0, 10, 1000, dtype=F64)
    ys = odeint(lambda t, y: torch.cos(t) * y, torch.ones(1, dtype=F64), ts, rtol=1e-10, atol=1e-12)
    assert ys.shape == (1000, 1)
    assert (ys[:, 0] - torch.exp(torch.sin(ts))).abs().max().item() < 1e-8
