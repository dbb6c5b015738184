"""Failures are reported quickly, with where (t), the step size (h), why (reason) and a hint."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from solver_problems import harmonic

from odespec.errors import OdespecError, SolverError
from odespec.solvers import odeint, solve
from odespec.solvers.tableau import ButcherTableau

F64 = torch.float64


#: a failure is detected long before a runaway solve's work: default max_num_steps (100,000)
#: DOPRI5 steps would be 600,000 evaluations. An evaluation count, not a wall time, so that the
#: check holds on a loaded machine.
_QUICK_NFE = 50_000


def _expect_failure(reason, func, y0, ts, **kw):
    calls = [0]

    def counted(t, y):
        calls[0] += 1
        return func(t, y)

    with pytest.raises(SolverError) as info:
        odeint(counted, y0, ts, **kw)
    assert calls[0] < _QUICK_NFE, f"failure detected only after {calls[0]} evaluations"
    err = info.value
    assert isinstance(err, OdespecError)
    assert err.reason == reason or reason is None
    assert math.isfinite(err.t) and math.isfinite(err.h)
    assert err.hint and f"reason: {err.reason}" in str(err) and "hint:" in str(err)
    return err


def test_nan_dynamics_fail_immediately():
    calls = [0]

    def f(t, y):
        calls[0] += 1
        return y * float("nan")

    err = _expect_failure("non-finite", f, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64))
    assert err.t == 0.0 and calls[0] <= 2


def test_nan_appearing_later_is_located():
    def f(t, y):
        return torch.where(t < 1.0, -y, y * float("nan"))

    err = _expect_failure("non-finite", f, torch.ones(2, dtype=F64), torch.tensor([0.0, 3.0], dtype=F64))
    assert 0.9 < err.t <= 1.0


def test_nan_appearing_later_with_a_method_without_fsal():
    """Without FSAL the next step's first stage is not known after an accepted step: the
    non-finite check reads the stage the failed step evaluated."""
    heun_euler = ButcherTableau(
        name="heun_euler_failures", order=2, a=((), (1,)), b=(Fraction(1, 2), Fraction(1, 2)),
        c=(0, 1), b_err=(Fraction(-1, 2), Fraction(1, 2)),
    )

    def f(t, y):
        return torch.where(t < 1.0, -y, y * float("nan"))

    err = _expect_failure("non-finite", f, torch.ones(2, dtype=F64), torch.tensor([0.0, 3.0], dtype=F64),
                          method=heun_euler)
    assert 0.9 < err.t <= 1.0


def test_nan_fixed_step():
    y0 = torch.ones(1, dtype=F64)
    ts = torch.linspace(0, 3, 7, dtype=F64)
    err = _expect_failure("non-finite", lambda t, y: y * y, y0, ts, method="euler",
                          options={"step_size": 0.1})
    assert 1.0 <= err.t <= 3.0
    sol = solve(lambda t, y: y * y, y0, ts, method="euler", options={"step_size": 0.1},
                return_on_failure=True)
    assert sol.status == "non-finite" and not sol.success
    assert 1 <= len(sol.ys) < 7 and torch.isfinite(sol.ys).all()
    assert torch.equal(sol.ts, ts[: len(sol.ys)])


def test_max_num_steps():
    err = _expect_failure("max-steps", harmonic, torch.tensor([1.0, 0.0], dtype=F64),
                          torch.tensor([0.0, 100.0], dtype=F64), options={"max_num_steps": 10})
    assert 0.0 < err.t < 100.0 and err.h > 0
    assert "max_num_steps" in err.hint


def test_step_size_underflow_at_singularity():
    """y' = 1/(1-t) has the solution -log(1-t), singular at t=1."""
    f = lambda t, y: (1.0 / (1.0 - t)).expand_as(y)  # noqa: E731
    err = _expect_failure("step-size-underflow", f, torch.zeros(1, dtype=F64),
                          torch.tensor([0.0, 2.0], dtype=F64))
    assert abs(err.t - 1.0) < 1e-6 and abs(err.h) < 1e-12
    assert "stiff" in err.hint


def test_underflow_backward_time():
    f = lambda t, y: (1.0 / (1.0 + t)).expand_as(y)  # noqa: E731  singular at t=-1
    err = _expect_failure("step-size-underflow", f, torch.zeros(1, dtype=F64),
                          torch.tensor([0.0, -2.0], dtype=F64))
    assert abs(err.t + 1.0) < 1e-6 and err.h < 0


def test_return_on_failure():
    f = lambda t, y: (1.0 / (1.0 - t)).expand_as(y)  # noqa: E731
    ts = torch.tensor([0.0, 0.5, 0.9, 1.5, 2.0], dtype=F64)
    sol = solve(f, torch.zeros(1, dtype=F64), ts, return_on_failure=True)
    assert sol.status == "step-size-underflow" == sol.stats.status
    assert isinstance(sol.error, SolverError) and not sol.success
    assert sol.ys.shape == (3, 1) and torch.equal(sol.ts, ts[:3])
    assert torch.allclose(sol.ys[:, 0], -torch.log1p(-ts[:3]), atol=1e-6)
    assert 0.9 < sol.t_last < 1.0 and sol.y_last.item() > 10
    assert sol.stats.n_steps > 0


def test_return_on_failure_for_nan_start():
    sol = solve(lambda t, y: y * float("nan"), torch.ones(3), torch.tensor([0.0, 1.0]),
                return_on_failure=True)
    assert sol.status == "non-finite" and sol.ys.shape == (1, 3) and sol.t_last == 0.0


def test_a_float32_time_does_not_cap_the_step_size():
    """Stiff relaxation at t ~ 1000: DOPRI5's stable step (~7e-4) is about 11 float32 ulps of t
    there. The integrator keeps time in float64, so the solve goes on (as torchdiffeq's does);
    it used to stop with step-size underflow below 10 ulps of t's own dtype (1.2e-3)."""
    f = lambda t, y: -5000.0 * (y - torch.sin(t))  # noqa: E731
    for dtype in (torch.float32, F64):
        sol = solve(f, torch.zeros(1, dtype=dtype), torch.tensor([1000.0, 1000.5], dtype=dtype))
        assert sol.success and abs(sol.ys[-1].item() - math.sin(1000.5)) < 1e-3


def test_float32_singularity_still_fails_fast():
    f = lambda t, y: (1.0 / (1.0 - t)).expand_as(y)  # noqa: E731
    err = _expect_failure(None, f, torch.zeros(1), torch.tensor([0.0, 2.0]))
    assert abs(err.t - 1.0) < 1e-5


# ------------------------------------------------------------------ a start that is not finite: which cause


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


class _Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _net()

    def forward(self, t, y):
        return self.net(y)


@pytest.mark.parametrize("method, options", [("dopri5", None), ("rk4", {"steps": 4})])
def test_nan_in_the_initial_state_is_named_as_the_inputs(method, options):
    y0 = torch.tensor([[1.0, 2.0], [float("nan"), 0.0]])
    with pytest.raises(SolverError) as info:
        solve(_Field(), y0, [0.0, 1.0], method=method, options=options)
    err = info.value
    assert "initial state holds 1 NaN or inf value(s) of 4" in str(err) and "input batch" in err.hint


@pytest.mark.parametrize("method, options", [("dopri5", None), ("rk4", {"steps": 4})])
def test_nan_in_the_parameters_is_named_as_the_parameters(method, options):
    field = _Field()
    with torch.no_grad():
        field.net[2].weight[0, 0] = float("nan")
    with pytest.raises(SolverError) as info:
        solve(field, torch.ones(3, 2), [0.0, 1.0], method=method, options=options)
    err = info.value
    assert "net.2.weight" in str(err) and "learning rate" in err.hint


def test_overflowing_dynamics_suggest_a_fixed_step_method_only_to_adaptive_solves():
    def blow_up(t, y):
        return torch.exp(torch.exp(torch.exp(y * 100)))

    with pytest.raises(SolverError) as adaptive:
        solve(blow_up, torch.ones(2), [0.0, 1.0], method="dopri5")
    with pytest.raises(SolverError) as fixed:
        solve(blow_up, torch.ones(2), [0.0, 1.0], method="rk4", options={"steps": 2})
    assert "fixed-step" in adaptive.value.hint and "fixed-step" not in fixed.value.hint
