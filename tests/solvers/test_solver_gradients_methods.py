"""The three gradient methods: gradcheck, adjoint vs backprop, checkpoint == backprop."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from odespec.solvers import Adjoint, ButcherTableau, Checkpoint, get_tableau, solve

F64 = torch.float64
A = [[-0.1, 2.0], [-2.0, -0.1]]


def _demo(a):
    def f(t, y):
        return (y**3) @ a

    return f


def _mlp(width=16, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(2, width), torch.nn.Tanh(), torch.nn.Linear(width, 2)).double()

    class F(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, t, y):
            return self.net(y)

    return F()


# Heun-Euler 2(1): adaptive, not FSAL, no interpolant -> cubic Hermite dense output, whose
# f(t_new, y_new) evaluation is the next step's first stage (the trickiest replay path)
HEUN_EULER = ButcherTableau(
    name="heun_euler_test", order=2, a=((), (1,)), b=(Fraction(1, 2), Fraction(1, 2)), c=(0, 1),
    b_err=(Fraction(-1, 2), Fraction(1, 2)),
)

FIXED = {"method": "rk4", "options": {"step_size": 0.025}}
ADAPTIVE = {"method": "dopri5", "rtol": 1e-8, "atol": 1e-10}
GRAD_KW = {"backprop": {}, "adjoint": {}, "checkpoint": {}, "seminorm": {"seminorm": True}}


@pytest.mark.parametrize("solver", ["fixed", "adaptive"])
@pytest.mark.parametrize("gradient", ["backprop", "adjoint", "checkpoint", "seminorm"])
@pytest.mark.parametrize("ts", [[0.0, 0.3, 0.7, 1.0], [1.0, 0.4, -0.5]], ids=["forward", "backward"])
def test_gradcheck(solver, gradient, ts):
    """Analytic gradients of every method against finite differences of the forward solve,
    w.r.t. y0 and a parameter, over several output times, forward and backward in time."""
    kw = dict(FIXED if solver == "fixed" else ADAPTIVE)
    if gradient == "seminorm":
        if solver == "fixed":
            pytest.skip("seminorm only changes error control")
        kw.update(gradient=Adjoint(seminorm=True))
    else:
        kw["gradient"] = gradient
    t = torch.tensor(ts, dtype=F64)
    y0 = torch.tensor([1.2, -0.3], dtype=F64, requires_grad=True)
    a = torch.tensor(A, dtype=F64, requires_grad=True)

    def run(y0, a):
        return solve(_demo(a), y0, t, **kw).ys

    # the adjoint is the exact gradient of the ODE, not of the discretisation: with rk4 at
    # h = 0.025 the two differ by O(h^4), relative 3e-5 here; adaptive steps are constants to autograd but
    # move in the finite differences (far below these tolerances at rtol 1e-8)
    assert torch.autograd.gradcheck(run, (y0, a), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("seminorm", [False, True])
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "dopri8"])
def test_adjoint_agrees_with_backprop(method, seminorm):
    func = _mlp()
    y0 = torch.randn(5, 2, dtype=F64, requires_grad=True)
    t = torch.linspace(0, 2, 6, dtype=F64)
    params = [y0] + list(func.parameters())

    def grads(**kw):
        sol = solve(func, y0, t, method=method, rtol=1e-11, atol=1e-12, **kw)
        return torch.autograd.grad(sol.ys.sin().sum(), params)

    ref = grads()
    adj = grads(gradient=Adjoint(seminorm=seminorm))
    for r, g in zip(ref, adj):
        assert torch.allclose(g, r, rtol=1e-7, atol=1e-9), (g - r).abs().max()


CHECKPOINT_CASES = {
    "dopri5-dense": ("dopri5", {"rtol": 1e-8, "atol": 1e-9}, torch.linspace(0, 3, 23)),
    "dopri8-extra-stages": ("dopri8", {"rtol": 1e-8, "atol": 1e-9}, torch.linspace(0, 3, 17)),
    "bosh3": ("bosh3", {"rtol": 1e-6, "atol": 1e-8}, torch.linspace(0, 2, 9)),
    "hermite-non-fsal": (HEUN_EULER, {"rtol": 1e-5, "atol": 1e-7}, torch.linspace(0, 2, 9)),
    "rk4-fixed": ("rk4", {"options": {"step_size": 0.07}}, torch.linspace(0, 3, 7)),
    "dopri5-fixed": (get_tableau("dopri5").fixed_step(), {"options": {"steps": 5}}, torch.tensor([0.0, 1.0, 2.5])),
    "backward-time": ("dopri5", {"rtol": 1e-8, "atol": 1e-9}, torch.linspace(2, -1, 8)),
    "forced-outputs": ("tsit5", {"rtol": 1e-8, "atol": 1e-9, "options": {"force_output_steps": True}},
                       torch.linspace(0, 2, 5)),
}


@pytest.mark.parametrize("checkpoints", [None, 1, 3, 10_000])
@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_checkpoint_equals_backprop(case, checkpoints):
    """Same steps, same stage times and outputs: the gradients agree to round-off."""
    method, kw, t = CHECKPOINT_CASES[case]
    func = _mlp(width=8, seed=1)
    torch.manual_seed(2)
    y0 = torch.randn(3, 2, dtype=F64, requires_grad=True)
    t = t.to(F64)
    params = [y0] + list(func.parameters())
    seed = torch.randn(len(t), 3, 2, dtype=F64)

    ref_sol = solve(func, y0, t, method=method, **kw)
    ref = torch.autograd.grad((ref_sol.ys * seed).sum(), params)
    sol = solve(func, y0, t, method=method, gradient=Checkpoint(checkpoints=checkpoints), **kw)
    got = torch.autograd.grad((sol.ys * seed).sum(), params)

    # the forward solve runs without autograd (eager accumulation): equal to round-off
    torch.testing.assert_close(sol.ys, ref_sol.ys, rtol=1e-12, atol=1e-12)
    assert (sol.stats.n_steps, sol.stats.n_accepted) == (ref_sol.stats.n_steps, ref_sol.stats.n_accepted)
    for r, g in zip(ref, got):
        assert torch.allclose(g, r, rtol=1e-10, atol=1e-12), (case, (g - r).abs().max())
    # the replay takes every accepted step once more (and no rejected one)
    assert sol.stats.backward.n_steps == sol.stats.n_accepted
    assert sol.stats.n_accepted <= sol.stats.backward.nfe <= sol.stats.nfe + sol.stats.n_accepted


def test_checkpoint_through_y_last_and_partial_failure():
    """y_last carries gradients; after a failure with return_on_failure, the outputs reached do."""
    func = _mlp(width=8)
    y0 = torch.randn(2, 2, dtype=F64, requires_grad=True)
    t = torch.linspace(0, 2, 5, dtype=F64)
    for gradient in ("backprop", "checkpoint", "adjoint"):
        sol = solve(func, y0, t, gradient=gradient, rtol=1e-9, atol=1e-10)
        (g,) = torch.autograd.grad(sol.y_last.sum(), y0)
        assert torch.isfinite(g).all() and g.abs().sum() > 0

    grads = {}
    for gradient in ("backprop", "checkpoint"):
        sol = solve(func, y0, t, gradient=gradient, rtol=1e-9, atol=1e-10, return_on_failure=True,
                    options={"max_num_steps": 6})
        assert not sol.success and 1 < sol.ys.shape[0] < len(t)
        (grads[gradient],) = torch.autograd.grad(sol.ys.sum(), y0)
    assert torch.allclose(grads["checkpoint"], grads["backprop"], rtol=1e-10, atol=1e-12)


def test_tuple_state_gradients():
    func_net = _mlp(width=8)

    class TupleFunc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = func_net

        def forward(self, t, state):
            y, z = state
            return self.inner(t, y), -z * y.sum()

    func = TupleFunc()
    y0 = (torch.randn(3, 2, dtype=F64, requires_grad=True), torch.ones(4, dtype=F64, requires_grad=True))
    t = torch.linspace(0, 1, 3, dtype=F64)
    inputs = list(y0) + list(func.parameters())

    def grads(**kw):
        ys = solve(func, y0, t, rtol=1e-11, atol=1e-12, **kw).ys
        return torch.autograd.grad(ys[0].sum() + ys[1].square().sum(), inputs)

    ref = grads()
    for kw in ({"gradient": "checkpoint"}, {"gradient": "adjoint"}):
        for r, g in zip(ref, grads(**kw)):
            assert torch.allclose(g, r, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("kw", [
    {"method": "rk4", "options": {"steps": 7}},
    {"method": get_tableau("dopri5").fixed_step(), "options": {"steps": 5}},
    {"method": "dopri5", "rtol": 1e-7, "atol": 1e-9, "gradient": Adjoint(seminorm=True)},
    {"method": "bosh3", "rtol": 1e-6, "atol": 1e-8, "gradient": Adjoint(seminorm=True)},
])
def test_adjoint_parameter_quadrature_equals_state_channels(kw, monkeypatch):
    """Where the parameter gradient is outside error control (fixed steps, seminorm) the adjoint
    sums it as a quadrature beside [y, a]; that is the same RK sum as carrying it in the state,
    and takes the same steps."""
    from odespec.solvers.gradient import adjoint as adj

    func = _mlp(width=8, seed=3)
    y0 = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(4), requires_grad=True)
    t = torch.linspace(0, 1.5, 4, dtype=F64)
    params = [y0] + list(func.parameters())
    got = {}
    for quadrature in (True, False):
        monkeypatch.setattr(adj._AdjointRun, "quadrature", quadrature)
        sol = solve(func, y0, t, **{"gradient": "adjoint", **kw})
        got[quadrature] = torch.autograd.grad(sol.ys.square().sum(), params)
        got[quadrature, "nfe"] = sol.stats.backward.nfe
    assert got[True, "nfe"] == got[False, "nfe"]
    for a, b in zip(got[True], got[False]):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


def test_adjoint_mixed_norm_first_step_is_chosen_per_channel():
    """The parameter-gradient channels start at zero with derivatives summed over the batch.
    The initial-step rule pooled over channels divided y's size by their derivative and
    proposed a step below float32's step-size limit at t = 10; per channel it starts sensibly
    (torchdiffeq's adjoint solves this problem too)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    y0 = torch.randn(2048, 2, requires_grad=True)
    t = torch.tensor([0.0, 10.0])
    sol = solve(lambda t, y: net(y), y0, t, rtol=1e-5, atol=1e-6, gradient="adjoint")
    grads = torch.autograd.grad(1e3 * sol.ys[-1].square().sum(), [y0, *net.parameters()])
    assert all(torch.isfinite(g).all() for g in grads)
    # a sensible start: the backward solve takes about as many steps as the forward one
    assert sol.stats.backward.n_steps < 3 * sol.stats.n_steps


def test_adjoint_first_step_ignores_channels_at_rest():
    """An unused parameter's gradient channel stays at zero with a zero derivative: it must not
    bound the backward solve's first step (Hairer's fallback for a state at zero would be 1e-6)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    unused = torch.nn.Parameter(torch.ones(3))
    y0 = torch.randn(64, 2, dtype=torch.float32)
    t = torch.tensor([0.0, 2.0])
    steps = []
    for extra in ([], [unused]):
        sol = solve(lambda t, y: net(y), y0, t, rtol=1e-5, atol=1e-6,
                    gradient=Adjoint(params=[*net.parameters(), *extra]))
        grads = torch.autograd.grad(sol.ys[-1].square().sum(), list(net.parameters()))
        steps.append(sol.stats.backward.n_steps)
    assert steps[0] == steps[1]
