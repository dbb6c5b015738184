"""Elementwise activations: relu, tanh, softplus, elu, gelu, silu, sigmoid, leaky_relu."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from odespec.layers.base import ExportContext, LayerContext, LayerType, Shape, ShapeError, number_schema
from odespec.layers.registry import register

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


class _Activation(LayerType):
    #: torch.nn class name and the options forwarded to it (spec name -> torch keyword)
    torch_name: str
    forwarded: Mapping[str, str] = {}

    def build(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> "nn.Module":
        from torch import nn

        return getattr(nn, self.torch_name)(**{kw: options[k] for k, kw in self.forwarded.items()})


def _simple(name: str, torch_name: str, description: str) -> None:
    register(type(name.title(), (_Activation,), {"name": name, "torch_name": torch_name, "description": description}))


_simple("relu", "ReLU", "max(x, 0).")
_simple("tanh", "Tanh", "Hyperbolic tangent.")
_simple("sigmoid", "Sigmoid", "Logistic sigmoid 1 / (1 + exp(-x)).")
_simple("silu", "SiLU", "x * sigmoid(x) (swish).")


@register
class Softplus(_Activation):
    name = "softplus"
    description = "Smooth ReLU: log(1 + exp(beta x)) / beta."
    torch_name = "Softplus"
    properties = {"beta": number_schema("Sharpness.", 1.0, exclusiveMinimum=0, maximum=1000)}
    shorthand = "beta"
    forwarded = {"beta": "beta"}

    def export_form(self, module: "nn.Module", options: Mapping[str, Any], shape: Shape, ctx: LayerContext,
                    export: ExportContext) -> "nn.Module":
        """In float64: written with Exp, Log and Where (onnxruntime has no double Softplus)."""
        import torch

        from odespec.layers.export_forms import Softplus64

        if export.dtype != torch.float64:
            return module
        assert isinstance(module, torch.nn.Softplus)  # as build made it
        return Softplus64(module.beta, module.threshold)


@register
class Elu(_Activation):
    name = "elu"
    description = "Exponential linear unit."
    torch_name = "ELU"
    properties = {"alpha": number_schema("Saturation value for negative inputs.", 1.0, minimum=0, maximum=1000)}
    shorthand = "alpha"
    forwarded = {"alpha": "alpha"}

    def export_form(self, module: "nn.Module", options: Mapping[str, Any], shape: Shape, ctx: LayerContext,
                    export: ExportContext) -> "nn.Module":
        """In float64: written with Exp and Where (onnxruntime has no double Elu)."""
        import torch

        from odespec.layers.export_forms import Elu64

        return Elu64(options["alpha"]) if export.dtype == torch.float64 else module


@register
class LeakyRelu(_Activation):
    name = "leaky_relu"
    description = "max(x, 0) + negative_slope * min(x, 0)."
    torch_name = "LeakyReLU"
    properties = {"negative_slope": number_schema("Slope for negative inputs.", 0.01, minimum=0, maximum=1)}
    shorthand = "negative_slope"
    forwarded = {"negative_slope": "negative_slope"}


@register
class Gelu(_Activation):
    name = "gelu"
    description = "Gaussian error linear unit."
    torch_name = "GELU"
    properties = {
        "approximate": {
            "enum": ["none", "tanh"],
            "description": "'tanh' uses the tanh approximation.",
            "default": "none",
        }
    }
    shorthand = "approximate"
    forwarded = {"approximate": "approximate"}

    def check_dtype(self, options: Mapping[str, Any], dtype: str) -> None:
        if dtype == "float64" and options["approximate"] == "none":
            raise ShapeError(
                "the exact gelu (erf) cannot be exported in float64: onnxruntime has no double Erf kernel",
                "use `gelu: tanh` (the tanh approximation, exported in float64), or dtype float32",
            )

    def export_form(self, module: "nn.Module", options: Mapping[str, Any], shape: Shape, ctx: LayerContext,
                    export: ExportContext) -> "nn.Module":
        """Refuses the exact gelu in float64 (:meth:`check_dtype`), for a model built with a dtype
        override that the spec's validation did not see."""
        import torch

        from odespec.errors import ExportError

        try:
            self.check_dtype(options, "float64" if export.dtype == torch.float64 else "float32")
        except ShapeError as e:
            raise ExportError(f"gelu: {e.message}; {e.hint}") from None
        return module
