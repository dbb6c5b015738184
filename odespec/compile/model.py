"""Assemble a validated :class:`Spec` into a ``torch.nn.Module`` (an ODE-Net)."""

from __future__ import annotations

from typing import NamedTuple, Optional, cast

import torch
from torch import nn

from odespec.compile.ode_block import BlockBase, make_block
from odespec.errors import BuildError, SeriesInputError
from odespec.layers import LayerContext, LayerUse
from odespec.layers.series_modules import Series
from odespec.layers.torch_modules import DiagonalGaussian, GaussianSample
from odespec.spec.model import LayerSpec, OdeBlockSpec, SeriesSpec, Spec

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

    A model that reads irregular series (``spec.series``) also takes ``times``, ``mask`` and
    ``query_times`` (the keywords are the ONNX input names, and the positional order is
    ``spec.series.input_names``'s): the modules with ``reads_series = True`` are called
    ``module(x, series)`` with them, every other ``module(x)``.
    """

    def __init__(self, spec: Spec, modules: list[nn.Module]):
        super().__init__(*modules)
        self.spec = spec
        self.uses: tuple[Optional[LayerUse], ...] = _layer_uses(spec)

    def forward(self, x: torch.Tensor, times: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                query_times: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The model's output for ``x`` (batch, *input_shape) and, when it reads series, each
        sample's ``times`` (batch, T), ``mask`` (batch, T, F), ``query_times`` (batch, T')."""
        series = self._series(x, times, mask, query_times)
        for module in self:
            x = module(x, series) if getattr(module, "reads_series", False) else module(x)
        return x

    def forward_with_posterior(self, x: torch.Tensor, times: Optional[torch.Tensor] = None,
                               mask: Optional[torch.Tensor] = None,
                               query_times: Optional[torch.Tensor] = None) -> ModelOutput:
        """The forward pass of ``model(x, ...)``, operation for operation, also returning the
        distribution the gaussian layer samples from (the last one, should there be more)."""
        series = self._series(x, times, mask, query_times)
        posterior: Optional[DiagonalGaussian] = None
        for module in self:
            if isinstance(module, GaussianSample):
                posterior = module.distribution(x)
                x = module.sample(posterior)
            elif getattr(module, "reads_series", False):
                x = module(x, series)
            else:
                x = module(x)
        return ModelOutput(x, posterior)

    def _series(self, x: torch.Tensor, times: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                query_times: Optional[torch.Tensor]) -> Optional[Series]:
        """The series inputs, checked against what the spec says the model reads: present exactly
        when read, with the shapes of the spec (None for a model that reads none)."""
        given = {"times": times, "mask": mask, "query_times": query_times}
        return check_series(self.spec, x, given)

    @property
    def ode_blocks(self) -> list[BlockBase]:
        """The ODE blocks (of every family), in order."""
        return [m for m in self if isinstance(m, BlockBase)]

    @property
    def nfe_forward(self) -> int:
        """Function evaluations of the last forward pass, over all ODE blocks and ODE-RNN encoders."""
        return sum(cast(int, m.nfe_forward) for m in self.solved)

    @property
    def solved(self) -> list[nn.Module]:
        """The modules that solve ODEs: the ODE blocks and the layers with an ODE inside (the
        ODE-RNN encoder), each reporting ``nfe_forward`` and counting on its ``dynamics.nfe``."""
        return [m for m in self if isinstance(m, BlockBase) or getattr(m, "nfe_forward", None) is not None]


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
    ctx = series_context(spec.series)
    for item in spec.model:
        uses.append(LayerUse(item, shape, ctx) if isinstance(item, LayerSpec) else None)
        shape = item.out_shape
    return tuple(uses)


def series_context(series: Optional[SeriesSpec]) -> LayerContext:
    """The context of a top-level layer: the series inputs the model has."""
    if series is None:
        return LayerContext()
    return LayerContext(times=series.times, mask=series.mask, query=series.query)


def check_series(spec: Spec, x: torch.Tensor, given: dict[str, Optional[torch.Tensor]]) -> Optional[Series]:
    """``given`` (input name -> tensor or None) as a :class:`Series` after checking it against
    ``spec.series``: every input the model reads is there, none it does not read, each of its
    shape ((batch, T), (batch, T, F), (batch, T')). Raises :class:`SeriesInputError`."""
    names = spec.series.input_names[1:] if spec.series is not None else ()
    for name, value in given.items():
        if value is None and name in names:
            raise SeriesInputError(f"the model reads the input '{name}' (spec input: {_reads_words(name)}), "
                                   "but the call gave none", f"call model(input, {', '.join(f'{n}=...' for n in names)})")
        if value is not None and name not in names:
            raise SeriesInputError(f"the model does not read the input '{name}'",
                                   f"its inputs are {', '.join(('input',) + names)}; leave {name} out")
    if spec.series is None:
        return None
    batch = x.shape[0]
    expected = {"times": (batch, spec.input_shape[0]), "mask": (batch, *spec.input_shape),
                "query_times": (batch, spec.series.query)}
    for name in names:
        value = given[name]
        assert value is not None  # checked above
        if tuple(value.shape) != expected[name]:
            raise SeriesInputError(f"the input '{name}' has shape {tuple(value.shape)}; this model reads "
                                   f"{expected[name]}", f"pass {name} of shape (batch, "
                                   f"{', '.join(str(d) for d in expected[name][1:])}) for an input of batch {batch}")
    return Series(given["times"], given["mask"], given["query_times"])


def _reads_words(name: str) -> str:
    return {"times": "times: true", "mask": "mask: true", "query_times": "query: N"}[name]


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of a built model (compared against the spec's count in tests)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
