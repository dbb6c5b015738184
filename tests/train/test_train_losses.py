"""Each loss against a computation by hand (and the elbo against torchdiffeq's formulas)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from odespec.compile import ModelOutput
from odespec.layers.torch_modules import GaussianSample
from odespec.spec.model import LossSpec
from odespec.train import TrainError
from odespec.train.losses import make_loss


def test_mse_and_l1():
    out = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    y = torch.tensor([[1.0, 0.0], [4.0, 5.0]])
    mse, m = make_loss(LossSpec("mse"), nn.Identity())(ModelOutput(out), y)
    assert mse.item() == pytest.approx((0 + 4 + 1 + 0) / 4) and m == {}
    l1, _ = make_loss(LossSpec("l1"), nn.Identity())(ModelOutput(out), y)
    assert l1.item() == pytest.approx((0 + 2 + 1 + 0) / 4)  # torchdiffeq: mean(abs(pred - true))


def test_cross_entropy_and_accuracy():
    out = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    y = torch.tensor([0, 1])
    loss, m = make_loss(LossSpec("cross_entropy"), nn.Identity())(ModelOutput(out), y)
    by_hand = [-(2 - math.log(math.exp(2) + 2)), -(1 - math.log(1 + math.e + math.exp(3)))]
    assert loss.item() == pytest.approx(sum(by_hand) / 2)
    assert m == {"accuracy": 0.5}


# torchdiffeq's examples/latent_ode.py, verbatim in numpy
def _log_normal_pdf(x, mean, logvar):
    return -0.5 * (np.log(2 * np.pi) + logvar + (x - mean) ** 2 / np.exp(logvar))


def _normal_kl(mu1, lv1, mu2, lv2):
    v1, v2 = np.exp(lv1), np.exp(lv2)
    return lv2 / 2 - lv1 / 2 + (v1 + (mu1 - mu2) ** 2) / (2 * v2) - 0.5


def test_elbo_is_torchdiffeqs_latent_ode_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), GaussianSample())
    model.train()
    q = model[1].distribution(model[0](torch.randn(5, 3)))
    out, y = torch.randn(5, 7, 2), torch.randn(5, 7, 2)
    loss, m = make_loss(LossSpec("elbo", 0.3), model)(ModelOutput(out, q), y)

    mu, lv = q.mean.detach().numpy(), q.logvar.detach().numpy()
    noise_logvar = 2 * np.log(np.full(out.shape, 0.3))
    logpx = _log_normal_pdf(y.numpy(), out.numpy(), noise_logvar).sum(-1).sum(-1)
    kl = _normal_kl(mu, lv, np.zeros_like(mu), np.zeros_like(lv)).sum(-1)
    assert loss.item() == pytest.approx(np.mean(-logpx + kl), rel=1e-5)
    assert m["nll"] == pytest.approx(np.mean(-logpx), rel=1e-5) and m["kl"] == pytest.approx(np.mean(kl), rel=1e-5)


def test_elbo_gradient_reaches_the_encoder():
    model = nn.Sequential(nn.Linear(3, 4), GaussianSample())
    q = model[1].distribution(model[0](torch.randn(2, 3)))
    z = model[1].sample(q)
    loss, _ = make_loss(LossSpec("elbo", 1.0), model)(ModelOutput(z, q), torch.zeros_like(z))
    loss.backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


def test_elbo_needs_one_gaussian_layer():
    with pytest.raises(TrainError, match="exactly one gaussian layer"):
        make_loss(LossSpec("elbo", 0.3), nn.Linear(2, 2))


def test_elbo_takes_q_z0_from_the_output_it_is_given():
    from odespec.train.losses import gaussian_nll, kl_standard_normal

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), GaussianSample())
    q = model[1].distribution(model[0](torch.randn(5, 3)))
    model(torch.randn(5, 3))  # a later forward pass has no say in that output's loss
    out, y = torch.randn(5, 7, 2), torch.randn(5, 7, 2)
    loss, _ = make_loss(LossSpec("elbo", 0.3), model)(ModelOutput(out, q), y)
    assert torch.equal(loss, torch.mean(gaussian_nll(y, out, 0.3) + kl_standard_normal(q.mean, q.logvar)))
    # the layer keeps nothing of its forward passes for a loss to read
    assert not [k for k, v in vars(model[1]).items() if isinstance(v, torch.Tensor)]


def test_elbo_without_q_z0_is_an_error():
    model = nn.Sequential(nn.Linear(3, 4), GaussianSample())
    out = torch.randn(2, 2)
    with pytest.raises(TrainError, match=r"no q\(z0\)"):
        make_loss(LossSpec("elbo", 0.3), model)(ModelOutput(out), out)
