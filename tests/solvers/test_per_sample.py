"""solve_per_sample: every sample of a batch at its own output times, in one batched solve per
output interval (change of time variable t = a_b + s * d_b). Each sample must come out as it
does when solved alone on its own times."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

from odespec.errors import SolverError
from odespec.solvers import Checkpoint, InvalidOptionError, odeint, solve_per_sample

F64, F32 = torch.float64, torch.float32


# ---------------------------------------------------------------------------------------------
# fields and the reference: one sample alone, through odeint on its own times


class Field(torch.nn.Module):
    """A small non-autonomous MLP field: dy/dt = W2 tanh(W1 y + b1) * cos(t) + 0.1 y. Depends on
    t, so a wrong per-sample time shows; broadcasts t of shape () or (batch, 1)."""

    def __init__(self, dim: int = 2, width: int = 8, seed: int = 0, dtype: torch.dtype = F64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(width, dim, generator=g, dtype=dtype))
        self.b1 = torch.nn.Parameter(torch.randn(width, generator=g, dtype=dtype) * 0.3)
        self.w2 = torch.nn.Parameter(torch.randn(dim, width, generator=g, dtype=dtype) / width**0.5)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(y @ self.w1.T + self.b1) @ self.w2.T * torch.cos(t) + 0.1 * y


def _random_batch(batch: int, k: int, dtype=F64, seed: int = 0, ties: bool = True):
    g = torch.Generator().manual_seed(seed)
    start = torch.rand(batch, generator=g, dtype=F64) - 0.5
    gaps = torch.rand(batch, k, generator=g, dtype=F64) * 0.8
    if ties:
        gaps[torch.rand(batch, k, generator=g) < 0.25] = 0.0  # repeated times (padding), also at the start
    times = start[:, None] + gaps.cumsum(dim=1)
    y0 = torch.randn(batch, 2, generator=g, dtype=F64)
    return y0.to(dtype), times.to(dtype), start.to(dtype)


def _alone(func, y0_b, start_b: float, times_b: torch.Tensor, **kw):
    """Sample b solved alone by odeint from its start through its own distinct times (odeint
    needs strictly increasing times: a repeated time repeats the state), shape (K, *state), or
    a tuple of such for a tuple state."""
    full = torch.cat([torch.tensor([start_b], dtype=times_b.dtype), times_b])
    distinct, index = torch.unique_consecutive(full, return_inverse=True)
    parts = y0_b if isinstance(y0_b, tuple) else (y0_b,)
    if len(distinct) == 1:
        out = tuple(p.expand(len(times_b), *p.shape) for p in parts)
    else:
        ys = odeint(func, y0_b, distinct, **kw)
        out = tuple(p[index[1:]] for p in (ys if isinstance(ys, tuple) else (ys,)))
    return out if isinstance(y0_b, tuple) else out[0]


FIXED_METHODS = [("euler", 5), ("midpoint", 3), ("rk4", 2), ("rk4", 1)]


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("method,steps", FIXED_METHODS)
def test_fixed_steps_equal_each_sample_alone(method, steps, dtype):
    """`steps: n` puts n steps in every sample's own interval: what the sample alone takes, to
    round-off (the step is d/n in t against 1/n in s times d: a rounding apart)."""
    func = Field(dtype=dtype)
    y0, times, start = _random_batch(7, 6, dtype)
    kw = {"method": method, "options": {"steps": steps}}
    with torch.no_grad():
        got = solve_per_sample(func, y0, times, start=start, **kw).ys
        assert got.shape == (6, 7, 2)
        for b in range(7):
            ref = _alone(func, y0[b], float(start[b]), times[b], **kw)
            tol = 1e-13 if dtype == F64 else 5e-6
            torch.testing.assert_close(got[:, b], ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_adaptive_each_sample_within_tolerance_of_alone(method):
    """Adaptive: one step size for the batch (in s), so not the steps of a sample alone, but the
    same solution within the tolerance."""
    func = Field()
    y0, times, start = _random_batch(6, 5)
    kw = {"method": method, "rtol": 1e-9, "atol": 1e-11}
    with torch.no_grad():
        got = solve_per_sample(func, y0, times, start=start, **kw).ys
        for b in range(6):
            ref = _alone(func, y0[b], float(start[b]), times[b], **kw)
            torch.testing.assert_close(got[:, b], ref, rtol=1e-7, atol=1e-8)


def test_image_shaped_state_gets_time_per_sample_broadcastable():
    """A (batch, C, H) state: func receives t shaped (batch, 1, 1)."""
    seen = []

    def f(t, y):
        seen.append(tuple(t.shape))
        return -y * t

    y0 = torch.ones(3, 2, 4, dtype=F64)
    times = torch.tensor([[0.5, 1.0], [0.2, 0.4], [1.0, 1.5]], dtype=F64)
    ys = solve_per_sample(f, y0, times, method="rk4", options={"steps": 4}).ys
    assert set(seen) == {(3, 1, 1)}
    exact = torch.exp(-(times**2) / 2).T[:, :, None, None].expand(2, 3, 2, 4)
    torch.testing.assert_close(ys, exact, rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------------
# property: random batches of per-sample grids, with ties and start == first time


@st.composite
def _grids(draw):
    batch = draw(st.integers(1, 5))
    k = draw(st.integers(1, 6))
    gap = st.one_of(st.just(0.0), st.floats(0.01, 1.0))  # 0: a repeated time (padding)
    gaps = [[draw(gap) for _ in range(k)] for _ in range(batch)]
    shared = draw(st.booleans())
    start = draw(st.floats(-1.0, 1.0))
    starts = [start if shared else draw(st.floats(-1.0, 1.0)) for _ in range(batch)]
    return starts, gaps, shared


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_grids())
def test_property_random_grids_equal_alone_and_ties_repeat(grid):
    starts, gaps, shared = grid
    start = torch.tensor(starts, dtype=F64)
    times = start[:, None] + torch.tensor(gaps, dtype=F64).cumsum(dim=1)
    func = Field(seed=3)
    y0 = torch.linspace(-1, 1, 2 * len(starts), dtype=F64).reshape(-1, 2)
    kw = {"method": "rk4", "options": {"steps": 2}}
    with torch.no_grad():
        ys = solve_per_sample(func, y0, times, start=float(starts[0]) if shared else start, **kw).ys
        for b in range(len(starts)):
            torch.testing.assert_close(ys[:, b], _alone(func, y0[b], starts[b], times[b], **kw),
                                       rtol=1e-12, atol=1e-12)
            for k in range(times.shape[1]):
                prev_t = times[b, k - 1] if k else start[b]
                if times[b, k] == prev_t:  # a repeated time repeats the state, exactly
                    assert torch.equal(ys[k, b], ys[k - 1, b] if k else y0[b])


# ---------------------------------------------------------------------------------------------
# gradients: backprop, adjoint and checkpoint agree; gradcheck on y0


def _closure_field(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(2, 2, generator=g, dtype=F64).requires_grad_()
    c = torch.tensor([0.3, -0.2], dtype=F64).requires_grad_()

    def f(t, y):
        return torch.tanh(y @ w) * torch.sin(t) + c * y

    return f, [w, c]


@pytest.mark.parametrize("kind", ["module", "closure"])
@pytest.mark.parametrize("solver", ["fixed", "adaptive"])
def test_gradient_methods_agree(kind, solver):
    if kind == "module":
        func = Field()
        params = list(func.parameters())
    else:
        func, params = _closure_field()
    y0, times, start = _random_batch(4, 5)
    y0.requires_grad_()
    seed = torch.randn(5, 4, 2, generator=torch.Generator().manual_seed(9), dtype=F64)
    kw = ({"method": "rk4", "options": {"steps": 20}} if solver == "fixed"
          else {"method": "dopri5", "rtol": 1e-11, "atol": 1e-12})

    def grads(gradient):
        sol = solve_per_sample(func, y0, times, start=start, gradient=gradient, **kw)
        out = torch.autograd.grad((sol.ys * seed).sum(), [y0, *params])
        return sol, out

    ref_sol, ref = grads("backprop")
    ck_sol, ck = grads(Checkpoint(checkpoints=2))
    adj_sol, adj = grads("adjoint")
    for r, c, a in zip(ref, ck, adj, strict=True):
        torch.testing.assert_close(c, r, rtol=1e-10, atol=1e-12)  # the same discrete steps, replayed
        # the adjoint is the ODE's gradient, not the discretisation's: O(h^4) apart for rk4
        torch.testing.assert_close(a, r, rtol=1e-6, atol=1e-8)
    assert ref_sol.stats.backward.nfe == 0
    assert ck_sol.stats.backward.nfe > 0 and adj_sol.stats.backward.nfe > 0
    assert ck_sol.stats.backward.passes == len(ck_sol.stats.parts)  # one backward per interval solve


@pytest.mark.parametrize("gradient", ["backprop", "adjoint", "checkpoint"])
def test_gradcheck_y0(gradient):
    func = Field(width=4)
    times = torch.tensor([[0.2, 0.5, 0.5], [0.0, 0.9, 1.3]], dtype=F64)
    start = torch.tensor([0.0, -0.4], dtype=F64)
    y0 = torch.tensor([[0.5, -1.0], [1.2, 0.3]], dtype=F64, requires_grad=True)
    # backprop/checkpoint differentiate the rk4 steps exactly; the adjoint is the ODE's gradient,
    # close to it at 50 steps per interval
    steps = 50 if gradient == "adjoint" else 3

    def run(y0):
        return solve_per_sample(func, y0, times, start=start, method="rk4", options={"steps": steps},
                                gradient=gradient).ys

    assert torch.autograd.gradcheck(run, (y0,), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_times_are_not_differentiated():
    """Time is no input of the gradient (as in odeint): a times tensor requiring grad is data
    to every gradient method. Without the detach, backprop would differentiate the rescaling's
    d alone and the adjoint would take ``times`` for a parameter of the closure."""
    y0, times, start = _random_batch(3, 3)
    times.requires_grad_()
    start.requires_grad_()
    for gradient in ("backprop", "adjoint", "checkpoint"):
        ys = solve_per_sample(_decay, y0, times, start=start, method="dopri5", gradient=gradient).ys
        assert not ys.requires_grad, gradient


# ---------------------------------------------------------------------------------------------
# tuple states


@pytest.mark.parametrize("method,kw", [("rk4", {"options": {"steps": 3}}), ("dopri5", {"rtol": 1e-9, "atol": 1e-11})])
def test_tuple_state_scales_every_component(method, kw):
    """(y, clock, integral): the clock (d/dt = 1) reads each sample's elapsed time exactly, the
    integral of |y|^2 and y itself match the sample alone."""
    field = Field()

    def f(t, state):
        y, _, _ = state
        return field(t, y), torch.ones(y.shape[0], 1, dtype=y.dtype), (y**2).sum(-1, keepdim=True)

    y0, times, start = _random_batch(5, 4)
    state0 = (y0, torch.zeros(5, 1, dtype=F64), torch.zeros(5, 1, dtype=F64))
    with torch.no_grad():
        ys, clock, integral = solve_per_sample(f, state0, times, start=start, method=method, **kw).ys
        torch.testing.assert_close(clock[..., 0], (times - start[:, None]).T, rtol=1e-12, atol=1e-12)
        for b in range(5):
            alone = _alone(f, tuple(s[b:b + 1] for s in state0), float(start[b]), times[b], method=method, **kw)
            tol = 1e-12 if method == "rk4" else 1e-7
            torch.testing.assert_close(ys[:, b], alone[0][:, 0], rtol=tol, atol=tol)
            torch.testing.assert_close(integral[:, b], alone[2][:, 0], rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# against exact solutions and SciPy


def test_decay_with_per_sample_rate_and_start_is_exact():
    """dy/dt = -k_b y: y = y0 exp(-k_b (t - start_b)), at every sample's own times."""
    y0, times, start = _random_batch(8, 5, seed=4)
    k = torch.linspace(0.2, 3.0, 8, dtype=F64)

    def f(t, y):
        return -k[:, None] * y

    ys = solve_per_sample(f, y0, times, start=start, method="dopri5", rtol=1e-10, atol=1e-12).ys
    exact = y0[None] * torch.exp(-k[None, :, None] * (times.T - start[None])[..., None])
    torch.testing.assert_close(ys, exact, rtol=1e-8, atol=1e-10)


def test_non_autonomous_field_sees_each_samples_own_time():
    """dy/dt = cos(w_b t) y: y = y0 exp((sin(w_b t) - sin(w_b t0)) / w_b). Wrong per-sample times
    (e.g. s instead of a + s d) would change the answer."""
    y0, times, start = _random_batch(6, 7, seed=5)
    w = torch.linspace(0.5, 4.0, 6, dtype=F64)

    def f(t, y):
        return torch.cos(w[:, None] * t) * y

    ys = solve_per_sample(f, y0, times, start=start, method="rk4", options={"steps": 40}).ys
    phase = (torch.sin(w[:, None] * times) - torch.sin(w * start)[:, None]) / w[:, None]
    exact = y0[None] * torch.exp(phase.T)[..., None]
    torch.testing.assert_close(ys, exact, rtol=1e-8, atol=1e-10)


def test_linear_system_per_sample_matrix_exp():
    """dy/dt = A_b y with a matrix per sample: y(t) = expm(A_b (t - start_b)) y0."""
    g = torch.Generator().manual_seed(6)
    a = torch.randn(5, 3, 3, generator=g, dtype=F64) * 0.7
    y0 = torch.randn(5, 3, generator=g, dtype=F64)
    start = torch.rand(5, generator=g, dtype=F64)
    times = start[:, None] + torch.rand(5, 4, generator=g, dtype=F64).cumsum(dim=1)

    def f(t, y):
        return (a @ y[..., None])[..., 0]

    ys = solve_per_sample(f, y0, times, start=start, method="tsit5", rtol=1e-10, atol=1e-12).ys
    exact = (torch.linalg.matrix_exp(a[None] * (times.T - start).contiguous()[..., None, None]) @ y0[None, ..., None])[..., 0]
    torch.testing.assert_close(ys, exact, rtol=1e-7, atol=1e-9)


def test_forced_van_der_pol_against_scipy_per_sample():
    """A nonlinear, non-autonomous field against SciPy's DOP853 (rtol 1e-12) on each sample."""
    mu = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=F64)

    def f(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mu * (1 - x * x) * v - x + 0.5 * torch.sin(t[..., 0])], dim=-1)

    y0, times, start = _random_batch(4, 6, seed=7)
    ys = solve_per_sample(f, y0, times, start=start, method="dopri5", rtol=1e-10, atol=1e-12).ys
    for b in range(4):
        m = float(mu[b])

        def rhs(t, y, m=m):
            return [y[1], m * (1 - y[0] ** 2) * y[1] - y[0] + 0.5 * math.sin(t)]

        tb = times[b].numpy()
        sol = solve_ivp(rhs, (float(start[b]), float(tb[-1]) + 1e-9), y0[b].numpy(), method="DOP853",
                        rtol=1e-12, atol=1e-12, dense_output=True)
        ref = torch.from_numpy(np.asarray(sol.sol(tb)).T.copy())
        torch.testing.assert_close(ys[:, b], ref, rtol=1e-7, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# errors


def _decay(t, y):
    return -y


@pytest.mark.parametrize("times,start,match", [
    (torch.zeros(3), 0.0, r"shape \(batch, K\) = \(2, K >= 1\).*got shape \(3,\)"),
    (torch.zeros(3, 2), 0.0, r"\(2, K >= 1\).*got shape \(3, 2\)"),
    (torch.zeros(2, 0), 0.0, r"got shape \(2, 0\)"),
    (torch.zeros(2, 2), torch.zeros(3), r"start must be a number or one time per sample, shape \(2,\), got \(3,\)"),
    (torch.tensor([[0.1, 0.3], [0.5, 0.4]]), 0.0,
     r"non-decreasing from the start: sample 1 goes from 0.5 \(index 0\) to 0.4 \(index 1\)"),
    (torch.tensor([[0.1, 0.3], [0.5, float("nan")]]), 0.0, r"must be finite: sample 1 has nan at index 1"),
    (torch.tensor([[0.1, 0.3], [0.5, 0.6]]), torch.tensor([0.0, float("inf")]), r"sample 1 has inf at its start"),
    (torch.tensor([[0.1, 0.3], [0.5, 0.6]]), torch.tensor([0.0, 0.7]),
     r"sample 1 goes from 0.7 \(its start\) to 0.5 \(index 0\)"),
])
def test_bad_times_are_refused_with_clear_messages(times, start, match):
    with pytest.raises(ValueError, match=match):
        solve_per_sample(_decay, torch.ones(2, 3), times, start=start, method="rk4")


def test_bad_states_are_refused():
    with pytest.raises(ValueError, match="batch dimension"):
        solve_per_sample(_decay, torch.tensor(1.0), torch.ones(1, 2), method="rk4")
    with pytest.raises(ValueError, match=r"y0\[1\] has shape \(3, 1\)"):
        solve_per_sample(lambda t, s: s, (torch.ones(2, 2), torch.ones(3, 1)), torch.ones(2, 2), method="rk4")


def test_solver_error_names_the_interval_in_the_samples_own_time():
    """dy/dt = y^2, y(0.5) = 2 blows up at t = 1. Sample 1 runs into it in interval 1 (0.5 to 2)
    while sample 0 is padding there (interval of length 0): the error speaks of sample 1, in t
    (not s), with the step size in t and a hint at that t."""
    y0 = torch.tensor([[0.1], [2.0]], dtype=F64)
    times = torch.tensor([[0.5, 0.5], [0.5, 2.0]], dtype=F64)
    with pytest.raises(SolverError) as info:
        solve_per_sample(lambda t, y: y**2, y0, times, start=0.5, method="dopri5", rtol=1e-6, atol=1e-8)
    e = info.value
    assert "output interval 1 (sample 1: t from 0.5 to 2;" in str(e)
    assert 0.9 < e.t <= 1.0 + 1e-6, e.t  # s would be ~(1 - 0.5) / 1.5 = 0.33
    assert 0 < e.h < 0.1
    assert f"near t={e.t:.6g}" in str(e)  # the standard hint, told again in t


def test_solver_error_of_a_fixed_step_solve_in_t():
    """A field that turns NaN after t = 2.5: rk4 with 2 steps per interval fails in the interval
    of the longest sample that crosses it (sample 0: 2 to 3), at one of its grid points."""

    def f(t, y):
        return torch.where(t > 2.5, torch.full_like(y, float("nan")), -y)

    times = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 2.2]], dtype=F64)
    with pytest.raises(SolverError, match=r"output interval 2 \(sample 0: t from 2 to 3;") as info:
        solve_per_sample(f, torch.ones(2, 1, dtype=F64), times, method="rk4", options={"steps": 2})
    assert info.value.reason == "non-finite"
    assert info.value.t in (2.0, 2.5, 3.0)  # a grid point of sample 0's steps, in t
    assert info.value.h == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# options in t units


def test_step_size_gives_each_interval_the_longest_samples_step_count():
    """step_size 0.1: interval k takes the fewest equal steps no longer than 0.1 for the batch's
    longest interval (ceil, with the grid's rounding: 0.3 / 0.1 is 3 steps, not 4); a padding-only
    interval takes one step."""
    times = torch.tensor([[0.3, 0.65, 0.65], [0.1, 0.2, 0.2]], dtype=F64)
    sol = solve_per_sample(_decay, torch.ones(2, 1, dtype=F64), times, method="rk4", options={"step_size": 0.1})
    assert [p.n_steps for p in sol.stats.parts] == [3, 4, 1]
    assert sol.stats.nfe == 4 * 8
    exact = torch.exp(-times.T)[..., None]
    torch.testing.assert_close(sol.ys, exact, rtol=1e-6, atol=0)


def test_max_step_and_first_step_are_in_t_units():
    """max_step 0.05 bounds the longest sample's step in t (so interval k takes about
    longest_k / 0.05 steps on a field that wants large ones); first_step 0.01 is the longest
    sample's first step in t (dopri5's second stage is at t = a + 0.2 h)."""
    calls = []

    def f(t, y):
        calls.append(t.detach().clone().reshape(-1))
        return -0.01 * y

    times = torch.tensor([[0.5, 1.0], [2.0, 2.2]], dtype=F64)
    sol = solve_per_sample(f, torch.ones(2, 1, dtype=F64), times, method="dopri5",
                           options={"max_step": 0.05, "first_step": 0.01})
    assert calls[1][1].item() == pytest.approx(0.2 * 0.01)
    longest = [2.0, 0.5]
    for part, d in zip(sol.stats.parts, longest, strict=True):
        assert math.ceil(d / 0.05 - 1e-9) <= part.n_accepted <= math.ceil(d / 0.05) + 1


def test_steps_with_an_adaptive_method_is_refused():
    with pytest.raises(InvalidOptionError, match="'steps' is for fixed-step methods"):
        solve_per_sample(_decay, torch.ones(2, 1), torch.ones(2, 2), method="dopri5", options={"steps": 2})


def test_stats_sum_over_intervals():
    times = torch.tensor([[0.5, 1.0, 1.5]], dtype=F64)
    sol = solve_per_sample(_decay, torch.ones(1, 1, dtype=F64), times, method="rk4", options={"steps": 2})
    assert len(sol.stats.parts) == 3 and sol.stats.nfe == 3 * 2 * 4 and sol.stats.n_steps == 6
    assert sol.stats.status == "success" and sol.stats.method == "rk4"
