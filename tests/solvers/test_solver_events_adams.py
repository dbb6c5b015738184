"""Terminal events with the Adams methods (explicit_adams, implicit_adams, fixed_adams), and the
event solve's dtype handling: event times against closed forms, their gradients against closed
forms and gradcheck, the state at the event on the search's own trajectory."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from odespec.solvers import InvalidOptionError, odeint, odeint_adjoint, odeint_event

F64 = torch.float64
# explicit_adams of high order is unstable on these horizons (as torchdiffeq's, whose default
# max_order is 12 too): the closed-form checks take it at order 5, AB4
ADAMS = [
    ("explicit_adams", {"step_size": 0.01, "max_order": 5}),
    ("implicit_adams", {"step_size": 0.01}),
    ("fixed_adams", {"step_size": 0.02, "max_order": 6}),
]
IDS = [m for m, _ in ADAMS]


def _event(interface, func, y0, t0, event_fn, method, options, reverse=False, params=None):
    if interface == "odeint":
        return odeint_event(func, y0, t0, event_fn=event_fn, reverse_time=reverse, method=method, options=options)
    return odeint_event(func, y0, t0, event_fn=event_fn, reverse_time=reverse, odeint_interface=odeint_adjoint,
                        method=method, options=options, adjoint_params=params)


@pytest.mark.parametrize("interface", ["odeint", "adjoint"])
@pytest.mark.parametrize("method,options", ADAMS, ids=IDS)
def test_decay_event_time_and_gradients(interface, method, options):
    """y' = -k y from y0 at t0 reaches c at t* = t0 + log(y0/c)/k; the gradients of t* to y0,
    k, t0 and c (a tensor of the event function) in closed form."""
    k = torch.tensor(0.7, dtype=F64, requires_grad=True)
    y0 = torch.tensor([2.0], dtype=F64, requires_grad=True)
    t0 = torch.tensor(0.25, dtype=F64, requires_grad=True)
    c = torch.tensor(0.4, dtype=F64, requires_grad=True)
    event_t, sol = _event(interface, lambda t, y: -k * y, y0, t0, lambda t, y: y.sum() - c, method, options,
                          params=(k,))
    log_ratio = math.log(2.0 / 0.4)
    assert float(event_t.detach()) == pytest.approx(0.25 + log_ratio / 0.7, abs=1e-7)
    assert float(sol[1].detach()) == pytest.approx(0.4, abs=1e-9)
    g_y0, g_k, g_t0, g_c = torch.autograd.grad(event_t, (y0, k, t0, c), retain_graph=True)
    assert float(g_y0) == pytest.approx(1.0 / (0.7 * 2.0), rel=1e-6)
    assert float(g_k) == pytest.approx(-log_ratio / 0.7**2, rel=1e-6)
    assert float(g_t0) == pytest.approx(1.0, rel=1e-6)
    assert float(g_c) == pytest.approx(-1.0 / (0.7 * 0.4), rel=1e-6)
    # the state at the event is c whatever y0 and k
    g_y0, g_k, g_c = torch.autograd.grad(sol[1].sum(), (y0, k, c))
    assert abs(float(g_y0)) < 1e-7 and abs(float(g_k)) < 1e-7
    assert float(g_c) == pytest.approx(1.0, rel=1e-7)


@pytest.mark.parametrize("method,options", ADAMS, ids=IDS)
def test_reverse_time(method, options):
    """y' = -y backwards from t0 = 1 grows, reaching 3 from 0.5 at t0 - log 6."""
    y0 = torch.tensor([0.5, 0.5], dtype=F64, requires_grad=True)
    t0 = torch.tensor(1.0, dtype=F64)
    event_t, sol = odeint_event(lambda t, y: -y, y0, t0, event_fn=lambda t, y: y.mean() - 3.0, reverse_time=True,
                                method=method, options=options)
    assert float(event_t.detach()) == pytest.approx(1.0 - math.log(6.0), abs=1e-7)
    assert sol[1].detach().tolist() == pytest.approx([3.0, 3.0], abs=1e-9)
    (g_y0,) = torch.autograd.grad(event_t, y0)
    assert g_y0.tolist() == pytest.approx([1.0, 1.0], rel=1e-6)


@settings(max_examples=12, deadline=None)
@given(k=st.floats(0.2, 3.0), fraction=st.floats(0.05, 0.9), h=st.sampled_from([0.005, 0.02, 0.05]),
       method=st.sampled_from(["implicit_adams", "explicit_adams"]))
def test_event_time_over_rates_levels_and_steps(k, fraction, h, method):
    """Any decay rate, level and step size: the event time within the method's error of the
    exact one, and the state at the event on the level."""
    # implicit: enough corrector iterations for the largest k h (0.15) at the default rtol
    options = {"step_size": h, **({"max_order": 4} if method == "explicit_adams" else {"max_iters": 12})}
    event_t, sol = odeint(lambda t, y: -k * y, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                          method=method, options=options, event_fn=lambda t, y: y.sum() - fraction)
    exact = -math.log(fraction) / k
    # explicit: AB3 (error constant 3/8); implicit: higher orders. The global error in y at t is
    # about (3/8) h^3 k^4 y t, which moves the event by that over |y'| = k y: (3/8) (kh)^3 kt / k
    assert float(event_t) == pytest.approx(exact, abs=0.6 * (k * h) ** 3 * (k * exact + 1.0) / k + 1e-9)
    assert float(sol[1]) == pytest.approx(fraction, abs=1e-10)


class _Nonlinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(0.4 * torch.randn(2, 2, dtype=F64, generator=torch.Generator().manual_seed(5)))

    def forward(self, t, y):
        return torch.tanh(y @ self.w) + torch.stack([torch.ones_like(t), torch.cos(t)])


@pytest.mark.parametrize("interface", ["odeint", "adjoint"])
@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gradcheck_event_time_and_state(interface, method, reverse):
    """gradcheck of (event_t, y(event_t)) against y0, t0, func's weights and the event level, on
    nonlinear non-autonomous dynamics. Backprop differentiates the very trajectory the event
    was found on, so its check is tight; the adjoint's is the continuous adjoint, within the
    method's error of it."""
    level0 = 1.2 if not reverse else -1.2

    def run(y0, t0, w, level):
        def func(t, y):
            return torch.tanh(y @ w) + torch.stack([torch.ones_like(t), torch.cos(t)])

        event_t, sol = _event(interface, func, y0, t0, lambda t, y: y[0] - level, method,
                              {"step_size": 0.01, "max_order": 5}, reverse=reverse, params=(w,))
        return event_t, sol[1]

    y0 = torch.tensor([0.1, -0.2], dtype=F64, requires_grad=True)
    t0 = torch.tensor(0.3, dtype=F64, requires_grad=True)
    w = (0.4 * torch.randn(2, 2, dtype=F64, generator=torch.Generator().manual_seed(5))).requires_grad_(True)
    level = torch.tensor(level0, dtype=F64, requires_grad=True)
    tol = dict(atol=1e-7, rtol=1e-5) if interface == "odeint" else dict(atol=1e-5, rtol=1e-3)
    assert torch.autograd.gradcheck(run, (y0, t0, w, level), **tol)


def test_module_parameters_adjoint_matches_backprop():
    """odeint_adjoint finds an nn.Module's parameters itself; through an Adams event its
    gradients agree with backprop's to the method's error."""
    func = _Nonlinear()
    y0 = torch.tensor([0.1, -0.2], dtype=F64)

    def grads(interface):
        event_t, sol = _event(interface, func, y0, torch.tensor(0.0, dtype=F64), lambda t, y: y[0] - 1.0,
                              "implicit_adams", {"step_size": 0.01})
        return torch.autograd.grad(event_t + sol[1].square().sum(), func.w)[0]

    assert torch.allclose(grads("adjoint"), grads("odeint"), rtol=1e-5, atol=1e-8)


def test_state_at_the_event_is_on_the_searched_trajectory():
    """explicit_adams at its default order 12 drifts away from the flow of func on y' = y (its
    parasitic roots amplify round-off); the state returned at the event still satisfies the
    event, because it is the interpolant of the steps the event was found on."""
    event_t, sol = odeint(lambda t, y: y, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                          method="explicit_adams", options={"step_size": 0.05},
                          event_fn=lambda t, y: y.sum() - 1e4)
    assert float(sol[1]) == pytest.approx(1e4, rel=1e-12)
    # the drift is real: the event time is not log(1e4) to the accuracy of a stable method
    assert abs(float(event_t) - math.log(1e4)) > 1e-4


def test_tuple_state_and_several_event_functions():
    """A ball thrown up from x = 1 with v = 2 under gravity 10, the state (x, v): the first of
    'x = 0' and 'v = -4' to happen ends the solve (v = -4 at t = 0.6, before the ground at
    0.69)."""
    def ball(t, state):
        x, v = state
        return v, torch.full_like(v, -10.0)

    state0 = (torch.tensor([1.0], dtype=F64), torch.tensor([2.0], dtype=F64))
    event_t, (xs, vs) = odeint(ball, state0, torch.tensor([0.0, 1.0], dtype=F64), method="implicit_adams",
                               options={"step_size": 0.03},
                               event_fn=lambda t, s: torch.cat([s[0], s[1] + 4.0]))
    assert float(event_t) == pytest.approx(0.6, abs=1e-10)
    assert float(vs[1]) == pytest.approx(-4.0, abs=1e-10)
    assert float(xs[1]) == pytest.approx(1.0 + 2.0 * 0.6 - 5.0 * 0.36, abs=1e-10)


def test_adams_event_needs_step_size():
    with pytest.raises(InvalidOptionError, match="step_size"):
        odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), method="implicit_adams",
               options={"steps": 4}, event_fn=lambda t, y: y.sum() - 0.5)


def test_scipy_solver_events_are_refused_with_the_reason():
    with pytest.raises(InvalidOptionError, match="SciPy"):
        odeint(lambda t, y: -y, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
               method="scipy_solver", event_fn=lambda t, y: y.sum() - 0.5)


@pytest.mark.parametrize("method,options", [("dopri8", {}), ("explicit_adams", {"step_size": 0.01, "max_order": 5})])
def test_float32_state_with_float64_times(method, options):
    """func gets t in the state's dtype in the event search as in any solve (a float64 t made
    DOP853's stage combination mix dtypes): y' = -y in float32 from 1 reaches 0.5 at log 2."""
    seen = set()

    def func(t, y):
        seen.add(t.dtype)
        return -y

    event_t, sol = odeint(func, torch.ones(1, dtype=torch.float32), torch.tensor([0.0, 1.0], dtype=F64),
                          method=method, options=options, rtol=1e-6, atol=1e-7, event_fn=lambda t, y: y.sum() - 0.5)
    assert seen == {torch.float32}
    assert event_t.dtype == F64 and sol.dtype == torch.float32
    assert float(event_t) == pytest.approx(math.log(2.0), abs=1e-5)
