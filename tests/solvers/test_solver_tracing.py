"""An adaptive solve under a tracer is refused with a typed error that names the fixed-step
alternative; a fixed-step solve keeps exporting.

Before: ``torch.onnx.export`` of a module calling ``odeint(..., method="dopri5")`` "succeeded"
with TracerWarnings and froze the example input's steps (NaN at another input); ``torch.export``
failed deep inside with a data-dependent guard error.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from odespec.errors import SolverError, TracedAdaptiveSolveError
from odespec.export.parity import ort_session
from odespec.solvers import odeint


class _Flow(torch.nn.Module):
    """A user's own module: y(1) of dy/dt = tanh(W y + b)."""

    def __init__(self, method: str, options=None):
        super().__init__()
        torch.manual_seed(0)
        self.f = torch.nn.Linear(2, 2)
        self.method = method
        self.options = options

    def forward(self, y0: torch.Tensor) -> torch.Tensor:
        t = torch.tensor([0.0, 1.0])
        return odeint(lambda _t, y: torch.tanh(self.f(y)), y0, t, method=self.method, options=self.options)[-1]


X = torch.randn(3, 2, generator=torch.Generator().manual_seed(1))


def _onnx(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (X,), buf, dynamo=False, input_names=["y0"], output_names=["y1"],
                          dynamic_axes={"y0": {0: "batch"}, "y1": {0: "batch"}})
    return buf.getvalue()


TRACERS = {
    "torch.onnx.export": _onnx,
    "torch.jit.trace": lambda m: torch.jit.trace(m, (X,)),
    "torch.export": lambda m: torch.export.export(m, (X,)),
}


@pytest.mark.parametrize("tracer", list(TRACERS))
@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_an_adaptive_solve_under_a_tracer_is_refused_naming_the_fixed_step_alternative(tracer, method):
    with pytest.raises(TracedAdaptiveSolveError) as e:
        TRACERS[tracer](_Flow(method))
    assert isinstance(e.value, SolverError) and e.value.reason == "traced"
    text = str(e.value)
    assert tracer in text and method in text
    assert "method='rk4'" in text and "odespec export" in text


def test_a_fixed_step_solve_keeps_exporting_and_is_right_at_another_input():
    module = _Flow("rk4", {"steps": 8})
    session = ort_session(_onnx(module))
    other = torch.randn(5, 2, generator=torch.Generator().manual_seed(2)) * 3
    (got,) = session.run(None, {"y0": other.numpy()})
    with torch.no_grad():
        want = module(other).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_same_adaptive_solve_runs_outside_a_tracer():
    with torch.no_grad():
        y = _Flow("dopri5")(X)
    assert torch.isfinite(y).all()
