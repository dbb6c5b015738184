"""A Triton Inference Server model repository for an exported graph (``odespec build
--triton-repo DIR``): ``DIR/NAME/1/model.onnx`` and ``DIR/NAME/config.pbtxt`` for Triton's
onnxruntime backend, so that serving at scale runs on an existing engine (batching, metrics,
HTTP and gRPC) rather than a home-made server.

The configuration is read off the ONNX file itself (input and output names, element types,
shapes), so it cannot disagree with the graph it serves. A graph with a symbolic batch dimension
is served with ``max_batch_size`` :data:`MAX_BATCH_SIZE` and dynamic batching (Triton's ``dims``
then leave the batch dimension out); a graph exported with a fixed batch of 1 is served with
``max_batch_size: 0`` and its full shapes.

The model directory appears whole: it is staged beside ``DIR`` (not inside it, where a polling
Triton would try to load the half-written directory), then renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Union

from odespec.errors import ExportError

__all__ = ["MAX_BATCH_SIZE", "TRITON_DTYPES", "triton_config", "write_triton_repository"]

#: ``max_batch_size`` of a graph with a dynamic batch: the largest batch odespec's parity check
#: runs the graph at (:data:`odespec.export.inputs.SEEDED_BATCHES`), so every batch Triton forms
#: is one the file was verified at or below
MAX_BATCH_SIZE = 256

#: ONNX element type names -> Triton's ``DataType`` names (model_config.proto)
TRITON_DTYPES = {
    "FLOAT": "TYPE_FP32", "DOUBLE": "TYPE_FP64", "FLOAT16": "TYPE_FP16", "BFLOAT16": "TYPE_BF16",
    "INT64": "TYPE_INT64", "INT32": "TYPE_INT32", "INT8": "TYPE_INT8", "UINT8": "TYPE_UINT8", "BOOL": "TYPE_BOOL",
}

PathLike = Union[str, "os.PathLike[str]"]


def _tensors(values: Any) -> list[tuple[str, str, list[Union[int, str]]]]:
    """``(name, ONNX element type name, shape)`` of graph inputs or outputs; a symbolic
    dimension is its name."""
    import onnx

    out = []
    for v in values:
        t = v.type.tensor_type
        dims: list[Union[int, str]] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                                       for d in t.shape.dim]
        out.append((v.name, onnx.TensorProto.DataType.Name(t.elem_type), dims))
    return out


def _entry(name: str, elem: str, dims: list[int]) -> str:
    if elem not in TRITON_DTYPES:
        raise ExportError(f"graph tensor {name!r} has element type {elem}, which Triton's configuration cannot name")
    return (f"  {{\n    name: \"{name}\"\n    data_type: {TRITON_DTYPES[elem]}\n"
            f"    dims: [ {', '.join(map(str, dims))} ]\n  }}")


def triton_config(model_bytes: bytes, name: str) -> tuple[str, int]:
    """The ``config.pbtxt`` text serving the ONNX graph ``model_bytes`` as model ``name``, and
    its ``max_batch_size``."""
    import onnx

    graph = onnx.load_from_string(model_bytes).graph
    inputs, outputs = _tensors(graph.input), _tensors(graph.output)
    tensors = inputs + outputs
    batched = all(dims and isinstance(dims[0], str) for _, _, dims in tensors)
    for tname, _, dims in tensors:
        rest = dims[1:] if batched else dims
        if any(not isinstance(d, int) for d in rest):
            raise ExportError(f"graph tensor {tname!r} has shape {dims}: Triton's configuration needs fixed "
                              "dimensions after the batch")
    max_batch = MAX_BATCH_SIZE if batched else 0

    def block(items: list[tuple[str, str, list[Any]]]) -> str:
        return ",\n".join(_entry(n, e, d[1:] if batched else d) for n, e, d in items)

    text = (f"# Triton Inference Server model configuration, written by odespec build --triton-repo\n"
            f"name: \"{name}\"\nbackend: \"onnxruntime\"\nmax_batch_size: {max_batch}\n"
            f"input [\n{block(inputs)}\n]\noutput [\n{block(outputs)}\n]\n")
    if batched:
        text += "dynamic_batching { }\n"
    return text, max_batch


def write_triton_repository(repo: PathLike, name: str, model_bytes: bytes) -> dict[str, Any]:
    """Write ``repo/name/1/model.onnx`` and ``repo/name/config.pbtxt`` (replacing a previous
    ``repo/name``) and return the build report's ``triton`` entry (no machine paths)."""
    config, max_batch = triton_config(model_bytes, name)
    root = Path(repo)
    if root.exists() and not root.is_dir():
        raise ExportError(f"{root}: not a directory", "--triton-repo names the model repository's directory")
    root.mkdir(parents=True, exist_ok=True)
    # staged beside the repository, on the same file system, so that the rename is atomic
    stage = Path(tempfile.mkdtemp(prefix=f".{root.name}-{name}.", suffix=".tmp", dir=root.resolve().parent))
    try:
        (stage / "1").mkdir()
        _write(stage / "1" / "model.onnx", model_bytes)
        _write(stage / "config.pbtxt", config.encode("utf-8"))
        os.chmod(stage, 0o755)
        _swap_in(stage, root / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"model": name, "files": [f"{name}/config.pbtxt", f"{name}/1/model.onnx"], "backend": "onnxruntime",
            "max_batch_size": max_batch, "dynamic_batching": max_batch > 0}


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o644)


def _swap_in(stage: Path, target: Path) -> None:
    """Rename ``stage`` to ``target``; a previous ``target`` is moved aside first and removed
    after (a reader sees the old model directory or the new one, never a partial one)."""
    old = None
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=stage.parent)) / "model"
        os.replace(target, old)
    os.replace(stage, target)
    if old is not None:
        shutil.rmtree(old.parent, ignore_errors=True)
