"""What a layer type is: its options schema, its shape rule, its parameter count, its torch
builder and its export form, kept side by side in one class so that adding a layer touches one
place.

This module (and every layer family module) must not import torch at import time: the spec
validator uses the schema and shape rules, and ``odespec validate`` must start fast. Builders
import torch inside ``build``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Optional, Protocol

from odespec.components import OptionsComponent

if TYPE_CHECKING:  # pragma: no cover
    import torch
    import torch.nn as nn

Shape = tuple[int, ...]

__all__ = ["Shape", "ShapeError", "SERIES_INPUTS", "LayerContext", "ExportContext", "LayerEntry", "LayerUse", "LayerType"]


class ShapeError(ValueError):
    """A layer cannot take the shape (or the dtype) it is given. Caught by the validator and
    located there."""

    def __init__(self, message: str, hint: Optional[str] = None, *, key: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        #: the option at fault, where the validator points (None: the layer as a whole)
        self.key = key


#: the model inputs beside ``input`` that a layer may read (irregular series), as the ONNX graph
#: and ``ODENet.forward`` name them
SERIES_INPUTS = ("times", "mask", "query_times")


@dataclass(frozen=True)
class LayerContext:
    """Where a layer sits: inside an ODE block's dynamics, and whether t is concatenated; and,
    for a layer of the model's top-level list, which series inputs the model has (``times``:
    observation times, ``mask``: observed-value masks, ``query``: the number of query times
    per sample, None: no query times)."""

    in_dynamics: bool = False
    time_concat: bool = False
    times: bool = False
    mask: bool = False
    query: Optional[int] = None


@dataclass(frozen=True)
class ExportContext:
    """What a layer's export form may depend on beyond its options, input shape and context.

    ``dtype`` is the element type the exported graph computes in. It is the model's own dtype
    today; a precision variant of the export (a float16 graph of a float32 model, say) is a
    different ``dtype`` here, and each layer type that needs another form for it says so in
    :meth:`LayerType.export_form`.
    """

    dtype: "torch.dtype"


class LayerEntry(Protocol):
    """A layer as the spec writes it (``odespec.spec.model.LayerSpec``): the registered type name
    and complete options. A protocol, so that this package needs nothing from ``spec``."""

    @property
    def kind(self) -> str: ...

    @property
    def options(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class LayerUse:
    """One layer of a model as its layer type sees it: the spec's entry, the per-sample input
    ``shape`` and the context. Compile builds each layer from one and keeps it beside the built
    module, so that later stages ask the layer type about that module (its export form) instead
    of inspecting torch classes.

    It holds the spec's entry rather than its options so that models holding it deep-copy and
    pickle as the spec objects do.
    """

    layer: LayerEntry
    shape: Shape
    ctx: LayerContext

    @property
    def layer_type(self) -> "LayerType":
        """The registered layer type of ``layer.kind``."""
        from odespec.layers.registry import get

        return get(self.layer.kind)

    def build(self) -> "nn.Module":
        """The torch module (:meth:`LayerType.build`)."""
        return self.layer_type.build(self.layer.options, self.shape, self.ctx)

    def export_form(self, module: "nn.Module", export: ExportContext) -> "nn.Module":
        """``module``, built by :meth:`build`, in the form it is exported in
        (:meth:`LayerType.export_form`)."""
        return self.layer_type.export_form(module, self.layer.options, self.shape, self.ctx, export)


class LayerType(OptionsComponent):
    """Base class of every layer type. Subclasses set the class attributes and override methods.

    ``options`` passed to the methods are complete: the validator fills defaults from
    ``properties`` before calling them.
    """

    #: why the layer may not appear inside an ODE block's dynamics (None: it may); the schema's
    #: list of dynamics layers leaves such a layer out, and this is the hint of the message
    not_in_dynamics: ClassVar[Optional[str]] = None
    #: whether ``time: concat`` feeds t to this layer as an extra input feature/channel
    takes_time: ClassVar[bool] = False
    #: for container layers: the option holding a list of inner layers, which the validator
    #: checks like any layer list and hands to the methods below as LayerSpecs
    children_key: ClassVar[Optional[str]] = None
    #: whether the inner layers are an ODE's dynamics (checked as such: no batchnorm, ...)
    children_in_dynamics: ClassVar[bool] = False

    # -- rules ---------------------------------------------------------------------------------
    def check(self, options: Mapping[str, Any], ctx: LayerContext) -> None:
        """Semantic checks beyond the schema that need no shape; raise ShapeError."""

    def check_dtype(self, options: Mapping[str, Any], dtype: str) -> None:
        """Refuse (raise ShapeError) a layer whose export form cannot compute in ``dtype``
        (``float32``/``float64``) on onnxruntime's CPU provider; the validator locates the message.
        :meth:`export_form` refuses the same combination at export time (a ``--dtype`` override)."""

    def output_shape(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> Shape:
        """The per-sample output shape for a per-sample input ``shape``; raise ShapeError."""
        return shape

    def series_inputs(self, options: Mapping[str, Any]) -> Mapping[str, bool]:
        """The model inputs beside ``input`` this layer reads (names from :data:`SERIES_INPUTS`),
        each with whether it needs it (True) or reads it when the model has it (False). A layer
        that reads any is built into a module with ``reads_series = True``, called as
        ``module(x, series)`` (:class:`odespec.layers.series_modules.Series`); it may only be
        an item of the model's top-level list. Default: none."""
        return {}

    def children_shape(self, options: Mapping[str, Any], shape: Shape) -> Shape:
        """For a container: the per-sample shape its inner layers start from (default: its own input)."""
        return shape

    def num_params(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> int:
        """Trainable parameters, computed from shapes before anything is allocated."""
        return 0

    def build(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> "nn.Module":
        """The torch module. Modules with ``ctx.time_concat`` take ``(t, x)``, others ``x``."""
        raise NotImplementedError

    def export_form(self, module: "nn.Module", options: Mapping[str, Any], shape: Shape, ctx: LayerContext,
                    export: ExportContext) -> "nn.Module":
        """``module``, which :meth:`build` made from the same ``options``, ``shape`` and ``ctx``,
        in the form the ONNX export traces: the same function (up to float rounding) and the same
        call signature, possibly written for a faster or more portable graph. The exporter asks
        every layer through this method and knows no layer's implementation. Default: the module
        itself.
        """
        return module

    # -- helpers for subclasses ----------------------------------------------------------------
    @staticmethod
    def need_rank(shape: Shape, rank: int, what: str, hint: Optional[str] = None) -> None:
        if len(shape) != rank:
            raise ShapeError(
                f"expects a {what} input of rank {rank} per sample, got shape {fmt_shape(shape)}",
                hint,
            )


def fmt_shape(shape: Shape) -> str:
    """Shapes as users read them: ``(64, 7, 7)``; a 1-tuple without the trailing comma."""
    return "(" + ", ".join(str(d) for d in shape) + ")"


def int_schema(description: str, default: Any = None, minimum: int = 1, maximum: int = 1_000_000) -> dict:
    """Schema of a bounded integer option (bounds keep shape products sane before allocation)."""
    s: dict[str, Any] = {"type": "integer", "minimum": minimum, "maximum": maximum, "description": description}
    if default is not None:
        s["default"] = default
    return s


def bool_schema(description: str, default: bool) -> dict:
    return {"type": "boolean", "description": description, "default": default}


def number_schema(description: str, default: Any = None, **bounds: Any) -> dict:
    s: dict[str, Any] = {"type": "number", "description": description, **bounds}
    if default is not None:
        s["default"] = default
    return s
