"""The solve configuration: one owner for methods, options, rules, schema fragments and step counts."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import odespec
from odespec.api import build_all
from odespec.errors import SpecError
from odespec.solvers import (
    ButcherTableau,
    GradientConfig,
    GradientMethod,
    InvalidOptionError,
    SolverConfig,
    UnknownGradientMethodError,
    register_gradient,
    register_tableau,
    solve,
    unregister_gradient,
    unregister_tableau,
)
from odespec.solvers.config import GradientDecl, declare_gradient
from odespec.solvers.gradient.base import plain_solve
from odespec.solvers.grid import fixed_nfe
from odespec.solvers.options import FixedStepOptions, OptionSpec
from odespec.solvers.tableaus import get_tableau

F64 = torch.float64


def decay(t, y):
    return -y


# ------------------------------------------------------------------------------ rules


def test_fixed_method_needs_exactly_one_of_steps_and_step_size():
    with pytest.raises(InvalidOptionError, match="needs steps or step_size"):
        SolverConfig("rk4")
    with pytest.raises(InvalidOptionError, match="not both"):
        SolverConfig("rk4", steps=2, step_size=0.1)
    assert SolverConfig("rk4", steps=2).integration_options() == FixedStepOptions(steps=2)


def test_adaptive_method_refuses_fixed_step_options():
    with pytest.raises(InvalidOptionError, match="'steps' is for fixed-step methods"):
        SolverConfig("dopri5", steps=3)
    config, problems = SolverConfig.from_spec({"method": "dopri5", "steps": 3, "step_size": 0.1})
    assert config is None and [p.key for p in problems] == ["step_size", "steps"]


def test_from_spec_reports_every_broken_rule():
    config, problems = SolverConfig.from_spec({"method": "euler", "rtol": 1e-3, "controller": "i"})
    assert config is None
    assert [p.key for p in problems] == ["rtol", "controller", None]
    assert all(p.hint for p in problems)


def test_summary_and_description():
    adaptive = SolverConfig("tsit5", rtol=1e-5, atol=1e-6)
    assert adaptive.summary() == {"method": "tsit5", "rtol": 1e-5, "atol": 1e-6}
    assert adaptive.describe() == "tsit5 rtol=1e-05 atol=1e-06"
    assert SolverConfig.fixed("rk4", 8).describe() == "rk4 steps=8"


def test_replace_checks_the_rules_again():
    fixed = SolverConfig.fixed("rk4", 8)
    assert fixed.replace(steps=2).steps == 2
    with pytest.raises(InvalidOptionError):
        fixed.replace(method="dopri5")


def test_gradient_config_options_are_checked_and_defaulted():
    cfg = GradientConfig.of("adjoint", seminorm=True)
    assert cfg.get("seminorm") is True and cfg.get("rtol") is None
    assert GradientConfig.of("adjoint").get("seminorm") is False
    with pytest.raises(InvalidOptionError, match="not an option of gradient method 'checkpoint'"):
        GradientConfig.of("checkpoint", seminorm=True)
    with pytest.raises(InvalidOptionError, match="checkpoints"):
        GradientConfig.of("checkpoint", checkpoints=0)
    with pytest.raises(UnknownGradientMethodError, match="did you mean 'adjoint'"):
        GradientConfig("adjiont")


def test_adjoint_tolerances_default_to_the_solvers():
    solver = SolverConfig("dopri5", rtol=1e-4, atol=1e-6)
    filled = GradientConfig.of("adjoint").for_solver(solver)
    assert filled.get("rtol") == 1e-4 and filled.get("atol") == 1e-6
    assert GradientConfig.of("adjoint", rtol=1e-3).for_solver(solver).get("rtol") == 1e-3
    assert GradientConfig.of("checkpoint").for_solver(solver) == GradientConfig.of("checkpoint")


# ------------------------------------------------------------------------------ one step counter


def test_step_count_agrees_with_the_solver_where_ceil_did_not():
    # 0.07 / 0.01 = 7.000000000000001: the solver takes 7 steps, and so does every count
    config = SolverConfig("rk4", step_size=0.01)
    times = [0.0, 0.07]
    sol = solve(decay, torch.ones(1, dtype=F64), times, method="rk4", options=config.integration_options())
    assert config.count_steps(times) == sol.stats.n_steps == 7
    assert config.nfe(times) == sol.stats.nfe == 28


@settings(max_examples=60, deadline=None)
@given(
    spans=st.lists(st.floats(min_value=1e-3, max_value=5.0), min_size=1, max_size=4),
    step_size=st.floats(min_value=1e-2, max_value=2.0),
    method=st.sampled_from(["euler", "midpoint", "rk4", "rk4_38"]),
)
def test_counts_equal_the_solvers_steps_and_evaluations(spans, step_size, method):
    times = [0.0]
    for s in spans:
        times.append(times[-1] + s)
    config = SolverConfig(method, step_size=step_size)
    sol = solve(decay, torch.ones(1, dtype=F64), times, method=method, options={"step_size": step_size})
    assert config.count_steps(times) == sol.stats.n_steps
    assert config.nfe(times) == sol.stats.nfe


def test_fsal_evaluations_counted_across_intervals():
    dopri5 = get_tableau("dopri5")
    times = [0.0, 0.5, 1.0, 1.5]
    sol = solve(decay, torch.ones(1, dtype=F64), times, method=dopri5.fixed_step(), options={"steps": 5})
    assert fixed_nfe(times, FixedStepOptions(steps=5), dopri5) == sol.stats.nfe


def test_adaptive_config_has_no_fixed_count():
    assert SolverConfig("dopri5").count_steps([0, 1]) is None and SolverConfig("dopri5").nfe([0, 1]) is None


def _spec(tmp_path: Path, body: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body), encoding="utf-8")
    return p


def test_validator_step_limit_uses_the_solvers_count(tmp_path):
    # 0.07 / 7e-7 rounds to exactly the 100,000-step limit (ceil made it 100,001)
    spec = odespec.load_spec(_spec(tmp_path, """
        odespec: 1
        name: limit
        input: {shape: [2]}
        model:
          - ode:
              t: [0, 0.07]
              dynamics: {layers: [{linear: 2}]}
              solver: {method: euler, step_size: 7.0e-7}
        """))
    block = spec.ode_blocks[0]
    assert block.solver.count_steps(block.t) == 100_000 and block.nfe() == 100_000


# ------------------------------------------------------------------------------ registries in specs


_MY_RK2 = ButcherTableau(name="my_rk2", order=2, a=((), (0.5,)), b=(0, 1), c=(0, 0.5))


def test_registered_tableau_can_be_named_in_a_spec(tmp_path):
    body = """
        odespec: 1
        name: custom-method
        input: {shape: [2]}
        model:
          - ode:
              t: [0, 1]
              dynamics: {layers: [{linear: 8}, tanh, {linear: 2}]}
              solver: {method: my_rk2, steps: 4}
        export:
          onnx: {method: my_rk2, steps: 3}
        """
    path = _spec(tmp_path, body)
    with pytest.raises(SpecError, match="my_rk2"):
        odespec.load_spec(path)
    register_tableau(_MY_RK2)
    try:
        spec = odespec.load_spec(path)
        block = spec.ode_blocks[0]
        assert block.solver.method == "my_rk2" and block.nfe() == 8
        result = build_all(path, tmp_path / "out")
        assert result.export.method == "my_rk2" and result.export.parity["ok"]
        assert result.export.nfe_per_forward == 6
    finally:
        unregister_tableau("my_rk2")
    with pytest.raises(SpecError):
        odespec.load_spec(path)


class _Counted(GradientMethod):
    """Backpropagation that counts its solves (a user-defined gradient method)."""

    name = "counted"
    decl = GradientDecl("counted", "backprop, counting solves",
                        (OptionSpec("weight", {"type": "number", "minimum": 0}, "how much a solve counts.", 1.0,
                                    kind="counted"),))

    def __init__(self, *, weight: float = 1.0):
        self.weight = weight

    def solve(self, problem, stats):
        _Counted.total += self.weight
        return plain_solve(problem)

    total = 0.0


def test_registered_gradient_method_can_be_named_in_a_spec(tmp_path):
    body = """
        odespec: 1
        name: custom-gradient
        input: {shape: [2]}
        model:
          - ode:
              t: [0, 1]
              dynamics: {layers: [{linear: 2}]}
              solver: {method: rk4, steps: 2}
              gradient: {method: counted, weight: 2.5}
        """
    path = _spec(tmp_path, body)
    with pytest.raises(SpecError, match="counted"):
        odespec.load_spec(path)
    register_gradient(_Counted)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_gradient(_Counted)
        with pytest.raises(ValueError, match="already registered"):
            declare_gradient(_Counted.decl)
        model = odespec.build(path)
        before = _Counted.total
        model(torch.ones(3, 2)).sum().backward()
        assert _Counted.total == before + 2.5
        bad = _spec(tmp_path, body.replace("weight: 2.5", "wieght: 2.5"), "bad.yaml")
        with pytest.raises(SpecError) as info:
            odespec.load_spec(bad)
        assert any("wieght" in issue.message for issue in info.value.issues)
    finally:
        unregister_gradient("counted")
    with pytest.raises(UnknownGradientMethodError):
        GradientConfig("counted")


# ------------------------------------------------------------------------------ variants of a block


def test_with_solver_shares_weights_and_times_without_forging_specs():
    model = odespec.build("specs/ode_demo.yaml", dtype="float64")
    block = model.ode_blocks[0]
    twin = block.with_solver(SolverConfig.fixed("rk4", 16), GradientConfig())
    assert twin.dynamics is block.dynamics and twin.t.dtype == block.t.dtype == F64
    assert twin.spec.solver == SolverConfig.fixed("rk4", 16) and block.spec.solver.method == "dopri5"
    assert twin.spec.dynamics is block.spec.dynamics and twin.spec.loc == block.spec.loc
    x = torch.randn(3, 2, dtype=F64)
    with torch.no_grad():
        ref = odespec.solvers.odeint(block.dynamics, block.augmenter(x) if block.augmenter else x, block.t,
                                     method="rk4", options={"steps": 16})
        assert torch.equal(twin(x), ref.movedim(0, 1))
    assert math.isclose(block.spec.solver.rtol, 1e-7)
