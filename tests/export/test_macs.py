"""MACs per sample counted from ONNX graphs (odespec/export/macs.py).

Three kinds of check: hand-built single-operator graphs against the formulas, odespec's own
graphs against counts worked out by hand (a linear layer; an rk4-unrolled ODE block costs
steps x 4 x f's MACs), and every shipped spec against an independent count:
``torch.utils.flop_counter.FlopCounterMode`` on the PyTorch fixed-step model (FLOPs / 2).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from torch.utils.flop_counter import FlopCounterMode

import odespec
from odespec.compile.dynamics import DynamicsNet
from odespec.export.inputs import model_dtype, seeded_input_set, series_inputs
from odespec.export.macs import count_macs, render_macs
from odespec.export.onnx_export import build_onnx, export_settings_from_spec
from odespec.export.unroll import fixed_step_model
from odespec.layers import ExportContext
from odespec.layers.series_modules import ODERNN
from odespec.layers.torch_modules import RecurrentEncoder
from odespec.solvers.tableaus import get_tableau

SPECS = sorted((Path(__file__).resolve().parents[2] / "specs").glob("*.yaml"))
F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _w(name, shape):
    return numpy_helper.from_array(np.zeros(shape, dtype=np.float32), name)


# -- single operators ---------------------------------------------------------------------------
def test_gemm_is_in_times_out_per_sample_whatever_the_batch():
    m = _model([helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)],
               [helper.make_tensor_value_info("x", F, ["batch", 5])], [helper.make_tensor_value_info("y", F, None)],
               [_w("W", (3, 5)), _w("b", (3,))])
    c = count_macs(m)
    assert c.macs == 15 and c.by_op["Gemm"].nodes == 1
    assert c.per_sample_dims == ["x[0] = batch"] and not c.unknown


def test_matmul_batched_counts_every_product():
    m = _model([helper.make_node("MatMul", ["x", "W"], ["y"])],
               [helper.make_tensor_value_info("x", F, ["n", 7, 4])], [helper.make_tensor_value_info("y", F, None)],
               [_w("W", (4, 6))])
    assert count_macs(m).macs == 7 * 4 * 6


def _conv_model(op, x_shape, w_shape, **attrs):
    return _model([helper.make_node(op, ["x", "W"], ["y"], **attrs)],
                  [helper.make_tensor_value_info("x", F, ["batch", *x_shape])],
                  [helper.make_tensor_value_info("y", F, None)], [_w("W", w_shape)])


def test_conv_by_hand_with_groups_stride_and_dilation():
    # 8 -> 6 channels in 2 groups, 3x3 kernel dilated 2, stride 2, pad 1 on 11x11:
    # out side = (11 + 2 - 2*(3-1) - 1) // 2 + 1 = 5; each output value: 4 input channels x 9 taps
    m = _conv_model("Conv", (8, 11, 11), (6, 4, 3, 3), group=2, strides=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1])
    assert count_macs(m).macs == 6 * 5 * 5 * 4 * 9


def test_conv_transpose_by_hand():
    # each of the 3 x 4 x 4 input values is scattered through 5 output channels x 2x2 taps
    m = _conv_model("ConvTranspose", (3, 4, 4), (3, 5, 2, 2), strides=[2, 2])
    assert count_macs(m).macs == 3 * 4 * 4 * 5 * 2 * 2


@pytest.mark.parametrize(("op", "gates"), [("RNN", 1), ("GRU", 3), ("LSTM", 4)])
def test_recurrent_ops(op, gates):
    seq, inp, hid = 9, 2, 5
    m = _model([helper.make_node(op, ["x", "W", "R"], ["ys", "h"], hidden_size=hid)],
               [helper.make_tensor_value_info("x", F, [seq, "batch", inp])],
               [helper.make_tensor_value_info("h", F, None)],
               [_w("W", (1, gates * hid, inp)), _w("R", (1, gates * hid, hid))])
    assert count_macs(m).macs == seq * gates * hid * (inp + hid)


def test_elementwise_ops_count_no_macs_but_their_elements():
    m = _model([helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Reshape", ["t", "s"], ["y"])],
               [helper.make_tensor_value_info("x", F, ["batch", 3, 4])], [helper.make_tensor_value_info("y", F, None)],
               [numpy_helper.from_array(np.array([1, 12], dtype=np.int64), "s")])
    d = count_macs(m).to_dict()
    assert d["macs_per_sample"] == 0 and d["elements_per_sample"] == 12
    assert d["by_op"] == {"Tanh": {"nodes": 1, "macs": 0, "elements": 12}}  # Reshape moves data only


def test_unknown_shapes_are_reported_not_guessed():
    # a Gemm whose input shape comes from a runtime value: no inference can know it
    m = _model([helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Gemm", ["r", "W"], ["y"])],
               [helper.make_tensor_value_info("x", F, ["batch", 6]),
                helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
               [helper.make_tensor_value_info("y", F, None)], [_w("W", (3, 2))])
    d = count_macs(m).to_dict()
    assert not d["exact"] and d["unknown"] == {"Gemm": 1}
    assert "at least" in render_macs(d)[0]


@settings(max_examples=25, deadline=None)
@given(cin_g=st.integers(1, 3), cout_g=st.integers(1, 3), groups=st.integers(1, 3), k=st.integers(1, 3),
       stride=st.integers(1, 3), dil=st.integers(1, 2), pad=st.integers(0, 2), side=st.integers(5, 9),
       transpose=st.booleans())
def test_conv_geometry_matches_torch_flop_counter(cin_g, cout_g, groups, k, stride, dil, pad, side, transpose):
    """Any conv geometry: the ONNX count equals torch's flop counter on the same convolution / 2."""
    cin, cout = cin_g * groups, cout_g * groups
    x = torch.zeros(1, cin, side, side)
    attrs = dict(group=groups, strides=[stride] * 2, dilations=[dil] * 2, pads=[pad] * 4)
    if transpose:
        w = torch.zeros(cin, cout_g, k, k)
        fn = lambda: torch.nn.functional.conv_transpose2d(x, w, stride=stride, padding=pad, dilation=dil, groups=groups)  # noqa: E731
        m = _conv_model("ConvTranspose", (cin, side, side), tuple(w.shape), **attrs)
    else:
        if (side + 2 * pad - dil * (k - 1) - 1) < 0:
            return  # no output
        w = torch.zeros(cout, cin_g, k, k)
        fn = lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=pad, dilation=dil, groups=groups)  # noqa: E731
        m = _conv_model("Conv", (cin, side, side), tuple(w.shape), **attrs)
    with FlopCounterMode(display=False) as fc:
        fn()
    assert count_macs(m).macs == fc.get_total_flops() // 2


# -- odespec graphs -------------------------------------------------------------------------------
def _graph(spec, **settings):
    model = odespec.build(spec)
    s = dataclasses.replace(export_settings_from_spec(model.spec), **settings)
    return model, build_onnx(model, s), s


def test_a_linear_layer_is_in_times_out(tmp_path):
    p = tmp_path / "lin.yaml"
    p.write_text("odespec: 1\nname: lin\ninput: {shape: [5]}\nmodel:\n  - linear: 3\n")
    _, g, _ = _graph(p)
    assert count_macs(g).macs == 15


@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
def test_rk4_block_costs_steps_times_four_times_f(tmp_path, steps, loop):
    # f: 2 -> 16 -> 2 with tanh: 2*16 + 16*2 = 64 MACs per evaluation; head 2 -> 1: 2 MACs
    p = tmp_path / "ode.yaml"
    p.write_text("odespec: 1\nname: ode\ninput: {shape: [2]}\nmodel:\n"
                 "  - ode: {t: [0, 1], dynamics: {layers: [{linear: 16}, tanh, {linear: 2}]}}\n  - linear: 1\n"
                 f"export:\n  onnx: {{method: rk4, steps: {steps}}}\n")
    _, g, _ = _graph(p, loop=loop)
    c = count_macs(g)
    assert c.macs == steps * 4 * 64 + 2 and c.exact


def test_float64_graph_counts_like_float32():
    """The float64 export writes convolutions as im2col + MatMul: the same MACs."""
    spec = SPECS[0].parent / "mnist_small_odenet.yaml"
    g32 = build_onnx(m := odespec.build(spec), export_settings_from_spec(m.spec))
    m64 = odespec.build(spec, dtype="float64")
    g64 = build_onnx(m64, export_settings_from_spec(m64.spec))
    assert g64.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    c32, c64 = count_macs(g32), count_macs(g64)
    assert c64.exact and c64.macs == c32.macs
    assert "MatMul" in c64.by_op and "Conv" not in {op for op, c in c64.by_op.items() if c.macs}


def _reference_macs(model, method, steps):
    """FlopCounterMode on the PyTorch fixed-step model, one sample, with each dynamics layer in
    the form the graph computes (a time-concatenated conv/linear becomes conv(y) + t * map:
    the graph has no MACs for the time channel). FLOPs / 2."""
    twin = copy.deepcopy(fixed_step_model(model, method, steps)).eval()
    ctx = ExportContext(dtype=model_dtype(model))
    for dyn in [m for m in twin.modules() if isinstance(m, DynamicsNet)]:
        dyn.layers = torch.nn.ModuleList(use.export_form(layer, ctx) for layer, use in zip(dyn.layers, dyn.uses, strict=True))
    inputs = seeded_input_set(model.spec.input_shape, dtype=model_dtype(model), seed=0, batch_sizes=(1,),
                              series=series_inputs(model))
    kwargs = inputs.series[0] if inputs.series else {}
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        twin(inputs.batches[0], **kwargs)
    return fc.get_total_flops() // 2


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_shipped_specs_match_torch_flop_counter(spec, monkeypatch):
    # torch's tanh RNN runs (and is counted); odespec's written-out CPU RNN does its products
    # in place, which the flop counter does not see
    monkeypatch.setattr(RecurrentEncoder, "_written_out", lambda self, x: False)
    # a reverse ODE-RNN's first gap (the last slot's time to itself) is empty: PyTorch solves it
    # anyway, the graph skips it (series_graph.lay_ode_rnn); count what the graph computes. The
    # same slot is the same memory (padding's equal times are other slots, solved by both)
    evolve = ODERNN._evolve
    monkeypatch.setattr(ODERNN, "_evolve",
                        lambda self, h, a, b: h if a.data_ptr() == b.data_ptr() else evolve(self, h, a, b))
    model, g, s = _graph(spec)
    c = count_macs(g)
    assert c.exact, c.unknown
    if get_tableau(s.method).implicit:
        pytest.skip("an implicit step's graph inverts its Newton matrix by Gauss-Jordan elimination where PyTorch "
                    "factorises it with LAPACK, which the flop counter does not see; test_implicit_graph_counts_its_dynamics_once_per_f_evaluation counts it")
    assert c.macs == _reference_macs(model, s.method, s.steps) > 0


@pytest.mark.parametrize("name", ["circles_anode", "mnist_small_odenet", "spiral_latent_ode"])
def test_loop_layout_counts_like_unrolled(name):
    spec = SPECS[0].parent / f"{name}.yaml"
    _, unrolled, _ = _graph(spec)
    _, looped, _ = _graph(spec, loop=True)
    assert count_macs(looped).macs == count_macs(unrolled).macs
    assert count_macs(looped).exact


def test_series_graph_per_sample():
    spec = SPECS[0].parent / "irregular_gru_dt.yaml"
    _, g, _ = _graph(spec)
    c = count_macs(g)
    assert c.exact and {"input[0] = batch", "times[0] = batch", "mask[0] = batch"} <= set(c.per_sample_dims)
    assert c.by_op["GRU"].macs > 0


# -- where users see it -------------------------------------------------------------------------
def test_inspect_and_build_report_show_macs(tmp_path):
    from click.testing import CliRunner

    from odespec.cli import cli

    p = tmp_path / "ode.yaml"
    p.write_text("odespec: 1\nname: ode\ninput: {shape: [2]}\nmodel:\n"
                 "  - ode: {t: [0, 1], dynamics: {layers: [{linear: 16}, tanh, {linear: 2}]}}\n"
                 "export:\n  onnx: {method: rk4, steps: 2}\n")
    runner = CliRunner()
    built = runner.invoke(cli, ["build", str(p), "-o", str(tmp_path)])
    assert built.exit_code == 0, built.output
    assert "cost:   512 multiply-accumulates per sample (Gemm 512)" in built.output
    report = json.loads((tmp_path / "ode.build.json").read_text())
    assert report["onnx"]["macs"]["macs_per_sample"] == 2 * 4 * 64
    text = runner.invoke(cli, ["inspect", str(tmp_path / "ode.onnx")])
    assert text.exit_code == 0 and "MACs per sample: 512 (512)" in text.output
    info = json.loads(runner.invoke(cli, ["inspect", "--format", "json", str(tmp_path / "ode.onnx")]).output)
    assert info["macs"]["macs_per_sample"] == 512 and info["macs"]["by_op"]["Gemm"]["nodes"] == 16


@pytest.mark.parametrize("iters", [3, 9])
def test_implicit_graph_counts_its_dynamics_once_per_f_evaluation(iters):
    """stiff_chain's dynamics are Gemms of 3 x 16 and 16 x 3 (96 MACs per sample and evaluation);
    every stage of every Newton iteration and every nudged state of the forward-difference
    Jacobian is one evaluation (nfe_per_forward counts both), the known matrix and the Newton
    algebra are MatMuls."""
    from odespec.export.calibrate import nfe_per_forward

    model, g, s = _graph(SPECS[0].parent / "stiff_chain.yaml", newton_iters=iters)
    c = count_macs(g)
    assert c.exact and c.by_op["Gemm"].macs == 96 * nfe_per_forward(model, s.method, s.steps, iters)
    assert c.by_op["MatMul"].macs > 0 and c.macs == sum(op.macs for op in c.by_op.values())
