"""A known term in learned dynamics: ``known_linear``, a fixed linear map plus learned layers.

Universal differential equations (Rackauckas et al. 2020) write the dynamics as the physics one
knows plus a network for the rest. The known part is often a linear operator, and often the
stiff part (a reaction network's fast rates, a diffusion stencil): with it written in the spec,
the model is stiff from its first iteration, which is what implicit solvers are for.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, cast

from odespec.layers.base import ExportContext, LayerContext, LayerType, Shape, ShapeError, fmt_shape
from odespec.layers.registry import register

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

#: the largest known matrix (rows and columns): it is written out in the spec
MAX_KNOWN_SIZE = 64


@register
class KnownLinear(LayerType):
    name = "known_linear"
    description = ("y = x A^T + g(x): a fixed linear map A over the last dimension, written in the spec and not "
                   "trained (known physics, such as a reaction network's rates), plus the learned inner layers g, "
                   "which must keep the shape.")
    properties = {
        "matrix": {
            "type": "array", "minItems": 1, "maxItems": MAX_KNOWN_SIZE,
            "items": {"type": "array", "minItems": 1, "maxItems": MAX_KNOWN_SIZE, "items": {"type": "number"}},
            "description": "The square matrix A, row by row (as many rows as the last dimension has elements).",
        },
        "layers": {
            "type": "array", "minItems": 1, "maxItems": 64, "items": {"$ref": "#/$defs/layer"},
            "description": "The learned inner layers g, applied in order.",
        },
    }
    required = ("matrix", "layers")
    children_key = "layers"

    def check(self, options: Mapping[str, Any], ctx: LayerContext) -> None:
        rows = options["matrix"]
        if any(len(row) != len(rows) for row in rows):
            raise ShapeError(f"matrix must be square: it has {len(rows)} rows of lengths "
                             f"{sorted({len(r) for r in rows})}", "write n rows of n numbers", key="matrix")
        if not all(math.isfinite(v) for row in rows for v in row):
            raise ShapeError("matrix has a non-finite entry", "write finite numbers", key="matrix")

    def output_shape(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> Shape:
        n = len(options["matrix"])
        if not shape or shape[-1] != n:
            raise ShapeError(f"matrix is {n} x {n}, but the input {fmt_shape(shape)} has "
                             f"{shape[-1] if shape else 'no'} elements in its last dimension",
                             f"write a {shape[-1] if shape else 1} x {shape[-1] if shape else 1} matrix", key="matrix")
        children = options["layers"]
        out = children[-1].out_shape
        if out != shape:
            raise ShapeError(f"the inner layers map {fmt_shape(shape)} to {fmt_shape(out)}; they must keep the shape",
                             f"the last inner layer ({children[-1].kind!r}, line {children[-1].loc.line}) outputs "
                             f"{fmt_shape(out)}")
        return shape

    def num_params(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> int:
        return sum(child.num_params for child in options["layers"])  # A is not trained

    def build(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> "nn.Module":
        from torch import nn

        from odespec.layers.registry import get
        from odespec.layers.torch_modules import KnownLinear as KnownLinearModule

        modules = []
        for child in options["layers"]:
            modules.append(get(child.kind).build(child.options, shape, LayerContext(in_dynamics=ctx.in_dynamics)))
            shape = child.out_shape
        return KnownLinearModule(options["matrix"], nn.Sequential(*modules))

    def export_form(self, module: "nn.Module", options: Mapping[str, Any], shape: Shape, ctx: LayerContext,
                    export: ExportContext) -> "nn.Module":
        """The inner layers in their own export forms."""
        from torch import nn

        from odespec.layers.registry import get
        from odespec.layers.torch_modules import KnownLinear as KnownLinearModule

        assert isinstance(module, KnownLinearModule)  # as build made it
        forms = []
        for child, inner in zip(options["layers"], cast(nn.Sequential, module.inner), strict=True):
            forms.append(get(child.kind).export_form(inner, child.options, shape,
                                                     LayerContext(in_dynamics=ctx.in_dynamics), export))
            shape = child.out_shape
        out = KnownLinearModule(options["matrix"], nn.Sequential(*forms))
        return out.to(module.matrix.dtype)
