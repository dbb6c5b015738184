"""Normalisation: groupnorm, layernorm, batchnorm."""

from __future__ import annotations

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

_EPS = number_schema("Added to the variance for numerical stability.", 1e-5, exclusiveMinimum=0, maximum=1)


@register
class GroupNorm(LayerType):
    name = "groupnorm"
    description = "Group normalisation over (channels, ...); channels must divide into groups."
    properties = {
        "groups": int_schema("Number of channel groups."),
        "eps": _EPS,
        "affine": bool_schema("Learn a per-channel scale and shift.", True),
    }
    required = ("groups",)
    shorthand = "groups"

    def output_shape(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> Shape:
        if len(shape) < 1:
            raise ShapeError("needs a channel dimension")
        if shape[0] % options["groups"]:
            raise ShapeError(
                f"{shape[0]} channels cannot be split into {options['groups']} groups",
                f"use a number of groups that divides {shape[0]}: "
                + ", ".join(str(d) for d in range(1, shape[0] + 1) if shape[0] % d == 0 and d <= 64),
            )
        return shape

    def num_params(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> int:
        return 2 * shape[0] if options["affine"] else 0

    def build(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> "nn.Module":
        from torch import nn

        return nn.GroupNorm(options["groups"], shape[0], eps=options["eps"], affine=options["affine"])

    def export_form(self, module: "nn.Module", options: Mapping[str, Any], shape: Shape, ctx: LayerContext,
                    export: ExportContext) -> "nn.Module":
        """The reshapes' targets as constants from the known per-sample shape; in float64 the
        normalisation written with ReduceMean (onnxruntime has no double InstanceNormalization)."""
        import torch
        from torch import nn

        from odespec.layers.export_forms import GroupNorm64, StaticGroupNorm

        assert isinstance(module, nn.GroupNorm)  # as build made it
        if export.dtype == torch.float64:
            return GroupNorm64(module, shape)
        return StaticGroupNorm(module, shape, export.dtype)


@register
class LayerNorm(LayerType):
    name = "layernorm"
    description = "Layer normalisation over the last dimension."
    properties = {"eps": _EPS, "affine": bool_schema("Learn a per-feature scale and shift.", True)}

    def num_params(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> int:
        return 2 * shape[-1] if options["affine"] else 0

    def build(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> "nn.Module":
        from torch import nn

        return nn.LayerNorm(shape[-1], eps=options["eps"], elementwise_affine=options["affine"])


@register
class BatchNorm(LayerType):
    name = "batchnorm"
    description = "Batch normalisation over channels of (features,), (channels, length) or (channels, h, w)."
    properties = {
        "eps": _EPS,
        "momentum": number_schema("Running-statistics momentum.", 0.1, minimum=0, maximum=1),
        "affine": bool_schema("Learn a per-channel scale and shift.", True),
    }
    not_in_dynamics = (
        "batch statistics make f(t, y) depend on the other samples and on the solver's stage "
        "states, so it is not one ODE per sample; use groupnorm or layernorm inside dynamics"
    )

    def output_shape(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> Shape:
        if len(shape) not in (1, 2, 3):
            raise ShapeError(f"expects rank 1 to 3 per sample, got {fmt_shape(shape)}")
        return shape

    def num_params(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> int:
        return 2 * shape[0] if options["affine"] else 0

    def build(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> "nn.Module":
        from torch import nn

        cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm1d, 3: nn.BatchNorm2d}[len(shape)]
        return cls(shape[0], eps=options["eps"], momentum=options["momentum"], affine=options["affine"])
