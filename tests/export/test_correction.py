"""The learned step correction (hypersolver): training on the training solver's one-step
residuals, the choice with its fallbacks, the graph's parity with the corrected twin, the report
and metadata, and the refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import odespec
from odespec.errors import BuildError, ExportError
from odespec.export import correction as corr_mod
from odespec.compile.correction_net import CorrectionNet
from odespec.export.correction import (Corrections, choose_correction, corrected_model,
                                       fit_corrections, split_inputs)
from odespec.export.inputs import seeded_input_set
from odespec.export.metrics import Match, model_outputs, reference_outputs
from odespec.export.onnx_export import ExportSettings, build_onnx, check_onnx
from odespec.export.pipeline import ExportOptions, export_model
from odespec.export.session import ort_session
from odespec.export.unroll import fixed_step_model
from odespec.report import render_build
from odespec.spec import parse_spec
from odespec.spec.correction import CorrectionSpec

# a linear system y' = A y (a rotation with decay): euler x 4 is far off, float64 so the fit is
# not limited by rounding
LINEAR = """\
odespec: 1
name: linear
dtype: float64
input: {shape: [2]}
model:
  - ode:
      t: [0, 1]
      dynamics: {layers: [{linear: {features: 2, bias: false}}]}
      solver: {method: dopri5, rtol: 1e-10, atol: 1e-12}
export:
  onnx: {%s}
"""

FAST = CorrectionSpec(hidden=16, iterations=300, lr=1e-2)


def _linear(tmp_path: Path, export: str = "method: euler, steps: 4") -> odespec.ODENet:
    path = tmp_path / "linear.yaml"
    path.write_text(LINEAR % export)
    model = odespec.build(path)
    with torch.no_grad():
        (weight,) = list(model.parameters())
        weight.copy_(torch.tensor([[-0.2, 2.0], [-2.0, -0.2]], dtype=torch.float64))
    return model.eval()


def _inputs(model: odespec.ODENet):
    inputs = seeded_input_set((2,), dtype=torch.float64, seed=0)
    return inputs, reference_outputs(model, inputs)


def test_correction_cuts_eulers_error_on_a_linear_system(tmp_path: Path):
    model = _linear(tmp_path)
    inputs, ref = _inputs(model)
    fit, _, held, held_ref = split_inputs(model, inputs, 0.25, 0)
    corrections, stats = fit_corrections(model, fit, "euler", 4, FAST)
    # the one-step residuals are fitted (relative mean squared error, 1 for g = 0) ...
    assert stats.loss[0] < 1e-2
    assert stats.rows == fit.samples * 4
    # ... and the whole solve on inputs it never saw is far closer to the training solver
    match = Match("max_abs", 1.0)
    plain = match.error(model_outputs(fixed_step_model(model, "euler", 4), held), held_ref)
    corrected = match.error(model_outputs(corrected_model(model, corrections), held), held_ref)
    assert plain > 0.3
    assert corrected < 0.25 * plain


def test_refining_through_the_whole_solve_lowers_the_error_the_one_step_fit_leaves(tmp_path: Path):
    model = _linear(tmp_path)
    inputs, _ = _inputs(model)
    fit, fit_ref, held, held_ref = split_inputs(model, inputs, 0.25, 0)
    match = Match("max_abs", 1.0)
    errors = {}
    for refine in (0, 100):
        corrections, stats = fit_corrections(model, fit, "euler", 4, dataclasses.replace(FAST, refine=refine),
                                             fit_ref)
        errors[refine] = match.error(model_outputs(corrected_model(model, corrections), held), held_ref)
        if refine:
            assert stats.refined is not None
            before, after = stats.refined
            assert after < 0.6 * before  # the fit inputs' loss: root mean fourth power, relative
        else:
            assert stats.refined is None
    # measured: 0.198 after the one-step fit alone, 0.126 refined, on inputs it never saw
    assert errors[100] < 0.8 * errors[0]


def test_refining_keeps_the_one_step_fit_when_it_cannot_improve_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    model = _linear(tmp_path)
    inputs, _ = _inputs(model)
    fit, fit_ref, _, _ = split_inputs(model, inputs, 0.25, 0)

    class Breaking(torch.optim.Adam):
        """An optimiser whose every step leaves the nets' parameters not finite."""

        def step(self, closure=None):  # type: ignore[no-untyped-def,override]
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(float("nan"))

    monkeypatch.setattr(torch.optim, "Adam", Breaking)
    # the one-step fit leaves the nets as built (their last layer zero: the plain grid)
    monkeypatch.setattr(corr_mod, "_train", lambda net, data, options: 1.0)
    refined, stats = fit_corrections(model, fit, "euler", 4, dataclasses.replace(FAST, refine=5), fit_ref)
    assert stats.refined is not None and stats.refined[1] == stats.refined[0]
    x = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(corrected_model(model, refined)(x), fixed_step_model(model, "euler", 4)(x))


def test_untrained_correction_is_the_plain_grid(tmp_path: Path):
    model = _linear(tmp_path)
    net = CorrectionNet((2,), 8).double()  # its last layer starts at zero
    x = torch.randn(5, 2, dtype=torch.float64)
    twin = corrected_model(model, Corrections((net,), "euler", 4))
    torch.testing.assert_close(twin(x), fixed_step_model(model, "euler", 4)(x), rtol=0, atol=1e-15)


def _random_corrections(model: odespec.ODENet, shape: tuple[int, ...], method: str, steps: int) -> Corrections:
    torch.manual_seed(0)
    net = CorrectionNet(shape, 4).to(next(model.parameters()).dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        net.in_shift.normal_()
        net.out_scale.fill_(0.5)
    return Corrections((net.eval(),), method, steps)


@pytest.mark.parametrize("shape_spec,shape", [
    ("input: {shape: [3]}\nmodel:\n  - ode:\n      t: [0, 0.5, 1]\n      dynamics: {time: concat, layers: "
     "[{linear: 8}, tanh, {linear: 3}]}\n", (3,)),
    ("input: {shape: [2, 4, 4]}\nmodel:\n  - ode:\n      dynamics: {layers: [{conv2d: {channels: 2, kernel: 3, "
     "padding: 1}}, tanh]}\n", (2, 4, 4)),
])
def test_graph_with_correction_matches_the_corrected_twin(shape_spec: str, shape: tuple[int, ...]):
    model = odespec.build(parse_spec(f"odespec: 1\nname: c\n{shape_spec}")).eval()
    corrections = _random_corrections(model, shape, "midpoint", 3)
    graph = build_onnx(model, ExportSettings(method="midpoint", steps=3, correction=corrections))
    check_onnx(graph)
    x = torch.randn((7, *shape))
    got = ort_session(graph.SerializeToString()).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = corrected_model(model, corrections)(x).numpy()
        plain = fixed_step_model(model, "midpoint", 3)(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(want - plain).max() > 1e-3  # the correction is in the graph
    # the correction's weights are stored once, however many steps use them
    names = [i.name for i in graph.graph.initializer if "/correction/" in i.name and "weight" in i.name]
    assert len(names) == len(set(names)) == sum(1 for n, _ in corrections.nets[0].named_parameters() if "weight" in n)
    nodes = sum(1 for n in graph.graph.node if n.op_type in ("Gemm", "MatMul", "Conv"))
    assert nodes >= 3 * 2 * (len(model.ode_blocks[0].spec.t) - 1)  # one correction per step


def test_export_with_correction_writes_a_parity_checked_graph_and_reports_it(tmp_path: Path):
    model = _linear(tmp_path)
    out = export_model(model, tmp_path / "c.onnx", ExportOptions(latency=False, correction=FAST))
    corr = out.correction
    assert corr is not None and corr["used"] is True
    assert (out.method, out.steps, out.nfe_per_forward) == ("euler", 4, 4)
    chosen = corr["chosen"]
    assert chosen["held_out_error"] < chosen["held_out_error_plain"]
    assert corr["tolerance"] is None  # a given step count asks for no tolerance: the error must fall
    assert chosen["parameters"] == 2 * 16 + 16 + 16 * 16 + 16 + 16 * 2 + 2 + (6 - 2) * 16
    assert chosen["train_seconds"] > 0 and corr["fit_samples"] + corr["held_out_samples"] == 264
    assert corr["macs"]["corrected"] > corr["macs"]["plain"] - 1  # the same grid, plus the net's MACs
    assert out.parity is not None and out.parity["max_abs_error"] < 1e-10
    meta = {p.key: p.value for p in onnx.load(out.path).metadata_props}
    assert json.loads(meta["correction"])["used"] is True
    assert meta["export_correction"].startswith("step correction")
    # the file computes the corrected twin, not the plain grid
    x = np.random.default_rng(1).normal(size=(5, 2))
    got = ort_session(out.path.read_bytes()).run(None, {"input": x})[0]
    plain = fixed_step_model(model, "euler", 4)(torch.from_numpy(x)).detach().numpy()
    assert np.abs(got - plain).max() > 1e-2
    text = render_build({"spec": {"name": "linear"}, "summary": odespec.api.summary(model.spec),
                         "onnx": out.to_dict()}, out.path, tmp_path / "r.json")
    assert "correction: correction used: euler x 4 corrected (the given grid)" in text


def test_but_not_when_it_does_not_help(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    model = _linear(tmp_path)
    inputs, ref = _inputs(model)
    real = corr_mod._residuals

    def nonsense(*args, **kwargs):
        rows = real(*args, **kwargs)
        gen = torch.Generator().manual_seed(0)
        return dataclasses.replace(rows, target=torch.randn(rows.target.shape, generator=gen, dtype=torch.float64) * 50)

    monkeypatch.setattr(corr_mod, "_residuals", nonsense)
    settings = ExportSettings(method="euler", steps=4)
    outcome = choose_correction(model, inputs, settings, Match("max_abs", 10.0), FAST)
    assert outcome.corrections is None and outcome.report["used"] is False
    trial = outcome.report["trials"][0]
    assert trial["held_out_error"] > trial["held_out_error_plain"] and not trial["passed"]
    assert "did not help on the held-out inputs" in outcome.note and "exported the plain grid euler x 4" in outcome.note


def test_a_corrected_grid_over_the_tolerance_is_never_chosen(tmp_path: Path):
    model = _linear(tmp_path)
    inputs, ref = _inputs(model)
    outcome = choose_correction(model, inputs, ExportSettings(method="euler", steps=4), Match("max_abs", 1e-9),
                                FAST)
    trial = outcome.report["trials"][0]
    assert trial["held_out_error"] < trial["held_out_error_plain"]  # it helps, but not enough
    assert outcome.corrections is None and not trial["passed"]


def test_nothing_cheaper_than_one_euler_step(tmp_path: Path):
    model = _linear(tmp_path)
    inputs, ref = _inputs(model)
    outcome = choose_correction(model, inputs, ExportSettings(method="euler", steps=1), Match("max_abs", 10.0),
                                FAST, methods=["euler", "rk4"])
    assert outcome.corrections is None and outcome.report["trials"] == []
    assert "no grid is cheaper than the calibrated one" in outcome.note


def test_no_correction_is_trained_where_the_net_costs_more_than_the_evaluations_it_saves(tmp_path: Path,
                                                                                         monkeypatch: pytest.MonkeyPatch):
    model = _linear(tmp_path)  # f is a 2 x 2 product: 4 MACs, against the net's hundreds
    inputs, _ = _inputs(model)
    monkeypatch.setattr(corr_mod, "fit_corrections", lambda *a, **k: pytest.fail("trained a correction"))
    outcome = choose_correction(model, inputs, ExportSettings(method="rk4", steps=4), Match("max_abs", 1e-3),
                                FAST, methods=["euler", "midpoint", "rk4"])
    assert outcome.corrections is None and outcome.report["trials"] == []
    dropped = outcome.report["not_cheaper"]
    plain = outcome.report["plain"]["macs"]
    assert dropped and all(row["macs"] >= plain and row["nfe"] < 16 for row in dropped)
    assert "costs at least the plain grid's" in outcome.note and "none was trained" in outcome.note


def _wide_model() -> odespec.ODENet:
    """A dynamics whose evaluation costs more MACs (256) than the correction's (128), so a
    corrected grid with fewer f-evaluations is cheaper in MACs too; calibrated at match_tol 1e-4."""
    text = (LINEAR % "steps: auto, match_tol: 1e-4").replace("{linear: {features: 2, bias: false}}",
                                                              "{linear: 64}, tanh, {linear: 2}")
    model = odespec.build(parse_spec(text)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    return model


def test_calibrated_search_finds_a_cheaper_corrected_grid(tmp_path: Path):
    auto = _wide_model()
    out = export_model(auto, tmp_path / "a.onnx", ExportOptions(latency=False, grid="uniform",
                                                                correction=dataclasses.replace(FAST, hidden=8)))
    corr = out.correction
    assert corr is not None and corr["search"].startswith("cheaper grids")
    plain_nfe = corr["plain"]["nfe"]
    assert out.calibration is not None and out.calibration["nfe"] == plain_nfe
    assert corr["used"], corr["note"]
    assert out.nfe_per_forward < plain_nfe and corr["nfe_saved"] == plain_nfe - out.nfe_per_forward
    assert corr["macs"]["saved"] > 0 and out.macs is not None and out.macs["macs_per_sample"] == corr["macs"]["corrected"]
    assert corr["chosen"]["held_out_error"] <= 1e-4
    assert len(corr["trials"]) <= FAST.trials


def test_refusals(tmp_path: Path):
    model = _linear(tmp_path)
    with pytest.raises(ExportError, match="loop layout is not available"):
        export_model(model, tmp_path / "x.onnx", ExportOptions(loop=True, correction=FAST, latency=False))
    with pytest.raises(ExportError, match="without FSAL"):
        fit_corrections(model, seeded_input_set((2,), dtype=torch.float64, seed=0), "dopri5", 1, FAST)
    with pytest.raises(ExportError, match="a hidden width from 1 to 1024"):
        ExportOptions(correction=True)  # type: ignore[arg-type]
    with pytest.raises(BuildError, match="rank 1, 2 or 3"):
        CorrectionNet((1, 2, 3, 4), 4)
    assert not (tmp_path / "x.onnx").exists()


def test_options_pick_the_correction(tmp_path: Path):
    from odespec.export.pipeline import _correction_options

    model = _linear(tmp_path, "method: euler, steps: 4, correction: {hidden: 4, iterations: 7}")
    spec = model.spec
    assert spec.export.correction == CorrectionSpec(hidden=4, iterations=7)
    assert _correction_options(spec, ExportOptions()) == CorrectionSpec(hidden=4, iterations=7)
    assert _correction_options(spec, ExportOptions(correction=9)) == CorrectionSpec(hidden=9, iterations=7)
    assert _correction_options(spec, ExportOptions(correction=0)) is None
    assert _correction_options(spec, ExportOptions(correction=FAST)) == FAST


@pytest.mark.parametrize("onnx_options,model_items,message", [
    ("{loop: true, correction: {}}", None, "the loop layout is not available with it"),
    ("{correction: {hidden: 0}}", None, "0 is not >= 1"),
    ("{correction: {width: 3}}", None, "unknown key 'width'"),
    ("{correction: {held_out: 1}}", None, "1 is not < 1"),
    ("{correction: {}}", "  - ode:\n      family: resnet\n      dynamics: {layers: [{linear: 2}]}\n      "
     "solver: {method: euler, steps: 2}\n", "no ODE block the correction can apply to"),
])
def test_spec_errors_are_located(onnx_options: str, model_items, message: str, tmp_path: Path):
    from odespec.errors import SpecError

    items = model_items or "  - ode:\n      dynamics: {layers: [{linear: 2}]}\n"
    text = f"odespec: 1\nname: e\ninput: {{shape: [2]}}\nmodel:\n{items}export:\n  onnx: {onnx_options}\n"
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    issue = next(i for i in info.value.issues if message in i.message)
    assert issue.line == text.splitlines().index(f"  onnx: {onnx_options}") + 1
    assert "correction" in issue.path


def test_a_correction_replaces_an_optimised_grid_only_when_cheaper(tmp_path: Path):
    """Calibration may choose an optimised grid; a corrected uniform grid then starts from the
    cheapest passing uniform one and is used only with fewer f-evaluations than the optimised."""
    auto = _wide_model()
    out = export_model(auto, tmp_path / "a.onnx", ExportOptions(latency=False, grid="optimised",
                                                                correction=dataclasses.replace(FAST, hidden=8)))
    cal, corr = out.calibration, out.correction
    assert cal is not None and corr is not None
    uniform = min(c["nfe"] for c in cal["candidates"] if c["passed"] and c["grid"] == "uniform")
    assert corr["plain"]["nfe"] == uniform
    # here the optimised grid (dopri5, 13 f-evaluations) beats uniform rk4 x 4 (16), and the
    # corrected rk4 x 3 (12) beats both
    assert cal["grid"] == "optimised" and cal["nfe"] < uniform
    assert corr["used"], corr["note"]
    assert out.nfe_per_forward < cal["nfe"] and "export_correction" in _meta(tmp_path / "a.onnx")
    assert json.loads(_meta(tmp_path / "a.onnx")["calibration"])["grid"] == "optimised"


def _meta(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(path).metadata_props}
