"""Dense family: linear, power, flatten, reshape, dropout."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

from odespec.layers.base import (
    ExportContext,
    LayerContext,
    LayerType,
    Shape,
    ShapeError,
    bool_schema,
    fmt_shape,
    int_schema,
    number_schema,
)
from odespec.layers.registry import register

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


@register
class Linear(LayerType):
    name = "linear"
    description = "Affine map over the last dimension: y = x W^T + b."
    properties = {
        "features": int_schema("Output features (size of the last dimension)."),
        "bias": bool_schema("Learn an additive bias.", True),
    }
    required = ("features",)
    shorthand = "features"
    takes_time = True

    def output_shape(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> Shape:
        if len(shape) < 1:
            raise ShapeError("needs at least one dimension")
        return shape[:-1] + (options["features"],)

    def num_params(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> int:
        fan_in = shape[-1] + (1 if ctx.time_concat else 0)
        return fan_in * options["features"] + (options["features"] if options["bias"] else 0)

    def build(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> "nn.Module":
        from torch import nn

        from odespec.layers.torch_modules import TimeConcat

        extra = 1 if ctx.time_concat else 0
        layer = nn.Linear(shape[-1] + extra, options["features"], bias=options["bias"])
        return TimeConcat(layer, channel_dim=-1) if ctx.time_concat else layer

    def export_form(self, module: "nn.Module", options: Mapping[str, Any], shape: Shape, ctx: LayerContext,
                    export: ExportContext) -> "nn.Module":
        """With ``time: concat``: the time feature's column split off (no concatenation in the graph)."""
        if not ctx.time_concat:
            return module
        from torch import nn

        from odespec.layers.export_forms import SplitTimeLinear
        from odespec.layers.torch_modules import TimeConcat

        assert isinstance(module, TimeConcat) and isinstance(module.layer, nn.Linear)  # as build made it
        return SplitTimeLinear(module.layer)


@register
class Power(LayerType):
    name = "power"
    description = "Elementwise power x**exponent (e.g. the cubed state of torchdiffeq's ode_demo)."
    properties = {
        "exponent": number_schema("The exponent; integers keep the sign of negative inputs.", minimum=-16, maximum=16),
    }
    required = ("exponent",)
    shorthand = "exponent"

    def build(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> "nn.Module":
        from odespec.layers.torch_modules import Power as PowerModule

        e = options["exponent"]
        return PowerModule(int(e) if float(e).is_integer() else float(e))


@register
class Flatten(LayerType):
    name = "flatten"
    description = "Flatten each sample to one dimension."

    def output_shape(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> Shape:
        return (math.prod(shape),)

    def build(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> "nn.Module":
        from torch import nn

        return nn.Flatten(start_dim=1)


@register
class Reshape(LayerType):
    name = "reshape"
    description = "Reshape each sample; one entry may be -1 (inferred)."
    properties = {
        "shape": {
            "type": "array",
            "description": "The per-sample output shape.",
            "items": {"type": "integer", "minimum": -1, "maximum": 1_000_000},
            "minItems": 1,
            "maxItems": 8,
        }
    }
    required = ("shape",)
    shorthand = "shape"

    def output_shape(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> Shape:
        target = list(options["shape"])
        if 0 in target:
            raise ShapeError("reshape sizes must be positive (or one -1)")
        if target.count(-1) > 1:
            raise ShapeError("at most one reshape size may be -1")
        total = math.prod(shape)
        known = math.prod(d for d in target if d != -1)
        if -1 in target:
            if total % known:
                raise ShapeError(f"cannot reshape {fmt_shape(shape)} ({total} values) into {target}")
            target[target.index(-1)] = total // known
        elif known != total:
            raise ShapeError(
                f"cannot reshape {fmt_shape(shape)} ({total} values) into {fmt_shape(tuple(target))} ({known} values)"
            )
        return tuple(target)

    def build(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> "nn.Module":
        from odespec.layers.torch_modules import Reshape as ReshapeModule

        return ReshapeModule(self.output_shape(options, shape, ctx))


@register
class Dropout(LayerType):
    name = "dropout"
    description = "Randomly zero elements with probability p during training."
    properties = {"p": number_schema("Probability of zeroing an element.", 0.5, minimum=0, exclusiveMaximum=1)}
    shorthand = "p"
    not_in_dynamics = (
        "dropout makes f(t, y) random, so the solver's error estimates (and the adjoint) no longer "
        "describe one ODE; put dropout before or after the ODE block"
    )

    def build(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> "nn.Module":
        from torch import nn

        return nn.Dropout(options["p"])
