"""ONNX export: checker, parity, metadata, shared weights, dynamic batch, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import odespec
from odespec.errors import ParityError
from odespec.export.onnx_export import ExportSettings, build_onnx, check_onnx
from odespec.export.parity import ort_session
from odespec.export.unroll import fixed_step_model
from odespec.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "specs" / "ode_demo.yaml"


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    (y,) = ort_session(path.read_bytes()).run(None, {"input": x})
    return y


def test_ode_demo_export_is_checked_and_matches_pytorch(tmp_path: Path):
    model = odespec.build(DEMO)
    res = odespec.export_onnx(model, tmp_path / "demo.onnx", method="rk4", steps=16)
    assert res.parity["max_abs_error"] <= 1e-5
    assert res.parity["batch_sizes"] == [1, 7, 256]
    m = onnx.load(str(res.path))
    onnx.checker.check_model(m, full_check=True)
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["spec_name"] == "ode_demo" and meta["export_method"] == "rk4" and meta["export_steps"] == "16"
    assert len(meta["spec_sha256"]) == 64
    # dynamic batch: any batch size runs and matches the PyTorch fixed-step twin
    twin = fixed_step_model(model, "rk4", 16)
    for b in (1, 3, 50):
        x = torch.randn(b, 2)
        with torch.no_grad():
            want = twin(x).numpy()
        np.testing.assert_allclose(_run(res.path, x.numpy()), want, atol=1e-5, rtol=1e-5)


def test_each_weight_is_stored_once_however_many_steps(tmp_path: Path):
    model = odespec.build(DEMO)
    sizes = {}
    for steps in (4, 32):
        m = build_onnx(model, ExportSettings(method="rk4", steps=steps))
        weight_values = sum(int(np.prod(t.dims)) for t in m.graph.initializer if t.name.endswith((".weight", ".bias")))
        assert weight_values == 252
        sizes[steps] = len(m.SerializeToString())
    assert sizes[32] < 10 * sizes[4]


def test_the_graph_holds_no_machine_paths(tmp_path: Path):
    model = odespec.build(DEMO)
    data = odespec.export_onnx(model, tmp_path / "d.onnx", steps=4).path.read_bytes()
    for needle in (str(ROOT).encode(), b"/home/", b"/tmp/", b".py"):
        assert needle not in data


def test_every_fixed_method_exports_with_parity(tmp_path: Path):
    from odespec.solvers.tableaus import is_adaptive, spec_method_names

    model = odespec.build(DEMO, dtype="float64")
    for method in [m for m in spec_method_names() if not is_adaptive(m)]:
        res = odespec.export_onnx(model, tmp_path / f"{method}.onnx", method=method, steps=3, parity_tol=1e-12)
        assert res.parity["max_abs_error"] <= 1e-12, method


def test_backward_time_and_several_blocks(tmp_path: Path):
    spec = parse_spec(
        """
odespec: 1
name: two-blocks
input: {shape: [3]}
model:
  - linear: 4
  - ode:
      t: [1, 0]
      dynamics: {time: concat, layers: [{linear: 8}, tanh, {linear: 4}]}
      solver: {method: dopri5, rtol: 1e-5, atol: 1e-6}
  - relu
  - ode:
      t: [0, 0.5, 1]
      output: trajectory
      dynamics: {layers: [{linear: 4}]}
      solver: {method: rk4, steps: 3}
  - linear: 2
"""
    )
    model = odespec.build(spec)
    res = odespec.export_onnx(model, tmp_path / "two.onnx", method="midpoint", steps=5)
    assert res.parity["max_abs_error"] <= 1e-5
    assert _run(res.path, np.zeros((2, 3), np.float32)).shape == (2, 3, 2)
    check_onnx(onnx.load(str(res.path)))


@pytest.mark.parametrize("output", ["last", "sequence"])
def test_rnn_encoder_exports_as_one_onnx_rnn_and_matches_the_loop(tmp_path: Path, output: str):
    # PyTorch runs the rnn layer as a written-out loop on the CPU (issue #6); the export traces
    # torch.nn.RNN with the same weights, so the graph holds one RNN node, not 20 unrolled steps
    spec = parse_spec(
        f"""
odespec: 1
name: rnn-encoder
input: {{shape: [20, 2]}}
model:
  - rnn: {{hidden: 7, reverse: true, output: {output}}}
  - {"flatten" if output == "sequence" else "linear: 7"}
  - linear: 4
  - ode:
      t: [0, 0.5, 1]
      dynamics: {{layers: [{{linear: 8}}, tanh, {{linear: 4}}]}}
      solver: {{method: rk4, steps: 2}}
"""
    )
    model = odespec.build(spec)
    res = odespec.export_onnx(model, tmp_path / "rnn.onnx", method="rk4", steps=2)
    assert res.parity["max_abs_error"] <= 1e-5
    m = onnx.load(str(res.path))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("RNN") == 1 and "Tanh" not in ops[:ops.index("RNN")]
    x = torch.randn(5, 20, 2)
    with torch.no_grad():
        want = model.eval()(x).numpy()
    np.testing.assert_allclose(_run(res.path, x.numpy()), want, atol=1e-5, rtol=1e-5)


def test_parity_failure_writes_nothing(tmp_path: Path):
    model = odespec.build(DEMO)
    with pytest.raises(ParityError, match="differs from PyTorch"):
        odespec.export_onnx(model, tmp_path / "x.onnx", steps=64, parity_tol=1e-30)
    assert list(tmp_path.iterdir()) == []
