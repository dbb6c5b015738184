"""torchdiffeq's solver options and callbacks in odespec's engine (issue #17): norm, step_t,
jump_t, min_step, perturb, grid_constructor, interp, callback_*; tuple states of 0-d tensors;
heun3; float32 states with float64 times. References are analytic solutions."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from odespec.solvers import InvalidOptionError, odeint, odeint_adjoint, solve
from odespec.solvers.options import SOLVER_OPTIONS

F64 = torch.float64


def decay(t, y):
    return -y


# -- tuple states, aliasing, dtypes, heun3 ----------------------------------------------------------


def test_tuple_state_of_0d_tensors_matches_the_analytic_solution():
    t = torch.linspace(0, 1, 5, dtype=F64)
    ya, yb = odeint(lambda t, y: (-y[0], 2 * y[1]), (torch.tensor(1.0, dtype=F64), torch.tensor(3.0, dtype=F64)), t)
    assert ya.shape == (5,) and yb.shape == (5,)
    assert torch.allclose(ya, torch.exp(-t), atol=1e-7) and torch.allclose(yb, 3 * torch.exp(2 * t), atol=1e-6)


def test_func_returning_its_input_is_solved_without_autograd():
    # f(t, y) = y hands the step its own stage input back: without autograd that input is a row
    # of the step's buffer, which the step then adds into
    with torch.no_grad():
        ys = odeint(lambda t, y: y, torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64))
    assert torch.allclose(ys[-1], torch.tensor([math.e, 2 * math.e], dtype=F64), rtol=1e-6)


@pytest.mark.parametrize("method", ["dopri5", "dopri8", "rk4"])
def test_float32_state_with_float64_times_stays_float32(method):
    # func sees t in the state's dtype, so a derivative built from t does not promote the state
    t = torch.linspace(1, 8, 10, dtype=F64)
    options = {"steps": 20} if method == "rk4" else None
    ys = odeint(lambda t, y: -0.1 * torch.exp(-0.1 * t), torch.tensor(math.exp(-0.1)), t, method=method,
                rtol=1e-7, atol=1e-7, options=options)
    assert ys.dtype == torch.float32
    assert torch.allclose(ys, torch.exp(-0.1 * t).float(), rtol=1e-5)


def test_heun3_is_third_order():
    errs = []
    for n in (10, 20):
        ys = odeint(decay, torch.tensor([1.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method="heun3",
                    options={"steps": n})
        errs.append(abs(ys[-1].item() - math.exp(-1)))
    assert 7.0 < errs[0] / errs[1] < 9.0  # halving h divides the error by 2**3


# -- options: the table -------------------------------------------------------------------------------


def test_python_only_options_stay_out_of_the_spec_language():
    keys = {o.key: o for o in SOLVER_OPTIONS}
    for key in ("norm", "step_t", "jump_t", "perturb", "grid_constructor", "interp"):
        assert not keys[key].in_spec, key


def test_callable_options_are_checked():
    with pytest.raises(InvalidOptionError, match="'norm' must be a callable"):
        odeint(decay, torch.ones(1), torch.tensor([0.0, 1.0]), options={"norm": "rms"})
    with pytest.raises(InvalidOptionError, match="share"):
        odeint(decay, torch.ones(1), torch.tensor([0.0, 1.0]), options={"step_t": [0.5], "jump_t": [0.5]})
    with pytest.raises(InvalidOptionError, match="grid_constructor"):
        odeint(decay, torch.ones(1), torch.tensor([0.0, 1.0]), method="euler",
               options={"grid_constructor": lambda f, y0, t: t, "steps": 3})


# -- norm -----------------------------------------------------------------------------------------


def test_norm_is_called_with_the_state_shape_and_a_larger_norm_takes_more_steps():
    seen = []

    def linf(x):
        seen.append(x.shape)
        return x.abs().max()

    y0 = torch.tensor([[1.0, 0.5]], dtype=F64)
    t = torch.tensor([0.0, 5.0], dtype=F64)
    small = solve(lambda t, y: torch.sin(3 * t) * y, y0, t, rtol=1e-6, atol=1e-8, options={"norm": linf})
    large = solve(lambda t, y: torch.sin(3 * t) * y, y0, t, rtol=1e-6, atol=1e-8,
                  options={"norm": lambda x: 100 * x.abs().max()})
    assert set(seen) == {torch.Size([1, 2])}
    assert large.stats.n_steps > small.stats.n_steps
    exact = y0 * math.exp((1 - math.cos(15.0)) / 3)
    assert torch.allclose(large.ys[-1], exact, rtol=1e-6)


def test_norm_of_a_tuple_state_gets_the_tuple():
    got = []

    def norm(parts):
        got.append(tuple(p.shape for p in parts))
        return parts[0].abs()

    ya, yb = odeint(lambda t, y: (-y[0], -y[1]), (torch.tensor(1.0, dtype=F64), torch.ones(2, 2, dtype=F64)),
                    torch.tensor([0.0, 1.0], dtype=F64), options={"norm": norm})
    assert set(got) == {((), (2, 2))}
    assert abs(ya[-1].item() - math.exp(-1)) < 1e-6


# -- step_t, jump_t, min_step --------------------------------------------------------------------------


class _Jump:
    """dy/dt = -y/2 before t = 0.5, y**2 after: y(1) = 1 / (1 / (y0 e^{-1/4}) - 1/2)."""

    def __init__(self):
        self.ts = []

    def __call__(self, t, y):
        self.ts.append(t.item())
        return -0.5 * y if t < 0.5 else y**2


def _jump_exact(y0):
    mid = y0 * math.exp(-0.25)
    return 1.0 / (1.0 / mid - 0.5)


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "tsit5", "fehlberg2"])
def test_jump_t_is_cheaper_and_accurate(method):
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    plain, jumped = _Jump(), _Jump()
    ref = odeint(plain, y0, t, rtol=1e-8, atol=1e-8, method=method)
    ys = odeint(jumped, y0, t, rtol=1e-8, atol=1e-8, method=method, options={"jump_t": torch.tensor([0.5])})
    assert len(jumped.ts) < len(plain.ts)
    exact = torch.tensor([_jump_exact(1.0), _jump_exact(0.5)], dtype=F64)
    assert (ys[-1] - exact).abs().max() <= (ref[-1] - exact).abs().max() + 1e-9
    assert torch.allclose(ys[-1], exact, rtol=1e-5)
    assert 0.5 not in jumped.ts  # both sides are evaluated one float away from the jump


def test_jump_t_with_the_adjoint_is_cheaper_backwards_too():
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    counts = []
    for options in (None, {"jump_t": [0.5]}):
        f = _Jump()
        ys = odeint_adjoint(f, y0, t, rtol=1e-8, atol=1e-8, options=options, adjoint_params=())
        f.ts.clear()
        (grad,) = torch.autograd.grad(ys[-1].sum(), y0)
        counts.append(len(f.ts))
    # d y(1) / d y0 = (y(1) / y0)**2 e^{-1/4}... from y(1) = 1/(e^{1/4}/y0 - 1/2)
    exact = torch.tensor([_jump_exact(1.0) ** 2 * math.exp(0.25) / 1.0, _jump_exact(0.5) ** 2 * math.exp(0.25) / 0.25],
                         dtype=F64)
    assert counts[1] < counts[0]
    assert torch.allclose(grad, exact, rtol=1e-4)


def test_step_t_lands_steps_on_its_times():
    starts = []
    f = lambda t, y: -y  # noqa: E731
    f.callback_accept_step = lambda t0, y0, dt: starts.append(t0.item())  # type: ignore[attr-defined]
    odeint(f, torch.tensor([1.0], dtype=F64), torch.tensor([0.0, 3.0], dtype=F64), rtol=1e-3, atol=1e-3,
           options={"step_t": [0.123, 1.7]})
    assert 0.123 in starts and 1.7 in starts


def test_min_step_accepts_steps_at_the_floor():
    # torchdiffeq's rule: a step no longer than min_step is accepted whatever its error
    f = lambda t, y: torch.stack([y[1], -100 * y[0]])  # noqa: E731
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    t = torch.tensor([0.0, 4.0], dtype=F64)
    floor = solve(f, y0, t, options={"min_step": 0.5})
    free = solve(f, y0, t)
    assert floor.stats.status == "success"
    assert floor.stats.n_steps <= 10 < free.stats.n_steps


# -- fixed steps: perturb, grid_constructor, interp --------------------------------------------------------


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun2", "heun3", "rk4"])
def test_perturb_keeps_func_off_the_grid_times(method):
    for perturb in (True, False):
        ts: list = []

        def f(t, y, ts=ts):
            ts.append(t.item())
            return -y

        ys = odeint(f, torch.tensor([1.0]), torch.tensor([0.0, 1.0]), method=method,
                    options={"step_size": 0.5, "perturb": perturb})
        assert (0.0 in ts) is not perturb and (0.5 in ts) is not perturb
        assert abs(ys[-1].item() - math.exp(-1)) < 0.2


def test_perturb_sees_a_step_function_from_the_step_side():
    # dy/dt = 1 on [0, 1), 0 after; with steps of 0.5 and perturb, euler and heun integrate it exactly
    f = lambda t, y: torch.where(t < 1.0, 1.0, 0.0) * torch.ones_like(y)  # noqa: E731
    for method in ("euler", "heun2"):
        ys = odeint(f, torch.zeros(1, dtype=F64), torch.tensor([0.0, 2.0], dtype=F64), method=method,
                    options={"step_size": 0.5, "perturb": True})
        assert abs(ys[-1].item() - 1.0) < 1e-12, method


def test_grid_constructor_walks_its_grid_and_interpolates_outputs():
    calls = []

    def grid(func, y0, t):
        calls.append(t.tolist())
        return torch.linspace(float(t[0]), float(t[-1]), 11, dtype=F64)

    y0 = torch.tensor(1.0, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.55, 1.0], dtype=F64)
    lin = odeint(lambda t, y: y, y0, t, method="euler", options={"grid_constructor": grid})
    assert abs(lin[-1].item() - 1.1**10) < 1e-12
    assert abs(lin[1].item() - (1.1**5 + 0.5 * (1.1**6 - 1.1**5))) < 1e-12  # halfway along step 6
    cubic = odeint(lambda t, y: y, y0, t, method="rk4", options={"grid_constructor": grid, "interp": "cubic"})
    assert abs(cubic[1].item() - math.exp(0.55)) < 5e-6  # Hermite from rk4's ends: O(h^4), linear: 1e-2
    (g,) = torch.autograd.grad(lin[-1], y0)
    assert abs(g.item() - 1.1**10) < 1e-12
    assert calls == [[0.0, 0.55, 1.0], [0.0, 0.55, 1.0]]


def test_grid_constructor_with_the_adjoint_gets_each_interval_backwards():
    calls = []

    def grid(func, y0, t):
        calls.append(t.tolist())
        return torch.linspace(float(t[0]), float(t[-1]), 11, dtype=F64)

    y0 = torch.tensor(1.0, dtype=F64, requires_grad=True)
    ys = odeint_adjoint(lambda t, y: y, y0, torch.tensor([0.0, 1.0], dtype=F64), method="euler",
                        options={"grid_constructor": grid}, adjoint_params=())
    ys[-1].backward()
    assert calls == [[0.0, 1.0], [1.0, 0.0]]
    assert abs(y0.grad.item() - 1.1**10) < 1e-12  # euler's adjoint on the same grid


def test_a_bad_grid_is_an_error():
    with pytest.raises(InvalidOptionError, match="grid_constructor must return"):
        odeint(decay, torch.ones(1), torch.tensor([0.0, 1.0]), method="euler",
               options={"grid_constructor": lambda f, y0, t: torch.tensor([0.0, 0.7])})


# -- callbacks ------------------------------------------------------------------------------------------


class _Counted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(-1.0, dtype=F64))
        self.counts = {}

    def forward(self, t, y):
        return self.w * y

    def _count(self, name):
        return lambda t0, y0, dt: self.counts.__setitem__(name, self.counts.get(name, 0) + 1)


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_callbacks_count_steps_forward_and_backward(method):
    f = _Counted()
    names = ["callback_step", "callback_accept_step", "callback_reject_step"]
    fixed = method == "rk4"
    for name in names[:1] if fixed else names:
        setattr(f, name, f._count(name))
        setattr(f, name + "_adjoint", f._count(name + "_adjoint"))
    options = {"step_size": 0.1} if fixed else None
    sol = solve(f, torch.tensor([1.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method=method,
                options=options, gradient="adjoint")
    sol.ys[-1].sum().backward()
    c = f.counts
    if fixed:
        assert c == {"callback_step": 10, "callback_step_adjoint": 10}
    else:
        assert c["callback_step"] == sol.stats.n_steps
        assert c["callback_accept_step"] + c.get("callback_reject_step", 0) == c["callback_step"]
        assert c["callback_step_adjoint"] == sol.stats.backward.n_steps


def test_accept_and_reject_callbacks_on_a_fixed_step_solve_warn():
    f = _Counted()
    f.callback_accept_step = f._count("accept")
    with pytest.warns(UserWarning, match="does not support callbacks"):
        odeint(f, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method="euler")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        odeint(f, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64))  # adaptive: used


def test_callbacks_of_a_tuple_state_get_the_tuple():
    seen = []

    def f(t, y):
        return (-y[0], -y[1])

    f.callback_step = lambda t0, y0, dt: seen.append(type(y0))  # type: ignore[attr-defined]
    odeint(f, (torch.tensor(1.0), torch.ones(2)), torch.tensor([0.0, 1.0]), method="rk4", options={"steps": 3})
    assert seen == [tuple] * 3
