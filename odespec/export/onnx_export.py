"""Export a compiled ODE-Net to ONNX as a fixed-step graph.

Why this design (recorded in the README too): the layers come from torch's own exporter, but
each *piece* is exported once — every run of plain layers, and each ODE block's dynamics
f(t, y) — and the solver's steps are laid around the dynamics in ONNX by the same
``rk_step`` that solves in PyTorch. Export time and file size therefore do not grow with the
step count's cost in torch's exporter (tracing an rk4x256 unroll through the dynamo exporter
takes about a minute and stores per-node source metadata), each weight is stored once, and the
graph holds no machine paths.

The pieces are exported with the TorchScript-based exporter (``dynamo=False``): for these small,
static subgraphs it is ~20x faster than the dynamo exporter and writes no side files. If a
future torch drops it, :func:`_export_piece` falls back to the dynamo exporter.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import onnx
import torch
from onnx import helper
from torch import nn

import odespec
from odespec.compile.model import ODENet
from odespec.compile.dynamics import DynamicsNet
from odespec.compile.ode_block import ResNetBlock, BlockBase
from odespec.errors import ExportError
from odespec.export.graph import NUMPY_DTYPES, ONNX_DTYPES, GraphBuilder, Value
from odespec.solvers.grid import fixed_grid

INPUT_NAME = "input"
OUTPUT_NAME = "output"


@dataclass(frozen=True)
class ExportSettings:
    """How to unroll and write the graph."""

    method: str = "rk4"
    steps: int = 8
    opset: int = 17
    dynamic_batch: bool = True
    #: one ONNX ``Loop`` per output interval (file size independent of ``steps``) instead of
    #: unrolling every step (see :mod:`odespec.export.loop`)
    loop: bool = False


class _Dynamics(nn.Module):
    """f(t, y) with t as a 0-d tensor input, for tracing (and without touching the NFE count).

    Layers are traced in their export form (:func:`_export_form`): the same function, written
    so that onnxruntime runs it faster. ``example`` is a state batch, to learn each layer's
    input shape.
    """

    def __init__(self, dynamics: DynamicsNet, example: torch.Tensor):
        super().__init__()
        layers = []
        x = example
        with torch.no_grad():
            for layer, with_t in zip(dynamics.layers, dynamics.takes_t):
                layers.append(_export_form(layer, x))
                x = layer(torch.zeros((), dtype=x.dtype), x) if with_t else layer(x)
        self.layers = nn.ModuleList(layers)
        self.takes_t = dynamics.takes_t

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for layer, with_t in zip(self.layers, self.takes_t):
            y = layer(t, y) if with_t else layer(y)
        return y


class _SplitTimeConv(nn.Module):
    """``conv(cat([y, t * ones]))`` computed as ``conv(y; W_y) + t * S``.

    The time channel is constant over space, so its contribution is ``t`` times a fixed map
    ``S = conv(ones; W_t)`` (not constant near the borders when padded), computed here once.
    Why: with the extra channel a 64-channel conv has 65 input channels, which keeps
    onnxruntime off its blocked (NCHWc) convolution kernels, and every stage paid for building
    and concatenating the channel; the MNIST ODE-Net ran about 1.5x slower than PyTorch at
    batch 256 before this. Same function up to float rounding (the parity check covers it).
    """

    def __init__(self, conv: nn.Module, x: torch.Tensor):
        super().__init__()
        w = conv.weight.detach()
        self.conv = type(conv)(w.shape[1] - 1, w.shape[0], conv.kernel_size, stride=conv.stride,
                               padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
                               dtype=w.dtype)
        self.conv.weight.data.copy_(w[:, :-1])
        if conv.bias is not None:
            self.conv.bias.data.copy_(conv.bias.detach())
        ones = torch.ones((1, 1, *x.shape[2:]), dtype=w.dtype)
        bare = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}
        conv_fn = torch.nn.functional.conv2d if w.dim() == 4 else torch.nn.functional.conv1d
        self.register_buffer("time_map", conv_fn(ones, w[:, -1:], **bare)[0])

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.conv(y) + t * self.time_map


class _SplitTimeLinear(nn.Module):
    """``linear(cat([y, t]))`` computed as ``linear(y; W_y) + t * w_t`` (no concatenation)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        self.linear = nn.Linear(w.shape[1] - 1, w.shape[0], bias=linear.bias is not None, dtype=w.dtype)
        self.linear.weight.data.copy_(w[:, :-1])
        if linear.bias is not None:
            self.linear.bias.data.copy_(linear.bias.detach())
        self.register_buffer("time_weight", w[:, -1].clone())

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.linear(y) + t * self.time_weight


class _StaticGroupNorm(nn.Module):
    """``nn.GroupNorm`` with the per-sample shape written into the graph.

    torch exports GroupNorm as Reshape, InstanceNormalization, Reshape, Mul, Add, computing the
    reshapes' targets at run time from the input's shape (Shape, Gather, Concat, ... nodes on
    every evaluation of f). The per-sample shape is known at export time, so here the targets
    are constants (-1 for the batch dimension) and those nodes disappear: about a quarter
    fewer nodes in the MNIST ODE-Net, which shows at batch 1.
    """

    def __init__(self, gn: nn.GroupNorm, x: torch.Tensor):
        super().__init__()
        self.shape = tuple(int(d) for d in x.shape[1:])
        self.groups = gn.num_groups
        self.eps = gn.eps
        dtype = x.dtype
        # instance_norm's exporter needs its scale and bias to know the channel count
        self.register_buffer("ones", torch.ones(self.groups, dtype=dtype))
        self.register_buffer("zeros", torch.zeros(self.groups, dtype=dtype))
        self.affine = gn.affine
        if gn.affine:
            view = (self.shape[0],) + (1,) * (len(self.shape) - 1)
            self.register_buffer("weight", gn.weight.detach().reshape(view).clone())
            self.register_buffer("bias", gn.bias.detach().reshape(view).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_group = 1
        for d in self.shape:
            per_group *= d
        z = x.reshape((-1, self.groups, per_group // self.groups))
        z = torch.nn.functional.instance_norm(z, weight=self.ones, bias=self.zeros, eps=self.eps)
        z = z.reshape((-1,) + self.shape)
        return z * self.weight + self.bias if self.affine else z


def _export_form(layer: nn.Module, x: torch.Tensor) -> nn.Module:
    """``layer`` in the form it is exported in, given an example input ``x``: the same
    function, written for a faster graph (a time-concatenating conv or linear split, a group
    norm with static shapes), or the layer itself."""
    from odespec.layers.torch_modules import TimeConcat

    if isinstance(layer, nn.GroupNorm) and x.dim() >= 2:
        return _StaticGroupNorm(layer, x)
    if not isinstance(layer, TimeConcat):
        return layer
    inner = layer.layer
    if isinstance(inner, nn.Linear) and layer.channel_dim == -1:
        return _SplitTimeLinear(inner)
    if (isinstance(inner, (nn.Conv1d, nn.Conv2d)) and layer.channel_dim == 1 and inner.groups == 1
            and inner.padding_mode == "zeros" and isinstance(inner.padding, tuple)):
        return _SplitTimeConv(inner, x)
    return layer


def _export_sequence(seq: nn.Sequential, example: torch.Tensor) -> nn.Sequential:
    """A run of plain layers with each layer in its export form (:func:`_export_form`)."""
    out = []
    x = example
    with torch.no_grad():
        for layer in seq:
            out.append(_export_form(layer, x))
            x = layer(x)
    return nn.Sequential(*out)


def _export_piece(module: nn.Module, args: tuple, names: list[str], opset: int, dynamic_batch: bool) -> onnx.GraphProto:
    """Export one module with torch's exporter and return its graph."""
    dyn = {n: {0: "batch"} for n in names if n != "t"}
    dyn["out"] = {0: "batch"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module, args, buf, dynamo=False, opset_version=opset, input_names=names, output_names=["out"],
                dynamic_axes=dyn if dynamic_batch else None, do_constant_folding=True,
            )
        except TypeError:  # pragma: no cover - a torch without the TorchScript exporter
            prog = torch.onnx.export(module, args, dynamo=True, opset_version=opset, input_names=names,
                                     output_names=["out"], dynamic_shapes=None, external_data=False)
            buf.write(prog.model_proto.SerializeToString())
        except Exception as e:  # torch raises many types here; the user needs to know which layer
            raise ExportError(f"torch could not export {type(module).__name__} to ONNX: {e}") from e
    return onnx.load_from_string(buf.getvalue()).graph


def _segments(model: ODENet) -> list[nn.Module]:
    """Group consecutive plain layers into one Sequential; ODE blocks stand alone. A block's
    augmentation (zero padding) joins the plain layers before it: it is an ordinary layer."""
    out: list[nn.Module] = []
    run: list[nn.Module] = []
    for m in model:
        if isinstance(m, BlockBase):
            if m.augmenter is not None:
                run.append(m.augmenter)
            if run:
                out.append(nn.Sequential(*run))
                run = []
            out.append(m)
        else:
            run.append(m)
    if run:
        out.append(nn.Sequential(*run))
    return out


def build_onnx(model: ODENet, settings: ExportSettings) -> onnx.ModelProto:
    """The fixed-step ONNX model of ``model`` (not yet checked or written)."""
    spec = model.spec
    param = next(model.parameters(), None)
    tdtype = param.dtype if param is not None else torch.float32
    dtype_name = "float64" if tdtype == torch.float64 else "float32"
    gb = GraphBuilder(NUMPY_DTYPES[dtype_name])
    batch: Any = "batch" if settings.dynamic_batch else 1
    elem = ONNX_DTYPES[dtype_name]
    was_training = model.training
    model.eval()
    try:
        cur = INPUT_NAME
        example = torch.zeros((2,) + tuple(spec.input_shape), dtype=tdtype, device="cpu")
        for j, seg in enumerate(_segments(model)):  # the caller passes a CPU model
            if isinstance(seg, BlockBase):
                outs = _solve_block(gb, seg, Value(cur), example, settings, f"ode{j}/", elem, batch)
                if seg.trajectory:
                    axes = gb.const([1], dtype="int64")
                    cur = gb.node("Concat", [gb.node("Unsqueeze", [v.name, axes]) for v in outs], axis=1)
                else:
                    cur = outs[-1].name
                example = torch.zeros((2,) + tuple(seg.spec.out_shape), dtype=tdtype)
            else:
                sub = _export_piece(_export_sequence(seg, example), (example,), ["x"], settings.opset,
                                    settings.dynamic_batch)
                (cur,) = gb.splice(sub, {"x": cur}, f"seg{j}/")
                with torch.no_grad():
                    example = seg(example)
        gb.nodes.append(helper.make_node("Identity", [cur], [OUTPUT_NAME], name="output"))
    finally:
        model.train(was_training)

    inp = helper.make_tensor_value_info(INPUT_NAME, elem, [batch, *spec.input_shape])
    out = helper.make_tensor_value_info(OUTPUT_NAME, elem, [batch, *spec.output_shape])
    onnx_model = gb.make_model(spec.name, [inp], [out], settings.opset)
    _set_metadata(onnx_model, model, settings)
    return onnx_model


def _solve_block(gb: GraphBuilder, block: BlockBase, y: Value, example: torch.Tensor, settings: ExportSettings,
                 prefix: str, elem: int, batch: Any) -> list[Value]:
    """Lay one ODE block's fixed-step solve into ``gb``; returns the states at its output times.

    Continuous blocks and RK-Nets use the export method and step count (unrolled, or one ONNX
    Loop per output interval); a ResNet block is its own Euler steps, each with its own weights.
    """
    from odespec.solvers.step import rk_step
    from odespec.solvers.tableaus import get_tableau

    t_example = torch.tensor(0.0, dtype=example.dtype)
    state_example = torch.zeros((2,) + tuple(block.spec.state_shape), dtype=example.dtype)

    def stage_func(sub: onnx.GraphProto, weights: str) -> Callable[[float, Value], Value]:
        # the exporter drops an unused t input (autonomous dynamics): then no time constant is
        # made, which would be an unused initializer per stage time
        takes_t = any(i.name == "t" for i in sub.input)

        def f(t: float, y_: Value) -> Value:
            (out,) = gb.splice(sub, {"t": gb.const(float(t)) if takes_t else "", "y": y_.name}, weights)
            return Value(out)

        return f

    def export_dynamics(dyn: nn.Module) -> onnx.GraphProto:
        return _export_piece(_Dynamics(dyn, state_example), (t_example, state_example), ["t", "y"], settings.opset,
                             settings.dynamic_batch)

    outs = [y]
    if isinstance(block, ResNetBlock):
        euler = get_tableau("euler")
        k = 0
        for interval in block.grid:
            for t0, h in interval:
                f = stage_func(export_dynamics(block.dynamics[k]), f"{prefix}step{k}/")
                y = rk_step(f, t0, y, h, euler, combine=gb.combine, with_error=False).y_next
                k += 1
            outs.append(y)
        return outs

    tableau = get_tableau(settings.method)
    sub = export_dynamics(block.dynamics)
    grid = fixed_grid(block.spec.t, settings.steps)
    if settings.loop:
        from odespec.export.loop import loop_solve

        return loop_solve(gb, sub, prefix, y, grid, tableau, elem, [batch, *block.spec.state_shape])
    f = stage_func(sub, prefix)
    for interval in grid:
        k1 = None
        for t0, h in interval:
            res = rk_step(f, t0, y, h, tableau, combine=gb.combine, k1=k1, with_error=False)
            y = res.y_next
            k1 = res.ks[-1] if tableau.fsal else None
        outs.append(y)
    return outs


def _set_metadata(onnx_model: onnx.ModelProto, model: ODENet, settings: ExportSettings) -> None:
    spec = model.spec
    blocks = [
        {
            "t": list(b.spec.t),
            "output": b.spec.output,
            "training_solver": {
                "method": b.spec.solver.method,
                **({"rtol": b.spec.solver.rtol, "atol": b.spec.solver.atol} if b.spec.solver.adaptive
                   else {"steps": b.spec.solver.steps, "step_size": b.spec.solver.step_size}),
            },
            "gradient": b.spec.gradient.method,
        }
        for b in model.ode_blocks
    ]
    meta = {
        "odespec_version": odespec.__version__,
        "spec_name": spec.name,
        "spec_sha256": spec.source_sha256,
        "export_method": settings.method,
        "export_steps": str(settings.steps),
        "export_layout": "loop" if settings.loop else "unrolled",
        "ode_blocks": json.dumps(blocks),
    }
    onnx_model.doc_string = f"{spec.name}: ODE-Net exported by odespec {odespec.__version__}"
    for k, v in meta.items():
        onnx_model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))


def check_onnx(onnx_model: onnx.ModelProto) -> onnx.ModelProto:
    """``onnx.checker`` full check (with strict shape inference); returns the inferred model."""
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
        return onnx.shape_inference.infer_shapes(onnx_model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"the exported graph failed onnx.checker: {e}") from e


def export_settings_from_spec(spec: Any, *, method: Optional[str] = None, steps: Optional[int] = None,
                              opset: Optional[int] = None, loop: Optional[bool] = None) -> ExportSettings:
    """The spec's ``export.onnx`` settings, with the arguments that are not ``None`` overriding them.

    A spec with ``steps: auto`` gives ``steps=1`` here unless ``steps`` is passed: the caller
    calibrates (:mod:`odespec.export.calibrate`) and replaces method and steps.
    """
    o = spec.export
    spec_steps = 1 if o.steps == "auto" else o.steps
    return ExportSettings(method=method or o.method, steps=steps or spec_steps, opset=opset or o.opset,
                          dynamic_batch=o.dynamic_batch, loop=o.loop if loop is None else loop)


def add_metadata(onnx_model: onnx.ModelProto, entries: dict[str, str]) -> None:
    """Add (or replace) ``metadata_props`` entries of ``onnx_model``."""
    keep = [p for p in onnx_model.metadata_props if p.key not in entries]
    del onnx_model.metadata_props[:]
    onnx_model.metadata_props.extend(keep)
    for k, v in entries.items():
        onnx_model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
