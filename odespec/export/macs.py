"""Multiply-accumulates (MACs) per sample of an ONNX graph, counted from the graph itself.

What the deployed graph costs, independent of how it was made: the count walks the nodes of
any ONNX model (odespec's or not) after ONNX shape inference, with every symbolic input
dimension (the dynamic batch) taken as 1, so the totals are *per sample*.

The convention (the one FLOP counters such as ``torch.utils.flop_counter`` use, where a MAC is
2 FLOPs):

- **MACs** are counted for the operators that multiply matrices or tensors of weights:
  ``MatMul`` and ``Gemm`` (M*N*K; Gemm's bias add is not counted), ``Conv`` (output elements
  times the input channels per group times the kernel size, so groups, stride and dilation
  are in), ``ConvTranspose`` (input elements times the output channels per group times the
  kernel size), and the recurrent ``RNN``/``GRU``/``LSTM`` (sequence length x directions x
  gates x hidden x (input + hidden); 1, 3 and 4 gates).
- Every other operator counts **0 MACs**. For those that compute (element-wise arithmetic,
  activations, normalisations, pooling, reductions) the table gives the values they produce
  (output elements) as ``elements``: a rough measure of the element-wise work, which on these
  models is small beside the MACs. Operators that only move or reshape data (Reshape, Concat,
  Slice, Gather, Transpose, Shape, Cast, Identity, ...) count nothing.
- A ``Loop`` node's body counts once per iteration when its trip count is a constant (the
  ``loop`` export layout); ``If`` branches count the larger branch.

A node whose shapes shape inference could not determine is listed in ``unknown`` (by op type)
and contributes nothing, so the totals are then a lower bound; odespec's graphs have none.

Imports onnx and numpy only (no torch, no onnxruntime), like :mod:`odespec.export.inspect`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

__all__ = ["MacsCount", "OpCost", "count_macs", "render_macs", "MAC_OPS", "DATA_MOVEMENT_OPS"]

#: operators that count MACs (every other one counts 0)
MAC_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "RNN", "GRU", "LSTM")

#: operators that only move, reshape or describe data: neither MACs nor elements
DATA_MOVEMENT_OPS = frozenset({
    "Reshape", "Concat", "Slice", "Gather", "GatherElements", "GatherND", "Transpose", "Shape", "Size", "Cast",
    "CastLike", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Split", "Expand", "Constant", "ConstantOfShape",
    "Tile", "Pad", "Range", "Dropout", "ScatterElements", "ScatterND", "DepthToSpace", "SpaceToDepth",
    "Loop", "If", "Scan", "SequenceConstruct", "SequenceAt", "SplitToSequence", "ConcatFromSequence",
})

Dims = Optional[tuple[int, ...]]


@dataclass
class OpCost:
    """One operator type's share: how many nodes (loop iterations included), their MACs and the
    values the element-wise ones produce."""

    nodes: int = 0
    macs: int = 0
    elements: int = 0

    def to_dict(self) -> dict[str, int]:
        """JSON-ready: ``nodes``, ``macs``, ``elements``."""
        return {"nodes": self.nodes, "macs": self.macs, "elements": self.elements}


@dataclass
class MacsCount:
    """MACs per sample of a graph (see the module docstring for what counts)."""

    #: per operator type (``domain::Op`` outside the default domain)
    by_op: dict[str, OpCost] = field(default_factory=dict)
    #: op type -> nodes whose shapes could not be determined (then the totals are a lower bound)
    unknown: dict[str, int] = field(default_factory=dict)
    #: the symbolic input dimensions taken as 1: ``input_name[axis] = dim_name``
    per_sample_dims: list[str] = field(default_factory=list)

    @property
    def macs(self) -> int:
        """Total multiply-accumulates per sample."""
        return sum(c.macs for c in self.by_op.values())

    @property
    def exact(self) -> bool:
        """Whether every node's shapes were known (else :attr:`macs` is a lower bound)."""
        return not self.unknown

    @property
    def elements(self) -> int:
        """Total values produced by the element-wise (0-MAC) operators per sample."""
        return sum(c.elements for c in self.by_op.values())

    def add(self, op: str, macs: int, elements: int, times: int) -> None:
        cost = self.by_op.setdefault(op, OpCost())
        cost.nodes += times
        cost.macs += macs * times
        cost.elements += elements * times

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: totals, the per-operator table (MAC operators first, by MACs), the
        unknown nodes and the dimensions taken as 1."""
        order = sorted(self.by_op.items(), key=lambda kv: (-kv[1].macs, -kv[1].elements, kv[0]))
        return {
            "macs_per_sample": self.macs,
            "elements_per_sample": self.elements,
            "exact": self.exact,
            "by_op": {op: c.to_dict() for op, c in order if c.macs or c.elements},
            "unknown": dict(sorted(self.unknown.items())),
            "per_sample_dims": list(self.per_sample_dims),
            "convention": "MACs of MatMul, Gemm, Conv, ConvTranspose, RNN, GRU, LSTM (1 MAC = 2 FLOPs); "
                          "other operators 0 MACs, their output elements listed",
        }


def count_macs(model: Any) -> MacsCount:
    """The MACs per sample of ``model`` (an ``onnx.ModelProto``; not modified).

    Every symbolic dimension of the graph's inputs is taken as 1, then one sweep through the
    nodes in order infers each node's output shapes with ONNX's per-node inference, and
    computes the values that are then constants (``Shape`` of a known shape, small nodes of
    constants: exporters compute Pad and Reshape arguments so) with ONNX's reference
    evaluator, so that the shapes after them are known too. Loop bodies are swept with the
    loop's state shapes.
    """
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    dims = _fix_symbolic_inputs(m.graph)
    shapes = _Shapes({o.domain or "": o.version for o in m.opset_import})
    shapes.sweep(m.graph)
    result = MacsCount(per_sample_dims=dims)
    _count_graph(m.graph, shapes, result, times=1)
    return result


#: constants larger than this are not computed (they are weights or data, not shape arguments)
_FOLD_LIMIT = 100_000
#: operators never computed ahead: their outputs are not functions of their inputs
_NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                               "Multinomial", "Bernoulli"})


class _Shapes:
    """The types of a graph's values (names are unique across a model's scopes, so one table
    serves Loop bodies too) and the small values known ahead of running it."""

    def __init__(self, opsets: dict[str, int]):
        self.opsets = opsets
        self.types: dict[str, Any] = {}
        self.known: dict[str, Any] = {}

    def get(self, name: str) -> Dims:
        """The value's shape when every dimension is a number, else None."""
        t = self.types.get(name)
        return None if t is None else _static_dims(t)

    def const(self, name: str) -> Any:
        return self.known.get(name)

    def sweep(self, graph: Any) -> None:
        """Types (and small constant values) of every value of ``graph``, in node order."""
        from onnx import numpy_helper

        # declared inputs only: declared intermediate shapes name the symbolic batch
        for v in graph.input:
            if v.name not in self.types and v.type.HasField("tensor_type"):
                self.types[v.name] = v.type
        for t in graph.initializer:
            self.types[t.name] = _tensor_type(t.data_type, list(t.dims))
            if _prod(t.dims) <= _FOLD_LIMIT and not t.external_data:
                self.known[t.name] = numpy_helper.to_array(t)
        for node in graph.node:
            self._node(node)

    def _node(self, node: Any) -> None:
        values = _evaluate(node, self)
        if values is not None:
            for name, value in zip(node.output, values, strict=True):
                self.known[name] = value
                self.types[name] = _array_type(value)
        elif node.op_type == "Loop" and node.domain in ("", "ai.onnx"):
            self._loop(node)
        elif node.op_type == "If" and node.domain in ("", "ai.onnx"):
            self._if(node)
        else:
            self.types.update(_infer_node(node, self))

    def _loop(self, node: Any) -> None:
        """Sweep the body with the loop's initial state types; a state whose shape the body
        keeps has that shape at the end (ONNX's own Loop inference leaves it unknown)."""
        from onnx import TensorProto

        body = next(a.g for a in node.attribute if a.name == "body")
        iteration, cond, *states = [v.name for v in body.input]
        self.types[iteration] = _tensor_type(TensorProto.INT64, [])
        self.types[cond] = _tensor_type(TensorProto.BOOL, [])
        for name, outer in zip(states, node.input[2:], strict=False):
            if outer in self.types:
                self.types[name] = self.types[outer]
        self.sweep(body)
        for k, name in enumerate(node.output[:len(states)]):
            before, after = self.get(node.input[2 + k]), self.get(body.output[1 + k].name)
            if before is not None and before == after:
                self.types[name] = self.types[body.output[1 + k].name]


    def _if(self, node: Any) -> None:
        """Sweep both branches; an output has a shape when both branches agree on it."""
        branches = [a.g for a in node.attribute if a.name in ("then_branch", "else_branch")]
        for g in branches:
            self.sweep(g)
        for k, name in enumerate(node.output):
            outs = [g.output[k].name for g in branches if k < len(g.output)]
            found = {self.get(o) for o in outs}
            if len(outs) == 2 and len(found) == 1 and None not in found:
                self.types[name] = self.types[outs[0]]


def _tensor_type(elem_type: int, dims: Sequence[int]) -> Any:
    from onnx import helper

    return helper.make_tensor_type_proto(elem_type, list(dims))


def _array_type(value: Any) -> Any:
    from onnx import helper

    return _tensor_type(helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)


def _infer_node(node: Any, shapes: _Shapes) -> dict[str, Any]:
    """ONNX's shape inference for one node, given its inputs' types and known values."""
    import onnx
    from onnx import numpy_helper

    try:
        schema = onnx.defs.get_schema(node.op_type, shapes.opsets.get(node.domain or "", 1), node.domain)
        data = {i: numpy_helper.from_array(shapes.known[i], i) for i in node.input if i in shapes.known}
        types = {i: shapes.types[i] for i in node.input if i in shapes.types}
        opsets = [onnx.helper.make_opsetid(d, v) for d, v in shapes.opsets.items()]
        return dict(onnx.shape_inference.infer_node_outputs(schema, node, types, data, opset_imports=opsets))
    except Exception:  # an unknown operator, or inputs inference cannot take: shapes stay unknown
        return {}


def _static_dims(t: Any) -> Dims:
    """A TypeProto's shape when every dimension is a number, else None."""
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = t.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return tuple(int(d.dim_value) for d in dims)


def _evaluate(node: Any, shapes: _Shapes) -> Optional[list[Any]]:
    """The node's outputs if they are small constants now, else None."""
    import numpy as np
    from onnx import numpy_helper

    if node.domain not in ("", "ai.onnx") or not node.output:
        return None
    if node.op_type == "Shape":
        dims = shapes.get(node.input[0])
        if dims is None:
            return None
        start, end = _attr(node, "start", 0), _attr(node, "end", None)
        return [np.array(dims[start:end], dtype=np.int64)]
    if node.op_type == "Constant":
        value = _attr(node, "value", None)
        if value is None or _prod(value.dims) > _FOLD_LIMIT:
            return None
        return [numpy_helper.to_array(value)]
    if (node.op_type in _NONDETERMINISTIC
            or any(a.type in (5, 10) for a in node.attribute)  # GRAPH, GRAPHS: Loop/If/Scan
            or not all(i in shapes.known for i in node.input if i)
            or sum(shapes.known[i].size for i in node.input if i) > _FOLD_LIMIT):
        return None
    return _run_node(node, shapes)


def _run_node(node: Any, shapes: _Shapes) -> Optional[list[Any]]:
    from onnx.reference import ReferenceEvaluator

    try:
        ref = ReferenceEvaluator(node, opsets={"": shapes.opsets.get("", shapes.opsets.get("ai.onnx", 17))})
        out = ref.run(None, {i: shapes.known[i] for i in node.input if i})
    except Exception:  # an operator the reference evaluator lacks: leave it to shape inference
        return None
    if any(getattr(v, "size", _FOLD_LIMIT + 1) > _FOLD_LIMIT for v in out):
        return None
    return list(out)


def _fix_symbolic_inputs(graph: Any) -> list[str]:
    """Set every symbolic (or unknown) input dimension to 1; the names of those set."""
    inits = {t.name for t in graph.initializer}
    fixed = []
    for v in graph.input:
        if v.name in inits or not v.type.HasField("tensor_type") or not v.type.tensor_type.HasField("shape"):
            continue
        for axis, d in enumerate(v.type.tensor_type.shape.dim):
            if not d.HasField("dim_value"):
                fixed.append(f"{v.name}[{axis}]" + (f" = {d.dim_param}" if d.dim_param else ""))
                d.dim_value = 1
    return fixed


def _count_graph(graph: Any, shapes: _Shapes, out: MacsCount, times: int) -> None:
    for node in graph.node:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        if node.op_type == "Loop" and node.domain in ("", "ai.onnx"):
            _count_loop(node, shapes, out, times)
        elif node.op_type == "If" and node.domain in ("", "ai.onnx"):
            _count_if(node, shapes, out, times)
        if op in DATA_MOVEMENT_OPS:
            out.add(op, 0, 0, times)
            continue
        cost = _node_cost(node, shapes)
        if cost is None:
            out.unknown[op] = out.unknown.get(op, 0) + times
            out.add(op, 0, 0, times)
        else:
            out.add(op, *cost, times)


def _count_loop(node: Any, shapes: _Shapes, out: MacsCount, times: int) -> None:
    """A Loop's body, once per iteration: its trip count must be a constant."""
    body = next(a.g for a in node.attribute if a.name == "body")
    trips = _scalar_const(shapes, node.input[0]) if node.input and node.input[0] else None
    if trips is None:
        out.unknown["Loop"] = out.unknown.get("Loop", 0) + times
        return
    _count_graph(body, shapes, out, times * trips)


def _count_if(node: Any, shapes: _Shapes, out: MacsCount, times: int) -> None:
    """The costlier of an If's two branches (the one that runs is known only at run time)."""
    branches = []
    for a in node.attribute:
        if a.name in ("then_branch", "else_branch"):
            part = MacsCount()
            _count_graph(a.g, shapes, part, times)
            branches.append(part)
    if branches:
        worst = max(branches, key=lambda b: (b.macs, b.elements))
        for op, c in worst.by_op.items():
            cost = out.by_op.setdefault(op, OpCost())
            cost.nodes, cost.macs, cost.elements = cost.nodes + c.nodes, cost.macs + c.macs, cost.elements + c.elements
        for op, k in worst.unknown.items():
            out.unknown[op] = out.unknown.get(op, 0) + k


def _scalar_const(shapes: _Shapes, name: str) -> Optional[int]:
    value = shapes.const(name)
    return int(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _prod(dims: Sequence[int]) -> int:
    return math.prod(dims)


def _node_cost(node: Any, shapes: _Shapes) -> Optional[tuple[int, int]]:
    """(MACs, elements) of one node, or None if a shape it needs is unknown."""
    counter = _MAC_COUNTERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if counter is not None:
        macs = counter(node, shapes)
        return None if macs is None else (macs, 0)
    outs = [shapes.get(o) for o in node.output if o]
    if not outs or any(d is None for d in outs):
        return None
    return 0, sum(_prod(d) for d in outs if d is not None)


def _matmul(node: Any, shapes: _Shapes) -> Optional[int]:
    a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
    if a is None or y is None or not a:
        return None
    return _prod(y) * a[-1]


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _gemm(node: Any, shapes: _Shapes) -> Optional[int]:
    a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
    if a is None or y is None or len(a) != 2:
        return None
    k = a[0] if _attr(node, "transA", 0) else a[1]
    return _prod(y) * k


def _conv(node: Any, shapes: _Shapes) -> Optional[int]:
    # W is (C_out, C_in / groups, *kernel): each output value takes prod(W.shape[1:]) MACs
    w, y = shapes.get(node.input[1]), shapes.get(node.output[0])
    if w is None or y is None:
        return None
    return _prod(y) * _prod(w[1:])


def _conv_transpose(node: Any, shapes: _Shapes) -> Optional[int]:
    # W is (C_in, C_out / groups, *kernel): each input value is scattered through prod(W.shape[1:])
    x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
    if x is None or w is None:
        return None
    return _prod(x) * _prod(w[1:])


def _recurrent(node: Any, shapes: _Shapes) -> Optional[int]:
    # X (seq, batch, input) or batch-first; W (dirs, gates*hidden, input); R (dirs, gates*hidden,
    # hidden), gates 1 (RNN), 3 (GRU), 4 (LSTM): read from W, so the op type need not be known
    x, w, r = (shapes.get(node.input[i]) for i in range(3))
    if x is None or w is None or r is None or len(x) != 3:
        return None
    steps = x[0] * x[1]  # sequence length times batch, whichever the layout
    dirs, rows, inputs = w
    return steps * dirs * rows * (inputs + r[2])


_MAC_COUNTERS: dict[str, Callable[[Any, _Shapes], Optional[int]]] = {
    "MatMul": _matmul, "Gemm": _gemm, "Conv": _conv, "ConvTranspose": _conv_transpose,
    "RNN": _recurrent, "GRU": _recurrent, "LSTM": _recurrent,
}


def _si(n: int) -> str:
    """1,234 / 12.3 k / 4.56 M / 7.89 G."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:,}"


def render_macs(info: dict[str, Any], indent: str = "  ") -> list[str]:
    """Text lines for :meth:`MacsCount.to_dict`: the total, then a table of the operators."""
    bound = "" if info["exact"] else " at least (shapes unknown for " + ", ".join(
        f"{n} {op}" for op, n in info["unknown"].items()) + ")"
    lines = [f"MACs per sample: {info['macs_per_sample']:,} ({_si(info['macs_per_sample'])}){bound}; "
             f"element-wise values {info['elements_per_sample']:,}"]
    rows = [(op, f"{c['nodes']:,}", f"{c['macs']:,}", f"{c['elements']:,}") for op, c in info["by_op"].items()]
    if rows:
        head = ("op", "nodes", "MACs", "elements")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
        for r in [head, *rows]:
            lines.append(indent + r[0].ljust(widths[0]) + "".join("  " + c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)))
    return lines
