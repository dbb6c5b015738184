"""The ``loop`` export layout: one ONNX Loop per output interval, equal to the unrolled graph
and to the PyTorch fixed-step twin, weights stored once, file size independent of the steps."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import odespec
from odespec.export.onnx_export import ExportSettings, build_onnx, check_onnx
from odespec.export.parity import ort_session
from odespec.export.unroll import fixed_step_model
from odespec.spec import parse_spec
from odespec.solvers.tableaus import get_tableau, is_adaptive, spec_method_names

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "specs" / "ode_demo.yaml"
MNIST = ROOT / "specs" / "mnist_small_odenet.yaml"
# the methods a loop export takes (an implicit method's Newton iterations are unrolled only)
FIXED = [m for m in spec_method_names() if not is_adaptive(m) and not get_tableau(m).implicit]

BACKWARD = """
odespec: 1
name: backward
input: {shape: [3]}
model:
  - linear: 4
  - ode:
      t: [1, 0.25, 0]
      output: trajectory
      dynamics: {time: concat, layers: [{linear: 8}, tanh, {linear: 4}]}
      solver: {method: rk4, steps: 2}
  - flatten
  - linear: 2
"""


def _ort(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    (y,) = ort_session(m.SerializeToString()).run(None, {"input": x})
    return y


def _both(model, x: np.ndarray, **kw) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """The loop model, and the unrolled and loop outputs on ``x``."""
    unrolled = build_onnx(model, ExportSettings(loop=False, **kw))
    looped = build_onnx(model, ExportSettings(loop=True, **kw))
    check_onnx(looped)
    onnx.checker.check_model(looped, full_check=True)
    return looped, _ort(unrolled, x), _ort(looped, x)


def _loops(m: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in m.graph.node if n.op_type == "Loop"]


def test_ode_demo_trajectory_one_loop_per_interval_equals_unrolled():
    model = odespec.build(DEMO)
    x = np.random.default_rng(0).standard_normal((7, 2)).astype(np.float32)
    looped, want, got = _both(model, x, method="rk4", steps=16)
    assert got.shape == (7, 6, 2)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)
    loops = _loops(looped)
    assert len(loops) == 5  # one per output interval
    trip = {i.name: onnx.numpy_helper.to_array(i) for i in looped.graph.initializer}
    assert [int(trip[n.input[0]]) for n in loops] == [16] * 5
    body = loops[0].attribute[0].g
    ops = Counter(n.op_type for n in body.node)
    assert ops["Tanh"] == 4 and ops["Gemm"] == 8  # rk4: the dynamics spliced once per stage
    assert not body.initializer  # weights and constants live in the outer graph
    meta = {p.key: p.value for p in looped.metadata_props}
    assert meta["export_layout"] == "loop"
    unrolled_meta = {p.key: p.value for p in build_onnx(model, ExportSettings(steps=2)).metadata_props}
    assert unrolled_meta["export_layout"] == "unrolled"


def test_loop_matches_the_pytorch_twin_through_export_onnx(tmp_path: Path):
    model = odespec.build(DEMO)
    res = odespec.export_onnx(model, tmp_path / "d.onnx", method="rk4", steps=32, loop=True)
    assert res.parity["max_abs_error"] <= 1e-5
    twin = fixed_step_model(model, "rk4", 32)
    x = torch.randn(50, 2)
    with torch.no_grad():
        want = twin(x).numpy()
    (got,) = ort_session(res.path.read_bytes()).run(None, {"input": x.numpy()})
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_file_size_does_not_grow_with_steps_and_weights_are_stored_once():
    model = odespec.build(DEMO)
    sizes = {}
    for steps in (8, 64, 256):
        m = build_onnx(model, ExportSettings(method="rk4", steps=steps, loop=True))
        weights = sum(int(np.prod(t.dims)) for t in m.graph.initializer if t.name.endswith((".weight", ".bias")))
        assert weights == 252
        sizes[steps] = len(m.SerializeToString())
    # only the metadata's step count ("8" vs "256") differs
    assert max(sizes.values()) - min(sizes.values()) <= 8, sizes
    assert sizes[8] < len(build_onnx(model, ExportSettings(method="rk4", steps=8)).SerializeToString())


def test_time_concat_conv_dynamics_mnist():
    model = odespec.build(MNIST)
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    looped, want, got = _both(model, x, method="rk4", steps=4)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)
    assert len(_loops(looped)) == 1
    twin = fixed_step_model(model, "rk4", 4).eval()
    with torch.no_grad():
        np.testing.assert_allclose(got, twin(torch.from_numpy(x)).numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("method", FIXED)
def test_every_fixed_method_and_dtype(method: str, dtype: str):
    model = odespec.build(DEMO, dtype=dtype)
    np_dtype = np.float32 if dtype == "float32" else np.float64
    x = np.random.default_rng(2).standard_normal((5, 2)).astype(np_dtype)
    _, want, got = _both(model, x, method=method, steps=3)
    assert got.dtype == np_dtype
    np.testing.assert_allclose(got, want, atol=1e-6 if dtype == "float32" else 1e-12, rtol=1e-6)
    twin = fixed_step_model(model, method, 3)
    with torch.no_grad():
        ref = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5 if dtype == "float32" else 1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_backward_time_span_with_time_concat(dtype: str):
    model = odespec.build(parse_spec(BACKWARD), dtype=dtype)
    np_dtype = np.float32 if dtype == "float32" else np.float64
    x = np.random.default_rng(3).standard_normal((4, 3)).astype(np_dtype)
    looped, want, got = _both(model, x, method="midpoint", steps=5)
    np.testing.assert_allclose(got, want, atol=1e-6 if dtype == "float32" else 1e-12, rtol=1e-6)
    twin = fixed_step_model(model, "midpoint", 5)
    with torch.no_grad():
        np.testing.assert_allclose(got, twin(torch.from_numpy(x)).numpy(), atol=1e-5 if dtype == "float32" else 1e-12)
    # the stage times step down from t0: the step size constant is negative
    assert len(_loops(looped)) == 2


def test_fsal_tableau_carries_the_last_stage():
    """No fixed-step method is FSAL today; bosh3's tableau exercises the carried k1 anyway
    (build_onnx itself does not refuse adaptive tableaus; it takes fixed steps without error
    estimates)."""
    model = odespec.build(parse_spec(BACKWARD), dtype="float64")
    x = np.random.default_rng(4).standard_normal((4, 3))
    looped, want, got = _both(model, x, method="bosh3", steps=3)
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert len(_loops(looped)[0].output) == 3  # t, y and the carried stage


def test_static_batch_and_spec_option(tmp_path: Path):
    text, n = re.subn(r"onnx: \{.*\}", "onnx: {method: euler, steps: 4, loop: true, dynamic_batch: false}",
                      DEMO.read_text())
    assert n == 1
    spec = parse_spec(text)
    assert spec.export.loop is True
    model = odespec.build(spec)
    # parity=False: export_onnx's parity check feeds batches of 7 and 256, which a static batch refuses
    res = odespec.export_onnx(model, tmp_path / "s.onnx", parity=False)  # loop from the spec
    m = onnx.load(str(res.path))
    assert {p.key: p.value for p in m.metadata_props}["export_layout"] == "loop"
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    x = torch.randn(1, 2)
    with torch.no_grad():
        np.testing.assert_allclose(_ort(m, x.numpy()), fixed_step_model(model, "euler", 4)(x).numpy(), atol=1e-5)
    res = odespec.export_onnx(model, tmp_path / "u.onnx", loop=False, parity=False)  # the argument wins
    assert not _loops(onnx.load(str(res.path)))


def test_build_all_loop(tmp_path: Path):
    result = odespec.api.build_all(DEMO, tmp_path, steps=4, loop=True)
    m = onnx.load(str(result.export.path))
    assert len(_loops(m)) == 5
    assert result.report["onnx"]["parity"]["max_abs_error"] <= 1e-5
