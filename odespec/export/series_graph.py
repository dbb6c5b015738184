"""The graph pieces of a model that reads irregular series: its extra inputs, the per-sample
fixed-step solve of one output interval, and the layers that read ``times``/``mask``/``query_times``.

Per-sample step sizes are computed in the graph by the change of time variable the PyTorch
solver uses (:mod:`odespec.solvers.per_sample`): sample ``b``'s interval from ``a_b`` to
``b_b`` is ``s in [0, 1]`` with ``dy/ds = d_b * f(a_b + s * d_b, y)``, ``d_b = b_b - a_b``
computed from the graph's inputs, and ``steps`` fixed steps of ``1 / steps`` in ``s``. So every
sample gets ``steps`` equal steps of ``d_b / steps`` in each of its own intervals, whatever the
other samples' times: exactly the PyTorch fixed-step model (:func:`~odespec.export.unroll.fixed_step_model`).
A padded slot (a repeated time, ``d_b = 0``) leaves the state as it is.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, cast

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from odespec.export.graph import GraphBuilder, Value
from odespec.export.unroll import PerSampleEncoder
from odespec.solvers.grid import fixed_grid
from odespec.solvers.step import rk_step
from odespec.solvers.tableau import ButcherTableau

__all__ = ["SeriesValues", "PieceExporter", "per_sample_interval", "slot", "lay_ode_rnn", "SeriesPiece"]

#: ``export(module, example_args, input_names, batched_names)`` -> the module's ONNX graph; the
#: names in ``batched_names`` get a dynamic batch axis 0 (when the export has a dynamic batch)
PieceExporter = Callable[[nn.Module, tuple, list[str], tuple[str, ...]], onnx.GraphProto]
#: the dynamics as the graph sees them: ``f(t, y)`` with ``t`` the name of a per-sample time
#: shaped (batch, 1, ..., 1), or None for autonomous dynamics
Field = Callable[[Optional[str], Value], Value]


#: the graph's series inputs: input name (``times``, ``mask``, ``query_times``) -> the name of its
#: value in the graph; only those the model reads
SeriesValues = dict[str, str]


def slot(gb: GraphBuilder, value: str, k: int) -> str:
    """``value[:, k]``: slot ``k`` of a (batch, T, ...) value (``Gather`` on axis 1)."""
    return gb.node("Gather", [value, gb.const(k, dtype=np.int64)], axis=1)


def _per_sample(gb: GraphBuilder, value: str, rank: int) -> str:
    """A (batch,) value reshaped to (batch, 1, ..., 1) for a state of per-sample rank ``rank``."""
    return gb.node("Reshape", [value, gb.const([-1] + [1] * rank, dtype=np.int64)])


def per_sample_interval(gb: GraphBuilder, f: Field, y: Value, a: str, b: str, *, steps: int,
                        tableau: ButcherTableau, rank: int, takes_t: bool) -> Value:
    """``y`` carried from each sample's time ``a`` to its ``b`` (names of (batch,) values, or of a
    scalar constant for a start shared by all samples) with ``steps`` fixed steps of ``tableau``
    in ``s``: the graph of :func:`odespec.solvers.solve_per_sample` for one output interval."""
    delta = gb.node("Sub", [b, a])
    scale = _per_sample(gb, delta, rank)
    times: dict[float, str] = {}

    def t_at(s: float) -> Optional[str]:
        # t = a + s * d per sample, shaped for the dynamics; made once per distinct stage time
        if not takes_t:
            return None
        if s not in times:
            t = gb.node("Add", [a, gb.node("Mul", [delta, gb.const(float(s))])])
            times[s] = _per_sample(gb, t, rank)
        return times[s]

    def g(s: float, y_: Value) -> Value:
        return Value(gb.node("Mul", [f(t_at(s), y_).name, scale]))

    k1 = None
    (interval,) = fixed_grid((0.0, 1.0), steps)
    for s0, h in interval:
        res = rk_step(g, s0, y, h, tableau, combine=gb.combine, k1=k1, with_error=False)
        y = res.y_next
        k1 = res.ks[-1] if tableau.fsal else None
    return y


class _Series(NamedTuple):
    """What a module of the series protocol reads its inputs from (by name)."""

    times: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    query_times: Optional[torch.Tensor] = None


class SeriesPiece(nn.Module):
    """A module of the series protocol (``module(x, series)``) as a function of plain tensors
    ``(x, times?, mask?, query_times?)``, for torch's exporter; ``names`` are the series inputs
    passed, in order."""

    def __init__(self, module: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.module = module
        self.names = names

    def forward(self, x: torch.Tensor, *series: torch.Tensor) -> torch.Tensor:
        return self.module(x, _Series(**dict(zip(self.names, series, strict=True))))


class _Update(nn.Module):
    """One ODE-RNN observation update: the encoder's own :meth:`PerSampleEncoder.update`."""

    def __init__(self, rnn: PerSampleEncoder):
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor, h: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.rnn.update(x, h, mask)


class _Field(nn.Module):
    """The ODE-RNN's autonomous dynamics f(h) (its ``t`` is never read)."""

    def __init__(self, rnn: PerSampleEncoder):
        super().__init__()
        # f(h) through its layers, not the dynamics' forward, which counts evaluations
        self.layers = cast(nn.ModuleList, rnn.dynamics.layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h)
        return h


def _zeros(gb: GraphBuilder, like: str, size: int) -> str:
    """A (batch, size) zero value, the batch taken from ``like``."""
    batch = gb.node("Slice", [gb.node("Shape", [like]), gb.const([0], dtype=np.int64), gb.const([1], dtype=np.int64)])
    shape = gb.node("Concat", [batch, gb.const([size], dtype=np.int64)], axis=0)
    zero = numpy_helper.from_array(np.zeros(1, dtype=gb.np_dtype))
    out = gb.fresh("zeros")
    gb.nodes.append(helper.make_node("ConstantOfShape", [shape], [out], name=out, value=zero))
    return out


def _to(gb: GraphBuilder, value: str, elem: Optional[int]) -> str:
    """``value`` cast to the ONNX element type ``elem`` (None: left as it is)."""
    return value if elem is None else gb.node("Cast", [value], to=elem)


def lay_ode_rnn(gb: GraphBuilder, rnn: PerSampleEncoder, x: str, series: SeriesValues, export_piece: PieceExporter,
                prefix: str, *, length: int, features: int, steps: int, tableau: ButcherTableau,
                compute: Optional[int] = None) -> str:
    """The ODE-RNN encoder (in its export form) laid into ``gb``: an unrolled
    loop over the ``length`` (T) observation slots of ``features`` (F) values, each gap solved per sample with ``steps`` fixed steps,
    each update the GRU cell piece exported once. Returns the output value's name.

    ``compute`` (mixed precision: the ONNX element type the pieces were traced in, which ``x`` and
    ``series["mask"]`` already are): the hidden state is carried, and each gap's solve accumulated,
    in the builder's type, as an ODE block's state is; the dynamics and each GRU update run in
    ``compute``, their inputs cast to it and their results back. The times stay in the builder's
    type, so the per-sample step sizes are not rounded."""
    state = None if compute is None else helper.np_dtype_to_tensor_dtype(gb.np_dtype)
    dtype = next(rnn.parameters()).dtype
    ex_x, ex_h = torch.zeros(2, features, dtype=dtype), torch.zeros(2, rnn.hidden, dtype=dtype)
    update_args: tuple = (ex_x, ex_h, torch.ones(2, features, dtype=dtype)) if rnn.use_mask else (ex_x, ex_h)
    names = ["x", "h", "mask"][:len(update_args)]
    update = export_piece(_Update(rnn), update_args, names, tuple(names))
    field_graph = export_piece(_Field(rnn), (ex_h,), ["y"], ("y",))

    def f(t: Optional[str], h: Value) -> Value:
        (out,) = gb.splice(field_graph, {"y": _to(gb, h.name, compute)}, prefix + "f/")
        return Value(_to(gb, out, state))

    times = series["times"]
    count = length
    start = gb.const(float(rnn.start))
    slots = [slot(gb, times, k) for k in range(count)]
    h = Value(_zeros(gb, x, rnn.hidden))
    outs: list[str] = [h.name] * count
    order = range(count - 1, -1, -1) if rnn.reverse else range(count)
    prev = slots[-1] if rnn.reverse else start
    for k in order:
        if prev != slots[k]:  # the reverse pass's first gap is empty: the state stays exactly as it is
            h = per_sample_interval(gb, f, h, prev, slots[k], steps=steps, tableau=tableau, rank=1, takes_t=False)
        feeds = {"x": slot(gb, x, k), "h": _to(gb, h.name, compute)}
        if rnn.use_mask:
            feeds["mask"] = slot(gb, series["mask"], k)
        (new,) = gb.splice(update, feeds, prefix + "cell/")
        new = _to(gb, new, state)
        h = Value(new)
        outs[k] = new
        prev = slots[k]
    if rnn.reverse:
        h = per_sample_interval(gb, f, h, prev, start, steps=steps, tableau=tableau, rank=1, takes_t=False)
    if not rnn.sequence:
        return h.name
    axis = gb.const([1], dtype=np.int64)
    return gb.node("Concat", [gb.node("Unsqueeze", [o, axis]) for o in outs], axis=1)
