"""Optimised (non-uniform) calibrated grids: the twin and the ONNX graph compute one function,
the search finds a cheaper grid where one exists, the held-out half guards against overfitting,
and the choice is recorded in the report and the metadata."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

import odespec
from odespec.cli import cli
from odespec.errors import ExportError, SpecError
from odespec.export import grids as G
from odespec.export.calibrate import calibrate
from odespec.export.inputs import InputSet, seeded_input_set
from odespec.export.metrics import reference_outputs
from odespec.export.onnx_export import ExportSettings, build_onnx, check_onnx
from odespec.export.pipeline import ExportOptions
from odespec.report import render_accuracy
from odespec.solvers.grid import StepGrid
from odespec.spec import parse_spec

# y' = -y**3 (the linear layer's weights are set to -I below): fast while |y| is large, slow
# later, so the adaptive solver's steps grow and a uniform grid wastes its early steps' worth
CUBIC = """
odespec: 1
name: cubic
seed: 0
input: {shape: [2]}
model:
  - ode:
      t: [0, 1]
      dynamics:
        layers: [{power: 3}, {linear: 2}]
      solver: {method: dopri5, rtol: 1e-6, atol: 1e-8}
export:
  onnx: {EXPORT}
"""


def _cubic(export: str = "{method: rk4, steps: 8}") -> odespec.api.ODENet:
    model = odespec.build(parse_spec(CUBIC.replace("{EXPORT}", export)))
    lin = model.ode_blocks[0].dynamics.layers[1]
    with torch.no_grad():
        lin.weight.copy_(-torch.eye(2))
        lin.bias.zero_()
    return model


@pytest.fixture(scope="module")
def cubic() -> odespec.api.ODENet:
    return _cubic()


TRAJECTORY = """
odespec: 1
name: traj
seed: 3
input: {shape: [3]}
model:
  - ode:
      t: [0, 0.3, 0.5, 1.0, 1.5]
      output: trajectory
      dynamics:
        time: concat
        layers: [{linear: 8}, tanh, {linear: 3}]
      solver: {method: dopri5, rtol: 1e-5, atol: 1e-7}
  - flatten
  - linear: 2
"""


@pytest.mark.parametrize("method", ["rk4", "dopri5", "midpoint"])
def test_twin_and_onnx_compute_the_same_function_on_a_non_uniform_grid(method):
    model = odespec.build(parse_spec(TRAJECTORY)).eval()
    # outputs inside steps (0.3, 0.5 in the first; 1.0 inside the last step) and one on a point
    grid = StepGrid((0.0, 0.55, 0.8, 1.5))
    graph = build_onnx(model, ExportSettings(method=method, grids=(grid,)))
    check_onnx(graph)
    meta = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(meta["export_grid"]) == {"kind": "optimised", "points": [[0.0, 0.55, 0.8, 1.5]]}
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = G.grid_model(model, method, (grid,))(x).numpy()
    got = sess.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # the grid is not uniform: the twin differs from every uniform solve here
    with torch.no_grad():
        uniform = G.grid_model(model, method, (StepGrid.uniform(model.ode_blocks[0].spec.t, 1),))(x).numpy()
    assert np.abs(uniform - want).max() > 10 * max(np.abs(got - want).max(), 1e-7)


def test_a_grid_is_not_laid_into_loops():
    model = odespec.build(parse_spec(TRAJECTORY))
    with pytest.raises(ExportError, match="exported unrolled"):
        build_onnx(model, ExportSettings(grids=(StepGrid((0.0, 0.7, 1.5)),), loop=True))


def test_the_search_finds_a_cheaper_grid_than_uniform(cubic):
    inputs = seeded_input_set((2,), dtype=torch.float32, seed=0)
    c = calibrate(cubic, inputs, match_tol=1e-3, latency=False, grid="optimised")
    uniform = [r for r in c.candidates if r.grid == "uniform" and r.passed]
    assert uniform and c.chosen.grid == "optimised" and c.chosen.passed
    assert c.chosen.nfe < min(r.nfe for r in uniform)
    assert c.chosen.fit_error <= 1e-3 and c.chosen.heldout_error <= 1e-3 and c.chosen.error <= 1e-3
    (grid,) = c.chosen.grids
    widths = np.diff(grid.points)
    assert widths[0] < widths[-1]  # steps grow as the dynamics slow down
    # the recorded error is the twin's on every calibration input
    twin = G.grid_model(cubic, c.chosen.method, c.chosen.grids)
    want = reference_outputs(cubic, inputs)
    assert c.chosen.error == pytest.approx(G.evaluate_grids(cubic, c.chosen.method, c.chosen.grids, inputs, want,
                                                            c.match), rel=1e-9)
    assert twin is not None
    # grid: uniform searches uniform grids only
    u = calibrate(cubic, inputs, match_tol=1e-3, latency=False, grid="uniform")
    assert {r.grid for r in u.candidates} == {"uniform"}


def test_the_held_out_half_rejects_a_grid_that_overfits(cubic):
    # every other sample is small (slow, easy dynamics), the rest large: a grid fitted on the
    # small half passes there and fails on the held-out large half
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 2, generator=g)
    x[0::2] *= 0.05
    x[1::2] *= 2.0
    inputs = InputSet((x,), "interleaved")
    tol = 1e-3
    c = calibrate(cubic, inputs, match_tol=tol, latency=False, grid="optimised")
    overfit = [r for r in c.candidates if r.grid == "optimised" and r.fit_error is not None
               and r.fit_error <= tol < r.heldout_error]
    assert overfit, [(r.method, r.grid, r.fit_error, r.heldout_error, r.status) for r in c.candidates]
    assert all(not r.passed and "held-out" in r.status for r in overfit)
    assert c.chosen.heldout_error is None or c.chosen.heldout_error <= tol
    assert c.chosen.error <= tol


def test_export_records_the_grid_in_report_and_metadata(tmp_path: Path):
    model = _cubic("{steps: auto, match_tol: 1e-3, grid: optimised}")
    res = odespec.export_onnx(model, tmp_path / "g.onnx", latency=False)
    cal = res.calibration
    assert cal["grid"] == "optimised" and cal["heldout_error"] <= 1e-3
    (points,) = cal["points"]
    assert points[0] == 0.0 and points[-1] == 1.0 and len(points) == cal["steps"] + 1
    rows = cal["candidates"]
    assert {r["grid"] for r in rows} == {"uniform", "optimised"}
    chosen = next(r for r in rows if r["status"] == "chosen")
    assert chosen["grid"] == "optimised" and chosen["points"] == [points] and chosen["heldout_error"] <= 1e-3
    assert res.nfe_per_forward == cal["nfe"] == StepGrid(tuple(points)).nfe([0.0, 1.0], _tableau(cal["method"]))
    assert res.parity["max_abs_error"] <= res.parity["tolerance"]
    meta = {p.key: p.value for p in onnx.load(res.path).metadata_props}
    assert json.loads(meta["export_grid"]) == {"kind": "optimised", "points": [points]}
    assert json.loads(meta["calibration"])["grid"] == "optimised"
    assert meta["export_steps"] == str(cal["steps"])
    text = "\n".join(render_accuracy(res.to_dict()))
    assert re.search(r"optimised\s+\d+ in all", text) and "chosen grid's step points: 0, " in text


def test_optimised_candidates_are_timed_like_uniform_ones(tmp_path: Path):
    model = _cubic("{steps: auto, match_tol: 1e-3, grid: optimised}")
    res = odespec.export_onnx(model, tmp_path / "g.onnx")
    rows = res.calibration["candidates"]
    chosen = next(r for r in rows if r["status"] == "chosen")
    assert chosen["grid"] == "optimised" and chosen["latency_ms"] > 0
    timed = [r for r in rows if r["latency_ms"] is not None]
    assert {r["grid"] for r in timed} == {"uniform", "optimised"}


def _tableau(name: str):
    from odespec.solvers.tableaus import get_tableau

    return get_tableau(name)


@pytest.mark.parametrize(("export", "path", "words"), [
    ("{steps: 8, grid: optimised}", "export.onnx.grid", "is for steps: auto"),
    ("{steps: auto, grid: optimised, loop: true}", "export.onnx.grid", "exported unrolled"),
])
def test_spec_rules_for_grid(export, path, words):
    with pytest.raises(SpecError) as e:
        parse_spec(CUBIC.replace("{EXPORT}", export))
    (issue,) = e.value.issues
    assert issue.path == path and words in issue.message


def test_an_unknown_grid_is_a_spec_error():
    with pytest.raises(SpecError, match="optimised"):
        parse_spec(CUBIC.replace("{EXPORT}", "{steps: auto, grid: optimized}"))


def test_grid_defaults_to_auto_and_uniform_is_accepted():
    assert parse_spec(CUBIC.replace("{EXPORT}", "{steps: auto}")).export.grid == "auto"
    assert parse_spec(CUBIC.replace("{EXPORT}", "{steps: 4, grid: uniform}")).export.grid == "uniform"


def test_api_and_cli_rules_for_grid(tmp_path: Path):
    with pytest.raises(ExportError, match="unknown grid"):
        ExportOptions(grid="optimized")
    with pytest.raises(ExportError, match="grid 'optimised' is for steps='auto'"):
        ExportOptions(grid="optimised", steps=4)
    spec = tmp_path / "cubic.yaml"
    spec.write_text(CUBIC.replace("{EXPORT}", "{method: rk4, steps: 8}"))
    r = CliRunner().invoke(cli, ["build", str(spec), "-o", str(tmp_path), "--grid", "optimised", "--steps", "4"])
    assert r.exit_code == 2 and "--grid optimised" in r.output
    r = CliRunner().invoke(cli, ["build", str(spec), "-o", str(tmp_path), "--grid", "bogus"])
    assert r.exit_code == 2


RESNET = """
odespec: 1
name: res
seed: 0
input: {shape: [2]}
model:
  - ode:
      t: [0, 1]
      family: resnet
      dynamics:
        layers: [{linear: 4}, tanh, {linear: 2}]
      solver: {method: euler, steps: 2}
  - ode:
      t: [0, 1]
      dynamics:
        layers: [{linear: 4}, tanh, {linear: 2}]
      solver: {method: dopri5}
"""


def test_models_a_grid_does_not_apply_to_keep_uniform_grids(tmp_path: Path):
    model = odespec.build(parse_spec(RESNET))
    assert G.grid_eligibility(model)[1] is not None
    with pytest.raises(ExportError, match="grid: optimised does not apply to this model: the model has a ResNet"):
        odespec.export_onnx(model, tmp_path / "r.onnx", steps="auto", match_tol=1e-3, grid="optimised", latency=False)
    res = odespec.export_onnx(model, tmp_path / "r.onnx", steps="auto", match_tol=1e-3, latency=False)
    assert res.calibration["grid"] == "uniform"
    assert any("optimised grids not searched" in n for n in res.calibration["notes"])


def test_a_trajectory_block_off_the_unit_interval_is_searched():
    # several output times on [0, 1.5]: steps may span outputs (interpolated), and the search's
    # bookkeeping follows the block's own span
    model = odespec.build(parse_spec(TRAJECTORY))
    inputs = seeded_input_set((3,), dtype=torch.float32, seed=3)
    c = calibrate(model, inputs, match_tol=1e-4, latency=False, grid="optimised")
    rows = [r for r in c.candidates if r.grid == "optimised"]
    assert rows and all(r.grids[0].points[0] == 0.0 and r.grids[0].points[-1] == 1.5 for r in rows)
    assert all(r.passed == (r.fit_error <= 1e-4 and r.heldout_error <= 1e-4) for r in rows)
    assert c.chosen.error <= 1e-4
