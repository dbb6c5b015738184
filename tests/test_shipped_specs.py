"""Every shipped spec validates, builds, runs forward and exports to ONNX with parity; the
paper's models have exactly the paper's parameter counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import odespec
from odespec.compile import count_parameters
from odespec.spec.model import OdeBlockSpec

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))

EXPECTED = {
    # spec name: (parameters, per-sample output shape)
    "ode_demo": (252, (6, 2)),
    "mnist-odenet": (208_266, (10,)),
    "mnist-resnet": (576_778, (10,)),
    "mnist-rknet": (208_266, (10,)),
    "mnist-small-odenet": (9_530, (10,)),
    "spiral-latent-ode": (1_679, (100, 2)),
    "spiral-latent-ode-rnode": (1_679, (100, 2)),
    "ode_demo_train": (252, (10, 2)),
    "circles-anode": (1_291, (2,)),
    "circles-node": (1_224, (2,)),
    "circles-rknet": (1_224, (2,)),
    "circles-resnet": (4_878, (2,)),
    "irregular-latent-ode": (3_314, (30, 2)),
    "irregular-latent-ode-extrap": (3_314, (30, 2)),
    "irregular-rnn-decoder": (3_344, (30, 2)),
    "irregular-gru-dt": (3_248, (30, 2)),
    "digits-odenet": (9_530, (10,)),
    "digits-resnet": (32_538, (10,)),
    "digits-rknet": (9_530, (10,)),
    "stiff_chain": (115, (9, 3)),
}


def series_inputs(spec, batch: int) -> dict:
    """Random inputs beside ``input`` for a spec that reads series: sorted times from 0, a mask
    with missing values, sorted query times from the query ODE block's start (0 without one)."""
    s = spec.series
    if s is None:
        return {}
    T = spec.input_shape[0]
    out = {}
    if s.times:
        out["times"] = torch.sort(torch.rand(batch, T) * 5, dim=1).values
    if s.mask:
        out["mask"] = (torch.rand(batch, *spec.input_shape) > 0.3).float()
    if s.query is not None:
        start = next((it.start for it in spec.model if isinstance(it, OdeBlockSpec) and it.query), 0.0)
        out["query_times"] = start + torch.sort(torch.rand(batch, s.query) * 5, dim=1).values
    return out


def test_the_paper_models_are_shipped():
    names = {p.stem for p in SPECS}
    assert {"ode_demo", "mnist_odenet", "mnist_resnet", "mnist_rknet", "spiral_latent_ode"} <= names


def test_digits_odenet_has_under_a_third_of_the_resnets_parameters():
    """The paper's claim is about a third of the parameters (0.22M against 0.60M on MNIST);
    the scaled-down digits pair keeps the ratio (issue #16's figure: at most 0.4)."""
    ode, res = (odespec.load_spec(ROOT / "specs" / f"digits_{n}.yaml").num_params for n in ("odenet", "resnet"))
    assert ode / res <= 0.4


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_spec_builds_runs_and_exports(path: Path, tmp_path: Path):
    spec = odespec.load_spec(path)
    params, out_shape = EXPECTED[spec.name]
    model = odespec.build(spec)
    assert spec.num_params == count_parameters(model) == params
    model.eval()
    with torch.no_grad():
        # in the model's dtype (stiff_chain is float64)
        dtype = next(model.parameters()).dtype
        y = model(torch.randn(3, *spec.input_shape, dtype=dtype), **series_inputs(spec, 3))
    assert tuple(y.shape) == (3, *out_shape) == (3, *spec.output_shape)
    assert torch.isfinite(y).all()
    result = odespec.export_onnx(model, tmp_path / spec.export.file)
    assert result.parity["max_abs_error"] <= spec.export.parity_tol


# -- the MNIST ODE-Net against a hand-written module (torchdiffeq's examples/odenet_mnist.py) ------


def norm(dim: int) -> nn.Module:
    return nn.GroupNorm(min(32, dim), dim)


class ConcatConv2d(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self._layer = nn.Conv2d(dim_in + 1, dim_out, kernel_size=3, stride=1, padding=1)

    def forward(self, t, x):
        tt = torch.ones_like(x[:, :1, :, :]) * t
        return self._layer(torch.cat([tt, x], 1))


class ODEfunc(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm1, self.conv1 = norm(dim), ConcatConv2d(dim, dim)
        self.norm2, self.conv2 = norm(dim), ConcatConv2d(dim, dim)
        self.norm3 = norm(dim)

    def forward(self, t, x):
        out = self.conv1(t, torch.relu(self.norm1(x)))
        out = self.conv2(t, torch.relu(self.norm2(out)))
        return self.norm3(out)


def _copy_conv_with_time_channel(ours: nn.Conv2d, theirs: nn.Conv2d) -> None:
    # odespec appends t as the LAST input channel, torchdiffeq prepends it: permute the weights
    with torch.no_grad():
        theirs.weight.copy_(torch.cat([ours.weight[:, -1:], ours.weight[:, :-1]], dim=1))
        theirs.bias.copy_(ours.bias)


def test_mnist_odenet_matches_the_hand_written_reference():
    from odespec.solvers import odeint

    model = odespec.build(ROOT / "specs" / "mnist_odenet.yaml", dtype="float64").eval()
    block = model[7]
    dyn = block.dynamics.layers
    ref = ODEfunc(64).double()
    ref.norm1.load_state_dict(dyn[0].state_dict())
    _copy_conv_with_time_channel(dyn[2].layer, ref.conv1._layer)
    ref.norm2.load_state_dict(dyn[3].state_dict())
    _copy_conv_with_time_channel(dyn[5].layer, ref.conv2._layer)
    ref.norm3.load_state_dict(dyn[6].state_dict())
    stem = nn.Sequential(*list(model)[:7])
    head = nn.Sequential(*list(model)[8:])
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        h = stem(x)
        t = torch.tensor([0.0, 1.0], dtype=torch.float64)
        # the same solver on both sides, so any difference is in the networks themselves
        z = odeint(ref, h, t, rtol=1e-3, atol=1e-3, method="dopri5")[-1]
        want = head(z)
        got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
