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
from export_helpers import TINY_SPEC


@pytest.fixture(scope="module")
def model():
    return odespec.build(parse_spec(TINY_SPEC))


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
    m64 = odespec.build(parse_spec(TINY_SPEC), dtype="float64")
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

    def wrong(m, method, steps, newton_iters=None):
        twin = real(copy.deepcopy(m), method, steps, newton_iters)
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
    spec = parse_spec(TINY_SPEC.replace("steps: 32}", "steps: 32, precision: mixed, verify: [onnxruntime, openvino]}"))
    assert spec.export.precision == "mixed" and spec.export.verify == ("onnxruntime", "openvino")
    assert parse_spec(TINY_SPEC).export.precision is None
    assert parse_spec(TINY_SPEC).export.verify == ("onnxruntime",)


# -- models that read irregular series ---------------------------------------------------------------

#: an ODE-RNN encoder (masked, reverse) -> q(z0) -> a t: query block whose dynamics read t (its
#: state at the last query time) -> a GRU decoder fed the query-time gaps: every kind of series
#: piece in one graph
SERIES = """
odespec: 1
name: series-mixed
seed: 3
input: {shape: [6, 2], times: true, mask: true, query: 5}
model:
  - ode_rnn: {hidden: 6, dynamics: [{linear: 12}, tanh, {linear: 6}], solver: {method: rk4, steps: 2}}
  - linear: 8
  - gaussian
  - ode:
      t: query
      start: 0.5
      output: final
      dynamics: {time: concat, layers: [{linear: 12}, elu, {linear: 4}]}
      solver: {method: dopri5, rtol: 1e-6, atol: 1e-8}
  - rnn_decoder: {cell: gru}
  - linear: 2
export:
  onnx: {method: rk4, steps: 4}
"""

#: the latent ODE of the same pieces, without the decoder
LATENT = SERIES.replace("output: final", "output: trajectory").replace("  - rnn_decoder: {cell: gru}\n", "")

SHIPPED_SERIES = sorted((Path(__file__).parents[2] / "specs").glob("irregular_*.yaml"))


@pytest.fixture(scope="module")
def series_model():
    return odespec.build(parse_spec(SERIES, "series-mixed.yaml"))


def _series_feeds(model, n: int = 256) -> dict[str, torch.Tensor]:
    from odespec.export.inputs import seeded_input_set, series_inputs

    inputs = seeded_input_set(model.spec.input_shape, dtype=torch.float32, seed=0, batch_sizes=(n,),
                              series=series_inputs(model))
    return inputs.feeds()[0]


def _scaled_errors(model, precisions: tuple[str, ...]) -> dict[str, float]:
    """Each precision's graph in onnxruntime against the float32 PyTorch fixed-step model, as the
    parity check of a half graph measures it: the largest error over the output's largest magnitude."""
    from odespec.export.inputs import call_model, numpy_feeds

    feeds = _series_feeds(model)
    s = model.spec.export
    want = call_model(fixed_step_model(model, s.method, s.steps).eval(), feeds).detach().double().numpy()
    out = {}
    for p in precisions:
        g = _graph(model, p)
        dtype = np.float16 if p == "float16" else np.float32
        (got,) = get_runtime("onnxruntime").load(g.SerializeToString()).run(
            None, {k: v.astype(dtype) for k, v in numpy_feeds(feeds).items()})
        out[p] = float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())
    return out


def test_mixed_series_model_keeps_state_times_and_step_sizes_in_float32(series_model):
    g = _graph(series_model, "mixed")
    types = _types(g)
    assert {i.type.tensor_type.elem_type for i in [*g.graph.input, *g.graph.output]} == {TensorProto.FLOAT}
    weights = [t for t in g.graph.initializer if t.name.startswith(("series", "ode", "seg")) and t.dims
               and t.data_type != TensorProto.INT64]  # shape constants of the pieces
    assert weights and {t.data_type for t in weights} == {TensorProto.FLOAT16}
    # every Runge-Kutta combination (the ODE-RNN's gaps and the query block) accumulates in float32
    sums = [n for n in g.graph.node if n.op_type == "Sum"]
    assert sums and {types[n.output[0]] for n in sums} == {TensorProto.FLOAT}
    # the times: each slot taken from times/query_times, the per-sample d_b = b - a, and the stage
    # times a + s * d_b are float32 (rounding a time of 9.6 to float16 would move it by 4e-3)
    taken = {n.output[0] for n in g.graph.node if n.op_type == "Gather" and n.input[0] in ("times", "query_times")}
    assert taken and {types[v] for v in taken} == {TensorProto.FLOAT}
    gaps = [n for n in g.graph.node if n.op_type == "Sub" and set(n.input) & taken]
    assert gaps and {types[n.output[0]] for n in gaps} == {TensorProto.FLOAT}
    # the dynamics (Tanh in the ODE-RNN's, Elu in the block's) and the GRU updates run in float16
    for op in ("Tanh", "Elu", "Sigmoid"):
        ops = {types[n.output[0]] for n in g.graph.node if n.op_type == op}
        assert ops == {TensorProto.FLOAT16}, op
    # the ODE-RNN's hidden state is carried in float32: each GRU update's result is cast back
    cell_outs = {n.output[0] for n in g.graph.node if n.op_type == "Cast"
                 and n.attribute[0].i == TensorProto.FLOAT}
    assert len(cell_outs) > 6


def test_mixed_shipped_latent_ode_is_closer_to_float32_than_float16():
    """On the shipped latent ODE (the parity check's batch of 256): about half float16's error."""
    model = odespec.build(odespec.load_spec(SHIPPED_SERIES[[p.stem for p in SHIPPED_SERIES].index("irregular_latent_ode")]))
    err = _scaled_errors(model, ("float16", "mixed"))
    assert 0 < err["mixed"] < err["float16"] < HALF_PARITY_TOL


def test_mixed_series_model_passes_parity_in_the_build(tmp_path: Path):
    r = export_model(odespec.build(parse_spec(LATENT)), tmp_path / "m.onnx", ExportOptions(precision="mixed", latency=False))
    assert r.precision == "mixed" and r.parity["measure"] == "scaled" and r.parity["ok"]
    assert r.parity["batch_sizes"] == [1, 7, 256]
    meta = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    assert meta["export_precision"] == "mixed"


def test_a_broken_mixed_series_graph_fails_parity(tmp_path: Path, monkeypatch):
    """The casts around the series pieces are where a mistake would hide: a twin with its
    ODE-RNN's weights off must fail the relative tolerance."""
    import odespec.export.pipeline as pipeline

    real = pipeline.fixed_step_model

    def wrong(m, method, steps, newton_iters=None):
        twin = real(copy.deepcopy(m), method, steps, newton_iters)
        with torch.no_grad():
            for p in twin[0].parameters():
                p.mul_(1.5)
        return twin

    monkeypatch.setattr(pipeline, "fixed_step_model", wrong)
    with pytest.raises(ParityError, match="relative to the output's largest magnitude"):
        export_model(odespec.build(parse_spec(LATENT)), tmp_path / "m.onnx", ExportOptions(precision="mixed", latency=False))


@pytest.mark.parametrize("path", SHIPPED_SERIES, ids=lambda p: p.stem)
def test_every_shipped_series_spec_builds_with_mixed_within_the_half_tolerance(path: Path):
    model = odespec.build(odespec.load_spec(path))
    err = _scaled_errors(model, ("mixed",))
    assert err["mixed"] < HALF_PARITY_TOL
