"""Training losses. Each returns the scalar to minimise and a few metrics (Python floats).

* ``mse``: mean squared error; ``l1``: mean absolute error (torchdiffeq's ode_demo loss).
* ``cross_entropy``: on class scores; ``accuracy`` is reported alongside.
* ``elbo``: the latent ODE's negative evidence lower bound, as torchdiffeq's latent_ode.py:
  per sample, minus the Gaussian log-likelihood of the observations under the decoded
  trajectory with a fixed noise std, summed over times and features, plus the analytic KL of
  q(z0) = N(mean, exp(logvar)) from N(0, I), summed over latent dimensions; averaged over the
  batch. q(z0) comes from the model's ``gaussian`` layer (``last_mean``/``last_logvar``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from odespec.layers.torch_modules import GaussianSample
from odespec.spec.model import LossSpec
from odespec.train.errors import TrainError

__all__ = ["LossFn", "make_loss", "gaussian_nll", "kl_standard_normal"]

#: (model output, targets) -> (loss, metrics)
LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


def _mse(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    return F.mse_loss(out, y), {}


def _l1(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    return torch.mean(torch.abs(out - y)), {}


def _cross_entropy(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    accuracy = (out.detach().argmax(dim=-1) == y).float().mean().item()
    return F.cross_entropy(out, y), {"accuracy": accuracy}


def gaussian_nll(y: torch.Tensor, mean: torch.Tensor, noise_std: float) -> torch.Tensor:
    """Minus the log-density of ``y`` under N(mean, noise_std**2), summed over all but the batch
    dimension: shape (batch,)."""
    # sum of 0.5 (log 2 pi + log var + (y - mean)^2 / var): the constant terms once per sample,
    # outside the sum (two passes over the trajectory instead of five, forward and backward)
    d = (y - mean).flatten(1)
    const = 0.5 * (math.log(2 * math.pi) + 2.0 * math.log(noise_std)) * d.shape[1]
    return (d * d).sum(dim=1) * (0.5 / noise_std**2) + const


def kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over the last dimension: shape (batch,)."""
    return 0.5 * (torch.exp(logvar) + mean**2 - 1.0 - logvar).sum(dim=-1)


def _elbo(model: nn.Module, noise_std: float) -> LossFn:
    samplers = [m for m in model.modules() if isinstance(m, GaussianSample)]
    if len(samplers) != 1:
        raise TrainError(f"the elbo needs exactly one gaussian layer in the model, found {len(samplers)}")
    sampler = samplers[0]

    def elbo(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        # the forward pass that produced `out` left q(z0) on the sampler
        assert sampler.last_mean is not None and sampler.last_logvar is not None
        nll = gaussian_nll(y, out, noise_std)
        kl = kl_standard_normal(sampler.last_mean, sampler.last_logvar)
        loss = torch.mean(nll + kl)
        return loss, {"nll": nll.detach().mean().item(), "kl": kl.detach().mean().item()}

    return elbo


def make_loss(spec: LossSpec, model: nn.Module) -> LossFn:
    """The loss function a spec names, bound to ``model`` where it needs it (elbo)."""
    if spec.kind == "elbo":
        assert spec.noise_std is not None  # the validator fills it in
        return _elbo(model, spec.noise_std)
    return {"mse": _mse, "l1": _l1, "cross_entropy": _cross_entropy}[spec.kind]
