"""``odespec run``: feed an array from a ``.npy``, ``.npz`` or ``.csv`` file to an ONNX model in
onnxruntime, and print or write what comes out.

The input file is read by the data contract (:mod:`odespec.data_contract`), the rules training
reads its files by. Problems with it (missing, unreadable, wrong shape or dtype, NaN or
infinity) are :class:`~odespec.errors.InputFileError` (exit code 2, a usage error); problems with the model
or with running it are :class:`~odespec.errors.RunError` (exit code 1). Imports no torch.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from odespec import data_contract as dc
from odespec.errors import InputFileError, RunError
from odespec.export.inspect import format_shape
from odespec.export.session import ort_session

__all__ = ["ModelInput", "RunResult", "open_model", "load_input", "run_onnx", "check_output_path", "save_outputs",
           "render_outputs", "OUTPUT_FORMATS"]

PathLike = Union[str, "os.PathLike[str]"]
OUTPUT_FORMATS = (".npy", ".npz", ".csv")
INPUT_FORMATS = (".npy", ".npz", ".csv")

_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64, "tensor(uint32)": np.uint32, "tensor(uint16)": np.uint16,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class ModelInput:
    """The one input a model takes: name, shape (ints, symbolic names, ``None``) and dtype."""

    name: str
    shape: tuple[Any, ...]
    dtype: np.dtype


@dataclass
class RunResult:
    """One run: the model's input and the shape fed to it, then the outputs in the model's
    output order."""

    model_input: ModelInput
    input_shape: tuple[int, ...]
    names: list[str]
    arrays: list[np.ndarray]

    def to_dict(self, *, with_data: bool) -> dict[str, Any]:
        """JSON-ready; ``with_data`` includes the output values (non-finite ones as ``null``)."""
        mi = self.model_input
        return {
            "input": {"name": mi.name, "model_shape": list(mi.shape), "dtype": str(mi.dtype),
                      "shape": list(self.input_shape)},
            "outputs": [
                {"name": n, "shape": list(y.shape), "dtype": str(y.dtype),
                 **({"data": _json_values(y)} if with_data else {})}
                for n, y in zip(self.names, self.arrays, strict=True)
            ],
        }


def open_model(path: PathLike) -> tuple[Any, ModelInput]:
    """An onnxruntime CPU session for the model at ``path`` and its single input."""
    p = Path(path)
    if not p.is_file():
        raise RunError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")

    def not_loadable(e: Exception) -> RunError:
        return RunError(f"{p}: onnxruntime cannot load it as an ONNX model: {_first_line(e)}",
                        "odespec inspect shows what the file holds")

    sess = ort_session(p, load_error=not_loadable)
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise RunError(f"{p}: the model takes {len(inputs)} inputs ({names}); odespec run feeds exactly one")
    inp = inputs[0]
    if inp.type not in _ORT_DTYPES:
        raise RunError(f"{p}: input {inp.name!r} has type {inp.type}; odespec run feeds numeric tensors")
    return sess, ModelInput(inp.name, tuple(inp.shape), np.dtype(_ORT_DTYPES[inp.type]))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_input(path: PathLike, model_input: ModelInput) -> np.ndarray:
    """Read the array in ``path`` (``.npy``, ``.npz`` or ``.csv``) and make it the model's input by
    the data contract (:mod:`odespec.data_contract`), as training reads its files: the shapes
    that feed the per-sample shape, numbers cast to the input's dtype, no NaN or infinity."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in INPUT_FORMATS:
        raise InputFileError(f"{p}: unknown input format {p.suffix or '(no extension)'!r}",
                             f"use one of {', '.join(INPUT_FORMATS)}")
    if not p.is_file():
        raise InputFileError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
    per_sample = model_input.shape[1:]
    fixed = bool(model_input.shape) and all(isinstance(d, int) for d in per_sample)
    if ext == ".csv":
        table = dc.read_csv(p, InputFileError)
        if not fixed:
            raise InputFileError(f"{p}: the model's input shape {format_shape(model_input.shape)} is not fixed after "
                                 "the batch dimension, so CSV rows cannot be reshaped to it", "use .npy or .npz")
        x = table.numbers(InputFileError)
        info = dc.ArrayInfo.of(x, str(p), csv=True)
    else:
        info = dc.npy_info(p, InputFileError) if ext == ".npy" else _from_npz(p, model_input.name)
        assert info.read is not None
        x = info.read()
    if not fixed:
        _check_shape(p, x, model_input)
        dc.check_finite(x, info.where, InputFileError)
        return dc.cast(x, model_input.dtype, str(p), InputFileError)
    batch = model_input.shape[0]
    x = dc.conform_inputs(x, info, tuple(per_sample), InputFileError, dtype=model_input.dtype,
                          count=batch if isinstance(batch, str) else "batch")
    if isinstance(batch, int) and x.shape[0] != batch:
        raise InputFileError(f"{p}: the model takes batches of exactly {batch} samples; the file holds {x.shape[0]}",
                             f"save {batch} samples")
    return x


def _from_npz(p: Path, name: str) -> dc.ArrayInfo:
    """The array named like the model's input; else ``x`` (training data files name their
    inputs so); else the only one."""
    infos = dc.npz_infos(p, InputFileError)
    for key in (name, "x"):
        if key in infos:
            return infos[key]
    if len(infos) == 1:
        return next(iter(infos.values()))
    raise InputFileError(f"{p}: holds {len(infos)} arrays ({', '.join(infos) or 'none'}) and none is named {name!r} "
                         "(or 'x', as training data files name their inputs)",
                         f"name the array {name!r}, or store only one")


def _check_shape(p: Path, x: np.ndarray, model_input: ModelInput) -> None:
    """A model input with symbolic dimensions after the batch: the array must have its rank and
    its fixed dimensions (nothing is reshaped)."""
    want = model_input.shape
    fits = x.ndim == len(want) and all(not isinstance(d, int) or d == n for d, n in zip(want, x.shape, strict=True))
    if not fits:
        raise InputFileError(
            f"{p}: array of shape {format_shape(x.shape)} does not fit the model's input {model_input.name!r}: "
            f"expected shape {format_shape(want)}, got {format_shape(x.shape)}")


def run_onnx(model_path: PathLike, input_path: PathLike) -> RunResult:
    """Run the model at ``model_path`` on the array in ``input_path``."""
    sess, model_input = open_model(model_path)
    x = load_input(input_path, model_input)
    try:
        arrays = sess.run(None, {model_input.name: x})
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise RunError(f"{model_path}: onnxruntime failed to run the model: {_first_line(e)}") from e
    names = [o.name for o in sess.get_outputs()]
    return RunResult(model_input, tuple(x.shape), names, [np.asarray(a) for a in arrays])


def check_output_path(path: PathLike) -> None:
    """Refuse an output extension :func:`save_outputs` cannot write, before anything runs."""
    ext = Path(path).suffix.lower()
    if ext not in OUTPUT_FORMATS:
        raise InputFileError(f"{path}: unknown output format {Path(path).suffix or '(no extension)'!r}",
                             f"use one of {', '.join(OUTPUT_FORMATS)}")


def save_outputs(path: PathLike, result: RunResult) -> Path:
    """Write the outputs atomically: ``.npz`` holds every output under its name; ``.npy`` and
    ``.csv`` hold the single output (rows = samples, columns = the flattened per-sample
    values, with a header row naming them)."""
    from odespec.fileio import atomic_write_bytes

    check_output_path(path)
    ext = Path(path).suffix.lower()
    buf = io.BytesIO()
    if ext == ".npz":
        arrays: dict[str, Any] = dict(zip(result.names, result.arrays, strict=True))
        np.savez(buf, **arrays)
        return atomic_write_bytes(path, buf.getvalue())
    if len(result.arrays) != 1:
        raise RunError(f"the model has {len(result.arrays)} outputs; {ext} holds one", "write .npz instead")
    (y,) = result.arrays
    if ext == ".npy":
        np.save(buf, y, allow_pickle=False)
        return atomic_write_bytes(path, buf.getvalue())
    return atomic_write_bytes(path, _csv_bytes(result.names[0], y))


def _csv_bytes(name: str, y: np.ndarray) -> bytes:
    rows = y.reshape(1, 1) if y.ndim == 0 else y.reshape(y.shape[0], -1)
    if y.dtype.kind == "f":
        # enough digits that reading the CSV back gives the same floats
        fmt = "%.9g" if y.dtype.itemsize <= 4 else "%.17g"
    elif y.dtype.kind in "biu":
        fmt, rows = "%d", rows.astype(np.int64)
    else:
        raise RunError(f"output {name!r} has dtype {y.dtype}, which CSV cannot hold", "write .npy or .npz instead")
    text = io.StringIO()
    header = ",".join(f"{name}_{i}" for i in range(rows.shape[1]))
    np.savetxt(text, rows, fmt=fmt, delimiter=",", header=header, comments="")
    return text.getvalue().encode("utf-8")


def render_outputs(result: RunResult) -> str:
    """Each output's name, shape and dtype, then its values (numpy's printing, summarised
    when large)."""
    parts = []
    with np.printoptions(threshold=1000, edgeitems=3, linewidth=100):
        for name, y in zip(result.names, result.arrays, strict=True):
            parts.append(f"{name}: shape {format_shape(y.shape)}, dtype {y.dtype}\n{np.array2string(y)}")
    return "\n".join(parts)


def _json_values(y: np.ndarray) -> Any:
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        # JSON has no NaN or infinity; null keeps the output parseable
        out = y.astype(object)
        out[~np.isfinite(y)] = None
        return out.tolist()
    return y.tolist()
