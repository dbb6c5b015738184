"""Training losses. Each takes a forward pass's :class:`~odespec.compile.ModelOutput` (from
``ODENet.forward_with_posterior``) and the targets, and returns the scalar to minimise and a few
metrics (Python floats).

* ``mse``: mean squared error; ``l1``: mean absolute error (torchdiffeq's ode_demo loss).
* ``cross_entropy``: on class scores; ``accuracy`` is reported alongside.
* ``elbo``: the latent ODE's negative evidence lower bound, as torchdiffeq's latent_ode.py:
  per sample, minus the Gaussian log-likelihood of the observations under the decoded
  trajectory with a fixed noise std, summed over times and features, plus the analytic KL of
  q(z0) = N(mean, exp(logvar)) from N(0, I), summed over latent dimensions; averaged over the
  batch. q(z0) is the ``posterior`` of the output: the distribution the model's ``gaussian``
  layer sampled from in that forward pass.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from odespec.compile.model import ModelOutput
from odespec.layers.torch_modules import GaussianSample
from odespec.spec.model import LossSpec
from odespec.train.errors import TrainError

__all__ = ["LossFn", "make_loss", "gaussian_nll", "kl_standard_normal"]

#: (forward pass's output, targets) -> (loss, metrics)
LossFn = Callable[[ModelOutput, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


def _mse(pred: ModelOutput, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    return F.mse_loss(pred.output, y), {}


def _l1(pred: ModelOutput, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    return torch.mean(torch.abs(pred.output - y)), {}


def _cross_entropy(pred: ModelOutput, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    out = pred.output
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

    def elbo(pred: ModelOutput, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        q = pred.posterior
        if q is None:
            raise TrainError("the elbo got no q(z0) with the model's output",
                             "run the model with forward_with_posterior, which returns it")
        nll = gaussian_nll(y, pred.output, noise_std)
        kl = kl_standard_normal(q.mean, q.logvar)
        loss = torch.mean(nll + kl)
        return loss, {"nll": nll.detach().mean().item(), "kl": kl.detach().mean().item()}

    return elbo


def make_loss(spec: LossSpec, model: nn.Module) -> LossFn:
    """The loss function a spec names, bound to ``model`` where it needs it (elbo)."""
    if spec.kind == "elbo":
        assert spec.noise_std is not None  # the validator fills it in
        return _elbo(model, spec.noise_std)
    return {"mse": _mse, "l1": _l1, "cross_entropy": _cross_entropy}[spec.kind]
