"""Implicit methods in specs, training and the ONNX export (issue #17 item 3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import odespec
from odespec.errors import ExportError, SpecError
from odespec.export.calibrate import calibrate
from odespec.export.implicit_graph import MAX_NEWTON_UNKNOWNS
from odespec.export.inputs import seeded_input_set
from odespec.export.newton_iters import converged_iterations
from odespec.export.pipeline import ExportOptions, export_model
from odespec.solvers import odeint
from odespec.solvers.implicit import fd_jacobian

SPEC = """
odespec: 1
name: tiny_stiff
input: {{shape: [{n}]}}
dtype: {dtype}
model:
  - ode:
      t: [0, 0.5, 1]
      output: trajectory
      dynamics:
        layers:
          - known_linear:
              matrix: {matrix}
              layers: [{{linear: 6}}, tanh, {{linear: {n}}}]
      solver: {solver}
export:
  onnx: {export}
"""


def stiff_matrix(n: int, fast: float = 1e4) -> list[list[float]]:
    """A stiff linear cycle: one fast rate among slow ones."""
    a = [[0.0] * n for _ in range(n)]
    for i in range(n):
        rate = fast if i == 1 else 1.0
        a[i][i] -= rate
        a[(i + 1) % n][i] += rate
    return a


def write_spec(tmp_path, *, n: int = 3, dtype: str = "float64", solver: str = "{method: radauIIA5, steps: 1}",
               export: str = "{method: radauIIA5, steps: 1}", fast: float = 1e4) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(n=n, dtype=dtype, matrix=stiff_matrix(n, fast), solver=solver, export=export))
    return str(path)


# -- spec validation -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["implicit_euler", "implicit_midpoint", "trapezoid", "radauIIA3", "radauIIA5",
                                    "gl4", "gl6", "sdirk2", "trbdf2"])
def test_spec_accepts_every_implicit_method(tmp_path, method):
    spec = odespec.load_spec(write_spec(tmp_path, solver=f"{{method: {method}, steps: 2, max_iters: 5, newton_tol: 0}}",
                                        export=f"{{method: {method}, steps: 2, newton_iters: 3}}"))
    (block,) = [m for m in spec.model if hasattr(m, "solver")]
    assert block.solver.method == method and block.solver.max_iters == 5 and block.solver.newton_tol == 0.0
    assert spec.export.newton_iters == 3


@pytest.mark.parametrize("solver, where, words", [
    ("{method: rk4, steps: 2, max_iters: 3}", "solver.max_iters", "is for implicit methods"),
    ("{method: dopri5, newton_tol: 0}", "solver.newton_tol", "is for implicit methods"),
    ("{method: radauIIA5, steps: 2, max_iters: 0}", "solver.max_iters", ""),
    ("{method: radauIIA5, steps: 2, newton_tol: -1}", "solver.newton_tol", ""),
    ("{method: radauIIA5, max_iters: 3}", "solver", "needs steps or step_size"),
])
def test_spec_rejects_bad_newton_options_where_they_are(tmp_path, solver, where, words):
    with pytest.raises(SpecError) as err:
        odespec.load_spec(write_spec(tmp_path, solver=solver, export="{method: rk4, steps: 2}"))
    text = str(err.value)
    assert f"model[0].ode.{where}" in text and words in text


def test_spec_rejects_newton_iters_for_an_explicit_export(tmp_path):
    with pytest.raises(SpecError, match=r"export.onnx.newton_iters.*is for implicit methods"):
        odespec.load_spec(write_spec(tmp_path, export="{method: rk4, steps: 2, newton_iters: 3}"))


# -- training ------------------------------------------------------------------------------------
@pytest.mark.parametrize("gradient", ["backprop", "adjoint", "checkpoint"])
def test_tiny_stiff_model_trains_with_an_implicit_method(tmp_path, gradient):
    model = odespec.build(write_spec(tmp_path, solver="{method: radauIIA3, steps: 1}"))
    if gradient != "backprop":
        from odespec.solvers.config import GradientConfig

        block = model[0]
        model = odespec.compile.model.ODENet(model.spec, [block.with_solver(block.spec.solver, GradientConfig(gradient))])
    torch.manual_seed(0)
    x = torch.rand(8, 3, dtype=torch.float64)
    target = torch.rand(8, 3, 3, dtype=torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = ((model(x) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_explicit_adaptive_solver_gives_up_on_the_stiff_model(tmp_path):
    model = odespec.build(write_spec(tmp_path, solver="{method: dopri5, max_num_steps: 200}"))
    with pytest.raises(Exception, match="max_num_steps"):
        with torch.no_grad():
            model(torch.rand(4, 3, dtype=torch.float64))


# -- the forward-difference Jacobian --------------------------------------------------------------
def test_fd_jacobian_matches_autograd_blocks():
    torch.manual_seed(0)
    w = torch.randn(4, 4, dtype=torch.float64)

    def f(_t, y):
        return torch.tanh(y @ w.t()) * 3.0

    y = torch.randn(5, 4, dtype=torch.float64)
    _, jac = fd_jacobian(f, 0.0, y)
    exact = torch.stack([torch.autograd.functional.jacobian(lambda v: f(0.0, v[None])[0], y[b]) for b in range(5)])
    assert torch.allclose(jac, exact, atol=1e-6)


def test_fd_jacobian_solve_converges_to_the_autograd_one():
    a = torch.tensor(stiff_matrix(3), dtype=torch.float64)
    y0 = torch.rand(4, 3, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    f = lambda _t, y: y @ a.t() + 0.1 * torch.sin(y)  # noqa: E731
    fd = odeint(f, y0, t, method="radauIIA5", options={"steps": 4, "jacobian": "fd"})
    exact = odeint(f, y0, t, method="radauIIA5", options={"steps": 4})
    assert torch.allclose(fd, exact, atol=1e-12)


# -- ONNX parity and the iteration count ---------------------------------------------------------
# float32 with a fast rate of 30, not 1e4: a forward difference of f in float32 rounds by about
# eps * |f| / sqrt(eps), which for |f| ~ 1e4 swamps the Jacobian's slow entries (README)
@pytest.mark.parametrize("dtype, tol, fast", [("float64", 1e-10, 1e4), ("float32", 1e-5, 30.0)])
@pytest.mark.parametrize("method", ["radauIIA5", "trbdf2", "implicit_euler"])
def test_onnx_parity_against_the_twin_with_the_same_iterations(tmp_path, dtype, tol, fast, method):
    model = odespec.build(write_spec(tmp_path, dtype=dtype, solver=f"{{method: {method}, steps: 2}}", fast=fast,
                                     export=f"{{method: {method}, steps: 2, newton_iters: 8}}"))
    res = export_model(model, tmp_path / "m.onnx", ExportOptions(latency=False, parity_tol=tol))
    assert res.parity is not None and res.parity["ok"] and res.parity["max_abs_error"] <= tol
    assert res.newton_iters == {"iters": 8, "source": "given", "tolerance": None, "against": "", "evaluations": []}
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}
    assert meta["export_newton_iters"] == "8" and meta["export_newton_iters_source"] == "given"
    # the graph's default-domain operators only (no com.microsoft Inverse)
    assert all(not n.domain for n in onnx.load(str(res.path)).graph.node)


def test_graph_with_fewer_iterations_differs_as_the_twin_does(tmp_path):
    """The graph computes the iteration it unrolls, not the converged solution: one iteration
    of a nonlinear problem leaves an error that parity (same count) does not see and the
    deployment error does."""
    model = odespec.build(write_spec(tmp_path))
    # few iterations of a stiff problem are far from converged, and there the iterate is
    # sensitive to rounding: parity is asked to 1e-6 (float64) rather than 1e-12
    one = export_model(model, tmp_path / "a.onnx", ExportOptions(latency=False, newton_iters=4, parity_tol=1e-4))
    many = export_model(model, tmp_path / "b.onnx", ExportOptions(latency=False, newton_iters=10))
    assert many.parity["max_abs_error"] < 1e-12
    assert one.deployment_error["max_abs_error"] > 100 * many.deployment_error["max_abs_error"]


def test_converged_iterations_is_the_fewest_within_rounding(tmp_path):
    model = odespec.build(write_spec(tmp_path))
    inputs = seeded_input_set((3,), dtype=torch.float64, seed=0)
    choice = converged_iterations(model, "radauIIA5", 1, inputs)
    errors = dict(choice.evaluations)
    assert errors[choice.iters] <= choice.tolerance
    assert choice.iters == 1 or errors[choice.iters - 1] > choice.tolerance


def test_calibration_picks_a_newton_iteration_count(tmp_path):
    model = odespec.build(write_spec(tmp_path))
    inputs = seeded_input_set((3,), dtype=torch.float64, seed=0)
    loose = calibrate(model, inputs, match_tol=1e-4, methods=("radauIIA5",), latency=False)
    tight = calibrate(model, inputs, match_tol=1e-11, methods=("radauIIA5",), latency=False)
    assert loose.chosen.newton_iters is not None and tight.chosen.newton_iters is not None
    assert loose.chosen.newton_iters < tight.chosen.newton_iters
    assert loose.chosen.nfe < tight.chosen.nfe
    for cal in (loose, tight):
        tried = {k: e for m, n, k, e in cal.newton_evaluations if n == cal.chosen.steps}
        assert tried[cal.chosen.newton_iters] <= cal.match_tol
        assert cal.chosen.newton_iters == 1 or tried[cal.chosen.newton_iters - 1] > cal.match_tol
        assert cal.to_dict()["newton_iters"] == cal.chosen.newton_iters


def test_build_calibrates_steps_and_iterations(tmp_path):
    model = odespec.build(write_spec(tmp_path, export="{method: radauIIA5, steps: auto, match_tol: 1e-6}"))
    res = export_model(model, tmp_path / "m.onnx", ExportOptions(latency=False))
    assert res.newton_iters is not None and res.newton_iters["source"] == "calibrated"
    assert res.calibration is not None and res.calibration["newton_iters"] == res.newton_iters["iters"]
    assert res.deployment_error["max_abs_error"] <= 1e-6


# -- what is not supported -----------------------------------------------------------------------
def test_state_too_large_for_the_unrolled_newton_system(tmp_path):
    n = MAX_NEWTON_UNKNOWNS // 3 + 1  # radauIIA5: 3 implicit stages
    model = odespec.build(write_spec(tmp_path, n=n, solver="{method: rk4, steps: 1}"))
    with pytest.raises(ExportError, match=f"at most {MAX_NEWTON_UNKNOWNS}"):
        export_model(model, tmp_path / "m.onnx", ExportOptions(method="radauIIA5", steps=1, newton_iters=1))
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("options, words", [
    (dict(loop=True), "loop layout"),
    (dict(precision="float16"), "float16"),
])
def test_unsupported_layouts_are_refused(tmp_path, options, words):
    model = odespec.build(write_spec(tmp_path))
    with pytest.raises(ExportError, match=words):
        export_model(model, tmp_path / "m.onnx", ExportOptions(newton_iters=2, **options))


def test_newton_iters_option_is_checked():
    with pytest.raises(ExportError, match="newton_iters"):
        ExportOptions(newton_iters=0)
    np.testing.assert_equal(ExportOptions(newton_iters="auto").newton_iters, "auto")
