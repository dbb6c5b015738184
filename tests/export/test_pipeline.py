"""The export pipeline: ExportOptions, export_model and its steps, and the api facade over them."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import odespec
from odespec.api import build_all
from odespec.errors import BuildError, ExportError
from odespec.export.calibrate import Calibration, Candidate
from odespec.export.pipeline import ExportOptions, accuracy_inputs, export_metadata, export_model, resolve_settings
from odespec.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "specs" / "ode_demo.yaml"


@pytest.fixture(scope="module")
def demo():
    return odespec.build(DEMO)


def test_options_refuse_what_cannot_be_meant():
    with pytest.raises(ExportError, match="steps must be a positive integer or 'auto', got 'many'"):
        ExportOptions(steps="many")
    with pytest.raises(ExportError, match="match_tol is for steps='auto'"):
        ExportOptions(steps=4, match_tol=1e-3)
    ExportOptions(steps="auto", match_tol=1e-3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ExportOptions().steps = 3  # type: ignore[misc]


def test_options_say_when_they_calibrate(demo):
    spec = demo.spec
    auto = parse_spec(re.sub(r"onnx: \{.*\}", "onnx: {steps: auto}", DEMO.read_text()))
    assert not ExportOptions().calibrates(spec) and ExportOptions().calibrates(auto)
    assert ExportOptions(steps="auto").calibrates(spec)
    assert ExportOptions(match_tol=1e-3).calibrates(spec)
    assert not ExportOptions(steps=4).calibrates(auto)  # a given count wins over the spec's auto


def test_resolve_settings(demo):
    s = resolve_settings(demo.spec, ExportOptions(method="midpoint", steps=3, opset=18, loop=True), auto=False)
    assert (s.method, s.steps, s.opset, s.loop, s.dynamic_batch) == ("midpoint", 3, 18, True, True)
    s = resolve_settings(demo.spec, ExportOptions(), auto=False)
    assert (s.method, s.steps, s.opset, s.loop) == ("rk4", 64, 17, False)  # the spec's export.onnx
    with pytest.raises(BuildError, match="'dopri5' is adaptive; an exported graph is fixed-step"):
        resolve_settings(demo.spec, ExportOptions(method="dopri5", steps=3), auto=False)
    with pytest.raises(BuildError, match="adaptive"):
        resolve_settings(demo.spec, ExportOptions(method="dopri5"), auto=True)  # a searched method must be fixed


def test_accuracy_inputs(tmp_path: Path, demo):
    assert accuracy_inputs(demo, ExportOptions()).description.startswith("seeded random (seed 0)")
    np.save(tmp_path / "c.npy", np.zeros((5, 2), np.float32))
    assert accuracy_inputs(demo, ExportOptions(calibration_data=tmp_path / "c.npy")).description == "c.npy (5 samples)"


def test_export_metadata():
    assert export_metadata(None, None) == {"export_steps_source": "given"}
    chosen = Candidate("rk4", 3, 60, 1e-6, True, "chosen")
    cal = Calibration(chosen=chosen, candidates=[chosen, Candidate("euler", 9, 45, 1e-2, False)], evaluations=[],
                      match_tol=1e-5, inputs="x", reference=["dopri5"], max_steps=8, latency="l")
    dep = {"reference": ["r"], "inputs": "x", "samples": 3, "max_abs_error": 1.0, "max_scaled_error": 0.5,
           "seconds": 0.1}
    meta = export_metadata(cal, dep)
    assert meta["export_steps_source"] == "calibrated"
    assert meta["calibration"] == ('{"match_tol": 1e-05, "error": 1e-06, "nfe": 60, "methods": ["rk4", "euler"], '
                                   '"inputs": "x", "grid": "uniform"}')
    assert meta["deployment_error"] == ('{"reference": ["r"], "inputs": "x", "max_abs_error": 1.0, '
                                        '"max_scaled_error": 0.5}')


def test_export_onnx_is_a_facade_over_export_model(tmp_path: Path, demo):
    a = odespec.export_onnx(demo, tmp_path / "a.onnx", method="midpoint", steps=3, loop=True, parity_tol=1e-4)
    b = export_model(demo, tmp_path / "b.onnx", ExportOptions(method="midpoint", steps=3, loop=True, parity_tol=1e-4))
    assert a.path.read_bytes() == b.path.read_bytes()
    ra, rb = a.to_dict(), b.to_dict()
    for r in (ra, rb):
        del r["file"], r["export_seconds"], r["deployment_error"]["seconds"]
        for runtime in r["runtimes"]:
            del runtime["latency_ms"]  # measured: differs between two runs
    assert ra == rb and ra["parity"]["tolerance"] == 1e-4 and ra["layout"] == "loop"


def test_options_switch_the_checks_off(tmp_path: Path, demo):
    r = export_model(demo, tmp_path / "o.onnx", ExportOptions(steps=2, parity=False, deployment=False))
    assert r.parity is None and r.deployment_error is None and r.path.is_file()


def test_build_all_takes_options_or_the_shorthands_not_both(tmp_path: Path):
    r = build_all(DEMO, tmp_path / "o", options=ExportOptions(steps=2, loop=True))
    assert r.report["onnx"]["steps"] == 2 and r.report["onnx"]["layout"] == "loop"
    with pytest.raises(BuildError, match="build_all got options and also steps, loop"):
        build_all(DEMO, tmp_path / "x", steps=2, loop=True, options=ExportOptions())
    assert not (tmp_path / "x").exists()


def test_importing_the_api_loads_neither_onnx_nor_onnxruntime():
    code = "import sys, odespec.api; print(sorted(m for m in ('onnx', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_training_solver_that_fails_on_the_inputs_skips_the_deployment_error(tmp_path: Path):
    from odespec.report import render_build

    text = DEMO.read_text().replace("solver: {method: dopri5, rtol: 1e-7, atol: 1e-9}",
                                    "solver: {method: dopri5, rtol: 1e-7, atol: 1e-9, max_num_steps: 2}")
    (tmp_path / "s.yaml").write_text(text)
    r = build_all(tmp_path / "s.yaml", tmp_path / "o", steps=2)
    dep = r.report["onnx"]["deployment_error"]
    assert set(dep) == {"reference", "inputs", "skipped"} and "max_num_steps=2" in dep["skipped"]
    lines = render_build(r.report, r.export.path, r.report_path).split("\n")
    assert lines[-2] == f"deployment: error against the training solver not measured: {dep['skipped']}"


@pytest.mark.parametrize("module", [torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Tanh())],
                         ids=["Linear", "Sequential"])
def test_export_onnx_of_a_module_that_is_not_an_odespec_model_says_what_it_accepts(tmp_path: Path, module):
    # it failed with a raw AttributeError deep inside the export
    with pytest.raises(ExportError) as e:
        odespec.export_onnx(module, tmp_path / "m.onnx")
    assert isinstance(e.value, odespec.OdespecError)
    text = str(e.value)
    assert "odespec model" in text and "odespec.build" in text and type(module).__name__ in text
    assert "torch.onnx.export" in text and not (tmp_path / "m.onnx").exists()
