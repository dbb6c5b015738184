"""The spec language of irregular series: ``input: {times, mask, query}``, ``t: query`` with
``start``, and the layers that read series (ode_rnn, rnn/gru time_gaps, rnn_decoder). Each rule's
message (file:line:column, path, hint) is a golden in tests/spec/invalid/series_*; here: what
valid specs become."""

from __future__ import annotations

import pytest

from odespec.api import summary
from odespec.errors import SpecError
from odespec.report import render_summary
from odespec.spec import parse_spec
from odespec.spec.model import LayerSpec, SeriesSpec

HEAD = "odespec: 1\nname: s\n"


def spec(text: str):
    return parse_spec(HEAD + text, "s.yaml")


def test_a_spec_without_series_keys_has_no_series():
    s = spec("input: {shape: [3, 2]}\nmodel: [{gru: 4}]\n")
    assert s.series is None


def test_series_keys_become_the_series_spec_and_its_input_names():
    s = spec("input: {shape: [30, 2], times: true, mask: true, query: 40}\n"
             "model:\n  - ode_rnn: 16\n  - linear: 4\n  - ode: {t: query, output: trajectory, dynamics: {layers: [{linear: 4}]}}\n")
    assert s.series == SeriesSpec(times=True, mask=True, query=40)
    assert s.series.input_names == ("input", "times", "mask", "query_times")
    block = s.ode_blocks[0]
    assert block.query and block.t == () and block.start == 0.0 and block.out_shape == (40, 4)
    # the adaptive default solver: its cost is not known before the solve
    assert block.nfe() is None and block.count_steps() is None


def test_the_ode_rnn_defaults():
    s = spec("input: {shape: [10, 3], times: true}\nmodel: [{ode_rnn: 8}]\n")
    layer = s.model[0]
    assert isinstance(layer, LayerSpec) and layer.out_shape == (8,)
    opts = layer.options
    assert opts["reverse"] is True and opts["solver"] == {"method": "rk4", "steps": 1} and opts["start"] == 0
    assert [c.kind for c in opts["dynamics"]] == ["linear", "tanh", "linear"]
    # GRU cell on x (3 features, no mask) + f: 8 -> 8 -> 8
    assert layer.num_params == 3 * (3 * 8 + 8 * 8 + 16) + 2 * (8 * 8 + 8)


def test_the_mask_doubles_the_step_inputs_of_the_readers():
    no_mask = spec("input: {shape: [10, 3], times: true}\nmodel: [{gru: {hidden: 4, time_gaps: true}}]\n")
    mask = spec("input: {shape: [10, 3], times: true, mask: true}\nmodel: [{gru: {hidden: 4, time_gaps: true}}]\n")
    assert no_mask.num_params == 3 * ((3 + 1) * 4 + 16 + 8)
    assert mask.num_params == 3 * ((6 + 1) * 4 + 16 + 8)


def test_a_fixed_step_query_block_counts_steps_per_query_interval():
    s = spec("input: {shape: [2], query: 7}\nmodel:\n  - ode: {t: query, start: -1, solver: {method: dopri5, rtol: 1e-6}, "
             "dynamics: {layers: [{linear: 2}]}}\n  - ode: {t: query, solver: {method: rk4, steps: 3}, "
             "dynamics: {layers: [{linear: 2}]}}\n  - ode: {t: query, solver: {method: rk4, step_size: 0.1}, "
             "dynamics: {layers: [{linear: 2}]}}\n")
    adaptive, fixed, sized = s.ode_blocks
    assert adaptive.start == -1.0 and adaptive.out_shape == (2,)
    assert fixed.count_steps() == 21 and fixed.nfe() == 7 * 3 * 4
    # step_size: the step count follows each batch's longest interval
    assert sized.count_steps() is None and sized.nfe() is None
    rows = summary(s)["layers"]
    assert rows[1]["t"] == "query" and rows[1]["start"] == 0.0 and rows[1]["nfe_per_forward"] == 84
    assert "84 f-evals/forward" in render_summary(summary(s))


def test_too_many_steps_over_the_query_intervals_is_located_at_steps():
    with pytest.raises(SpecError) as e:
        spec("input: {shape: [2], query: 10000}\nmodel:\n  - ode: {t: query, solver: {method: rk4, steps: 10000}, "
             "dynamics: {layers: [{linear: 2}]}}\n")
    (issue,) = e.value.issues
    assert issue.path == "model[0].ode.solver.steps" and "10000 output interval" in issue.message


def test_the_export_step_limit_counts_the_query_intervals():
    with pytest.raises(SpecError) as e:
        spec("input: {shape: [2], query: 10000}\nmodel:\n  - ode: {t: query, solver: {method: rk4, steps: 1}, "
             "dynamics: {layers: [{linear: 2}]}}\nexport: {onnx: {steps: 10000}}\n")
    (issue,) = e.value.issues
    assert issue.path == "export.onnx.steps" and "10000 intervals" in issue.message


def test_schema_rejects_bad_series_values():
    with pytest.raises(SpecError, match="input.query"):
        spec("input: {shape: [3, 2], query: 0}\nmodel: [{linear: 2}]\n")
    with pytest.raises(SpecError, match="model\\[0\\].ode.t"):
        spec("input: {shape: [2], query: 3}\nmodel: [{ode: {t: querry, dynamics: {layers: [{linear: 2}]}}}]\n")


def test_a_series_layer_needs_its_input_and_the_message_says_which():
    with pytest.raises(SpecError) as e:
        spec("input: {shape: [3, 2], times: true}\nmodel: [{gru: {hidden: 4, time_gaps: true}}, {rnn_decoder: null}]\n")
    (issue,) = e.value.issues
    assert issue.path == "model[1].rnn_decoder" and "'query_times'" in issue.message and "query: N" in issue.hint
