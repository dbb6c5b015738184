"""Accuracy of deployment (the export against the training solver) and step calibration
(``export.onnx.steps: auto``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import odespec
from odespec.errors import ExportError, SpecError
from odespec.export import calibrate as cal
from odespec.export.inputs import InputSet, seeded_input_set
from odespec.export.metrics import model_outputs, output_error, reference_outputs
from odespec.export.inputs import seeded_inputs
from odespec.export.parity import ort_session
from odespec.export.unroll import fixed_step_model
from odespec.report import render_accuracy
from odespec.spec import parse_spec
from odespec.spec.schema import CALIBRATION_METHODS

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "specs" / "ode_demo.yaml"


@pytest.fixture(scope="module")
def demo() -> odespec.api.ODENet:
    return odespec.build(DEMO)


@pytest.fixture(scope="module")
def demo_inputs(demo) -> InputSet:
    return seeded_input_set(demo.spec.input_shape, dtype=torch.float32, seed=demo.spec.seed)


@pytest.fixture(scope="module")
def demo_reference(demo, demo_inputs) -> list[np.ndarray]:
    return reference_outputs(demo, demo_inputs)


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _twin_error(model, method: str, steps: int, inputs, reference) -> float:
    return output_error(model_outputs(fixed_step_model(model, method, steps), inputs), reference).max_abs


# -- deployment error --------------------------------------------------------------------------------

def test_deployment_error_is_reported_and_matches_an_independent_computation(tmp_path: Path, demo):
    res = odespec.export_onnx(demo, tmp_path / "d.onnx", method="rk4", steps=8)
    dep = res.deployment_error
    assert dep["reference"] == ["dopri5 rtol=1e-07 atol=1e-09"]
    assert dep["samples"] == 264 and "seeded random (seed 0)" in dep["inputs"]
    # recompute: onnxruntime on the parity inputs against the model solved with dopri5
    sess = ort_session(res.path.read_bytes())
    worst, scale = 0.0, 0.0
    demo.eval()
    for x in seeded_inputs((2,), dtype=torch.float32, seed=0):
        with torch.no_grad():
            want = demo(x).double().numpy()
        (got,) = sess.run(None, {"input": x.numpy()})
        worst = max(worst, float(np.abs(got - want).max()))
        scale = max(scale, float(np.abs(want).max()))
    assert dep["max_abs_error"] == pytest.approx(worst, rel=1e-6, abs=1e-9)
    assert dep["max_scaled_error"] == pytest.approx(worst / scale, rel=1e-6)
    assert 0 < dep["max_abs_error"] < 1e-4
    assert json.loads(_meta(res.path)["deployment_error"])["max_abs_error"] == dep["max_abs_error"]
    assert res.to_dict()["deployment_error"] == dep


def test_deployment_error_is_sane_it_shrinks_with_steps_and_order(tmp_path: Path, demo):
    errors = {}
    for method, steps in (("euler", 1), ("euler", 4), ("rk4", 1), ("rk4", 2)):
        r = odespec.export_onnx(demo, tmp_path / f"{method}{steps}.onnx", method=method, steps=steps, parity=False)
        errors[method, steps] = r.deployment_error["max_abs_error"]
    assert errors["euler", 1] > errors["euler", 4] > errors["rk4", 1] > errors["rk4", 2]
    assert errors["euler", 1] > 0.1  # one Euler step per interval of a spiral is far off


def test_deployment_error_with_a_fixed_step_training_solver_is_rounding_only(tmp_path: Path):
    text = DEMO.read_text().replace("solver: {method: dopri5, rtol: 1e-7, atol: 1e-9}", "solver: {method: rk4, steps: 4}")
    model = odespec.build(parse_spec(text))
    r = odespec.export_onnx(model, tmp_path / "f.onnx", method="rk4", steps=4)
    assert r.deployment_error["reference"] == ["rk4 steps=4"]
    assert r.deployment_error["max_abs_error"] < 1e-5  # the same solve: float rounding only


def test_deployment_can_be_switched_off(tmp_path: Path, demo):
    r = odespec.export_onnx(demo, tmp_path / "x.onnx", steps=2, deployment=False)
    assert r.deployment_error is None and "deployment_error" not in _meta(r.path)


# -- calibration ---------------------------------------------------------------------------------------

def test_calibration_finds_the_known_answer_on_ode_demo(demo, demo_inputs, demo_reference):
    tol = 1e-5
    result = cal.calibrate(demo, demo_inputs, match_tol=tol, reference=demo_reference, latency=False)
    chosen = result.chosen
    assert chosen.passed and chosen.error <= tol and chosen.status == "chosen"
    assert (chosen.method, chosen.steps, chosen.nfe) == ("rk4", 3, 60)  # 3 steps x 4 stages x 5 intervals
    # the next cheaper rk4 candidate does not meet the tolerance
    assert _twin_error(demo, "rk4", chosen.steps - 1, demo_inputs, demo_reference) > tol
    assert chosen.error_one_fewer is not None and chosen.error_one_fewer > tol
    # brute force: no candidate of any method with fewer f-evaluations meets it
    for method in CALIBRATION_METHODS:
        n = 1
        while cal.nfe_per_forward(demo, method, n) < chosen.nfe:
            assert _twin_error(demo, method, n, demo_inputs, demo_reference) > tol, (method, n)
            n += 1
    # the error falls with the step count along the search (rk4's evaluations, in step order)
    rk4 = sorted((n, e) for m, n, e in result.evaluations if m == "rk4")
    assert [n for n, _ in rk4] == [1, 2, 3, 4]
    errs = [e for _, e in rk4]
    assert errs == sorted(errs, reverse=True)
    # one row per method; every searched one reports the cheapest passing steps or where it stopped
    assert sorted(c.method for c in result.candidates) == sorted(CALIBRATION_METHODS)
    assert all(c.error <= tol for c in result.candidates if c.passed)


def test_calibration_reaches_the_tolerance_with_bisection_to_the_smallest_count(demo, demo_inputs, demo_reference):
    tol = 1e-2
    result = cal.calibrate(demo, demo_inputs, match_tol=tol, methods=("euler",), reference=demo_reference,
                           latency=False)
    n = result.chosen.steps
    # euler's error ~ 0.19 / n here: doubling to 32, then bisection between 16 and 32
    assert _twin_error(demo, "euler", n, demo_inputs, demo_reference) <= tol
    assert _twin_error(demo, "euler", n - 1, demo_inputs, demo_reference) > tol
    assert 16 < n <= 32
    assert [s for _, s, _ in result.evaluations][:6] == [1, 2, 4, 8, 16, 32]


def test_spec_steps_auto_exports_the_calibrated_choice(tmp_path: Path):
    text = re.sub(r"onnx: \{.*\}", "onnx: {method: rk4, steps: auto, match_tol: 1e-5}", DEMO.read_text())
    spec = parse_spec(text)
    assert spec.export.auto and spec.export.calibration_methods == ("rk4",) and spec.export.match_tol == 1e-5
    model = odespec.build(spec)
    res = odespec.export_onnx(model, tmp_path / "a.onnx")
    assert (res.method, res.steps) == ("rk4", 3)
    c = res.calibration
    assert c["match_tol"] == 1e-5 and c["method"] == "rk4" and c["steps"] == 3 and c["error"] <= 1e-5
    # a written method is the only one searched, on uniform and optimised grids
    assert {r["method"] for r in c["candidates"]} == {"rk4"}
    assert [r["grid"] for r in c["candidates"]][0] == "uniform"
    assert c["candidates"][0]["latency_ms"] > 0
    meta = _meta(res.path)
    assert meta["export_method"] == "rk4" and meta["export_steps"] == "3"
    assert meta["export_steps_source"] == "calibrated"
    assert json.loads(meta["calibration"])["match_tol"] == 1e-5
    assert res.deployment_error["max_abs_error"] <= 1e-5 + res.parity["max_abs_error"]
    # steps given explicitly win over the spec's auto
    assert odespec.export_onnx(model, tmp_path / "b.onnx", steps=2).calibration is None


def test_spec_steps_auto_without_method_searches_every_fixed_method():
    text = re.sub(r"onnx: \{.*\}", "onnx: {steps: auto}", DEMO.read_text())
    spec = parse_spec(text)
    # no match_tol written: calibration derives it from the training solver (None here)
    assert spec.export.calibration_methods == CALIBRATION_METHODS and spec.export.match_tol is None


def test_match_tol_without_steps_auto_is_a_spec_error():
    text = re.sub(r"onnx: \{.*\}", "onnx: {steps: 8, match_tol: 1e-3}", DEMO.read_text())
    with pytest.raises(SpecError) as e:
        parse_spec(text)
    (issue,) = e.value.issues
    assert issue.path == "export.onnx.match_tol" and "steps: auto" in issue.message
    for bad, words in (("fast", "expected 'auto', got 'fast'"), ("2.5", "expected an integer")):
        with pytest.raises(SpecError, match=words):
            parse_spec(re.sub(r"onnx: \{.*\}", f"onnx: {{steps: {bad}}}", DEMO.read_text()))


def test_api_argument_rules(tmp_path: Path, demo):
    with pytest.raises(ExportError, match="match_tol is for steps='auto'"):
        odespec.export_onnx(demo, tmp_path / "x.onnx", steps=4, match_tol=1e-3)
    with pytest.raises(ExportError, match="'auto'"):
        odespec.export_onnx(demo, tmp_path / "x.onnx", steps="many")
    # match_tol alone calibrates; method alone restricts the search
    r = odespec.export_onnx(demo, tmp_path / "m.onnx", method="midpoint", match_tol=1e-3, latency=False)
    assert r.method == "midpoint" and {c["method"] for c in r.calibration["candidates"]} == {"midpoint"}
    assert r.calibration["error"] <= 1e-3
    assert list(tmp_path.iterdir()) == [tmp_path / "m.onnx"]


def test_calibration_failure_is_a_clear_export_error_and_writes_nothing(tmp_path: Path, demo):
    # dopri5 at rtol 1e-7 is itself ~4e-6 from the exact solution here: nothing gets within 1e-8
    with pytest.raises(ExportError, match=r"calibration failed.*levels off") as e:
        odespec.export_onnx(demo, tmp_path / "x.onnx", steps="auto", match_tol=1e-8)
    assert "raise match_tol" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_calibration_respects_max_steps(demo, demo_inputs, demo_reference):
    with pytest.raises(ExportError, match="at most 8 steps per output interval"):
        cal.calibrate(demo, demo_inputs, match_tol=1e-3, methods=("euler",), max_steps=8,
                      reference=demo_reference, latency=False)


def test_calibration_data_file(tmp_path: Path, demo):
    x = np.random.default_rng(5).standard_normal((40, 2)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x)
    r = odespec.export_onnx(demo, tmp_path / "c.onnx", match_tol=1e-4, calibration_data=tmp_path / "calib.npy",
                            latency=False, grid="uniform")
    assert r.calibration["inputs"] == "calib.npy (40 samples)"
    assert r.deployment_error["inputs"] == "calib.npy (40 samples)" and r.deployment_error["samples"] == 40
    inputs = InputSet((torch.from_numpy(x),), "x")
    assert r.calibration["error"] == pytest.approx(
        _twin_error(demo, r.method, r.steps, inputs, reference_outputs(demo, inputs)))
    assert str(tmp_path).encode() not in r.path.read_bytes()  # only the file's name is recorded


def test_model_without_continuous_blocks_calibrates_trivially(tmp_path: Path):
    spec = parse_spec("""
odespec: 1
name: resnet-only
input: {shape: [3]}
model:
  - ode:
      family: resnet
      dynamics: {layers: [{linear: 3}]}
      solver: {method: euler, steps: 2}
  - linear: 2
export:
  onnx: {steps: auto}
""")
    r = odespec.export_onnx(odespec.build(spec), tmp_path / "r.onnx", latency=False)
    assert r.steps == 1 and r.calibration["error"] < 1e-5 and r.nfe_per_forward == 2


def test_render_accuracy_shows_the_table_and_the_deployment_line(tmp_path: Path, demo):
    r = odespec.export_onnx(demo, tmp_path / "a.onnx", steps="auto", match_tol=1e-5)
    text = "\n".join(render_accuracy(r.to_dict()))
    assert "calibration: steps chosen within match_tol 1e-05" in text
    assert re.search(r"rk4\s+uniform\s+3\s+60\s+\S+\s+-\s+\S+\s+[0-9.]+ ms\s+chosen", text), text
    assert "deployment: onnxruntime vs training solver (dopri5 rtol=1e-07 atol=1e-09): max abs error" in text
