"""float64 that loads: every layer type exports, in float64, to operators onnxruntime's CPU
provider runs in double, or the validator refuses the combination naming the layer.

Measured before the float64 export forms: Softplus, Elu, InstanceNormalization (groupnorm), Conv,
AveragePool/GlobalAveragePool, RNN and GRU have no double kernel (NOT_IMPLEMENTED when the
session loads), nor Erf (the exact gelu). The float64 forms must not touch a float32 graph
(``benchmarks/graph_digests.py`` showed every shipped spec's graph byte-identical).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import odespec
from odespec.errors import ExportError, SpecError
from odespec.export.onnx_export import ExportSettings, build_onnx
from odespec.export.parity import ort_session
from odespec.export.unroll import fixed_step_model
from odespec.layers import registry
from odespec.spec import parse_spec
from odespec.spec.model import LayerSpec

# Every built-in layer type, outside the dynamics and (where allowed) inside it. A (T, F) series
# feeds the recurrent layers; conv1d/pooling read it as (channels, length); a conv ODE block, then
# a dense one with the activations.
SPEC = """
odespec: 1
name: every_layer_float64
dtype: float64
input: {shape: [6, 3]}
model:
  - gru: {hidden: 4, output: sequence}
  - rnn: {hidden: 4, output: sequence, reverse: true}
  - reshape: [4, 6]
  - conv1d: {channels: 4, kernel: 3, padding: 1}
  - softplus: 2
  - elu: 0.5
  - avgpool: {kernel: 2, stride: 1}
  - maxpool: {kernel: 2, stride: 1}
  - batchnorm
  - groupnorm: 2
  - reshape: [4, 2, 2]
  - conv2d: {channels: 4, kernel: 3, padding: 1}
  - ode:
      t: [0, 0.5, 1]
      augment: 1
      solver: {method: rk4, steps: 2}
      dynamics:
        time: concat
        layers:
          - groupnorm: 5
          - conv2d: {channels: 5, kernel: 3, padding: 1}
          - softplus
          - conv2d: {channels: 6, kernel: 3, padding: 1, groups: 3}
          - elu
          - avgpool: {kernel: 3, stride: 1, padding: 1}
          - maxpool: {kernel: 3, stride: 1, padding: 1}
          - conv2d: {channels: 5, kernel: 1}
          - residual: [conv2d: {channels: 5, padding: 1}, softplus, groupnorm: 5]
  - avgpool: global
  - maxpool: global
  - flatten
  - dropout: 0.2
  - linear: 12
  - gaussian
  - layernorm
  - residual: [linear: 6, elu, groupnorm: 3]
  - known_linear: {matrix: [[-1, 0, 0, 0, 0, 0.5], [0.5, -2, 0, 0, 0, 0], [0, 1, -3, 0, 0, 0], [0, 0, 2, -1, 0, 0], [0, 0, 0, 0.5, -1, 0], [0, 0, 0, 0, 0.5, -1]], layers: [linear: 6, tanh]}
  - ode:
      t: [0, 1]
      solver: {method: rk4, steps: 2}
      dynamics:
        time: concat
        layers:
          - linear: 8
          - relu
          - tanh
          - sigmoid
          - silu
          - gelu: tanh
          - leaky_relu: 0.1
          - power: 3
          - layernorm
          - reshape: [2, 4]
          - conv1d: {channels: 2, kernel: 3, padding: 1}
          - avgpool: global
          - flatten
          - linear: 6
          - known_linear: {matrix: [[-1, 0, 0, 0, 0, 0.5], [0.5, -2, 0, 0, 0, 0], [0, 1, -3, 0, 0, 0], [0, 0, 2, -1, 0, 0], [0, 0, 0, 0.5, -1, 0], [0, 0, 0, 0, 0.5, -1]], layers: [linear: 6]}
  - relu
  - tanh
  - sigmoid
  - silu
  - gelu: tanh
  - leaky_relu: 0.1
  - power: 2
  - linear: 3
"""


# The layers that read irregular series (times, mask, query times), in float64: a model can hold
# only one reader of the observations' mask per sequence, so they come in two specs.
SERIES_SPECS = ["""
odespec: 1
name: series_encoders_float64
dtype: float64
input: {shape: [5, 2], times: true, mask: true, query: 4}
model:
  - ode_rnn: {hidden: 6, dynamics: [{linear: 6}, softplus, {linear: 6}], solver: {method: rk4, steps: 2}}
  - rnn_decoder: {cell: rnn, hidden: 6}
  - linear: 2
""", """
odespec: 1
name: series_gaps_float64
dtype: float64
input: {shape: [5, 2], times: true, mask: true, query: 4}
model:
  - gru: {hidden: 4, time_gaps: true}
  - linear: 4
  - ode:
      t: query
      start: 0
      output: trajectory
      solver: {method: rk4, steps: 2}
      dynamics: {time: concat, layers: [{linear: 8}, elu, {linear: 4}]}
  - linear: 2
""", """
odespec: 1
name: series_rnn_gaps_float64
dtype: float64
input: {shape: [5, 2], times: true, query: 3}
model:
  - rnn: {hidden: 4, time_gaps: true, reverse: true}
  - rnn_decoder: {cell: gru, hidden: 4}
  - linear: 2
"""]


def _model() -> odespec.ODENet:
    model = odespec.build(parse_spec(SPEC))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # running statistics other than the initial 0 and 1, so that they matter
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen, dtype=torch.float64))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen, dtype=torch.float64) + 0.5)
    return model.eval()


def test_the_spec_holds_every_registered_layer_type_inside_and_outside_the_dynamics():
    # a new layer type must be added here: its float64 export is then tested like the others
    spec = parse_spec(SPEC)
    outside: set[str] = set()
    inside: set[str] = set()

    def walk(layers, into: set[str]) -> None:
        for layer in layers:
            into.add(layer.kind)
            if registry.get(layer.kind).children_key:
                walk(layer.options[registry.get(layer.kind).children_key], into)

    walk([i for i in spec.model if isinstance(i, LayerSpec)], outside)
    for text in SERIES_SPECS:
        walk([i for i in parse_spec(text).model if isinstance(i, LayerSpec)], outside)
    for block in spec.ode_blocks:
        walk(block.dynamics.layers, inside)
    names = set(registry.names())
    assert outside == names
    assert inside == {t.name for t in registry.all_types() if t.not_in_dynamics is None}


def test_a_float64_model_with_every_layer_type_loads_in_onnxruntime_and_matches_pytorch():
    model = _model()
    onnx_model = build_onnx(model, ExportSettings(method="rk4", steps=2))
    session = ort_session(onnx_model.SerializeToString())  # NOT_IMPLEMENTED before the forms
    x = torch.randn(5, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = fixed_step_model(model, "rk4", 2)(x).numpy()
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_odespec_export_checks_the_float64_model_end_to_end(tmp_path):
    result = odespec.export_onnx(_model(), tmp_path / "m.onnx", deployment=False, latency=False)
    assert result.parity is not None and result.parity["ok"]
    assert result.parity["max_abs_error"] < 1e-10


@pytest.mark.parametrize("layer, value", [
    ("softplus", "{beta: 3}"), ("elu", "{alpha: 0.7}"), ("groupnorm", "{groups: 2, affine: false}"),
])
def test_the_decomposed_activations_and_norm_match_torch_at_extreme_inputs(layer, value):
    # softplus's threshold (beta x > 20: x), overflow of exp in the branch not taken, tiny inputs
    text = f"odespec: 1\nname: x\ndtype: float64\ninput: {{shape: [4, 3]}}\nmodel:\n  - {layer}: {value}\n  - linear: 3\n"
    model = odespec.build(parse_spec(text)).eval()
    x = torch.tensor([[-800.0, -40.0, -1e-9], [0.0, 1e-300, 6.0], [6.7, 7.0, 50.0], [700.0, 800.0, -3.0]],
                     dtype=torch.float64).reshape(1, 4, 3).repeat(2, 1, 1)
    (got,) = ort_session(build_onnx(model, ExportSettings()).SerializeToString()).run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_the_float32_graphs_keep_the_native_operators():
    text = SPEC.replace("dtype: float64\n", "")
    ops = {n.op_type for n in build_onnx(odespec.build(parse_spec(text)), ExportSettings()).graph.node}
    assert {"Softplus", "Elu", "InstanceNormalization", "Conv", "AveragePool", "GlobalAveragePool", "RNN",
            "GRU"} <= ops


def test_validate_refuses_the_exact_gelu_in_float64_naming_the_layer_and_the_fix():
    text = "odespec: 1\nname: g\ndtype: float64\ninput: {shape: [2]}\nmodel:\n  - linear: 4\n  - gelu\n"
    with pytest.raises(SpecError) as e:
        parse_spec(text)
    (issue,) = e.value.issues
    assert issue.path == "model[1]" or issue.path.startswith("model[1]")
    assert "gelu" in issue.message and "float64" in issue.message and "gelu: tanh" in (issue.hint or "")
    parse_spec(text.replace("dtype: float64\n", ""))  # float32 keeps the exact gelu


def test_export_refuses_the_exact_gelu_in_a_model_built_as_float64_by_override():
    text = "odespec: 1\nname: g\ninput: {shape: [2]}\nmodel:\n  - linear: 4\n  - gelu\n"
    model = odespec.build(parse_spec(text), dtype="float64")
    with pytest.raises(ExportError, match="gelu: tanh"):
        build_onnx(model, ExportSettings())


def test_exporting_a_model_leaves_its_batchnorm_statistics_alone():
    # torch's exporter put the run of plain layers it exported back in training mode (a new
    # container's mode), and the next forward overwrote the running variance: the model changed by
    # its own export, and the parity check then failed against it
    text = "odespec: 1\nname: b\ninput: {shape: [4, 6]}\nmodel:\n  - batchnorm\n  - flatten\n  - linear: 2\n"
    model = odespec.build(parse_spec(text)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    build_onnx(model, ExportSettings())
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("text", SERIES_SPECS, ids=["ode_rnn+rnn_decoder", "gru_gaps+query_ode", "rnn_gaps"])
def test_the_series_layers_export_in_float64_and_match_pytorch(text: str, tmp_path):
    model = odespec.build(parse_spec(text)).eval()
    result = odespec.export_onnx(model, tmp_path / "s.onnx", deployment=False, latency=False)
    assert result.parity["max_abs_error"] < 1e-10
