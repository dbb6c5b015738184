"""Convolution and pooling: conv1d, conv2d, avgpool, maxpool (windowed or global)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from odespec.components import alternatives
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


def _per_dim_schema(description: str, default: Any, minimum: int, allow_same: bool = False) -> dict:
    """One size for every dimension, one per dimension (``[h, w]``), or (``allow_same``) ``same``;
    ``default`` None: no default (the layer chooses; the description says how)."""
    one = {"type": "integer", "minimum": minimum, "maximum": 4096}
    pair = {"type": "array", "items": one, "minItems": 1, "maxItems": 2}
    forms = (one, pair, {"enum": ["same"], "description": "Pad so that the output keeps the input's size."}) \
        if allow_same else (one, pair)
    return alternatives(*forms, description=description, **({} if default is None else {"default": default}))


def _expand(value: Any, n: int, what: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    if len(value) == 1:
        return value * n
    if len(value) != n:
        raise ShapeError(f"{what} has {len(value)} entries; a {n}-D layer needs {n} (or 1)")
    return value


def _conv_out(size: Sequence[int], k: Sequence[int], s: Sequence[int], p: Sequence[int], d: Sequence[int]) -> tuple[int, ...]:
    return tuple((n + 2 * pp - dd * (kk - 1) - 1) // ss + 1 for n, kk, ss, pp, dd in zip(size, k, s, p, d, strict=True))


class _Conv(LayerType):
    dims: int = 2
    properties = {
        "channels": int_schema("Output channels."),
        "kernel": _per_dim_schema("Kernel size (one int, or one per spatial dimension).", 3, 1),
        "stride": _per_dim_schema("Stride.", 1, 1),
        "padding": _per_dim_schema("Zero padding on each side, or 'same' (stride 1 only).", 0, 0, allow_same=True),
        "dilation": _per_dim_schema("Spacing between kernel elements.", 1, 1),
        "groups": int_schema("Blocked connections from input to output channels.", 1),
        "bias": bool_schema("Learn an additive bias per output channel.", True),
    }
    required = ("channels",)
    shorthand = "channels"
    takes_time = True

    def _geometry(self, options: Mapping[str, Any]) -> tuple[tuple[int, ...], ...]:
        n = self.dims
        k = _expand(options["kernel"], n, "kernel")
        s = _expand(options["stride"], n, "stride")
        d = _expand(options["dilation"], n, "dilation")
        if options["padding"] == "same":
            if any(x != 1 for x in s):
                raise ShapeError("padding 'same' needs stride 1", "set an explicit padding, e.g. padding: 1")
            if any((dd * (kk - 1)) % 2 for kk, dd in zip(k, d, strict=True)):
                raise ShapeError("padding 'same' needs an odd kernel", "use an odd kernel size such as 3")
            p = tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d, strict=True))
        else:
            p = _expand(options["padding"], n, "padding")
        return k, s, p, d

    def output_shape(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> Shape:
        what = "(channels, length)" if self.dims == 1 else "(channels, height, width)"
        self.need_rank(shape, self.dims + 1, what, "add a reshape layer first, e.g. reshape: [1, 28, 28]")
        k, s, p, d = self._geometry(options)
        c_in = shape[0] + (1 if ctx.time_concat else 0)
        g = options["groups"]
        if c_in % g or options["channels"] % g:
            raise ShapeError(
                f"groups={g} must divide both input channels ({c_in}) and output channels ({options['channels']})"
            )
        out = _conv_out(shape[1:], k, s, p, d)
        if any(o < 1 for o in out):
            raise ShapeError(
                f"input {fmt_shape(shape)} is too small for kernel {list(k)} with padding {list(p)}",
                "pad more or use a smaller kernel",
            )
        return (options["channels"],) + out

    def num_params(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> int:
        k, _, _, _ = self._geometry(options)
        c_in = shape[0] + (1 if ctx.time_concat else 0)
        c_out = options["channels"]
        kprod = 1
        for kk in k:
            kprod *= kk
        return c_out * (c_in // options["groups"]) * kprod + (c_out if options["bias"] else 0)

    def build(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> "nn.Module":
        from torch import nn

        from odespec.layers.torch_modules import TimeConcat

        k, s, p, d = self._geometry(options)
        cls = nn.Conv1d if self.dims == 1 else nn.Conv2d
        c_in = shape[0] + (1 if ctx.time_concat else 0)
        # torch's annotations want tuple[int] or tuple[int, int]; these have self.dims entries
        layer = cls(c_in, options["channels"], k, stride=s, padding=p, dilation=d,  # type: ignore[arg-type]
                    groups=options["groups"], bias=options["bias"])
        return TimeConcat(layer, channel_dim=1) if ctx.time_concat else layer

    def export_form(self, module: "nn.Module", options: Mapping[str, Any], shape: Shape, ctx: LayerContext,
                    export: ExportContext) -> "nn.Module":
        """With ``time: concat`` and one group: the time channel's contribution as a constant map
        times t (grouped convolutions keep the concatenation: the time channel feeds only the last
        group). In float64 the convolution is written as im2col and MatMul (onnxruntime has no
        double Conv)."""
        import torch

        if export.dtype == torch.float64:
            return self._float64_form(module, options, shape, ctx)
        if not ctx.time_concat or options["groups"] != 1:
            return module
        from torch import nn

        from odespec.layers.export_forms import SplitTimeConv
        from odespec.layers.torch_modules import TimeConcat

        # as build made it
        assert isinstance(module, TimeConcat) and isinstance(module.layer, (nn.Conv1d, nn.Conv2d))
        return SplitTimeConv(module.layer, shape)

    @staticmethod
    def _float64_form(module: "nn.Module", options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> "nn.Module":
        from odespec.layers.export_forms import Conv64, SplitTimeConv
        from odespec.layers.torch_modules import TimeConcat

        if not ctx.time_concat:
            return Conv64(module, shape)  # type: ignore[arg-type]  # a Conv1d/Conv2d, as build made it
        assert isinstance(module, TimeConcat)  # as build made it
        if options["groups"] == 1:
            split = SplitTimeConv(module.layer, shape)  # type: ignore[arg-type]
            split.conv = Conv64(split.conv, shape)  # type: ignore[assignment]
            return split
        return TimeConcat(Conv64(module.layer, (shape[0] + 1,) + shape[1:]), channel_dim=1)  # type: ignore[arg-type]


@register
class Conv1d(_Conv):
    name = "conv1d"
    description = "1-D convolution over (channels, length)."
    dims = 1


@register
class Conv2d(_Conv):
    name = "conv2d"
    description = "2-D convolution over (channels, height, width)."
    dims = 2


class _Pool(LayerType):
    mode: str = "avg"
    properties = {
        "kernel": _per_dim_schema("Window size.", 2, 1),
        "stride": _per_dim_schema("Stride (defaults to the kernel size).", None, 1),
        "padding": _per_dim_schema("Implicit padding on each side.", 0, 0),
        "global": bool_schema("Pool each channel's whole extent to size 1 (kernel/stride ignored).", False),
    }
    # `- avgpool: global` is the short form of {global: true}
    shorthand = "global"
    shorthand_schema = {"enum": ["global"], "description": "'global': pool each channel to size 1."}

    @classmethod
    def normalize(cls, value: Any) -> dict[str, Any]:
        if value == "global":
            value = {"global": True}
        options = super().normalize(value)
        if options.get("stride") is None:
            options["stride"] = options["kernel"]
        return options

    def output_shape(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> Shape:
        if len(shape) not in (2, 3):
            raise ShapeError(
                f"expects (channels, length) or (channels, height, width) per sample, got {fmt_shape(shape)}"
            )
        n = len(shape) - 1
        if options["global"]:
            return (shape[0],) + (1,) * n
        k = _expand(options["kernel"], n, "kernel")
        s = _expand(options["stride"], n, "stride")
        p = _expand(options["padding"], n, "padding")
        if any(pp * 2 > kk for pp, kk in zip(p, k, strict=True)):
            raise ShapeError("padding must be at most half the kernel size")
        out = _conv_out(shape[1:], k, s, p, (1,) * n)
        if any(o < 1 for o in out):
            raise ShapeError(f"input {fmt_shape(shape)} is smaller than the pooling window {list(k)}")
        return (shape[0],) + out

    def build(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> "nn.Module":
        from torch import nn

        n = len(shape) - 1
        if options["global"]:
            cls = {("avg", 1): nn.AdaptiveAvgPool1d, ("avg", 2): nn.AdaptiveAvgPool2d,
                   ("max", 1): nn.AdaptiveMaxPool1d, ("max", 2): nn.AdaptiveMaxPool2d}[(self.mode, n)]
            return cls(1 if n == 1 else (1, 1))
        cls = {("avg", 1): nn.AvgPool1d, ("avg", 2): nn.AvgPool2d, ("max", 1): nn.MaxPool1d, ("max", 2): nn.MaxPool2d}[
            (self.mode, n)
        ]
        return cls(
            _expand(options["kernel"], n, "kernel"),
            stride=_expand(options["stride"], n, "stride"),
            padding=_expand(options["padding"], n, "padding"),
        )

    def export_form(self, module: "nn.Module", options: Mapping[str, Any], shape: Shape, ctx: LayerContext,
                    export: ExportContext) -> "nn.Module":
        """Average pooling in float64: the windows' mean (Pad, Slice, Add) or a ReduceMean
        (onnxruntime has no double AveragePool or GlobalAveragePool); max pooling as it is."""
        import torch

        from odespec.layers.export_forms import AvgPool64

        if self.mode != "avg" or export.dtype != torch.float64:
            return module
        if options["global"]:
            return AvgPool64(shape)
        n = len(shape) - 1
        return AvgPool64(shape, _expand(options["kernel"], n, "kernel"), _expand(options["stride"], n, "stride"),
                         _expand(options["padding"], n, "padding"))


@register
class AvgPool(_Pool):
    name = "avgpool"
    description = "Average pooling over windows, or global (`avgpool: global`)."
    mode = "avg"


@register
class MaxPool(_Pool):
    name = "maxpool"
    description = "Max pooling over windows, or global (`maxpool: global`)."
    mode = "max"
