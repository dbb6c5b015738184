"""The gradient methods' vector-Jacobian product: torch.autograd.grad's results and errors,
without its per-call argument checks on the common path."""

from __future__ import annotations

import pytest
import torch

from odespec.solvers.gradient import vjp as vjp_module
from odespec.solvers.gradient.vjp import vjp


def _graph():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 3).double()
    unused = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    out = torch.tanh(lin(y))
    return out, (y, lin.weight, lin.bias, unused)


def test_matches_autograd_grad_and_keeps_the_graph():
    out, inputs = _graph()
    v = torch.randn_like(out)
    got = vjp((out,), inputs, (v,))
    want = torch.autograd.grad(out, inputs, v, allow_unused=True, retain_graph=True)
    for g, w in zip(got, want):
        assert (g is None and w is None) or torch.equal(g, w)
    assert got[-1] is None  # an input the output does not depend on
    # retain_graph: the same graph can be differentiated again
    again = vjp((out,), inputs, (2 * v,))
    assert torch.allclose(again[0], 2 * got[0])


def test_takes_the_engine_path_for_plain_arguments(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(a))
    out, inputs = _graph()
    vjp((out,), inputs, (torch.ones_like(out),))
    assert calls == []


@pytest.mark.parametrize(
    "vector",
    [lambda out: torch.ones(5, 3, dtype=out.dtype), lambda out: torch.ones(out.shape, dtype=torch.float32)],
    ids=["shape", "dtype"],
)
def test_anything_unusual_goes_through_autograd_grad(monkeypatch, vector):
    out, inputs = _graph()
    seen = []
    real = torch.autograd.grad

    def spy(*a, **k):
        seen.append(a)
        return real(*a, **k)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    v = vector(out)
    try:
        vjp((out,), inputs, (v,))
    except RuntimeError as e:  # a wrong shape: autograd.grad's own message
        assert "Mismatch in shape" in str(e)
    assert len(seen) == 1


def test_an_output_without_grad_raises_as_autograd_grad_does():
    y = torch.randn(3, requires_grad=True)
    out = torch.zeros(3)
    with pytest.raises(RuntimeError, match="does not require grad"):
        vjp((out,), (y,), (torch.ones(3),))


def test_without_the_private_entry_point_it_is_autograd_grad(monkeypatch):
    monkeypatch.setattr(vjp_module, "_engine_run_backward", None)
    out, inputs = _graph()
    v = torch.randn_like(out)
    got = vjp((out,), inputs, (v,))
    want = torch.autograd.grad(out, inputs, v, allow_unused=True, retain_graph=True)
    assert all((g is None and w is None) or torch.equal(g, w) for g, w in zip(got, want))
