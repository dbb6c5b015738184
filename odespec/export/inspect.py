"""``odespec inspect``: what an ONNX file holds — metadata, inputs and outputs, opsets, op
counts, initializers, multiply-accumulates per sample (:mod:`odespec.export.macs`) — for any
ONNX file, not only odespec's.

Imports no torch and no onnxruntime: inspecting must be quick and work where only ``onnx`` is
installed.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

from odespec.errors import RunError
from odespec.export.macs import count_macs, render_macs

__all__ = ["inspect_onnx", "render_inspect", "format_shape", "load_onnx"]

Dim = Union[int, str, None]


def format_shape(shape: Sequence[Dim]) -> str:
    """``(batch, 2)``: fixed dims as numbers, symbolic dims by name, unknown ones as ``?``."""
    dims = ["?" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def load_onnx(path: Union[str, "os.PathLike[str]"]) -> Any:
    """Load an ONNX model's structure (not its external weight files); :class:`RunError` if the
    file is missing or not ONNX."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise RunError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends for non-ONNX bytes
        raise RunError(f"{p}: not an ONNX model ({type(e).__name__}: {_first_line(e)})", _spec_hint(p)) from e
    # Protobuf decodes many arbitrary byte strings (an empty file, some text) without error;
    # a real model has an IR version and a graph.
    if model.ir_version == 0 or not model.HasField("graph"):
        raise RunError(f"{p}: not an ONNX model (no IR version or graph)", _spec_hint(p))
    return model


def _spec_hint(path: Path) -> Optional[str]:
    """For a spec given where an ONNX file belongs: the commands that take a spec."""
    if path.suffix.lower() in (".yaml", ".yml"):
        return "this looks like a spec: odespec validate checks it, odespec build makes the ONNX file to inspect"
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "unreadable"


def _graphs(graph: Any) -> Iterator[Any]:
    """``graph`` and every subgraph nested in its nodes' attributes (Loop/If/Scan bodies)."""
    import onnx

    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _graphs(g)


def _tensor_bytes(t: Any) -> int:
    """Bytes a tensor's values take, whether stored raw, in typed fields or externally."""
    import numpy as np
    from onnx import TensorProto, helper

    if t.data_type == TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except Exception:  # an element type numpy has no dtype for (e.g. 4-bit types)
        return len(t.raw_data)
    n = 1
    for d in t.dims:
        n *= int(d)
    return n * itemsize


def _value_info(v: Any) -> dict[str, Any]:
    from onnx import TensorProto

    tt = v.type.tensor_type if v.type.HasField("tensor_type") else None
    if tt is None:
        return {"name": v.name, "dtype": v.type.WhichOneof("value") or "unknown", "shape": None}
    shape: Any = None
    if tt.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    dtype = TensorProto.DataType.Name(tt.elem_type).lower() if tt.elem_type else "unknown"
    dtype = {"float": "float32", "double": "float64", "float16": "float16"}.get(dtype, dtype)
    return {"name": v.name, "dtype": dtype, "shape": shape}


def inspect_onnx(path: Union[str, "os.PathLike[str]"]) -> dict[str, Any]:
    """A JSON-ready description of the ONNX file at ``path``.

    ``op_counts`` and ``initializers`` include subgraphs (e.g. ``Loop`` bodies); op types of
    domains other than the default one are written ``domain::Op``. ``macs``:
    :meth:`odespec.export.macs.MacsCount.to_dict` (per sample: symbolic input dimensions as 1).
    """
    model = load_onnx(path)
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    graphs = list(_graphs(graph))
    ops: Counter[str] = Counter()
    initializers = []
    for g in graphs:
        for n in g.node:
            ops[f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type] += 1
        initializers.extend(g.initializer)
    opsets = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    return {
        "file": str(path),
        "file_size_bytes": os.path.getsize(path),
        "ir_version": model.ir_version,
        "opset": opsets.get("ai.onnx"),
        "opset_imports": opsets,
        "producer": " ".join(x for x in (model.producer_name, model.producer_version) if x),
        "graph_name": graph.name,
        "doc_string": model.doc_string,
        "metadata": {p.key: p.value for p in model.metadata_props},
        # old IR versions list initializers among the inputs; those are weights, not inputs
        "inputs": [_value_info(v) for v in graph.input if v.name not in init_names],
        "outputs": [_value_info(v) for v in graph.output],
        "nodes": sum(ops.values()),
        "subgraphs": len(graphs) - 1,
        "op_counts": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "initializers": {"count": len(initializers), "bytes": sum(_tensor_bytes(t) for t in initializers)},
        "macs": count_macs(model).to_dict(),
    }


def _io_line(v: dict[str, Any], width: int) -> str:
    shape = "(shape unknown)" if v["shape"] is None else format_shape(v["shape"])
    return f"  {v['name'].ljust(width)}  {v['dtype']:<8}  {shape}"


def render_inspect(info: dict[str, Any]) -> str:
    """The text form of :func:`inspect_onnx`'s result."""
    lines = [
        f"file:         {info['file']} ({info['file_size_bytes']:,} bytes)",
        f"format:       IR version {info['ir_version']}, opset {info['opset']}"
        + "".join(f", {d} {v}" for d, v in info["opset_imports"].items() if d != "ai.onnx"),
    ]
    if info["producer"]:
        lines.append(f"producer:     {info['producer']}")
    lines.append("metadata:" + ("" if info["metadata"] else "     (none)"))
    width = max((len(k) for k in info["metadata"]), default=0)
    lines += [f"  {k.ljust(width)}  {v}" for k, v in info["metadata"].items()]
    # one width for inputs and outputs, so their columns line up
    width = max((len(v["name"]) for v in info["inputs"] + info["outputs"]), default=0)
    for title in ("inputs", "outputs"):
        lines.append(f"{title}:")
        lines += [_io_line(v, width) for v in info[title]]
    init = info["initializers"]
    lines.append(f"initializers: {init['count']:,} ({init['bytes']:,} bytes)")
    sub = f", {info['subgraphs']} subgraph{'s' if info['subgraphs'] != 1 else ''}" if info["subgraphs"] else ""
    lines.append(f"nodes:        {info['nodes']:,}{sub}")
    lines.append("op counts:")
    width = max((len(k) for k in info["op_counts"]), default=0)
    lines += [f"  {op.ljust(width)}  {n:>6,}" for op, n in info["op_counts"].items()]
    lines += render_macs(info["macs"])
    return "\n".join(lines)
