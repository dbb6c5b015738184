"""The export asks each layer's type for the form it is traced in (``LayerType.export_form``) and
knows no layer's torch implementation."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import odespec
from odespec.export.onnx_export import ExportSettings, build_onnx
from odespec.export.parity import ort_session
from odespec.export.unroll import fixed_step_model
from odespec.layers import registry
from odespec.spec import parse_spec
from odespec.spec.model import LayerSpec

EXPORT = Path(odespec.__file__).parent / "export"
#: the torch.nn classes the export builds its own pieces from; it names no layer class
CONTAINERS = {"Module", "Sequential", "ModuleList"}

SPEC = """
odespec: 1
name: forms
input: {shape: [1, 6, 6]}
model:
  - conv2d: {channels: 4, kernel: 3, padding: 1}
  - groupnorm: 2
  - tanh
  - ode:
      t: [0, 1]
      augment: 2
      solver: {method: rk4, steps: 2}
      dynamics:
        time: concat
        layers:
          - groupnorm: 3
          - conv2d: {channels: 5, kernel: 3, padding: 1}
          - tanh
          - conv2d: {channels: 6, kernel: 3, padding: 1, groups: 2}
  - avgpool: global
  - flatten
  - linear: 3
"""


def _ops(m: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in m.graph.node}


def _nn_attributes(tree: ast.AST) -> set[str]:
    """Attributes read from ``nn`` or ``torch.nn`` (``nn.Linear``, ``torch.nn.GroupNorm``)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            base = node.value
            if (isinstance(base, ast.Name) and base.id == "nn") or (
                    isinstance(base, ast.Attribute) and base.attr == "nn" and isinstance(base.value, ast.Name)
                    and base.value.id == "torch"):
                out.add(node.attr)
    return out


@pytest.mark.parametrize("path", sorted(EXPORT.glob("*.py")), ids=lambda p: p.name)
def test_export_names_no_torch_layer_class_and_no_layer_module(path: Path):
    tree = ast.parse(path.read_text())
    assert _nn_attributes(tree) <= CONTAINERS, path.name
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert not node.module.startswith(("odespec.layers.", "torch.nn")), (path.name, node.module)
            assert node.module != "odespec.layers" or all(a.name[0].isupper() for a in node.names)
            if node.module == "torch":
                assert {a.name for a in node.names} <= {"nn", "Tensor"}, path.name


def test_the_export_asks_every_layer_type_for_its_form(monkeypatch):
    asked: list[tuple[str, bool]] = []
    for ltype in registry.all_types():
        original = type(ltype).export_form

        def record(self, module, options, shape, ctx, export, _original=original):
            asked.append((self.name, ctx.in_dynamics))
            return _original(self, module, options, shape, ctx, export)

        monkeypatch.setattr(type(ltype), "export_form", record)
    model = odespec.build(parse_spec(SPEC))
    build_onnx(model, ExportSettings(method="rk4", steps=2))
    top = [(item.kind, False) for item in model.spec.model if isinstance(item, LayerSpec)]
    dyn = [(layer.kind, True) for layer in model.spec.model[3].dynamics.layers]
    assert sorted(asked) == sorted(top + dyn)


class _TanhAsSigmoid(nn.Module):
    """tanh(x) = 2 sigmoid(2x) - 1: a form the exporter could not have chosen itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * torch.sigmoid(2 * x) - 1


def test_a_layer_types_declared_form_is_what_the_graph_holds(monkeypatch):
    model = odespec.build(parse_spec(SPEC))
    settings = ExportSettings(method="rk4", steps=2)
    before = build_onnx(model, settings)
    assert "Tanh" in _ops(before) and "Sigmoid" not in _ops(before)
    monkeypatch.setattr(type(registry.get("tanh")), "export_form",
                        lambda self, module, options, shape, ctx, export: _TanhAsSigmoid())
    after = build_onnx(model, settings)
    assert "Tanh" not in _ops(after) and "Sigmoid" in _ops(after)
    x = torch.randn(3, 1, 6, 6)
    with torch.no_grad():
        want = fixed_step_model(model, "rk4", 2)(x).numpy()
    for m in (before, after):
        (got,) = ort_session(m.SerializeToString()).run(None, {"input": x.numpy()})
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


SPLIT = """
odespec: 1
name: split
input: {shape: [2, 5, 5]}
model:
  - groupnorm: 2
  - ode:
      t: [0, 1]
      solver: {method: rk4, steps: 2}
      dynamics:
        time: concat
        layers: [groupnorm: 1, conv2d: {channels: 3, padding: 1}, tanh, CONV, linear: 5]
  - flatten
"""


def test_the_built_in_forms_leave_no_time_concatenation_or_run_time_shape_in_the_graph():
    # the split time convolution and linear layer and the static group norm, as their layer types
    # declare them; a grouped convolution keeps its concatenation (its form is itself)
    settings = ExportSettings(method="rk4", steps=2)
    plain = SPLIT.replace("CONV", "conv2d: {channels: 2, padding: 1}")
    ops = _ops(build_onnx(odespec.build(parse_spec(plain)), settings))
    assert "Concat" not in ops and "Shape" not in ops
    grouped = SPLIT.replace("CONV", "conv2d: {channels: 2, padding: 1, groups: 2}")
    assert "Concat" in _ops(build_onnx(odespec.build(parse_spec(grouped)), settings))
