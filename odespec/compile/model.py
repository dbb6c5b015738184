"""Assemble a validated :class:`Spec` into a ``torch.nn.Module`` (an ODE-Net)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from odespec.compile.ode_block import BlockBase, make_block
from odespec.errors import BuildError
from odespec.layers import LayerContext, LayerUse
from odespec.layers.torch_modules import DiagonalGaussian, GaussianSample
from odespec.spec.model import LayerSpec, OdeBlockSpec, Spec

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class ModelOutput(NamedTuple):
    """A forward pass's output with what the training losses take beside it."""

    output: torch.Tensor
    #: q(z0) of the model's gaussian layer (the ELBO's KL term); None in a model without one
    posterior: Optional[DiagonalGaussian] = None


class ODENet(nn.Sequential):
    """The compiled model: layers and ODE blocks in spec order. Input (batch, *input_shape).

    ``modules`` are built from ``spec.model``, one per item; ``uses`` holds, for each module, the
    :class:`LayerUse` its layer type built it from (None for an ODE block), so that later stages
    ask the layer type about the module. ``model(x)`` is the output alone (inference, export);
    :meth:`forward_with_posterior` keeps q(z0) beside it for the losses.
    """

    def __init__(self, spec: Spec, modules: list[nn.Module]):
        super().__init__(*modules)
        self.spec = spec
        self.uses: tuple[Optional[LayerUse], ...] = _layer_uses(spec)

    def forward_with_posterior(self, x: torch.Tensor) -> ModelOutput:
        """The forward pass of ``model(x)``, operation for operation, also returning the
        distribution the gaussian layer samples from (the last one, should there be more)."""
        posterior: Optional[DiagonalGaussian] = None
        for module in self:
            if isinstance(module, GaussianSample):
                posterior = module.distribution(x)
                x = module.sample(posterior)
            else:
                x = module(x)
        return ModelOutput(x, posterior)

    @property
    def ode_blocks(self) -> list[BlockBase]:
        """The ODE blocks (of every family), in order."""
        return [m for m in self if isinstance(m, BlockBase)]

    @property
    def nfe_forward(self) -> int:
        """Function evaluations of the last forward pass, over all ODE blocks."""
        return sum(b.nfe_forward for b in self.ode_blocks)


def resolve_device(name: str) -> torch.device:
    """``cpu`` or ``cuda``; a missing CUDA is a :class:`BuildError` naming the fix."""
    if name == "cuda" and not torch.cuda.is_available():
        raise BuildError(
            "the spec asks for device 'cuda', but this PyTorch has no usable CUDA device",
            "run with --device cpu, or install a CUDA build of PyTorch on a machine with a GPU",
        )
    return torch.device(name)


def compile_spec(spec: Spec, *, device: Optional[str] = None, dtype: Optional[str] = None) -> ODENet:
    """Build the ODE-Net a spec describes. Parameters are initialised from ``spec.seed``."""
    dev = resolve_device(device or spec.device)
    dt = _DTYPES[dtype or spec.dtype]
    # fork the global RNG so building a model never disturbs the caller's random stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        modules: list[nn.Module] = []
        for item, use in zip(spec.model, _layer_uses(spec), strict=True):
            if use is None:
                assert isinstance(item, OdeBlockSpec)
                modules.append(make_block(item))
            else:
                modules.append(use.build())
    from odespec.layers.torch_modules import inplace_activations

    inplace_activations(modules)
    model = ODENet(spec, modules)
    return model.to(device=dev, dtype=dt)


def _layer_uses(spec: Spec) -> tuple[Optional[LayerUse], ...]:
    """For each item of ``spec.model``, the :class:`LayerUse` it is built from (None for an ODE
    block, which is not a layer type's)."""
    uses: list[Optional[LayerUse]] = []
    shape = spec.input_shape
    for item in spec.model:
        uses.append(LayerUse(item, shape, LayerContext()) if isinstance(item, LayerSpec) else None)
        shape = item.out_shape
    return tuple(uses)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of a built model (compared against the spec's count in tests)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
