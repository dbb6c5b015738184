"""Compiling specs into torch modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import odespec
from odespec.compile import ODEBlock, count_parameters
from odespec.errors import BuildError
from odespec.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "specs" / "ode_demo.yaml"


class HandWrittenODEFunc(nn.Module):
    """torchdiffeq's ode_demo ODEFunc."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 50), nn.Tanh(), nn.Linear(50, 2))

    def forward(self, t, y):
        return self.net(y**3)


def test_ode_demo_builds_with_the_counted_parameters_and_shapes():
    spec = odespec.load_spec(DEMO)
    model = odespec.build(spec)
    assert count_parameters(model) == spec.num_params == 252
    x = torch.randn(5, 2)
    y = model(x)
    assert y.shape == (5, 6, 2)
    torch.testing.assert_close(y[:, 0], x)  # the trajectory starts at the input
    assert model.nfe_forward > 0


def test_ode_demo_matches_a_hand_written_module_solved_by_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    model = odespec.build(DEMO, dtype="float64")
    ref = HandWrittenODEFunc().double()
    dyn = model[0].dynamics.layers  # power, linear, tanh, linear
    with torch.no_grad():
        ref.net[0].weight.copy_(dyn[1].weight)
        ref.net[0].bias.copy_(dyn[1].bias)
        ref.net[2].weight.copy_(dyn[3].weight)
        ref.net[2].bias.copy_(dyn[3].bias)
    y0 = torch.tensor([[2.0, 0.0], [0.5, -1.0]], dtype=torch.float64)
    t = torch.tensor(model[0].spec.t, dtype=torch.float64)
    want = torchdiffeq.odeint(ref, y0, t, rtol=1e-10, atol=1e-12, method="dopri5").movedim(0, 1)
    got = model(y0)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_build_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a = odespec.build(DEMO)
    b = odespec.build(DEMO)
    assert torch.equal(torch.random.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_time_concat_adds_one_input_channel_and_builds_what_the_spec_counted():
    spec = parse_spec(
        """
odespec: 1
name: tc
input: {shape: [3, 8, 8]}
model:
  - ode:
      dynamics:
        time: concat
        layers: [{conv2d: {channels: 3, padding: 1}}, tanh, {conv2d: {channels: 3, padding: 1}}]
      solver: {method: rk4, steps: 2}
  - flatten
  - linear: 4
"""
    )
    model = odespec.build(spec)
    conv = model[0].dynamics.layers[0].layer
    assert conv.in_channels == 4  # 3 state channels + t
    assert count_parameters(model) == spec.num_params
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)
    # the dynamics really depend on t: shifting the time span changes the result
    assert isinstance(model[0], ODEBlock)


def test_float64_and_missing_cuda():
    model = odespec.build(DEMO, dtype="float64")
    assert next(model.parameters()).dtype == torch.float64
    assert model(torch.randn(3, 2, dtype=torch.float64)).dtype == torch.float64
    if not torch.cuda.is_available():
        with pytest.raises(BuildError, match="no usable CUDA"):
            odespec.build(DEMO, device="cuda")


def test_fixed_step_block_reports_its_nfe():
    spec = parse_spec(
        """
odespec: 1
name: fixed
input: {shape: [2]}
model:
  - ode:
      dynamics: {layers: [{linear: 2}]}
      solver: {method: rk4, steps: 5}
"""
    )
    model = odespec.build(spec)
    model(torch.randn(4, 2))
    assert model.nfe_forward == 20  # 5 steps x 4 stages


def test_solver_controller_from_the_spec_reaches_the_solver():
    from odespec.solvers import odeint

    text = """
odespec: 1
name: ctl
input: {shape: [2]}
model:
  - ode:
      t: [0, 2]
      dynamics: {layers: [{linear: 16}, tanh, {linear: 2}]}
      solver: {method: dopri5, rtol: 1e-5, atol: 1e-6, controller: CTL}
"""
    x = torch.randn(4, 2)
    for ctl in ("pi", "i"):
        model = odespec.build(parse_spec(text.replace("CTL", ctl)))
        with torch.no_grad():
            got = model(x)
            want = odeint(model[0].dynamics, x, torch.tensor([0.0, 2.0]), rtol=1e-5, atol=1e-6,
                          options={"controller": ctl})[-1]
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_elu_and_relu_after_a_linear_layer_work_in_place_with_the_same_gradients():
    spec = parse_spec(
        """
odespec: 1
name: inplace
input: {shape: [3]}
model:
  - relu
  - linear: 6
  - relu
  - tanh
  - elu
  - ode:
      t: [0, 1]
      dynamics: {time: concat, layers: [elu, {linear: 8}, elu, {linear: 8}, tanh, elu, {linear: 6}]}
      solver: {method: rk4, steps: 2}
  - residual: [{linear: 6}, relu]
  - linear: 2
"""
    )
    model = odespec.build(spec)
    flags = [getattr(m, "inplace", None) for m in model if isinstance(m, (nn.ReLU, nn.ELU))]
    assert flags == [False, True, False]  # the input, after linear, after tanh
    dyn = [getattr(m, "inplace", None) for m in model[5].dynamics.layers if isinstance(m, nn.ELU)]
    assert dyn == [False, True, False]  # the state, after a time-concat linear, after tanh
    assert model[6].inner[1].inplace
    x = torch.randn(5, 3)
    out = model(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    for m in model.modules():
        if isinstance(m, (nn.ReLU, nn.ELU)):
            m.inplace = False
    want = torch.autograd.grad(model(x).square().sum(), list(model.parameters()))
    for a, b in zip(grads, want):
        torch.testing.assert_close(a, b)


def test_models_deep_copy_and_pickle():
    """Copies of a compiled model (EMA/SWA averaging, the CPU copy exported from a CUDA model)
    and pickles of it work: the spec objects it keeps hold read-only option mappings."""
    import copy
    import pickle

    model = odespec.build(ROOT / "specs" / "ode_demo_train.yaml")
    x = torch.randn(4, 2)
    with torch.no_grad():
        want = model(x)
        for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert torch.equal(twin(x), want)
            assert twin.spec == model.spec
    assert dict(pickle.loads(pickle.dumps(model.spec)).train.data.options) == dict(model.spec.train.data.options)


def test_forward_with_posterior_is_model_x_with_q_z0_beside_it():
    from odespec.compile import ModelOutput

    text = ("odespec: 1\nname: q\ninput: {shape: [3]}\nmodel:\n  - linear: 4\n  - gaussian\n"
            "  - ode: {solver: {method: rk4, steps: 4}, dynamics: {layers: [{linear: 2}, tanh]}}\n  - linear: 2\n")
    model = odespec.build(parse_spec(text))
    x = torch.randn(5, 3)
    for train in (True, False):
        model.train(train)
        torch.manual_seed(3)
        want = model(x)
        torch.manual_seed(3)
        got = model.forward_with_posterior(x)
        assert isinstance(got, ModelOutput)
        assert torch.equal(got.output, want)  # the same operations, the same random draw
        mean, logvar = model[0](x).chunk(2, dim=-1)
        assert torch.equal(got.posterior.mean, mean) and torch.equal(got.posterior.logvar, logvar)
    plain = odespec.build(DEMO)
    out = plain.forward_with_posterior(torch.randn(2, 2))
    assert out.posterior is None and out.output.shape == (2, 6, 2)
