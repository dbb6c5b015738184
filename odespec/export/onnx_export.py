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

import copy
import io
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union, cast

import onnx
import torch
from onnx import helper
from torch import nn

import odespec
from odespec.compile.model import ODENet
from odespec.compile.dynamics import DynamicsNet
from odespec.compile.ode_block import BlockBase, ODEBlock, ResNetBlock
from odespec.errors import ExportError
from odespec.export.graph import NUMPY_DTYPES, ONNX_DTYPES, GraphBuilder, Value
from odespec.export.series_graph import SeriesPiece, SeriesValues, lay_ode_rnn, per_sample_interval, slot
from odespec.export.unroll import PerSampleEncoder, encoder_solver
from odespec.layers import ExportContext, LayerUse
from odespec.solvers.grid import StepGrid, fixed_grid
from odespec.spec.schema import EXPORT_DEFAULTS

INPUT_NAME = "input"
OUTPUT_NAME = "output"


@dataclass(frozen=True)
class ExportSettings:
    """How to unroll and write the graph (defaults: the spec language's ``export.onnx``)."""

    method: str = EXPORT_DEFAULTS["method"]
    steps: int = EXPORT_DEFAULTS["steps"]
    opset: int = EXPORT_DEFAULTS["opset"]
    dynamic_batch: bool = EXPORT_DEFAULTS["dynamic_batch"]
    #: one ONNX ``Loop`` per output interval (file size independent of ``steps``) instead of
    #: unrolling every step (see :mod:`odespec.export.loop`)
    loop: bool = EXPORT_DEFAULTS["loop"]
    #: the graph's precision (:data:`~odespec.spec.schema.EXPORT_PRECISIONS`): ``float16``
    #: computes and stores everything in half precision; ``mixed`` keeps the graph's inputs and
    #: outputs and each ODE block's state and Runge-Kutta combination in float32 and runs the
    #: layers and dynamics in float16; ``float32`` a float32 graph (of a float64 model, too);
    #: ``None``: the model's own dtype
    precision: Optional[str] = EXPORT_DEFAULTS["precision"]
    #: a learned step correction laid into every step of the correctable ODE blocks
    #: (:class:`odespec.export.correction.Corrections`, for this method and steps); None: none
    correction: Optional[Any] = None
    #: an implicit ``method``: the Newton iterations unrolled per step (None: the solvers'
    #: default ``max_iters``); explicit methods ignore it
    newton_iters: Optional[int] = None
    #: optimised grids (:mod:`odespec.export.grids`), one per ODE block in ``model.ode_blocks``
    #: order (``None``: that block walks ``steps`` per output interval); empty: all uniform
    grids: tuple[Optional[StepGrid], ...] = ()


@dataclass(frozen=True)
class Precision:
    """The element types of a graph: ``compute`` (the weights and every traced piece: layers and
    dynamics), ``state`` (ODE states and the solver's combination ``y + h * sum b_i k_i``) and
    ``io`` (the graph's inputs and outputs)."""

    compute: torch.dtype
    state: torch.dtype
    io: torch.dtype

    @property
    def mixed(self) -> bool:
        """Whether the dynamics compute in another type than the state is kept in."""
        return self.compute != self.state


_TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


def dtype_name(dtype: torch.dtype) -> str:
    """``float16``, ``float32`` or ``float64``."""
    return {v: k for k, v in _TORCH_DTYPES.items()}[dtype]


def graph_precision(model_dtype: torch.dtype, precision: Optional[str]) -> Precision:
    """The element types of the graph of a model whose parameters are ``model_dtype`` exported at
    ``precision`` (None: the model's own)."""
    if precision is None:
        return Precision(model_dtype, model_dtype, model_dtype)
    if precision == "mixed":
        return Precision(torch.float16, torch.float32, torch.float32)
    if precision not in _TORCH_DTYPES or precision == "float64":
        raise ExportError(f"unknown export precision {precision!r}", "use float32, float16 or mixed")
    dtype = _TORCH_DTYPES[precision]
    return Precision(dtype, dtype, dtype)


def precision_model(model: ODENet, dtype: torch.dtype) -> ODENet:
    """``model`` itself when its parameters are ``dtype``, else a copy cast to ``dtype`` (the
    model the graph's pieces are traced from, and parity's reference for a float16 graph)."""
    param = next(model.parameters(), None)
    if param is None or param.dtype == dtype:
        return model
    return copy.deepcopy(model).to(dtype)


def _cast(gb: GraphBuilder, value: str, src: torch.dtype, dst: torch.dtype) -> str:
    """``value`` as ``dst``: itself when it already is, else through a Cast node."""
    return value if src == dst else gb.node("Cast", [value], to=ONNX_DTYPES[dtype_name(dst)])


class _Dynamics(nn.Module):
    """f(t, y) with t as a 0-d tensor input, for tracing (and without touching the NFE count).

    Each layer is traced in the export form its layer type gives (:meth:`LayerUse.export_form`):
    the same function, possibly written so that onnxruntime runs it faster.
    """

    def __init__(self, dynamics: DynamicsNet, export: ExportContext):
        super().__init__()
        forms = (use.export_form(layer, export) for layer, use in zip(dynamics.layers, dynamics.uses, strict=True))
        self.layers = nn.ModuleList(forms)
        self.takes_t = dynamics.takes_t

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for layer, with_t in zip(self.layers, self.takes_t, strict=True):
            y = layer(t, y) if with_t else layer(y)
        return y


#: a module of a run of plain layers, with the LayerUse it was built from (None: a module compile
#: adds itself, such as an ODE block's augmentation, exported as it is)
_Placed = tuple[nn.Module, Optional[LayerUse]]


def _export_sequence(run: list[_Placed], export: ExportContext) -> nn.Sequential:
    """A run of plain layers with each layer in the export form its layer type gives.

    In eval mode, as the model is while exporting: torch's exporter puts the module it exports
    back in that module's mode, recursively, and a new container starts in training mode, which
    turned batchnorm layers to training and let the next forward overwrite their running
    statistics (the model changed by its own export)."""
    return nn.Sequential(*(m if use is None else use.export_form(m, export) for m, use in run)).eval()


def _export_piece(module: nn.Module, args: tuple, names: list[str], opset: int, dynamic_batch: bool,
                  batched: Optional[tuple[str, ...]] = None) -> onnx.GraphProto:
    """Export one module with torch's exporter and return its graph. ``batched``: the inputs
    with a batch axis 0 (default: all but ``t``, a dynamics' shared time)."""
    dyn = {n: {0: "batch"} for n in names if (n in batched if batched is not None else n != "t")}
    dyn["out"] = {0: "batch"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # torch's annotation says f is a path; its TorchScript exporter writes to file objects too
            torch.onnx.export(
                module, args, buf,  # type: ignore[arg-type]
                dynamo=False, opset_version=opset, input_names=names, output_names=["out"],
                dynamic_axes=dyn if dynamic_batch else None, do_constant_folding=True,
            )
        except TypeError:  # pragma: no cover - a torch without the TorchScript exporter
            prog = torch.onnx.export(module, args, dynamo=True, opset_version=opset, input_names=names,
                                     output_names=["out"], dynamic_shapes=None, external_data=False)
            if prog is None:
                raise ExportError(f"torch exported no program for {type(module).__name__}") from None
            buf.write(prog.model_proto.SerializeToString())
        except Exception as e:  # torch raises many types here; the user needs to know which layer
            raise ExportError(f"torch could not export {type(module).__name__} to ONNX: {e}") from e
    return onnx.load_from_string(buf.getvalue()).graph


#: a layer that reads the model's series inputs, with its LayerUse: laid into the graph on its own
_SeriesLayer = tuple[nn.Module, LayerUse]


def _segments(model: ODENet) -> list[Union[BlockBase, _SeriesLayer, list[_Placed]]]:
    """Group consecutive plain layers into one run; ODE blocks and layers that read the series
    inputs stand alone. A block's augmentation (zero padding) joins the plain layers before it:
    it is an ordinary layer."""
    out: list[Union[BlockBase, _SeriesLayer, list[_Placed]]] = []
    run: list[_Placed] = []
    for m, use in zip(model, model.uses, strict=True):
        if isinstance(m, BlockBase):
            if m.augmenter is not None:
                run.append((m.augmenter, None))
            if run:
                out.append(run)
                run = []
            out.append(m)
        elif getattr(m, "reads_series", False) and use is not None:
            if run:
                out.append(run)
                run = []
            out.append((m, use))
        else:
            run.append((m, use))
    if run:
        out.append(run)
    return out


def build_onnx(model: ODENet, settings: ExportSettings) -> onnx.ModelProto:
    """The fixed-step ONNX model of ``model`` (not yet checked or written), at
    ``settings.precision`` (:func:`graph_precision`)."""
    spec = model.spec
    param = next(model.parameters(), None)
    prec = graph_precision(param.dtype if param is not None else torch.float32, settings.precision)
    tdtype = prec.compute
    gb = GraphBuilder(NUMPY_DTYPES[dtype_name(prec.state)])
    batch: Any = "batch" if settings.dynamic_batch else 1
    was_training = model.training
    model.eval()
    series = _series_values(spec)
    _check_layout(model, settings, prec)
    traced = precision_model(model, tdtype).eval()
    nets = list(settings.correction.nets) if settings.correction is not None else []
    try:
        cur, cur_dtype = INPUT_NAME, prec.io
        example = torch.zeros((2,) + tuple(spec.input_shape), dtype=tdtype, device="cpu")
        export = ExportContext(dtype=tdtype)
        for j, seg in enumerate(_segments(traced)):  # the caller passes a CPU model
            if isinstance(seg, tuple):
                cur, cur_dtype = _series_layer(gb, spec, seg, (cur, cur_dtype), example, series, settings,
                                               f"series{j}/", export, prec)
                example = torch.zeros((2,) + tuple(seg[1].layer_type.output_shape(
                    seg[1].layer.options, seg[1].shape, seg[1].ctx)), dtype=tdtype)
            elif isinstance(seg, BlockBase):
                y0 = Value(_cast(gb, cur, cur_dtype, prec.state))
                # one correction net per ODE block (not ResNet or t: query), in model order
                net = nets.pop(0) if nets and isinstance(seg, ODEBlock) and not seg.spec.query else None
                step_grid = settings.grids[traced.ode_blocks.index(seg)] if settings.grids else None
                outs = _solve_block(gb, seg, y0, example, settings, f"ode{j}/", prec, batch, series, net, step_grid)
                if seg.trajectory:
                    axes = gb.const([1], dtype="int64")
                    cur = gb.node("Concat", [gb.node("Unsqueeze", [v.name, axes]) for v in outs], axis=1)
                else:
                    cur = outs[-1].name
                cur_dtype = prec.state
                example = torch.zeros((2,) + tuple(seg.spec.out_shape), dtype=tdtype)
            else:
                forms = _export_sequence(seg, export)
                sub = _export_piece(forms, (example,), ["x"], settings.opset, settings.dynamic_batch)
                (cur,) = gb.splice(sub, {"x": _cast(gb, cur, cur_dtype, prec.compute)}, f"seg{j}/")
                cur_dtype = prec.compute
                with torch.no_grad():
                    example = forms(example)
        cur = _cast(gb, cur, cur_dtype, prec.io)
        gb.nodes.append(helper.make_node("Identity", [cur], [OUTPUT_NAME], name="output"))
    finally:
        model.train(was_training)
        traced.train(was_training)

    elem = ONNX_DTYPES[dtype_name(prec.io)]
    inputs = [helper.make_tensor_value_info(name, elem, [batch, *shape]) for name, shape in graph_inputs(spec)]
    out = helper.make_tensor_value_info(OUTPUT_NAME, elem, [batch, *spec.output_shape])
    onnx_model = gb.make_model(spec.name, inputs, [out], settings.opset)
    _set_metadata(onnx_model, model, settings)
    return onnx_model


def graph_inputs(spec: Any) -> list[tuple[str, tuple[int, ...]]]:
    """The graph's inputs after the batch axis, in order: ``input`` (the spec's input shape) and,
    for a model reading series (``spec.series``), ``times`` (T,), ``mask`` (T, F) and
    ``query_times`` (T',) as far as it reads them (:attr:`SeriesSpec.input_names`)."""
    series = spec.series
    if series is None:
        return [(INPUT_NAME, tuple(spec.input_shape))]
    shapes = {INPUT_NAME: tuple(spec.input_shape), "times": (spec.input_shape[0],), "mask": tuple(spec.input_shape),
              "query_times": (series.query,)}
    return [(name, shapes[name]) for name in series.input_names]


def _series_values(spec: Any) -> SeriesValues:
    """The series inputs' values in the graph: the graph inputs of the same names."""
    return {name: name for name, _ in graph_inputs(spec)[1:]}


def _check_layout(model: ODENet, settings: ExportSettings, prec: Precision) -> None:
    """The ``loop`` layout lays each interval of a block's one time grid into a ``Loop``; a model
    whose solves follow each sample's own times has no such grid. Mixed precision casts around
    each stage of the unrolled solve; the loop body is not written for it."""
    if settings.grids and settings.loop:
        raise ExportError("an optimised grid is exported unrolled: its steps differ in size, and a Loop repeats one "
                          "step size", "leave out loop (export.onnx.loop: false), or use grid: uniform")
    if prec.mixed and settings.loop:
        raise ExportError("mixed precision is not available for the loop layout",
                          "export it unrolled (leave out loop), or at precision float16 (or float32)")
    if settings.correction is not None:
        from odespec.export.correction import check_correctable

        check_correctable(model, settings.method, loop=settings.loop)
    per_sample = any(getattr(b.spec, "query", False) for b in model.ode_blocks) or any(
        isinstance(m, PerSampleEncoder) for m in model)
    problem = implicit_problem(model, settings, prec)
    if problem is not None:
        raise problem
    if settings.loop and per_sample:
        raise ExportError("the loop layout is not available for a model that solves at each sample's own times "
                          "(an ode_rnn, or an ODE block with t: query)",
                          "export it unrolled: leave out loop (export.onnx.loop: false, or no --loop)")


def implicit_problem(model: ODENet, settings: ExportSettings, prec: Precision) -> Optional[ExportError]:
    """Why ``model`` cannot be exported as ``settings`` say with their implicit method
    (:func:`odespec.export.implicit_graph.implicit_export_problem`); None: it can, or the method
    is explicit. An ODE-RNN encoder whose own solver is implicit has no graph form either."""
    from odespec.export.implicit_graph import implicit_export_problem
    from odespec.solvers.tableaus import get_tableau

    encoders = [m for m in model if isinstance(m, PerSampleEncoder)]
    if any(m.solver.tableau.implicit for m in encoders):
        return ExportError("an ode_rnn whose solver is implicit has no ONNX form (its solves follow each sample's "
                           "own times)", "give the ode_rnn an explicit solver such as rk4")
    tableau = get_tableau(settings.method)
    if not tableau.implicit:
        return None
    per_sample = bool(encoders) or any(getattr(b.spec, "query", False) for b in model.ode_blocks)
    return implicit_export_problem(
        tableau, state_sizes=[math.prod(b.spec.state_shape) for b in model.ode_blocks if isinstance(b, ODEBlock)],
        loop=settings.loop, half=prec.compute == torch.float16, per_sample=per_sample)


def _series_layer(gb: GraphBuilder, spec: Any, seg: tuple[nn.Module, LayerUse], cur: tuple[str, torch.dtype],
                  example: torch.Tensor, series: SeriesValues, settings: ExportSettings, prefix: str,
                  export: ExportContext, prec: Precision) -> tuple[str, torch.dtype]:
    """A layer that reads the series inputs, laid into ``gb`` in its export form: the ODE-RNN
    with :func:`~odespec.export.unroll.encoder_solver` per gap; any other (``rnn``/``gru`` with
    ``time_gaps``, ``rnn_decoder``: no solver inside) exported by torch as one piece that takes
    the series inputs beside ``x``. ``cur``: the layer's input value and its type. Returns its
    output's name and type.

    With mixed precision the ODE-RNN carries its hidden state in ``prec.state`` (it is an ODE
    state between the observations) and runs its dynamics and GRU updates in ``prec.compute``;
    the other recurrent layers are layers like any other: wholly ``prec.compute``, their time
    inputs cast to it (as a plain ``rnn``/``gru`` layer's hidden state is in a mixed graph)."""
    from odespec.solvers.tableaus import get_tableau

    module, use = seg
    form = use.export_form(module, export)
    x = _cast(gb, cur[0], cur[1], prec.compute)
    if isinstance(form, PerSampleEncoder):
        solver = encoder_solver(form, settings.method, settings.steps)
        assert solver.steps is not None  # encoder_solver gives a fixed step count
        # the mask joins x in the GRU update; the times stay in prec.io for the step sizes
        values = {k: (_cast(gb, v, prec.io, prec.compute) if k == "mask" else v) for k, v in series.items()}
        compute = ONNX_DTYPES[dtype_name(prec.compute)] if prec.mixed else None
        out = lay_ode_rnn(gb, form, x, values, _piece_exporter(settings), prefix, length=int(use.shape[0]),
                          features=int(use.shape[-1]), steps=solver.steps, tableau=get_tableau(solver.method),
                          compute=compute)
        return out, prec.state
    names = tuple(series)
    args = [example] + [torch.zeros((2, *shape), dtype=example.dtype) for _, shape in graph_inputs(spec)[1:]]
    sub = _export_piece(SeriesPiece(form, names), tuple(args), ["x", *names], settings.opset, settings.dynamic_batch)
    feeds = {k: _cast(gb, v, prec.io, prec.compute) for k, v in series.items()}
    (out,) = gb.splice(sub, {"x": x, **feeds}, prefix)
    return out, prec.compute


def _piece_exporter(settings: ExportSettings) -> Callable[[nn.Module, tuple, list[str], tuple[str, ...]],
                                                           onnx.GraphProto]:
    def export(module: nn.Module, args: tuple, names: list[str], batched: tuple[str, ...]) -> onnx.GraphProto:
        return _export_piece(module, args, names, settings.opset, settings.dynamic_batch, batched)

    return export


def _solve_block(gb: GraphBuilder, block: BlockBase, y: Value, example: torch.Tensor, settings: ExportSettings,
                 prefix: str, prec: Precision, batch: Any, series: Optional[SeriesValues] = None,
                 correction: Optional[nn.Module] = None, step_grid: Optional[StepGrid] = None) -> list[Value]:
    """Lay one ODE block's fixed-step solve into ``gb``; returns the states at its output times
    (a ``t: query`` block's: at each sample's query times, from the graph input ``query_times``).

    Continuous blocks and RK-Nets use the export method and step count (unrolled, or one ONNX
    Loop per output interval); a ResNet block is its own Euler steps, each with its own weights.
    ``correction``: a :class:`~odespec.export.correction.CorrectionNet` added to each unrolled step.
    The states and the combinations are ``prec.state``; with mixed precision each stage casts
    its state to ``prec.compute`` and its slope back. ``step_grid``: a continuous block's
    optimised grid, walked by :func:`~odespec.solvers.grid_solve.grid_solve` as its twin does.
    """
    from odespec.solvers.step import rk_step
    from odespec.solvers.tableaus import get_tableau

    t_example = torch.tensor(0.0, dtype=example.dtype)
    state_example = torch.zeros((2,) + tuple(block.spec.state_shape), dtype=example.dtype)
    export = ExportContext(dtype=example.dtype)
    compute = NUMPY_DTYPES[dtype_name(prec.compute)]

    def stage_func(sub: onnx.GraphProto, weights: str) -> Callable[[float, Value], Value]:
        # the exporter drops an unused t input (autonomous dynamics): then no time constant is
        # made, which would be an unused initializer per stage time
        takes_t = any(i.name == "t" for i in sub.input)

        def f(t: float, y_: Value) -> Value:
            t_value = gb.const(float(t), dtype=compute) if takes_t else ""
            (out,) = gb.splice(sub, {"t": t_value, "y": _cast(gb, y_.name, prec.state, prec.compute)}, weights)
            return Value(_cast(gb, out, prec.compute, prec.state))

        return f

    def export_dynamics(dyn: DynamicsNet, dynamic_batch: bool = settings.dynamic_batch) -> onnx.GraphProto:
        return _export_piece(_Dynamics(dyn, export).eval(), (t_example, state_example), ["t", "y"], settings.opset,
                             dynamic_batch)

    outs = [y]
    if isinstance(block, ResNetBlock):
        euler = get_tableau("euler")
        k = 0
        for interval in block.grid:
            for t0, h in interval:
                # a ModuleList of DynamicsNet by construction (torch's ModuleList is not generic)
                f = stage_func(export_dynamics(cast(DynamicsNet, block.dynamics[k])), f"{prefix}step{k}/")
                y = rk_step(f, t0, y, h, euler, combine=gb.combine, with_error=False).y_next
                k += 1
            outs.append(y)
        return outs

    if not isinstance(block, ODEBlock):
        raise ExportError(f"internal error: no ONNX form for the ODE block family {type(block).__name__}")
    tableau = get_tableau(settings.method)
    if block.spec.query:
        assert series is not None  # validate: a t: query block needs the model's query times
        return _solve_query_block(gb, block, y, prec, settings, prefix, series["query_times"], tableau)
    if step_grid is not None:
        from odespec.solvers.grid_solve import grid_solve

        if correction is not None:
            raise ExportError("internal error: a learned correction on an optimised grid")
        times = [float(t) for t in block.spec.t]
        return grid_solve(stage_func(export_dynamics(block.dynamics), prefix), y, times, step_grid.points,
                          step_grid.walk(times), tableau, gb.combine)
    grid = fixed_grid(block.spec.t, settings.steps)
    if tableau.implicit:
        from odespec.export.implicit_graph import lay_implicit_solve
        from odespec.solvers.options import DEFAULT_NEWTON_ITERS

        # any batch: the forward-difference Jacobian evaluates the dynamics on m copies of it
        f = stage_func(export_dynamics(block.dynamics, dynamic_batch=True), prefix)
        iters = settings.newton_iters if settings.newton_iters is not None else DEFAULT_NEWTON_ITERS
        return lay_implicit_solve(gb, f, y, grid, tableau, iters, block.spec.state_shape)
    sub = export_dynamics(block.dynamics)
    if settings.loop:
        from odespec.export.loop import loop_solve

        elem = ONNX_DTYPES[dtype_name(prec.state)]
        return loop_solve(gb, sub, prefix, y, grid, tableau, elem, [batch, *block.spec.state_shape])
    f = stage_func(sub, prefix)
    correct = _corrector(gb, correction, settings, block, prefix, prec) if correction is not None else None
    for interval in grid:
        k1 = None
        for t0, h in interval:
            res = rk_step(f, t0, y, h, tableau, combine=gb.combine, k1=k1, with_error=False)
            # the corrected state is not the one the last stage saw: no FSAL reuse (check_correctable)
            y = res.y_next if correct is None else correct(t0, h, y, res.ks[0], res.y_next)
            k1 = res.ks[-1] if tableau.fsal and correct is None else None
        outs.append(y)
    return outs


def _corrector(gb: GraphBuilder, net: nn.Module, settings: ExportSettings, block: BlockBase, prefix: str,
               prec: Precision) -> Callable[[float, float, Value, Value, Value], Value]:
    """The correction of each step of ``block`` (:func:`odespec.export.correction.step_corrector`)."""
    from odespec.export.correction import CorrectionNet, step_corrector

    assert isinstance(net, CorrectionNet) and settings.correction is not None
    return step_corrector(gb, net, settings.correction.power, block.spec.state_shape, prec.compute,
                          _piece_exporter(settings), f"{prefix}correction/",
                          lambda v: _cast(gb, v, prec.state, prec.compute), lambda v: _cast(gb, v, prec.compute, prec.state))


def _solve_query_block(gb: GraphBuilder, block: ODEBlock, y: Value, prec: Precision, settings: ExportSettings,
                       prefix: str, query: str, tableau: Any) -> list[Value]:
    """A ``t: query`` block: from its start through each sample's query times, ``steps`` steps
    per interval of each sample's own length (:func:`per_sample_interval`); returns the states
    at the T' query times (the initial state is not an output of such a block).

    The state, the times, the step sizes and the combinations are ``prec.state``; with mixed
    precision each stage casts its state and time to ``prec.compute`` and its slope back."""
    dtype = prec.compute
    rank = len(block.spec.state_shape)
    # the dynamics see one time per sample, shaped (batch, 1, ..., 1) as in the PyTorch solve
    t_example = torch.zeros((2,) + (1,) * rank, dtype=dtype)
    state_example = torch.zeros((2,) + tuple(block.spec.state_shape), dtype=dtype)
    dyn = _Dynamics(block.dynamics, ExportContext(dtype=dtype))
    sub = _export_piece(dyn, (t_example, state_example), ["t", "y"], settings.opset, settings.dynamic_batch,
                        batched=("t", "y"))
    takes_t = any(i.name == "t" for i in sub.input)

    def f(t: Optional[str], y_: Value) -> Value:
        feeds = {"t": _cast(gb, t, prec.state, prec.compute) if t else "",
                 "y": _cast(gb, y_.name, prec.state, prec.compute)}
        (out,) = gb.splice(sub, feeds, prefix)
        return Value(_cast(gb, out, prec.compute, prec.state))

    prev = gb.const(float(block.spec.start))
    outs = []
    for k in range(block.spec.query_times):
        now = slot(gb, query, k)
        y = per_sample_interval(gb, f, y, prev, now, steps=settings.steps, tableau=tableau, rank=rank,
                                takes_t=takes_t)
        outs.append(y)
        prev = now
    return outs


def _set_metadata(onnx_model: onnx.ModelProto, model: ODENet, settings: ExportSettings) -> None:
    spec = model.spec
    blocks = [
        {
            "t": "query" if b.spec.query else list(b.spec.t),
            **({"start": b.spec.start} if b.spec.query else {}),
            "output": b.spec.output,
            "training_solver": b.spec.solver.summary(),
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
        **({"export_newton_iters": str(settings.newton_iters)} if settings.newton_iters is not None else {}),
        "export_layout": "loop" if settings.loop else "unrolled",
        **({"export_correction": "step correction (hypersolver) in every step"} if settings.correction else {}),
        **({"export_precision": settings.precision} if settings.precision is not None else {}),
        **({"export_grid": json.dumps({"kind": "optimised", "points": [None if g is None else g.to_list()
                                                                       for g in settings.grids]})}
           if settings.grids else {}),
        "ode_blocks": json.dumps(blocks),
    }
    if spec.series is not None:
        meta["series"] = json.dumps(series_metadata(model))
    onnx_model.doc_string = f"{spec.name}: ODE-Net exported by odespec {odespec.__version__}"
    for k, v in meta.items():
        onnx_model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))


def series_metadata(model: ODENet) -> dict[str, Any]:
    """The ``series`` metadata entry of a model reading series: its inputs in order, and the
    earliest time each time input may hold (:attr:`SeriesInputs.starts`), which ``odespec run``
    checks the inputs against."""
    from odespec.export.inputs import series_inputs

    series = series_inputs(model)
    assert series is not None
    return {"inputs": [INPUT_NAME, *series.names], "starts": series.starts}


def check_onnx(onnx_model: onnx.ModelProto) -> onnx.ModelProto:
    """``onnx.checker`` full check (with strict shape inference); returns the inferred model."""
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
        return onnx.shape_inference.infer_shapes(onnx_model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"the exported graph failed onnx.checker: {e}") from e


def export_settings_from_spec(spec: Any, *, method: Optional[str] = None, steps: Optional[int] = None,
                              opset: Optional[int] = None, loop: Optional[bool] = None,
                              precision: Optional[str] = None) -> ExportSettings:
    """The spec's ``export.onnx`` settings, with the arguments that are not ``None`` overriding them.

    A spec with ``steps: auto`` gives ``steps=1`` here unless ``steps`` is passed: the caller
    calibrates (:mod:`odespec.export.calibrate`) and replaces method and steps.
    """
    o = spec.export
    spec_steps = 1 if o.steps == "auto" else o.steps
    return ExportSettings(method=method or o.method, steps=steps or spec_steps, opset=opset or o.opset,
                          dynamic_batch=o.dynamic_batch, loop=o.loop if loop is None else loop,
                          precision=precision or o.precision,
                          newton_iters=o.newton_iters if isinstance(o.newton_iters, int) else None)


def add_metadata(onnx_model: onnx.ModelProto, entries: dict[str, str]) -> None:
    """Add (or replace) ``metadata_props`` entries of ``onnx_model``."""
    keep = [p for p in onnx_model.metadata_props if p.key not in entries]
    del onnx_model.metadata_props[:]
    onnx_model.metadata_props.extend(keep)
    for k, v in entries.items():
        onnx_model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
