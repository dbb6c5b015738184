"""A solver in words and as report fields: one helper for the build report, its summary and
the messages of export and calibration."""

from __future__ import annotations

from pathlib import Path

import odespec
from odespec.api import summary
from odespec.export.describe import training_solvers
from odespec.solvers.config import SolverConfig
from odespec.spec import load_spec


def solver_settings(solver: SolverConfig) -> dict:
    return solver.summary()


def solver_words(solver: SolverConfig) -> str:
    return solver.describe()

ROOT = Path(__file__).resolve().parents[2]


def test_solver_settings_and_words():
    adaptive = SolverConfig(method="dopri5", rtol=1e-7, atol=1e-9)
    assert solver_settings(adaptive) == {"method": "dopri5", "rtol": 1e-7, "atol": 1e-9}
    assert solver_words(adaptive) == "dopri5 rtol=1e-07 atol=1e-09"
    steps = SolverConfig(method="rk4", steps=4)
    assert solver_settings(steps) == {"method": "rk4", "steps": 4, "step_size": None}
    assert solver_words(steps) == "rk4 steps=4"
    assert solver_words(SolverConfig(method="euler", step_size=0.25)) == "euler step_size=0.25"
    assert solver_words(SolverConfig(method="rk4", steps=1_000_000)) == "rk4 steps=1000000"
    # a report stores the summary; its text is the configuration's own words
    assert SolverConfig.words(solver_settings(steps)) == solver_words(steps)


def test_the_summary_and_the_training_solvers_describe_each_block_alike():
    for name in ("ode_demo", "circles_resnet", "mnist_odenet"):
        spec = load_spec(ROOT / "specs" / f"{name}.yaml")
        rows = [r for r in summary(spec)["layers"] if r["kind"] == "ode"]
        model = odespec.build(spec)
        words = training_solvers(model)
        assert len(rows) == len(words) == len(model.ode_blocks)
        for row, block, text in zip(rows, model.ode_blocks, words):
            assert row["solver"] == solver_settings(block.spec.solver)
            if row["family"] == "resnet":
                assert text == f"resnet ({len(block.dynamics)} Euler steps, own weights)"
            else:
                assert text == solver_words(block.spec.solver)


def test_the_report_text_describes_the_summary_solver_in_the_same_words():
    from odespec.report import render_summary

    for name in ("ode_demo", "circles_resnet", "mnist_rknet"):
        spec = load_spec(ROOT / "specs" / f"{name}.yaml")
        text = render_summary(summary(spec))
        for block in (item for item in spec.model if getattr(item, "solver", None) is not None):
            assert f"{solver_words(block.solver)} / {block.gradient.method}" in text


def test_describing_a_solver_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys, odespec.export.describe, odespec.report, odespec.solvers.config; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
