"""Property test: any spec in a family of generated ones validates, builds and exports, unrolled
and as ONNX Loops, with onnxruntime matching the PyTorch fixed-step model, and both layouts
computing the same function.

The family: small MLP or convolutional dynamics (optionally with ``time: concat``), fixed or
adaptive training solvers, trajectory or final outputs, one or two ODE blocks, plain layers
before, between and after them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import odespec
from odespec.export.parity import ort_session
from odespec.spec import parse_spec

FIXED = ["euler", "midpoint", "heun", "ralston", "rk4", "rk4_38"]
ADAPTIVE = ["bosh3", "dopri5", "tsit5"]
ACTIVATIONS = ["tanh", "relu", "sigmoid", "silu", "softplus", "elu"]


@st.composite
def solvers(draw) -> Any:
    if draw(st.booleans()):
        return {"method": draw(st.sampled_from(FIXED)), "steps": draw(st.integers(1, 3))}
    method = draw(st.sampled_from(ADAPTIVE))
    if draw(st.booleans()):
        return method  # the short form, default tolerances
    return {"method": method, "rtol": draw(st.sampled_from([1e-3, 1e-5])), "atol": draw(st.sampled_from([1e-4, 1e-6]))}


@st.composite
def times(draw, trajectory: bool) -> list[float]:
    t0 = draw(st.sampled_from([0.0, 0.5]))
    n = draw(st.integers(3, 4)) if trajectory else 2
    span = draw(st.sampled_from([0.5, 1.0, -1.0]))  # decreasing times too
    return [t0 + span * i / (n - 1) for i in range(n)]


@st.composite
def mlp_dynamics(draw, features: int) -> dict:
    hidden = draw(st.integers(2, 12))
    act = draw(st.sampled_from(ACTIVATIONS))
    layers: list[Any] = [{"linear": hidden}, act, {"linear": features}]
    if draw(st.booleans()):
        layers = [act] + layers
    return {"time": draw(st.sampled_from(["none", "concat"])), "layers": layers}


@st.composite
def conv_dynamics(draw, channels: int) -> dict:
    act = draw(st.sampled_from(ACTIVATIONS))
    layers: list[Any] = [{"conv2d": {"channels": channels, "kernel": 3, "padding": 1}}, act,
                         {"conv2d": {"channels": channels, "kernel": 3, "padding": 1}}]
    if draw(st.booleans()):
        layers = [{"groupnorm": draw(st.sampled_from([1, 2]))}] + layers
    return {"time": draw(st.sampled_from(["none", "concat"])), "layers": layers}


@st.composite
def specs(draw) -> dict:
    conv = draw(st.booleans())
    n_blocks = draw(st.integers(1, 2))
    model: list[Any] = []
    if conv:
        channels = draw(st.sampled_from([2, 4]))
        size = draw(st.integers(3, 5))
        shape = [draw(st.integers(1, 3)), size, size]
        model.append({"conv2d": {"channels": channels, "kernel": 3, "padding": "same"}})
    else:
        features = draw(st.integers(2, 5))
        shape = [draw(st.integers(1, 4))]
        model.append({"linear": features})
    for b in range(n_blocks):
        last = b == n_blocks - 1
        # a trajectory adds a time axis: conv state can only take it at the very end
        trajectory = draw(st.booleans()) and (last or not conv)
        block = {
            "t": draw(times(trajectory)),
            "output": "trajectory" if trajectory else "final",
            "dynamics": draw(conv_dynamics(channels) if conv else mlp_dynamics(features)),
            "solver": draw(solvers()),
        }
        model.append({"ode": block})
        if not last:
            if trajectory:
                model += ["flatten", {"linear": features}]
            else:
                model.append(draw(st.sampled_from(["relu", "tanh", {"leaky_relu": 0.1}])))
    if conv and not trajectory and draw(st.booleans()):
        model += ["relu", {"avgpool": "global"}, "flatten", {"linear": 3}]
    elif not conv and draw(st.booleans()):
        model += [{"linear": draw(st.integers(1, 3))}]
    return {
        "odespec": 1,
        "name": "generated",
        "seed": draw(st.integers(0, 1000)),
        "input": {"shape": shape},
        "model": model,
        "export": {"onnx": {"method": draw(st.sampled_from(FIXED)), "steps": draw(st.integers(1, 3))}},
    }


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(doc=specs())
def test_generated_specs_validate_build_and_export_with_parity(doc: dict, tmp_path: Path):
    spec = parse_spec(json.dumps(doc))  # JSON is YAML 1.2
    model = odespec.build(spec)
    unrolled = odespec.export_onnx(model, tmp_path / "u.onnx")
    looped = odespec.export_onnx(model, tmp_path / "l.onnx", loop=True, deployment=False)
    for r in (unrolled, looped):
        assert r.parity["ok"] and r.parity["max_abs_error"] <= spec.export.parity_tol
        onnx.checker.check_model(onnx.load(str(r.path)), full_check=True)
    dep = unrolled.deployment_error
    assert "skipped" in dep or np.isfinite(dep["max_abs_error"])
    x = np.random.default_rng(0).standard_normal((3, *spec.input_shape)).astype(np.float32)
    (a,) = ort_session(unrolled.path.read_bytes()).run(None, {"input": x})
    (b,) = ort_session(looped.path.read_bytes()).run(None, {"input": x})
    assert a.shape == (3, *spec.output_shape)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
