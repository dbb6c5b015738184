"""Training losses. Each takes a forward pass's :class:`~odespec.compile.ModelOutput` (from
``ODENet.forward_with_posterior``), the targets and optionally the targets' mask, and returns
the scalar to minimise and a few metrics (Python floats).

* ``mse``: mean squared error; ``l1``: mean absolute error (torchdiffeq's ode_demo loss).
* ``cross_entropy``: on class scores; ``accuracy`` is reported alongside. Takes no mask.
* ``elbo``: the latent ODE's negative evidence lower bound, as torchdiffeq's latent_ode.py:
  per sample, minus the Gaussian log-likelihood of the observations under the decoded
  trajectory with a fixed noise std, summed over times and features, plus the analytic KL of
  q(z0) = N(mean, exp(logvar)) from N(0, I), summed over latent dimensions; averaged over the
  batch. q(z0) is the ``posterior`` of the output: the distribution the model's ``gaussian``
  layer sampled from in that forward pass.

**Masked targets** (irregular series: ``y_mask`` 1 = observed, 0 = missing or padding). Only
observed entries count, normalised per sample:

* ``mse``/``l1``: per sample, the mean of the squared (absolute) error over its observed
  entries; then the mean over the samples that have at least one observed entry (a sample with
  none does not count; a batch with none has loss 0). A sample's weight does not depend on how
  many of its values were observed, as each sample is one series; with every entry observed
  this is the plain mean.
* ``elbo``: per sample, the Gaussian negative log-likelihood summed over its observed entries,
  plus the KL term; the mean over the batch (every sample counts: the KL is there even with no
  observation).

The metric ``observed`` is the fraction of target entries observed. Masked entries are removed
with ``torch.where`` before any arithmetic (and the targets there replaced by 0), never by
multiplying by the mask: a NaN target times 0 is NaN, and its gradient too.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from odespec.compile.model import ModelOutput
from odespec.layers.torch_modules import GaussianSample
from odespec.spec.model import LossSpec
from odespec.train.errors import TrainError

__all__ = ["LossFn", "make_loss", "gaussian_nll", "kl_standard_normal", "counted_samples"]

#: (forward pass's output, targets, targets' mask or None) -> (loss, metrics)
LossFn = Callable[[ModelOutput, torch.Tensor, Optional[torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]
Metrics = dict[str, float]


def _observed(pred: torch.Tensor, y: torch.Tensor,
              y_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the error pred - y with masked entries 0, the mask as booleans, flattened per sample
    (batch, entries); the observed entries per sample)."""
    seen = (y_mask != 0).reshape(y.shape).flatten(1)
    out, target = pred.flatten(1), y.flatten(1)
    # the target is replaced before the subtraction: a NaN there would make d NaN, and where()'s
    # gradient 0 times d's NaN gradient would still be NaN
    d = torch.where(seen, out - torch.where(seen, target, torch.zeros_like(target)), torch.zeros_like(out))
    return d, seen, seen.sum(dim=1)


def _per_sample_mean(errors: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Each sample's mean over its observed entries, averaged over the samples with any."""
    has = counts > 0
    per_sample = errors.sum(dim=1) / counts.clamp(min=1)
    return per_sample.sum() / has.sum().clamp(min=1)


def _fraction(seen: torch.Tensor) -> Metrics:
    return {"observed": seen.float().mean().item()}


def counted_samples(kind: str, n: int, y_mask: Optional[torch.Tensor]) -> int:
    """How many of a chunk's ``n`` samples its ``kind`` loss averages over: for masked mse/l1 the
    samples with an observed entry, else all (what evaluation weights a chunk's loss by)."""
    if y_mask is None or kind not in ("mse", "l1"):
        return n
    return int((y_mask.reshape(n, -1) != 0).any(dim=1).sum())


def _mse(pred: ModelOutput, y: torch.Tensor, y_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Metrics]:
    if y_mask is None:
        return F.mse_loss(pred.output, y), {}
    d, seen, counts = _observed(pred.output, y, y_mask)
    return _per_sample_mean(d * d, counts), _fraction(seen)


def _l1(pred: ModelOutput, y: torch.Tensor, y_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Metrics]:
    if y_mask is None:
        return torch.mean(torch.abs(pred.output - y)), {}
    d, seen, counts = _observed(pred.output, y, y_mask)
    return _per_sample_mean(torch.abs(d), counts), _fraction(seen)


def _cross_entropy(pred: ModelOutput, y: torch.Tensor,
                   y_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Metrics]:
    if y_mask is not None:
        raise TrainError("cross_entropy takes one class label per sample, without a mask",
                         "drop y_mask from the data, or use loss mse/l1 for masked values")
    out = pred.output
    accuracy = (out.detach().argmax(dim=-1) == y).float().mean().item()
    return F.cross_entropy(out, y), {"accuracy": accuracy}


def gaussian_nll(y: torch.Tensor, mean: torch.Tensor, noise_std: float,
                 y_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Minus the log-density of ``y`` under N(mean, noise_std**2), summed over all but the batch
    dimension (over the observed entries only, with ``y_mask``): shape (batch,)."""
    # sum of 0.5 (log 2 pi + log var + (y - mean)^2 / var): the constant terms once per sample,
    # outside the sum (two passes over the trajectory instead of five, forward and backward)
    per_entry = 0.5 * (math.log(2 * math.pi) + 2.0 * math.log(noise_std))
    if y_mask is None:
        d = (y - mean).flatten(1)
        return (d * d).sum(dim=1) * (0.5 / noise_std**2) + per_entry * d.shape[1]
    d, _, counts = _observed(mean, y, y_mask)
    return (d * d).sum(dim=1) * (0.5 / noise_std**2) + per_entry * counts.to(d.dtype)


def kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over the last dimension: shape (batch,)."""
    return 0.5 * (torch.exp(logvar) + mean**2 - 1.0 - logvar).sum(dim=-1)


def _elbo(model: nn.Module, noise_std: float) -> LossFn:
    samplers = [m for m in model.modules() if isinstance(m, GaussianSample)]
    if len(samplers) != 1:
        raise TrainError(f"the elbo needs exactly one gaussian layer in the model, found {len(samplers)}")

    def elbo(pred: ModelOutput, y: torch.Tensor, y_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Metrics]:
        q = pred.posterior
        if q is None:
            raise TrainError("the elbo got no q(z0) with the model's output",
                             "run the model with forward_with_posterior, which returns it")
        nll = gaussian_nll(y, pred.output, noise_std, y_mask)
        kl = kl_standard_normal(q.mean, q.logvar)
        loss = torch.mean(nll + kl)
        metrics = {"nll": nll.detach().mean().item(), "kl": kl.detach().mean().item()}
        if y_mask is not None:
            metrics.update(_fraction(y_mask != 0))
        return loss, metrics

    return elbo


def make_loss(spec: LossSpec, model: nn.Module) -> LossFn:
    """The loss function a spec names, bound to ``model`` where it needs it (elbo)."""
    if spec.kind == "elbo":
        assert spec.noise_std is not None  # the validator fills it in
        return _elbo(model, spec.noise_std)
    return {"mse": _mse, "l1": _l1, "cross_entropy": _cross_entropy}[spec.kind]
