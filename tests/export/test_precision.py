"""``export.onnx.precision``: float16 and mixed graphs built by odespec's own graph building, their
element types where each value lives, parity in the graph's precision, and float32 unchanged."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

import odespec
from odespec.errors import ExportError, ParityError
from odespec.export.onnx_export import build_onnx, check_onnx, export_settings_from_spec
from odespec.export.pipeline import HALF_PARITY_TOL, ExportOptions, export_model
from odespec.export.runtimes import get_runtime
from odespec.export.unroll import fixed_step_model
from odespec.spec import parse_spec

SPEC = """
odespec: 1
name: tiny
seed: 0
input: {shape: [2]}
model:
  - linear: 8
  - ode:
      t: [0, 0.5, 1]
      output: trajectory
      dynamics: {time: concat, layers: [linear: 16, tanh, linear: 8]}
      solver: {method: dopri5, rtol: 1e-7, atol: 1e-9}
  - linear: 2
export:
  onnx: {method: rk4, steps: 32}
"""


@pytest.fixture(scope="module")
def model():
    return odespec.build(parse_spec(SPEC))


def _graph(model, precision):
    return check_onnx(build_onnx(model, export_settings_from_spec(model.spec, precision=precision)))


def _types(g: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value: inputs, outputs, initializers and inferred intermediates."""
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.graph.input, *g.graph.output, *g.graph.value_info]}
    types.update({t.name: t.data_type for t in g.graph.initializer})
    return types


def test_float16_graph_is_half_throughout(model):
    g = _graph(model, "float16")
    assert {i.type.tensor_type.elem_type for i in [*g.graph.input, *g.graph.output]} == {TensorProto.FLOAT16}
    assert {t.data_type for t in g.graph.initializer} <= {TensorProto.FLOAT16, TensorProto.INT64}
    assert not any(n.op_type == "Cast" for n in g.graph.node)
    assert dict(((p.key, p.value) for p in g.metadata_props))["export_precision"] == "float16"


def test_mixed_keeps_io_and_the_state_accumulation_in_float32(model):
    g = _graph(model, "mixed")
    types = _types(g)
    assert {i.type.tensor_type.elem_type for i in [*g.graph.input, *g.graph.output]} == {TensorProto.FLOAT}
    weights = [t for t in g.graph.initializer if t.name.startswith(("seg", "ode")) and t.dims]
    assert weights and {t.data_type for t in weights} == {TensorProto.FLOAT16}
    # y + h * sum(b_i k_i): every Sum (the combination) and its Mul terms are float32
    sums = [n for n in g.graph.node if n.op_type == "Sum"]
    assert sums and {types[n.output[0]] for n in sums} == {TensorProto.FLOAT}
    # the dynamics (Gemm, Tanh) run in float16
    assert {types[n.output[0]] for n in g.graph.node if n.op_type == "Tanh"} == {TensorProto.FLOAT16}
    casts = [n for n in g.graph.node if n.op_type == "Cast"]
    assert casts  # into the dynamics and back, per stage


def test_float32_is_the_default_graph_byte_for_byte(model):
    default = build_onnx(model, export_settings_from_spec(model.spec))
    explicit = build_onnx(model, export_settings_from_spec(model.spec, precision="float32"))
    assert default.graph.SerializeToString() == explicit.graph.SerializeToString()
    assert "export_precision" not in {p.key for p in default.metadata_props}


def test_float32_precision_of_a_float64_model_casts_it(model):
    m64 = odespec.build(parse_spec(SPEC), dtype="float64")
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    g = _graph(m64, "float32")
    assert g.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert next(m64.parameters()).dtype == torch.float64  # the model itself is untouched


def _run(g: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    (y,) = get_runtime("onnxruntime").load(g.SerializeToString()).run(None, {"input": x})
    return y.astype(np.float64)


def test_mixed_is_closer_to_float32_than_float16_and_both_run_on_the_cpu(model):
    """onnxruntime's CPU provider runs both (falling back to float32 kernels, with casts, for
    operators it has no float16 kernel for); accumulating the state in float32 loses less."""
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    want = fixed_step_model(model, "rk4", 32).eval()(x).detach().double().numpy()
    err = {p: float(np.abs(_run(_graph(model, p), x.numpy()) - want).max()) for p in ("float16", "mixed")}
    assert 0 < err["mixed"] < err["float16"]
    assert err["float16"] < HALF_PARITY_TOL * np.abs(want).max()


def test_parity_of_float16_is_against_the_float32_model_with_a_relative_tolerance(model, tmp_path: Path):
    r = export_model(copy.deepcopy(model), tmp_path / "m.onnx", ExportOptions(precision="float16", latency=False))
    assert r.precision == "float16" and r.parity["measure"] == "scaled"
    assert r.parity["tolerance"] == HALF_PARITY_TOL and r.parity["ok"]
    assert r.deployment_error["max_abs_error"] > 1e-5  # half precision shows against the training solver
    onnx_model = onnx.load(tmp_path / "m.onnx")
    assert onnx_model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16


def test_a_broken_half_graph_fails_parity(model, tmp_path: Path, monkeypatch):
    """The relative tolerance still catches a wrong graph: here every weight of the twin is off."""
    import odespec.export.pipeline as pipeline

    real = pipeline.fixed_step_model

    def wrong(m, method, steps):
        twin = real(copy.deepcopy(m), method, steps)
        with torch.no_grad():
            for p in twin.parameters():
                p.mul_(1.5)
        return twin

    monkeypatch.setattr(pipeline, "fixed_step_model", wrong)
    with pytest.raises(ParityError, match="relative to the output's largest magnitude"):
        export_model(copy.deepcopy(model), tmp_path / "m.onnx", ExportOptions(precision="mixed", latency=False))
    assert not (tmp_path / "m.onnx").exists()


def test_mixed_is_refused_for_the_loop_layout(model):
    with pytest.raises(ExportError, match="mixed precision is not available for the loop layout"):
        build_onnx(model, export_settings_from_spec(model.spec, precision="mixed", loop=True))


def test_float16_loop_layout_builds(model):
    g = _graph(model, "float16")
    loop = check_onnx(build_onnx(model, export_settings_from_spec(model.spec, precision="float16", loop=True)))
    x = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float16)
    np.testing.assert_allclose(_run(loop, x), _run(g, x), atol=2e-2)


def test_unknown_precision_is_an_export_error_with_a_suggestion():
    with pytest.raises(ExportError, match="did you mean 'mixed'"):
        ExportOptions(precision="mixd")


def test_the_spec_takes_precision_and_verify():
    spec = parse_spec(SPEC.replace("steps: 32}", "steps: 32, precision: mixed, verify: [onnxruntime, openvino]}"))
    assert spec.export.precision == "mixed" and spec.export.verify == ("onnxruntime", "openvino")
    assert parse_spec(SPEC).export.precision is None
    assert parse_spec(SPEC).export.verify == ("onnxruntime",)
