"""The exported graph's size is bounded before anything is built: a spec whose export would
unroll more than MAX_UNROLLED_STEPS solver steps is refused by the validator, pointing at the
block or the export setting that unrolls most (found by the CLI fuzz test: a ResNet block of
40,000 steps validated and then took many minutes to build)."""

from __future__ import annotations

import pytest

from odespec.errors import SpecError
from odespec.spec import parse_spec
from odespec.spec.validate import MAX_UNROLLED_STEPS

DYN = "dynamics: {layers: [{linear: 4}, tanh, {linear: 2}]}"


def spec(block: str, export: str = "") -> str:
    return f"odespec: 1\nname: big\ninput: {{shape: [2]}}\nmodel:\n  - ode: {block}\n{export}"


def test_a_resnet_block_of_too_many_steps_is_refused_at_its_steps():
    text = spec(f"{{t: [0, 1], family: resnet, solver: {{method: euler, steps: {MAX_UNROLLED_STEPS + 1}}}, {DYN}}}")
    with pytest.raises(SpecError) as e:
        parse_spec(text, "big.yaml")
    assert "model[0].ode.solver.steps" in str(e.value) and "unroll" in str(e.value)


def test_export_steps_over_many_output_times_are_refused_unless_looped():
    block = f"{{t: {{start: 0, stop: 1, num: 2001}}, {DYN}}}"
    with pytest.raises(SpecError) as e:
        parse_spec(spec(block, "export: {onnx: {steps: 8}}\n"), "big.yaml")
    assert "export.onnx.steps" in str(e.value) and "loop: true" in str(e.value)
    assert parse_spec(spec(block, "export: {onnx: {steps: 8, loop: true}}\n"), "big.yaml").export.loop
    assert parse_spec(spec(block, "export: {onnx: {steps: 4}}\n"), "big.yaml").export.steps == 4
