"""The generic RK step: pluggable combiner (symbolic use), torch_combine, op counts."""

from __future__ import annotations

import collections
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from odespec.solvers.step import StepResult, error_estimates, rk_step, torch_combine
from odespec.solvers.tableaus import get_tableau, method_names


class Sym:
    """A symbolic value with no arithmetic at all: any operation outside the combiner fails."""

    __slots__ = ("name",)
    __hash__ = object.__hash__

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


class Recorder:
    """A combiner and a vector field over :class:`Sym` values that record every operation."""

    def __init__(self):
        self.combines: list[tuple] = []
        self.calls: list[tuple] = []

    def combine(self, base, h, terms):
        terms = list(terms)
        for c, k in terms:
            assert type(c) is float and c != 0.0, "coefficients must be non-zero python floats"
            assert isinstance(k, Sym)
        assert base is None or isinstance(base, Sym)
        out = Sym(f"v{len(self.combines)}")
        self.combines.append((base, h, tuple(terms), out))
        return out

    def func(self, t, y):
        assert isinstance(y, Sym)
        out = Sym(f"k{len(self.calls)}")
        self.calls.append((t, y, out))
        return out


@pytest.mark.parametrize("name", [m for m in method_names() if not get_tableau(m).implicit])
def test_rk_step_runs_on_symbolic_values(name):
    tab = get_tableau(name)
    rec = Recorder()
    y = Sym("y")
    t, h = 0.5, 0.25
    res = rk_step(rec.func, t, y, h, tab, combine=rec.combine)
    assert isinstance(res, StepResult)
    s = tab.stages
    assert len(rec.calls) == s and len(res.ks) == s
    # stage times computed from t and h only
    for i, (ti, _, k) in enumerate(rec.calls):
        assert ti == pytest.approx(t + tab.c[i] * h, abs=1e-15)
        assert res.ks[i] is k
    assert rec.calls[0][1] is y
    # every stage input is y itself or a combination with base y and the stage's nonzero a_ij
    for i in range(1, s):
        y_i = rec.calls[i][1]
        if y_i is y:
            assert not tab.a_terms[i]
            continue
        base, hh, terms, _ = next(c for c in rec.combines if c[3] is y_i)
        assert base is y and hh == h
        expected = tab.b_terms if (tab.fsal and i == s - 1) else tab.a_terms[i]
        assert [(c, k.name) for c, k in terms] == [(c, f"k{j}") for j, c in expected]
    # y_next: one combine over the b weights; for FSAL it is the last stage's input
    base, _, terms, out = next(c for c in rec.combines if c[3] is res.y_next)
    assert base is y and [k.name for _, k in terms] == [f"k{j}" for j, _ in tab.b_terms]
    if tab.fsal:
        assert rec.calls[-1][1] is res.y_next and rec.calls[-1][0] == t + h
    if tab.adaptive:
        base, hh, terms, _ = next(c for c in rec.combines if c[3] is res.error)
        assert base is None and hh == h
        assert [(c, k.name) for c, k in terms] == [(c, f"k{j}") for j, c in tab.err_terms]
    else:
        assert res.error is None
    assert (res.error_aux is not None) == (tab.b_err_aux is not None)


def test_rk_step_reuses_k1_and_skips_error():
    tab = get_tableau("dopri5")
    rec = Recorder()
    k1 = Sym("given")
    res = rk_step(rec.func, 0.0, Sym("y"), 0.1, tab, combine=rec.combine, k1=k1, with_error=False)
    assert res.ks[0] is k1 and len(rec.calls) == tab.stages - 1
    assert res.error is None
    err, aux = error_estimates(0.1, tab, res.ks, combine=rec.combine)
    assert isinstance(err, Sym) and aux is None


def test_rk_step_accepts_tensor_time_and_step():
    tab = get_tableau("rk4")
    seen = []

    def f(t, y):
        seen.append(t)
        return y

    h = torch.tensor(0.1, dtype=torch.float64)
    y = torch.ones(3, dtype=torch.float64)
    res = rk_step(f, torch.tensor(0.0, dtype=torch.float64), y, h, tab)
    assert all(isinstance(t, torch.Tensor) for t in seen)
    expected = sum(0.1**n / math.factorial(n) for n in range(5))
    assert torch.allclose(res.y_next, torch.full((3,), expected, dtype=torch.float64), rtol=1e-15)


@pytest.mark.parametrize("n_terms", [1, 3, 7, 8, 13])
@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("h_kind", ["float", "tensor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_combine_matches_reference(n_terms, with_base, h_kind, dtype):
    gen = torch.Generator().manual_seed(n_terms)
    shape = (3, 5)
    base = torch.randn(shape, generator=gen, dtype=dtype) if with_base else None
    terms = [(float(i + 1) / 7.0 - 0.5, torch.randn(shape, generator=gen, dtype=dtype)) for i in range(n_terms)]
    h = -0.37 if h_kind == "float" else torch.tensor(-0.37, dtype=dtype)
    expected = sum(c * k.double() for c, k in terms) * -0.37
    if with_base:
        expected = expected + base.double()
    out = torch_combine(base, h, terms)
    assert out.dtype == dtype and out.shape == shape
    tol = 1e-5 if dtype == torch.float32 else 1e-13
    assert torch.allclose(out.double(), expected, atol=tol, rtol=tol)


def test_torch_combine_edge_cases():
    y = torch.ones(2)
    assert torch_combine(y, 0.5, []) is y
    with pytest.raises(ValueError):
        torch_combine(None, 0.5, [])


def test_rk4_one_step_is_taylor_polynomial():
    y = torch.tensor([1.0], dtype=torch.float64)
    h = 0.2
    res = rk_step(lambda t, y: y, 0.0, y, h, get_tableau("rk4"))
    assert res.y_next.item() == pytest.approx(1 + h + h**2 / 2 + h**3 / 6 + h**4 / 24, rel=1e-15)


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_dopri5_step_op_budget():
    """One dopri5 step costs one aten op per nonzero tableau coefficient (15 stage terms + 5
    solution terms + 6 error terms), nothing else: guards against accidental extra ops."""
    tab = get_tableau("dopri5")
    y = torch.randn(4, 3)
    k = torch.randn(4, 3)
    with _OpCounter() as counter:
        rk_step(lambda t, y: k, 0.0, y, 0.1, tab, k1=k)
    assert sum(counter.counts.values()) == 15 + 5 + 6, counter.counts


def test_adaptive_step_op_budget():
    """Per accepted dopri5 step, besides the 6 function evaluations: 26 combine ops, 6 stage-time
    scalars, and 6 ops for the error norm and the single host sync (abs, maximum, add, div,
    vector_norm, item). Counted over a long solve so the one-off setup is amortised."""
    from odespec.solvers import solve

    y0 = torch.ones(4, 3)
    with _OpCounter() as counter:
        sol = solve(lambda t, y: torch.neg(y), y0, torch.tensor([0.0, 30.0]), rtol=1e-9, atol=1e-11)
    st = sol.stats
    assert st.n_steps > 100
    solver_ops = sum(counter.counts.values()) - counter.counts["neg"]
    assert counter.counts["_local_scalar_dense"] <= st.n_steps + 2  # one sync per step
    assert solver_ops / st.n_steps <= 38.5, counter.counts


def test_rk_step_refuses_implicit_methods_on_symbolic_values():
    """An implicit step is a Newton iteration on tensors; the exporter's combiners get a clear error."""
    rec = Recorder()
    with pytest.raises(ValueError, match="implicit method.*ONNX export of implicit methods is not implemented"):
        rk_step(rec.func, 0.0, Sym("y"), 0.25, get_tableau("radauIIA5"), combine=rec.combine)
