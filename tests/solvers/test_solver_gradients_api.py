"""Gradient methods: the API, errors, backward statistics, torchdiffeq parity, seminorms."""

from __future__ import annotations

import math

import pytest
import torch

import odespec.solvers as solvers
from odespec.errors import OdespecError, SolverError
from odespec.solvers import (
    Adjoint,
    Checkpoint,
    GradientConfig,
    GradientMethod,
    InvalidOptionError,
    UnknownGradientMethodError,
    gradient_names,
    odeint,
    odeint_adjoint,
    solve,
)
from odespec.solvers.replay import StepRecorder, sqrt_cap

F64 = torch.float64


class Field(torch.nn.Module):
    """dy/dt = W2 tanh(W1 y + b1) + b2."""

    def __init__(self, dim=2, width=32, seed=0, scale=1.0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, width), torch.nn.Tanh(), torch.nn.Linear(width, dim))
        with torch.no_grad():
            self.net[2].weight.mul_(scale)
        self.double()

    def forward(self, t, y):
        return self.net(y)


def test_names_and_lazy_exports():
    assert gradient_names()[:3] == ("backprop", "adjoint", "checkpoint")
    assert solvers.odeint_adjoint is odeint_adjoint
    assert issubclass(Adjoint, GradientMethod) and issubclass(Checkpoint, GradientMethod)


def test_unknown_gradient_method_suggests():
    with pytest.raises(UnknownGradientMethodError) as info:
        solve(lambda t, y: -y, torch.ones(1), [0.0, 1.0], gradient="adjiont")
    err = info.value
    assert isinstance(err, OdespecError) and "did you mean 'adjoint'" in str(err)
    assert err.allowed == gradient_names()


@pytest.mark.parametrize(
    "make",
    [
        lambda: {"gradient": GradientConfig.of("backprop", seminorm=True)},  # backprop has no backward solve
        lambda: {"gradient": GradientConfig.of("adjoint", checkpoints=4)},
        lambda: {"gradient": GradientConfig.of("checkpoint", rtol=1e-3)},
        lambda: {"gradient": GradientConfig.of("checkpoint", checkpoints=0)},
        lambda: {"gradient": Checkpoint(checkpoints=0)},
        lambda: {"gradient": GradientConfig.of("adjoint", seminorm="yes")},
        lambda: {"gradient": Adjoint(seminorm="yes")},
        lambda: {"gradient": Adjoint(method="rk4"), "options": {"max_num_steps": 10}},
        lambda: {"gradient": Adjoint(atol=-1.0)},
        lambda: {"gradient": GradientConfig.of("adjoint", atol=-1.0)},
        lambda: {"gradient": Adjoint(options={"max_num_step": 3})},
    ],
)
def test_misused_gradient_options_are_errors(make):
    with pytest.raises(InvalidOptionError):
        solve(lambda t, y: -y, torch.ones(1, requires_grad=True), [0.0, 1.0], **make())


def test_solve_takes_gradient_options_as_one_object():
    # the flat adjoint_*/checkpoints keywords of earlier designs are not solve()'s: one object says it all
    with pytest.raises(TypeError):
        solve(lambda t, y: -y, torch.ones(1), [0.0, 1.0], gradient="adjoint", seminorm=True)


def test_gradient_method_instances():
    func = Field()
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    t = [0.0, 1.0]
    a = solve(func, y0, t, gradient=Adjoint(seminorm=True, rtol=1e-9, atol=1e-10), rtol=1e-9, atol=1e-10)
    b = solve(func, y0, t, gradient=GradientConfig.of("adjoint", seminorm=True), rtol=1e-9, atol=1e-10)
    ga = torch.autograd.grad(a.ys.sum(), y0)[0]
    gb = torch.autograd.grad(b.ys.sum(), y0)[0]
    assert torch.equal(ga, gb)
    assert a.stats.gradient == "adjoint" and "seminorm=True" in repr(Adjoint(seminorm=True))


@pytest.mark.parametrize("gradient", ["backprop", "adjoint", "checkpoint"])
def test_backward_stats_filled_during_backward(gradient):
    func = Field()
    y0 = torch.randn(3, 2, dtype=F64, requires_grad=True)
    sol = solve(func, y0, torch.linspace(0, 1, 4, dtype=F64), gradient=gradient)
    assert sol.stats.backward.nfe == 0 and sol.stats.backward.passes == 0
    sol.ys.sum().backward(retain_graph=True)
    nfe = sol.stats.backward.nfe
    if gradient == "backprop":
        assert nfe == 0
    else:
        assert nfe > 0 and sol.stats.backward.passes == 1 and sol.stats.backward.n_steps > 0
        sol.ys.sum().backward()
        assert sol.stats.backward.passes == 2 and sol.stats.backward.nfe == 2 * nfe


@pytest.mark.parametrize("gradient", ["adjoint", "checkpoint"])
def test_without_grad_is_a_plain_solve(gradient):
    func = Field()
    y0 = torch.randn(3, 2, dtype=F64)
    t = torch.linspace(0, 1, 4, dtype=F64)
    with torch.no_grad():
        ref = solve(func, y0, t)
        sol = solve(func, y0, t, gradient=gradient)
    assert torch.equal(sol.ys, ref.ys) and sol.ys.grad_fn is None and sol.stats.nfe == ref.stats.nfe


@pytest.mark.parametrize("gradient", ["adjoint", "checkpoint"])
def test_parameters_of_closures_are_found(gradient):
    """A plain function closing over tensors (even non-leaf ones) gets their gradients."""
    w = torch.tensor([[0.3, -1.0], [1.0, 0.2]], dtype=F64, requires_grad=True)
    scale = torch.tensor(0.5, dtype=F64, requires_grad=True)
    m = w * scale  # non-leaf: differentiated through to w and scale

    def f(t, y):
        return torch.tanh(y @ m)

    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    t = torch.linspace(0, 2, 3, dtype=F64)
    ref = torch.autograd.grad(odeint(f, y0, t, rtol=1e-11, atol=1e-12).sum(), (w, scale), retain_graph=True)
    ys = solve(f, y0, t, rtol=1e-11, atol=1e-12, gradient=gradient).ys
    got = torch.autograd.grad(ys.sum(), (w, scale))
    for r, g in zip(ref, got):
        assert torch.allclose(g, r, rtol=1e-7, atol=1e-10)
    # explicit adjoint_params restrict what is differentiated
    method = {"adjoint": Adjoint, "checkpoint": Checkpoint}[gradient]
    ys = solve(f, y0, t, gradient=method(params=(w,))).ys
    (gw,) = torch.autograd.grad(ys.sum(), (w,))
    assert torch.isfinite(gw).all()


def test_seminorm_reduces_backward_nfe(capsys):
    """Kidger et al. 2021: with many parameters, error control over the parameter channels
    is what sets the backward step size; a seminorm drops it."""
    func = Field(width=32, seed=3)
    torch.manual_seed(0)
    y0 = torch.randn(16, 2, dtype=F64, requires_grad=True)
    t = torch.linspace(0, 10, 2, dtype=F64)
    nfe = {}
    for seminorm in (False, True):
        sol = solve(func, y0, t, rtol=1e-6, atol=1e-7, gradient=Adjoint(seminorm=seminorm))
        sol.ys[-1].square().sum().backward()
        nfe[seminorm] = sol.stats.backward.nfe
    with capsys.disabled():
        print(f"\n[seminorm] backward NFE without {nfe[False]}, with {nfe[True]}")
    assert nfe[True] <= nfe[False]
    assert nfe[True] < 0.85 * nfe[False]  # 86 vs 122 here


def test_adjoint_nan_in_backward_raises_solver_error():
    class NanGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return g * float("nan")

    func = Field()

    def f(t, y):
        return NanGrad.apply(func(t, y))

    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    sol = solve(f, y0, [0.0, 1.0], gradient=Adjoint(params=tuple(func.parameters())))
    assert torch.isfinite(sol.ys).all()
    with pytest.raises(SolverError) as info:
        sol.ys.sum().backward()
    err = info.value
    assert err.reason == "non-finite" and "adjoint (backward) solve" in str(err) and math.isfinite(err.t)


def test_adjoint_nan_incoming_gradient_raises():
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    ys = solve(Field(), y0, [0.0, 1.0], gradient="adjoint", options={"step_size": 0.1}, method="rk4").ys
    with pytest.raises(SolverError):
        ys.backward(torch.full_like(ys, float("nan")))


def test_adjoint_fixed_step_backward_uses_fixed_steps():
    func = Field()
    y0 = torch.randn(2, dtype=F64, requires_grad=True)
    sol = solve(func, y0, torch.linspace(0, 1, 3, dtype=F64), method="rk4", options={"steps": 10},
                gradient="adjoint")
    sol.ys.sum().backward()
    assert sol.stats.backward.n_steps == 20 and sol.stats.backward.nfe == 80


def test_adjoint_other_backward_method():
    func = Field()
    y0 = torch.randn(2, dtype=F64, requires_grad=True)
    t = torch.linspace(0, 1, 3, dtype=F64)
    ref = torch.autograd.grad(odeint(func, y0, t, rtol=1e-10, atol=1e-12).sum(), y0)[0]
    ys = solve(func, y0, t, rtol=1e-10, atol=1e-12, gradient=Adjoint(method="rk4", options={"step_size": 0.01})).ys
    assert torch.allclose(torch.autograd.grad(ys.sum(), y0)[0], ref, rtol=1e-7)


def test_odeint_adjoint_requires_module_or_params():
    with pytest.raises(ValueError, match="nn.Module"):
        odeint_adjoint(lambda t, y: -y, torch.ones(1), [0.0, 1.0])
    ys = odeint_adjoint(lambda t, y: -y, torch.ones(1, requires_grad=True), [0.0, 1.0], adjoint_params=())
    ys[-1].sum().backward()
    with pytest.raises(InvalidOptionError):
        odeint_adjoint(Field(), torch.ones(2, dtype=F64), [0.0, 1.0], adjoint_options={"norm": "rms"})


@pytest.mark.parametrize("seminorm", [False, True])
def test_odeint_adjoint_matches_torchdiffeq(seminorm):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    func = Field(seed=5)
    y0 = torch.randn(4, 2, dtype=F64, requires_grad=True)
    t = torch.linspace(0, 1.0, 3, dtype=F64)
    inputs = [y0] + list(func.parameters())
    adj_opts = {"norm": "seminorm"} if seminorm else None

    def grads(fn):
        ys = fn(func, y0, t, rtol=1e-9, atol=1e-10, adjoint_options=adj_opts)
        return ys, torch.autograd.grad((ys**2).sum(), inputs)

    ys_ref, ref = grads(torchdiffeq.odeint_adjoint)
    ys, got = grads(odeint_adjoint)
    # the two dopri5 implementations take different steps (another embedded estimator):
    # agreement is to the tolerances, not to round-off
    assert torch.allclose(ys, ys_ref, rtol=1e-6, atol=1e-8)
    for r, g in zip(ref, got):
        assert torch.allclose(g, r, rtol=1e-5, atol=1e-7), (g - r).abs().max()


@pytest.mark.parametrize("cap_n", [None, 5])
def test_recorder_keeps_few_checkpoints(cap_n):
    cap = sqrt_cap if cap_n is None else (lambda n: cap_n)
    rec = StepRecorder(cap=cap)
    y = torch.zeros(1)
    for j in range(10_000):
        rec.accept(float(j), 1.0, float(j + 1), y, 1, 1)
    n = len(rec.states)
    assert 0 in rec.states and all(k % rec.stride == 0 for k in rec.states)
    if cap_n is None:
        assert 100 <= n <= 200  # between sqrt(n) and 2 sqrt(n)
    else:
        assert cap_n / 2 <= n <= cap_n


@pytest.mark.parametrize("gradient", ["backprop", "adjoint", "checkpoint"])
def test_ode_block_reports_backward_nfe(gradient):
    import dataclasses

    import odespec
    from odespec.spec.model import GradientSpec, OdeBlockSpec

    spec = odespec.load_spec("specs/ode_demo.yaml")
    options = {"seminorm": True} if gradient == "adjoint" else {}
    model = tuple(dataclasses.replace(m, gradient=GradientSpec.of(gradient, **options))
                  if isinstance(m, OdeBlockSpec) else m for m in spec.model)
    net = odespec.build(dataclasses.replace(spec, model=model))
    block = net.ode_blocks[0]
    out = net(torch.linspace(-1, 1, 6).reshape(3, 2))
    assert block.nfe_forward > 0 and block.nfe_backward == 0
    out.square().sum().backward()
    if gradient == "backprop":
        assert block.nfe_backward == 0
    else:
        assert block.nfe_backward == block.last_stats.backward.nfe > 0
