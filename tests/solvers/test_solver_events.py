"""Terminal events (odespec.solvers.events): odeint(..., event_fn=...), odeint_event, and the
gradients through the event time, against analytic crossing times and gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from odespec.errors import SolverError
from odespec.solvers import InvalidOptionError, odeint, odeint_adjoint, odeint_event
from odespec.solvers.events import solve_until_event

F64 = torch.float64
TIGHT = dict(rtol=1e-11, atol=1e-12)


class _Decay(torch.nn.Module):
    """y' = -k y."""

    def __init__(self, k: float):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(k, dtype=F64))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.k * y


def _event_solve(interface: str, func, y0, t0, event_fn, reverse=False, **kw):
    """The event solve through each public route; "checkpoint" through solve_until_event."""
    if interface == "odeint":
        return odeint_event(func, y0, t0, event_fn=event_fn, reverse_time=reverse, **kw)
    if interface == "adjoint":
        return odeint_event(func, y0, t0, event_fn=event_fn, reverse_time=reverse, odeint_interface=odeint_adjoint,
                            **kw)
    t = torch.stack([t0, t0.detach() + (-1.0 if reverse else 1.0)])
    return solve_until_event(func, y0, t, event_fn, method=kw.pop("method", None), options=kw.pop("options", None),
                             gradient="checkpoint", **kw)


INTERFACES = ("odeint", "adjoint", "checkpoint")
SOLVERS = [("dopri5", None), ("tsit5", None), ("rk4", {"step_size": 0.01})]


@pytest.mark.parametrize("interface", INTERFACES)
@pytest.mark.parametrize("method,options", SOLVERS, ids=[m for m, _ in SOLVERS])
def test_decay_crossing_time_and_its_gradients(interface, method, options):
    """y' = -k y from y0 at t0 reaches c at t* = t0 + log(y0/c)/k: check t* and dt*/d(y0, k,
    t0, c), c a tensor of the event function (the dg/dtheta term)."""
    func = _Decay(0.7)
    y0 = torch.tensor([2.0], dtype=F64, requires_grad=True)
    t0 = torch.tensor(0.25, dtype=F64, requires_grad=True)
    c = torch.tensor(0.4, dtype=F64, requires_grad=True)
    event_t, sol = _event_solve(interface, func, y0, t0, lambda t, y: y.sum() - c, method=method, options=options,
                                **TIGHT)
    k = 0.7
    expected = 0.25 + math.log(2.0 / 0.4) / k
    tol = 1e-8 if options is None else 1e-7
    assert float(event_t.detach()) == pytest.approx(expected, abs=tol)
    assert sol.shape == (2, 1)
    assert float(sol[0].detach()) == 2.0
    assert float(sol[1].detach()) == pytest.approx(0.4, abs=tol)
    g_y0, g_k, g_t0, g_c = torch.autograd.grad(event_t, (y0, func.k, t0, c), retain_graph=True)
    assert float(g_y0) == pytest.approx(1.0 / (k * 2.0), rel=1e-6)
    assert float(g_k) == pytest.approx(-math.log(2.0 / 0.4) / k**2, rel=1e-6)
    assert float(g_t0) == pytest.approx(1.0, rel=1e-6)
    assert float(g_c) == pytest.approx(-1.0 / (k * 0.4), rel=1e-6)
    # the state at the event is c, whatever y0 and k: its gradient to them vanishes
    g_y0, g_k, g_c = torch.autograd.grad(sol[1].sum(), (y0, func.k, c))
    assert abs(float(g_y0)) < 1e-6 and abs(float(g_k)) < 1e-6
    assert float(g_c) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("interface", INTERFACES)
def test_reverse_time(interface):
    """y' = -y backwards from t0 = 1 grows: y reaches C > y0 at t* = t0 - log(C/y0)."""
    func = _Decay(1.0)
    y0 = torch.tensor([0.5, 0.5], dtype=F64, requires_grad=True)
    t0 = torch.tensor(1.0, dtype=F64, requires_grad=True)
    event_t, sol = _event_solve(interface, func, y0, t0, lambda t, y: y.mean() - 3.0, reverse=True, **TIGHT)
    assert float(event_t.detach()) == pytest.approx(1.0 - math.log(6.0), abs=1e-8)
    assert float(sol[1, 0].detach()) == pytest.approx(3.0, abs=1e-8)
    g_y0, g_t0 = torch.autograd.grad(event_t, (y0, t0))
    # t* = t0 - log(3 / mean(y0)): dt*/dy0_i = 1 / (2 mean(y0))
    assert g_y0.tolist() == pytest.approx([1.0, 1.0], rel=1e-6)
    assert float(g_t0) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("interface", INTERFACES)
def test_bouncing_ball_tuple_state(interface):
    """A ball dropped from height h: x' = v, v' = -g; it hits x = 0 at sqrt(2h/g) with speed
    sqrt(2gh). The state is a tuple (x, v)."""
    grav = 9.81

    class Ball(torch.nn.Module):
        def forward(self, t, state):
            x, v = state
            return v, torch.full_like(v, -grav)

    h = torch.tensor([2.0], dtype=F64, requires_grad=True)
    v0 = torch.tensor([0.0], dtype=F64)
    kw = dict(TIGHT)
    if interface == "adjoint":
        kw["adjoint_params"] = ()
    event_t, (xs, vs) = _event_solve(interface, Ball(), (h, v0), torch.tensor(0.0, dtype=F64),
                                     lambda t, state: state[0].sum(), **kw)
    assert float(event_t.detach()) == pytest.approx(math.sqrt(2 * 2.0 / grav), rel=1e-9)
    assert float(vs[1].detach()) == pytest.approx(-math.sqrt(2 * grav * 2.0), rel=1e-9)
    assert abs(float(xs[1].detach())) < 1e-9
    (g_t,) = torch.autograd.grad(event_t, h, retain_graph=True)
    (g_v,) = torch.autograd.grad(vs[1].sum(), h)
    assert float(g_t) == pytest.approx(1.0 / math.sqrt(2 * grav * 2.0), rel=1e-6)
    assert float(g_v) == pytest.approx(-math.sqrt(grav / (2 * 2.0)), rel=1e-6)


class _Nonlinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w = torch.nn.Parameter(0.4 * torch.randn(2, 2, dtype=F64, generator=g))

    def forward(self, t, y):
        return torch.tanh(y @ self.w) + torch.stack([torch.ones_like(t), torch.cos(t)])


@pytest.mark.parametrize("interface", INTERFACES)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gradcheck_event_time_and_state(interface, reverse):
    """gradcheck of (event_t, y(event_t)) against y0, t0 and the parameters of func and of
    the event function, on nonlinear non-autonomous dynamics (no closed form)."""
    level = torch.tensor(1.5 if not reverse else -1.5, dtype=F64, requires_grad=True)

    def run(y0, t0, w, level):
        def func(t, y):  # a closure: w is found in its graph (odeint_adjoint is told it)
            return torch.tanh(y @ w) + torch.stack([torch.ones_like(t), torch.cos(t)])

        kw = dict(TIGHT, adjoint_params=(w,)) if interface == "adjoint" else TIGHT
        event_t, sol = _event_solve(interface, func, y0, t0, lambda t, y: y[0] - level, reverse=reverse, **kw)
        return event_t, sol[1]

    y0 = torch.tensor([0.1, -0.2], dtype=F64, requires_grad=True)
    t0 = torch.tensor(0.3, dtype=F64, requires_grad=True)
    w = (0.4 * torch.randn(2, 2, dtype=F64, generator=torch.Generator().manual_seed(3))).requires_grad_(True)
    assert torch.autograd.gradcheck(run, (y0, t0, w, level), atol=1e-6, rtol=1e-4)


def test_first_of_several_event_functions_ends_the_solve():
    """An event function with several values stops at the first to cross zero, from either
    sign at the start."""
    y0 = torch.tensor([1.0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    # y' = 1: y - 3 crosses at 2 (from below), 2.5 - y at 1.5 (from above)
    event_t, sol = odeint(lambda t, y: torch.ones_like(y), y0, t, event_fn=lambda t, y: torch.cat([y - 3.0, 2.5 - y]),
                          **TIGHT)
    assert float(event_t) == pytest.approx(1.5, abs=1e-9)
    assert float(sol[1]) == pytest.approx(2.5, abs=1e-9)


def test_event_at_the_start():
    y0 = torch.tensor([1.0], dtype=F64)
    event_t, sol = odeint(lambda t, y: -y, y0, torch.tensor([0.5, 1.0], dtype=F64), event_fn=lambda t, y: y.sum() - 1.0)
    assert float(event_t) == 0.5
    assert sol.tolist() == [[1.0], [1.0]]


def test_event_function_of_time_only():
    """An event that depends on t alone: dt*/dt0 = 0 and the state's gradient is f's."""
    y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
    t0 = torch.tensor(0.0, dtype=F64, requires_grad=True)
    event_t, sol = odeint_event(lambda t, y: -y, y0, t0, event_fn=lambda t, y: t - 0.8, **TIGHT)
    assert float(event_t.detach()) == pytest.approx(0.8, abs=1e-10)
    g_t0, g_y0 = torch.autograd.grad(event_t, (t0, y0), retain_graph=True, materialize_grads=True)
    assert float(g_t0) == pytest.approx(0.0, abs=1e-9) and float(g_y0) == pytest.approx(0.0, abs=1e-9)
    (g_y0,) = torch.autograd.grad(sol[1].sum(), y0)
    assert float(g_y0) == pytest.approx(math.exp(-0.8), rel=1e-8)


def test_fixed_step_event_needs_step_size():
    with pytest.raises(InvalidOptionError, match="step_size"):
        odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), method="rk4", options={"steps": 4},
               event_fn=lambda t, y: y.sum() - 0.5)


def test_no_event_is_a_solver_error():
    with pytest.raises(SolverError, match="no event"):
        odeint(lambda t, y: -y, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
               options={"max_num_steps": 50}, event_fn=lambda t, y: y.sum() + 1.0)


def test_event_needs_two_times():
    with pytest.raises(ValueError, match=r"t = \[t0, t1\]"):
        odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0, 2.0]), event_fn=lambda t, y: y.sum())


def test_adjoint_parameter_gradients_match_backprop():
    """The adjoint's parameter gradients through the event time equal backprop's."""
    func = _Nonlinear()
    y0 = torch.tensor([0.1, -0.2], dtype=F64)

    def grads(interface):
        event_t, sol = _event_solve(interface, func, y0, torch.tensor(0.0, dtype=F64), lambda t, y: y[0] - 1.0,
                                    **TIGHT)
        return torch.autograd.grad(event_t + sol[1].square().sum(), func.w)[0]

    assert torch.allclose(grads("adjoint"), grads("odeint"), rtol=1e-6, atol=1e-8)
