"""Compiled models that read irregular series: ``model(x, times, mask, query_times)``.

The properties of the issue: each sample's outputs are at its own times exactly as if it were
solved alone (one batch, many grids), masked-out values change nothing, missing inputs are a
clear error; and the pieces (ODE block with ``t: query``, ODE-RNN) agree with independent
references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import odespec
from odespec.compile import ODEBlock, count_parameters
from odespec.errors import SeriesInputError
from odespec.layers.series_modules import ODERNN, Series
from odespec.solvers import solve
from odespec.solvers.config import SolverConfig
from odespec.spec import parse_spec

T, F, Q = 6, 2, 5


def series_spec(*, encoder: str = "ode_rnn: {hidden: 8}", solver: str = "{method: rk4, steps: 3}",
                output: str = "trajectory", mask: bool = True, extra: str = "") -> str:
    return f"""
odespec: 1
name: series
dtype: float64
input: {{shape: [{T}, {F}], times: true, mask: {str(mask).lower()}, query: {Q}}}
model:
  - {encoder}
  - linear: 6
  - gaussian
  - ode:
      t: query
      start: -0.5
      output: {output}
      dynamics: {{layers: [{{linear: 8}}, tanh, {{linear: 3}}]}}
      solver: {solver}
      {extra}
  - linear: 2
"""


def build(text: str) -> odespec.ODENet:
    return odespec.build(parse_spec(text, "series.yaml")).eval()


def random_inputs(batch: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """Per-sample grids: sorted observation times in [0, 3], a mask with missing values (every
    slot observed in at least one feature half the time), sorted query times in [-0.5, 4]."""
    g = torch.Generator().manual_seed(seed)
    times = torch.sort(torch.rand(batch, T, generator=g, dtype=dtype) * 3, dim=1).values
    mask = (torch.rand(batch, T, F, generator=g) > 0.4).to(dtype)
    query = torch.sort(torch.rand(batch, Q, generator=g, dtype=dtype) * 4.5 - 0.5, dim=1).values
    return {"input": torch.randn(batch, T, F, generator=g, dtype=dtype), "times": times, "mask": mask,
            "query_times": query}


def call(model: odespec.ODENet, inputs: dict[str, torch.Tensor], rows=slice(None)) -> torch.Tensor:
    with torch.no_grad():
        return model(*(inputs[n][rows] for n in model.spec.series.input_names))


def test_a_full_series_spec_validates_compiles_and_counts_its_parameters():
    model = build(series_spec())
    spec = model.spec
    assert spec.series.input_names == ("input", "times", "mask", "query_times")
    block = spec.ode_blocks[0]
    assert block.query and block.t == () and block.start == -0.5 and block.query_times == Q
    assert block.out_shape == (Q, 3) and spec.output_shape == (Q, 2)
    assert count_parameters(model) == spec.num_params
    # fixed steps per query interval, each interval its own solve: Q * steps * stages
    assert block.nfe() == Q * 3 * 4 and block.count_steps() == Q * 3
    y = call(model, random_inputs(4))
    assert y.shape == (4, Q, 2) and torch.isfinite(y).all()
    assert model.ode_blocks[0].nfe_forward == block.nfe()  # the model adds its encoder's (below)


def test_output_final_is_the_state_at_the_last_query_time():
    inputs = random_inputs(3)
    traj = build(series_spec(output="trajectory"))
    final = build(series_spec(output="final"))
    assert final.spec.output_shape == (2,)
    torch.testing.assert_close(call(final, inputs), call(traj, inputs)[:, -1])


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), encoder=st.sampled_from(["ode_rnn: {hidden: 8}",
                                                           "ode_rnn: {hidden: 8, reverse: false}",
                                                           "gru: {hidden: 8, time_gaps: true}"]))
def test_two_samples_with_different_grids_give_what_each_gives_alone(seed, encoder):
    model = build(series_spec(encoder=encoder))
    inputs = random_inputs(2, seed)
    both = call(model, inputs)
    for b in range(2):
        alone = call(model, inputs, slice(b, b + 1))
        torch.testing.assert_close(both[b:b + 1], alone, rtol=1e-12, atol=1e-12)


def test_batching_in_float32_agrees_to_round_off():
    model = build(series_spec()).float()
    inputs = {k: v.float() for k, v in random_inputs(5, 3).items()}
    both = call(model, inputs)
    for b in range(5):
        torch.testing.assert_close(both[b:b + 1], call(model, inputs, slice(b, b + 1)), rtol=1e-5, atol=1e-6)


def test_adaptive_query_block_gives_each_sample_what_it_gets_alone_to_tolerance():
    model = build(series_spec(solver="{method: dopri5, rtol: 1e-10, atol: 1e-12}"))
    inputs = random_inputs(3, 5)
    both = call(model, inputs)
    for b in range(3):
        torch.testing.assert_close(both[b:b + 1], call(model, inputs, slice(b, b + 1)), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("encoder", ["ode_rnn: {hidden: 8}", "ode_rnn: {hidden: 8, reverse: false, output: last}",
                                     "rnn: {hidden: 8, time_gaps: true}"])
def test_masked_out_values_change_nothing(encoder):
    model = build(series_spec(encoder=encoder))
    inputs = random_inputs(4, 7)
    clean = call(model, inputs)
    garbage = dict(inputs)
    garbage["input"] = torch.where(inputs["mask"] > 0, inputs["input"], torch.full_like(inputs["input"], math.nan))
    torch.testing.assert_close(call(model, garbage), clean)
    garbage["input"] = torch.where(inputs["mask"] > 0, inputs["input"], torch.full_like(inputs["input"], 1e6))
    torch.testing.assert_close(call(model, garbage), clean)


def test_a_slot_with_nothing_observed_leaves_the_ode_rnn_state_to_the_ode():
    # padding repeats the last time with mask 0: the encoder's output is the unpadded series'
    model = build(series_spec())
    enc = model[0]
    inputs = random_inputs(1, 11)
    x, times, mask = inputs["input"], inputs["times"], inputs["mask"].clone()
    mask[:, 0] = 1.0
    padded_times = times.clone()
    padded_times[:, 4:] = times[:, 3:4]
    padded_mask = mask.clone()
    padded_mask[:, 4:] = 0
    with torch.no_grad():
        h_padded = enc(x, Series(padded_times, padded_mask))
        # the same with the padded slots' values changed: still the same state
        h_other = enc(x + 5 * (padded_mask == 0), Series(padded_times, padded_mask))
    torch.testing.assert_close(h_other, h_padded)


def _reference_ode_rnn(enc: ODERNN, x: torch.Tensor, times: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One sample's ODE-RNN with the ordinary solver over decreasing times (no change of
    variable), written out from the paper: h = 0 at the last time, GRU update at each observed
    slot, ODE backwards between slots, down to start."""
    h = torch.zeros(1, enc.hidden, dtype=x.dtype)
    prev = float(times[-1])
    for k in range(x.shape[0] - 1, -1, -1):
        if float(times[k]) != prev:
            span = torch.tensor([prev, float(times[k])], dtype=x.dtype)
            h = solve(enc.dynamics, h, span, method="rk4", options={"steps": enc.solver.steps}).y_last
        if mask[k].any():
            inp = torch.cat([torch.where(mask[k] > 0, x[k], 0.0), mask[k]])[None]
            h = enc.cell(inp, h)
        prev = float(times[k])
    span = torch.tensor([prev, enc.start], dtype=x.dtype)
    return solve(enc.dynamics, h, span, method="rk4", options={"steps": enc.solver.steps}).y_last


def test_the_reversed_ode_rnn_is_the_paper_encoder_solved_backwards_in_time():
    model = build(series_spec(encoder="ode_rnn: {hidden: 8, solver: {method: rk4, steps: 2}, start: -0.5}"))
    enc = model[0]
    inputs = random_inputs(3, 2)
    with torch.no_grad():
        got = enc(inputs["input"], Series(inputs["times"], inputs["mask"]))
        for b in range(3):
            want = _reference_ode_rnn(enc, inputs["input"][b], inputs["times"][b], inputs["mask"][b])
            torch.testing.assert_close(got[b:b + 1], want, rtol=1e-12, atol=1e-12)


def test_time_gaps_feed_the_gap_to_the_previous_observation():
    model = build(series_spec(encoder="gru: {hidden: 8, time_gaps: true}", mask=False))
    gap = model[0]
    inputs = random_inputs(2, 4)
    x, times = inputs["input"], inputs["times"]
    dt = torch.cat([torch.zeros(2, 1, dtype=x.dtype), times.diff(dim=1)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(gap(x, Series(times)), gap.encoder(torch.cat([x, dt[..., None]], -1)))


def test_rnn_decoder_steps_its_cell_through_the_query_gaps():
    text = f"""
odespec: 1
name: decoder
dtype: float64
input: {{shape: [{T}, {F}], times: true, query: {Q}}}
model:
  - gru: {{hidden: 8, time_gaps: true}}
  - rnn_decoder: {{start: 0.25}}
  - linear: 2
"""
    model = build(text)
    assert model.spec.output_shape == (Q, 2) and count_parameters(model) == model.spec.num_params
    dec = model[1]
    inputs = random_inputs(3, 9)
    h0 = torch.randn(3, 8, dtype=torch.float64)
    q = inputs["query_times"]
    with torch.no_grad():
        got = dec(h0, Series(query_times=q))
        h, prev = h0, torch.full((3,), 0.25, dtype=torch.float64)
        for k in range(Q):
            h = dec.cell((q[:, k] - prev)[:, None], h)
            torch.testing.assert_close(got[:, k], h)
            prev = q[:, k]
        y = model(inputs["input"], times=inputs["times"], query_times=q)
    assert y.shape == (3, Q, 2)


def test_calling_without_an_input_the_model_reads_names_it():
    model = build(series_spec())
    inputs = random_inputs(2)
    with pytest.raises(SeriesInputError, match="'query_times'") as e:
        model(inputs["input"], times=inputs["times"], mask=inputs["mask"])
    assert "query_times=..." in str(e.value)
    with pytest.raises(SeriesInputError, match="'times'"):
        model(inputs["input"])
    with pytest.raises(SeriesInputError, match="'mask'"):
        model.forward_with_posterior(inputs["input"], times=inputs["times"], query_times=inputs["query_times"])


def test_an_input_the_model_does_not_read_or_of_the_wrong_shape_is_refused():
    plain = odespec.build(parse_spec("odespec: 1\nname: p\ninput: {shape: [2]}\nmodel: [{linear: 2}]\n", "p.yaml"))
    with pytest.raises(SeriesInputError, match="does not read the input 'times'"):
        plain(torch.randn(2, 2), times=torch.zeros(2, 3))
    model = build(series_spec())
    inputs = random_inputs(2)
    with pytest.raises(SeriesInputError, match=r"'times' has shape \(2, 5\)"):
        model(inputs["input"], inputs["times"][:, :5], inputs["mask"], inputs["query_times"])


def test_query_times_before_the_start_are_a_series_input_error():
    model = build(series_spec())
    inputs = random_inputs(2)
    inputs["query_times"][1, 0] = -3.0
    with pytest.raises(SeriesInputError, match="non-decreasing from the start: sample 1"):
        call(model, inputs)


def test_forward_with_posterior_is_the_forward_pass_and_keeps_q_z0():
    model = build(series_spec())
    inputs = random_inputs(3)
    args = [inputs[n] for n in model.spec.series.input_names]
    with torch.no_grad():
        out = model.forward_with_posterior(*args)
        torch.testing.assert_close(out.output, model(*args))
    assert out.posterior is not None and out.posterior.mean.shape == (3, 3)


def test_with_solver_swaps_the_solvers_and_keeps_the_weights():
    model = build(series_spec(solver="{method: dopri5, rtol: 1e-10, atol: 1e-12}"))
    fixed = SolverConfig.fixed("rk4", 40)
    block = model[3]
    assert isinstance(block, ODEBlock)
    twin = block.with_solver(fixed)
    assert twin.reads_series and twin.dynamics is block.dynamics and twin.spec.nfe() == Q * 40 * 4
    enc = model[0]
    enc_twin = enc.with_solver(fixed)
    assert enc_twin.cell is enc.cell and enc_twin.dynamics is enc.dynamics
    inputs = random_inputs(2, 1)
    series = Series(inputs["times"], inputs["mask"], inputs["query_times"])
    with torch.no_grad():
        z0 = model[2](model[1](enc(inputs["input"], series)))
        h = enc(inputs["input"], series)
        same = enc.with_solver(SolverConfig.fixed("rk4", 1))  # the encoder's own solver: the same function
        torch.testing.assert_close(same(inputs["input"], series), h, rtol=0, atol=0)
        torch.testing.assert_close(enc_twin(inputs["input"], series), h, rtol=1e-2, atol=1e-3)
        torch.testing.assert_close(twin(z0, series), block(z0, series), rtol=1e-7, atol=1e-9)
    assert twin.nfe_forward == twin.spec.nfe()


@pytest.mark.parametrize("gradient", ["backprop", "adjoint", "checkpoint"])
def test_every_gradient_method_trains_through_the_series_model(gradient):
    # enough steps that the adjoint's own backward discretisation agrees with backprop's closely
    solver = "{method: rk4, steps: 8}"
    model = build(series_spec(solver=solver, encoder=f"ode_rnn: {{hidden: 8, gradient: {gradient}, solver: {solver}}}",
                              extra=f"gradient: {gradient}"))
    reference = build(series_spec(solver=solver, encoder=f"ode_rnn: {{hidden: 8, solver: {solver}}}"))
    reference.load_state_dict(model.state_dict())
    inputs = random_inputs(3, 6)
    args = [inputs[n] for n in model.spec.series.input_names]
    grads = []
    for m in (model, reference):
        m.zero_grad()
        m(*args).square().sum().backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    block = model[3]
    assert block.last_stats.nfe == block.nfe_forward > 0
    assert (block.nfe_backward > 0) == (gradient != "backprop")
    tol = 1e-5 if gradient == "adjoint" else 1e-10
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_the_training_solve_hook_works_on_a_query_block():
    from odespec.spec.model import RegulariseSpec
    from odespec.train.regularise import attach, regularisation_loss

    model = build(series_spec()).train()
    spec = RegulariseSpec(kinetic=1.0, jacobian=1.0)
    hooks = attach(model, model.ode_blocks, spec, max_nfe=None)
    inputs = random_inputs(3)
    y = model(*(inputs[n] for n in model.spec.series.input_names))
    loss, metrics = regularisation_loss(hooks, spec)
    assert y.shape == (3, Q, 2) and loss is not None and loss.item() > 0
    assert set(metrics) == {"reg_kinetic", "reg_jacobian"}
    (y.sum() + loss).backward()


def test_the_forward_nfe_counts_the_ode_rnn_encoder_and_the_query_block():
    # ode_rnn (default rk4 x 1 per gap), reversed: T gaps (the first from the last time to itself)
    # and one more back to start, 4 evaluations each; the query block: Q intervals x 3 rk4 steps
    model = build(series_spec())
    call(model, random_inputs(3))
    encoder, block = model[0], model.ode_blocks[0]
    assert encoder.nfe_forward == 4 * (T + 1)
    assert block.nfe_forward == 4 * 3 * Q
    assert model.nfe_forward == 4 * (T + 1) + 4 * 3 * Q
