"""The ``loop`` export layout: each output interval of an ODE block becomes one ONNX ``Loop``.

The unrolled layout splices the dynamics once per stage *per step*, so the file and the export
time grow with the step count. Here the body graph holds a single Runge-Kutta step — the
dynamics spliced once per stage, the combinations emitted by the very same
:func:`~odespec.solvers.step.rk_step` over symbolic values — and onnxruntime runs it
``steps`` times. The file size is independent of the step count.

The body reads the weights from the outer graph's initializers (a subgraph may reference
outer-scope values by name; :meth:`GraphBuilder.body` puts everything it creates there), so
each weight is stored once however many intervals and stages there are.

Loop-carried state: the time ``t`` at the start of the step, the state ``y``, and for an FSAL
method the first stage ``k1`` of the next step. The step size is a constant per interval.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from odespec.errors import ExportError
from odespec.export.graph import GraphBuilder, Value
from odespec.solvers.step import rk_step
from odespec.solvers.tableau import ButcherTableau

__all__ = ["TimeValue", "loop_solve"]


class TimeValue:
    """A symbolic scalar time in a graph being built, plus a constant offset.

    ``rk_step`` computes stage times as ``t + c_i * h`` with a float ``c_i * h``; on this value
    that addition only records the offset. :attr:`name` emits the ``Add`` node when a stage
    really reads its time, so autonomous dynamics (whose exported graph has no ``t`` input)
    leave no dead time arithmetic in the loop body, and stages with equal ``c_i`` (rk4's two
    midpoints) share one node.
    """

    def __init__(self, base: str, builder: GraphBuilder, offset: float = 0.0,
                 _made: Optional[dict[float, str]] = None):
        self.base = base
        self.builder = builder
        self.offset = offset
        self._made = {} if _made is None else _made  # offset -> value name, shared by derived times

    def __add__(self, dt: float) -> "TimeValue":
        return TimeValue(self.base, self.builder, self.offset + float(dt), self._made)

    __radd__ = __add__

    @property
    def name(self) -> str:
        """The ONNX value holding this time (computed in the graph on first use)."""
        if self.offset == 0.0:
            return self.base
        if self.offset not in self._made:
            self._made[self.offset] = self.builder.node("Add", [self.base, self.builder.const(self.offset)])
        return self._made[self.offset]


def loop_solve(
    gb: GraphBuilder,
    dynamics: onnx.GraphProto,
    weights_prefix: str,
    y0: Value,
    grid: Sequence[Sequence[tuple[float, float]]],
    tableau: ButcherTableau,
    elem_type: int,
    state_shape: Sequence[Any],
) -> list[Value]:
    """Solve one ODE block with one ``Loop`` node per output interval.

    ``dynamics`` is the torch-exported f(t, y) graph (inputs ``t``, ``y``), ``grid`` the
    intervals' steps as :func:`~odespec.solvers.grid.fixed_grid` returns them,
    ``state_shape`` the state's full shape including the batch dimension (an int or a
    symbolic name each). Returns the state at every output time, ``y0`` first.
    """
    outs = [y0]
    y = y0
    for interval in grid:
        if not interval:
            raise ExportError("internal error: an output interval without steps")
        t0, h = interval[0]
        y = _interval_loop(gb, dynamics, weights_prefix, y, float(t0), float(h), len(interval), tableau,
                           elem_type, state_shape)
        outs.append(y)
    return outs


def _takes_t(dynamics: onnx.GraphProto) -> bool:
    """Whether the exported f(t, y) reads t (the exporter drops an unused input)."""
    return any(i.name == "t" for i in dynamics.input)


def _splice_f(builder: GraphBuilder, dynamics: onnx.GraphProto,
              weights_prefix: str) -> Callable[[TimeValue, Value], Value]:
    takes_t = _takes_t(dynamics)

    def f(t: TimeValue, y: Value) -> Value:
        (out,) = builder.splice(dynamics, {"t": t.name if takes_t else "", "y": y.name}, weights_prefix)
        return Value(out)

    return f


def _interval_loop(
    gb: GraphBuilder,
    dynamics: onnx.GraphProto,
    weights_prefix: str,
    y: Value,
    t0: float,
    h: float,
    n: int,
    tableau: ButcherTableau,
    elem_type: int,
    state_shape: Sequence[Any],
) -> Value:
    """One ``Loop`` node taking ``n`` steps of size ``h`` from ``(t0, y)``; returns the final y."""
    body = gb.body()
    it, cond_in, t_in, y_in = (body.fresh(b) for b in ("iter", "cond", "t", "y"))
    fsal = tableau.fsal
    k_in = body.fresh("k") if fsal else None

    res = rk_step(_splice_f(body, dynamics, weights_prefix), TimeValue(t_in, body), Value(y_in), h, tableau,
                  combine=body.combine, k1=Value(k_in) if k_in else None, with_error=False)
    # The next step's time is t0 + (i + 1) * h from the iteration count, the grid the
    # fixed-step solver walks, instead of t + h: accumulating h would add a rounding error per
    # step (in float32, ~1e-5 relative after a few hundred steps), which time-dependent
    # dynamics would feel.
    np_dtype = body.np_dtype
    i1 = body.node("Add", [it, body.const(1, dtype=np.int64)])
    t_out = body.node("Add", [body.const(t0), body.node("Mul", [body.node("Cast", [i1], to=elem_type),
                                                                 body.const(h, dtype=np_dtype)])])
    carried_out = [t_out, res.y_next.name] + ([res.ks[-1].name] if fsal else [])
    body_outputs = [body.node("Identity", [cond_in])] + [_produced(body, v) for v in carried_out]

    scalar = lambda name, et: helper.make_tensor_value_info(name, et, [])  # noqa: E731
    state = lambda name: helper.make_tensor_value_info(name, elem_type, list(state_shape))  # noqa: E731
    graph = helper.make_graph(
        body.nodes,
        gb.fresh("rk_step"),
        [scalar(it, TensorProto.INT64), scalar(cond_in, TensorProto.BOOL), scalar(t_in, elem_type), state(y_in)]
        + ([state(k_in)] if k_in else []),
        [scalar(body_outputs[0], TensorProto.BOOL), scalar(body_outputs[1], elem_type), state(body_outputs[2])]
        + ([state(body_outputs[3])] if fsal else []),
    )

    initial = [gb.const(t0), y.name]
    if fsal:
        # the first step's first stage, computed once before the loop (rk_step does the same)
        (k1,) = gb.splice(dynamics, {"t": gb.const(t0) if _takes_t(dynamics) else "", "y": y.name}, weights_prefix)
        initial.append(k1)
    outputs = [gb.fresh("t_end"), gb.fresh("y_end")] + ([gb.fresh("k_end")] if fsal else [])
    # trip count = the interval's step count; no condition input (a "for" loop)
    gb.nodes.append(helper.make_node("Loop", [gb.const(n, dtype=np.int64), ""] + initial, outputs,
                                     name=gb.fresh("loop"), body=graph))
    return Value(outputs[1])


def _produced(body: GraphBuilder, name: str) -> str:
    """``name`` if a body node computes it, else an ``Identity`` of it: a body output that is
    a body input or an outer-scope value (a dynamics that returns a constant) is not allowed."""
    if any(name in n.output for n in body.nodes):
        return name
    return body.node("Identity", [name])
