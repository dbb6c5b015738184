"""An ONNX graph assembled from pieces torch exported: layer segments are spliced in once, the
dynamics subgraph once per solver stage, and the Runge-Kutta arithmetic between the stages is
emitted by the solvers' own :func:`~odespec.solvers.step.rk_step` running over symbolic values.

Weights are initializers shared by every copy of the dynamics, so the file holds each weight
once however many steps are unrolled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
import onnx
from numpy.typing import DTypeLike
from onnx import TensorProto, helper, numpy_helper

from odespec.errors import ExportError


@dataclass(frozen=True)
class Value:
    """A symbolic tensor: the name of an ONNX value. rk_step only passes these around."""

    name: str


class GraphBuilder:
    """Accumulates nodes and initializers of one ONNX graph."""

    def __init__(self, np_dtype: DTypeLike):
        self.np_dtype = np.dtype(np_dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self._consts: dict[tuple, str] = {}
        self._shared_names: dict[str, dict[str, str]] = {}
        self._n = 0
        self._root: GraphBuilder = self

    def body(self) -> "GraphBuilder":
        """A builder for a subgraph (e.g. a ``Loop`` body) nested in this graph.

        It has its own node list but shares the root's initializers, constants, shared-weight
        table and name counter: constants and weights it creates land in the *outer* graph's
        initializers, which the subgraph references by name (ONNX subgraphs may read
        outer-scope values), so weights are stored once; and one counter keeps every value
        name unique across the graph and its subgraphs, as ONNX requires (no shadowing).
        """
        child = GraphBuilder(self.np_dtype)
        child._root = self._root
        child.initializers = self._root.initializers
        child._consts = self._root._consts
        child._shared_names = self._root._shared_names
        return child

    def fresh(self, base: str) -> str:
        """A value name not used anywhere in the root graph or its subgraphs."""
        self._root._n += 1
        return f"{base}_{self._root._n}"

    def const(self, value: Union[float, Sequence[int]], *, dtype: Optional[DTypeLike] = None) -> str:
        """A constant initializer, shared by every user of the same value."""
        arr = np.asarray(value, dtype=dtype or self.np_dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = f"const/{len(self._consts)}"
            self.initializers[name] = numpy_helper.from_array(arr, name)
            self._consts[key] = name
        return self._consts[key]

    def node(self, op: str, inputs: Sequence[str], **attrs: Any) -> str:
        out = self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    # -- the combiner rk_step calls ----------------------------------------------------------------
    def combine(self, base: Optional[Value], h: float, terms: Sequence[tuple[float, Value]]) -> Value:
        """``base + h * sum(c * k)`` as ONNX nodes: one Mul per term (h folded into the
        constant), one Sum over all of them."""
        parts = [base.name] if base is not None else []
        for c, k in terms:
            coef = float(h) * float(c)
            parts.append(k.name if coef == 1.0 else self.node("Mul", [k.name, self.const(coef)]))
        if not parts:
            raise ExportError("internal error: an empty Runge-Kutta combination")
        if len(parts) == 1:
            return Value(parts[0])
        return Value(self.node("Sum", parts))

    # -- splicing a torch-exported graph ------------------------------------------------------------
    def splice(self, sub: onnx.GraphProto, inputs: dict[str, str], weights_prefix: str) -> list[str]:
        """Copy ``sub``'s nodes into this graph; return the names of its outputs here.

        ``inputs`` maps the subgraph's input names to values of this graph (inputs the exporter
        pruned because they were unused are ignored). Initializers, and ``Constant`` nodes
        (hoisted into initializers), get ``weights_prefix`` and are added only the first time,
        so every copy of the same subgraph shares one set of weights and constants.
        Intermediate values get short fresh names: an rk4 x 256 unroll has thousands of them,
        and long names would dominate the file size.
        """
        sub_inputs = {i.name for i in sub.input}
        missing = sub_inputs - set(inputs)
        if missing:
            raise ExportError(f"internal error: no value for subgraph inputs {sorted(missing)}")
        shared = self._shared(sub, weights_prefix)
        local: dict[str, str] = {}

        def rename(name: str) -> str:
            if name == "":
                return name  # an omitted optional input
            if name in sub_inputs:
                return inputs[name]
            if name in shared:
                return shared[name]
            if name not in local:
                local[name] = self.fresh("v")
            return local[name]

        for n in sub.node:
            if n.op_type == "Constant" and n.output[0] in shared:
                continue
            if n.op_type == "Identity" and not n.domain and n.output[0] not in local:
                # torch's exporter writes Identity nodes for deduplicated initializers; every
                # copy of the subgraph would repeat them, so read the source value directly
                local[n.output[0]] = rename(n.input[0])
                continue
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
                raise ExportError(
                    f"a layer exported to ONNX control flow ({n.op_type}); odespec cannot unroll it",
                    "use layers without data-dependent control flow inside dynamics",
                )
            outs = [rename(x) for x in n.output]
            self.nodes.append(
                helper.make_node(n.op_type, [rename(x) for x in n.input], outs, name=outs[0] if outs else "",
                                 domain=n.domain or None)
            )
            self.nodes[-1].attribute.extend(n.attribute)
        return [rename(o.name) for o in sub.output]

    def _shared(self, sub: onnx.GraphProto, weights_prefix: str) -> dict[str, str]:
        """Subgraph value name -> shared initializer name, adding the initializers once."""
        if weights_prefix in self._shared_names:
            return self._shared_names[weights_prefix]
        names: dict[str, str] = {}
        tensors = list(sub.initializer)
        for n in sub.node:
            value = [a for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR]
            if n.op_type == "Constant" and not n.input and value:
                t = onnx.TensorProto()
                t.CopyFrom(value[0].t)
                t.name = n.output[0]
                tensors.append(t)
        for t in tensors:
            copy = onnx.TensorProto()
            copy.CopyFrom(t)
            copy.name = weights_prefix + t.name
            copy.doc_string = ""
            self.initializers[copy.name] = copy
            names[t.name] = copy.name
        self._shared_names[weights_prefix] = names
        return names

    def make_model(
        self,
        name: str,
        inputs: list[onnx.ValueInfoProto],
        outputs: list[onnx.ValueInfoProto],
        opset: int,
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=list(self.initializers.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="odespec")
        # keep the IR version onnxruntime releases of the last years accept
        model.ir_version = min(model.ir_version, 9 if opset <= 20 else 10)
        return model


ONNX_DTYPES = {"float16": TensorProto.FLOAT16, "float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}
NUMPY_DTYPES: dict[str, type[np.floating]] = {"float16": np.float16, "float32": np.float32, "float64": np.float64}
