"""Composite and sequence layers: residual blocks, recurrent encoders, Gaussian sampling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, cast

from odespec.layers.base import (
    ExportContext,
    LayerContext,
    LayerType,
    Shape,
    ShapeError,
    bool_schema,
    fmt_shape,
    int_schema,
)
from odespec.layers.registry import register

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


@register
class Residual(LayerType):
    name = "residual"
    description = "y = x + g(x) for the inner layers g (a ResNet block); g must keep the shape."
    properties = {
        "layers": {
            "type": "array",
            "minItems": 1,
            "maxItems": 64,
            "items": {"$ref": "#/$defs/layer"},
            "description": "The inner layers g, applied in order.",
        }
    }
    required = ("layers",)
    shorthand = "layers"
    #: the validator checks and replaces this option's items with LayerSpecs (see validate.py)
    children_key = "layers"

    def output_shape(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> Shape:
        children = options["layers"]
        out = children[-1].out_shape if children else shape
        if out != shape:
            last = children[-1]
            raise ShapeError(
                f"the inner layers map {fmt_shape(shape)} to {fmt_shape(out)}; a residual block must keep the shape",
                f"the last inner layer ({last.kind!r}, line {last.loc.line}) outputs {fmt_shape(out)}",
            )
        return shape

    def num_params(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> int:
        return sum(child.num_params for child in options["layers"])

    def build(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> "nn.Module":
        from torch import nn

        from odespec.layers.registry import get
        from odespec.layers.torch_modules import Residual as ResidualModule, inplace_activations

        modules = []
        for child in options["layers"]:
            modules.append(get(child.kind).build(child.options, shape, LayerContext(in_dynamics=ctx.in_dynamics)))
            shape = child.out_shape
        inplace_activations(modules)
        return ResidualModule(nn.Sequential(*modules))

    def export_form(self, module: "nn.Module", options: Mapping[str, Any], shape: Shape, ctx: LayerContext,
                    export: ExportContext) -> "nn.Module":
        """In float64, the block with each inner layer in its own export form (a softplus or
        groupnorm inside a residual block needs its double form). A float32 block is traced as
        it is: that keeps float32 graphs byte-identical to earlier releases (its inner groupnorms
        would otherwise take the static form, 12 fewer nodes in mnist_resnet)."""
        import torch
        from torch import nn

        from odespec.layers.registry import get
        from odespec.layers.torch_modules import Residual as ResidualModule

        assert isinstance(module, ResidualModule)  # as build made it
        if export.dtype != torch.float64:
            return module
        forms = []
        for child, inner in zip(options["layers"], cast(nn.Sequential, module.inner), strict=True):
            forms.append(get(child.kind).export_form(inner, child.options, shape,
                                                     LayerContext(in_dynamics=ctx.in_dynamics), export))
            shape = child.out_shape
        return ResidualModule(nn.Sequential(*forms))


class _Recurrent(LayerType):
    torch_name: str = "RNN"
    gates: int = 1
    properties = {
        "hidden": int_schema("Hidden state size."),
        "reverse": bool_schema("Run backwards in time (last observation first), as the latent ODE's encoder does.", False),
        "output": {
            "enum": ["last", "sequence"],
            "default": "last",
            "description": "last: the final hidden state, shape (hidden,); sequence: every step's, (T, hidden).",
        },
        "bias": bool_schema("Learn biases.", True),
        "time_gaps": bool_schema("Feed each step the gap to the previous observation time (reverse: to the next): "
                                 "the step input is cat(x * mask, mask, dt), or cat(x, dt) without input.mask. "
                                 "Reads input.times.", False),
    }
    required = ("hidden",)
    shorthand = "hidden"

    def series_inputs(self, options: Mapping[str, Any]) -> Mapping[str, bool]:
        return {"times": True, "mask": False} if options.get("time_gaps", False) else {}

    @staticmethod
    def step_features(options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> int:
        """Features of one step's input: with time_gaps, the (masked) values, the mask, and dt."""
        if not options.get("time_gaps", False):
            return shape[-1]
        return shape[-1] * (2 if ctx.mask else 1) + 1

    def output_shape(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> Shape:
        self.need_rank(shape, 2, "(time, features)", "recurrent layers read a sequence of feature vectors")
        h = options["hidden"]
        return (h,) if options["output"] == "last" else (shape[0], h)

    def num_params(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> int:
        d, h = self.step_features(options, shape, ctx), options["hidden"]
        return self.gates * (d * h + h * h + (2 * h if options["bias"] else 0))

    def build(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> "nn.Module":
        from odespec.layers.torch_modules import RecurrentEncoder

        encoder = RecurrentEncoder(self.torch_name, self.step_features(options, shape, ctx), options["hidden"],
                                   reverse=options["reverse"], sequence=options["output"] == "sequence",
                                   bias=options["bias"])
        if not options.get("time_gaps", False):
            return encoder
        from odespec.layers.series_modules import GapRecurrentEncoder

        return GapRecurrentEncoder(encoder, reverse=options["reverse"], use_mask=ctx.mask)

    def export_form(self, module: "nn.Module", options: Mapping[str, Any], shape: Shape, ctx: LayerContext,
                    export: ExportContext) -> "nn.Module":
        """In float64: the recurrence written out step by step (onnxruntime has no double RNN/GRU)."""
        import torch

        from odespec.layers.export_forms import Recurrent64
        from odespec.layers.series_modules import GapRecurrentEncoder
        from odespec.layers.torch_modules import RecurrentEncoder

        if export.dtype != torch.float64:
            return module
        if isinstance(module, GapRecurrentEncoder):  # time_gaps: the same gaps, the recurrence written out
            inner = module.encoder
            assert isinstance(inner, RecurrentEncoder)
            return GapRecurrentEncoder(Recurrent64(inner.rnn, shape[0], reverse=inner.reverse, sequence=inner.sequence),
                                       reverse=module.reverse, use_mask=module.use_mask)
        assert isinstance(module, RecurrentEncoder)  # as build made it
        return Recurrent64(module.rnn, shape[0], reverse=module.reverse, sequence=module.sequence)


@register
class Rnn(_Recurrent):
    name = "rnn"
    description = "Elman RNN (tanh) over a (time, features) sequence."
    not_in_dynamics = "a recurrent encoder reads a whole sequence; it belongs before the ODE block"


@register
class Gru(_Recurrent):
    name = "gru"
    description = "GRU over a (time, features) sequence."
    torch_name = "GRU"
    gates = 3
    not_in_dynamics = "a recurrent encoder reads a whole sequence; it belongs before the ODE block"


@register
class Gaussian(LayerType):
    name = "gaussian"
    description = ("Split (2L,) into mean and log-variance and sample z = mean + exp(logvar/2) * eps "
                   "while training (the mean in eval mode): the latent ODE's q(z0).")
    not_in_dynamics = "sampling makes f(t, y) random; sample before the ODE block"

    def output_shape(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> Shape:
        if len(shape) != 1 or shape[0] % 2:
            raise ShapeError(
                f"expects an even number of features (mean and log-variance), got {fmt_shape(shape)}",
                "put a linear layer with 2 x latent size features before it",
            )
        return (shape[0] // 2,)

    def build(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> "nn.Module":
        from odespec.layers.torch_modules import GaussianSample

        return GaussianSample()
