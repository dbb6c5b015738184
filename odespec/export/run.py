"""``odespec run``: feed an array from a ``.npy``, ``.npz`` or ``.csv`` file to an ONNX model in
onnxruntime (or another runtime of :mod:`odespec.export.runtimes`), and print or write what comes out.

The input file is read by the data contract (:mod:`odespec.data_contract`), the rules training
reads its files by. Problems with it (missing, unreadable, wrong shape or dtype, NaN or
infinity) are :class:`~odespec.errors.InputFileError` (exit code 2, a usage error); problems with the model
or with running it are :class:`~odespec.errors.RunError` (exit code 1). Imports no torch.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from odespec import data_contract as dc
from odespec.errors import InputFileError, RunError
from odespec.export.inspect import format_shape
from odespec.export.runtimes import get_runtime

__all__ = ["ModelInput", "RunResult", "open_model", "open_model_inputs", "load_input", "load_series_inputs",
           "series_starts", "run_onnx", "check_output_path", "save_outputs",
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
    #: every input of the model with the shape fed to it (a series model's ``input``, ``times``, ...)
    inputs: list[tuple[ModelInput, tuple[int, ...]]] = field(default_factory=list)

    def to_dict(self, *, with_data: bool) -> dict[str, Any]:
        """JSON-ready; ``with_data`` includes the output values (non-finite ones as ``null``)."""
        mi = self.model_input
        return {
            "input": {"name": mi.name, "model_shape": list(mi.shape), "dtype": str(mi.dtype),
                      "shape": list(self.input_shape)},
            "inputs": [{"name": m.name, "model_shape": list(m.shape), "dtype": str(m.dtype), "shape": list(shape)}
                       for m, shape in (self.inputs or [(mi, self.input_shape)])],
            "outputs": [
                {"name": n, "shape": list(y.shape), "dtype": str(y.dtype),
                 **({"data": _json_values(y)} if with_data else {})}
                for n, y in zip(self.names, self.arrays, strict=True)
            ],
        }


def open_model(path: PathLike, runtime: str = "onnxruntime") -> tuple[Any, ModelInput]:
    """A session of ``runtime`` (onnxruntime's CPU provider by default) for the model at
    ``path``, and its single input."""
    sess, inputs = open_model_inputs(path, runtime)
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise RunError(f"{path}: the model takes {len(inputs)} inputs ({names}); feed them from one .npz with "
                       "arrays of those names")
    return sess, inputs[0]


def open_model_inputs(path: PathLike, runtime: str = "onnxruntime") -> tuple[Any, list[ModelInput]]:
    """A :class:`~odespec.export.runtimes.Session` of ``runtime`` (onnxruntime's CPU provider by
    default) for the model at ``path`` and its inputs, in the graph's order (a model of
    irregular series takes ``input``, ``times``, ``mask``, ``query_times``)."""
    p = Path(path)
    if not p.is_file():
        raise RunError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
    rt = _runtime(runtime)

    def not_loadable(e: Exception) -> RunError:
        return RunError(f"{p}: {runtime} cannot load it as an ONNX model: {_first_line(e)}",
                        "odespec inspect shows what the file holds")

    sess = rt.load(p, load_error=not_loadable)
    inputs = sess.get_inputs()
    if not inputs:
        raise RunError(f"{p}: the model takes no inputs; odespec run feeds arrays to a model's inputs")
    out = []
    for inp in inputs:
        if inp.type not in _ORT_DTYPES:
            raise RunError(f"{p}: input {inp.name!r} has type {inp.type}; odespec run feeds numeric tensors")
        out.append(ModelInput(inp.name, tuple(inp.shape), np.dtype(_ORT_DTYPES[inp.type])))
    return sess, out


def _runtime(name: str) -> Any:
    """The runtime ``name``, available on this machine; :class:`RunError` otherwise."""
    from odespec.errors import ExportError

    try:
        rt = get_runtime(name)
    except ExportError as e:
        raise RunError(str(e).splitlines()[0], e.hint) from None
    reason = rt.unavailable()
    if reason is not None:
        raise RunError(f"cannot run on {name}: {reason}", rt.install_hint or None)
    return rt


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


def run_onnx(model_path: PathLike, input_path: PathLike, runtime: str = "onnxruntime") -> RunResult:
    """Run the model at ``model_path`` in ``runtime`` on the array(s) in ``input_path``: one
    array for a model with one input; for a model of irregular series, a ``.npz`` with an array
    per input (:func:`load_series_inputs`)."""
    sess, model_inputs = open_model_inputs(model_path, runtime)
    if len(model_inputs) == 1:
        feeds = {model_inputs[0].name: load_input(input_path, model_inputs[0])}
    else:
        feeds = load_series_inputs(input_path, model_inputs, series_starts(sess))
    try:
        arrays = sess.run(None, feeds)
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise RunError(f"{model_path}: {runtime} failed to run the model: {_first_line(e)}") from e
    names = [o.name for o in sess.get_outputs()]
    first = model_inputs[0]
    return RunResult(first, tuple(feeds[first.name].shape), names, [np.asarray(a) for a in arrays],
                     [(mi, tuple(feeds[mi.name].shape)) for mi in model_inputs])


#: the series inputs' names beside ``input``, and the npz name ``x`` also read for ``input``
#: (training data files name their inputs so)
SERIES_INPUTS = ("times", "mask", "query_times")
_ALIASES = {"input": ("input", "x")}
SERIES_METADATA = "series"


def series_starts(sess: Any) -> dict[str, float]:
    """The earliest time each series input may hold, as the export recorded it in the model's
    metadata (``series``: ``times``: the ODE-RNN's start; ``query_times``: the ``t: query``
    block's start); empty for a file without it."""
    import json

    meta = sess.metadata
    if SERIES_METADATA not in meta:
        return {}
    try:
        starts = json.loads(meta[SERIES_METADATA]).get("starts", {})
    except (ValueError, AttributeError):
        return {}
    return {k: float(v) for k, v in starts.items() if isinstance(v, (int, float))}


def load_series_inputs(path: PathLike, model_inputs: list[ModelInput],
                       starts: Optional[dict[str, float]] = None) -> dict[str, np.ndarray]:
    """The model's inputs from the ``.npz`` at ``path``, one array per input named like it
    (``x`` is read for ``input`` too), checked by the data contract's series rules: every
    array of the model's per-sample shape with the same sample count; times and query times
    finite and non-decreasing per sample, at or after ``starts`` (input name -> earliest time);
    a mask of 0/1; NaN in ``input`` only where the mask is 0 (those values are fed as 0).
    :class:`InputFileError` naming the file and the array."""
    p = Path(path)
    if p.suffix.lower() != ".npz":
        names = ", ".join(mi.name for mi in model_inputs)
        raise InputFileError(f"{p}: the model takes {len(model_inputs)} inputs ({names}); they are read from one "
                             ".npz file", f"save them with numpy.savez(FILE, {', '.join(f'{n}=...' for n in names.split(', '))})")
    if not p.is_file():
        raise InputFileError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
    infos = dc.npz_infos(p, InputFileError)
    arrays: dict[str, np.ndarray] = {}
    for mi in model_inputs:
        info = _named_array(p, infos, mi, model_inputs)
        dc.check_dtype(info, InputFileError)
        assert info.read is not None
        arrays[mi.name] = _check_series_shape(info.where, info.read(), mi)
    counts = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(counts.values())) > 1:
        raise InputFileError(f"{p}: the arrays hold different numbers of samples ("
                             + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")",
                             "every array's first axis counts the same samples")
    return _conform_series(p, infos, arrays, {mi.name: mi for mi in model_inputs}, starts or {})


def _named_array(p: Path, infos: dict[str, dc.ArrayInfo], mi: ModelInput, model_inputs: list[ModelInput]) -> dc.ArrayInfo:
    for key in _ALIASES.get(mi.name, (mi.name,)):
        if key in infos:
            return infos[key]
    names = ", ".join(m.name for m in model_inputs)
    also = " (or 'x')" if mi.name == "input" else ""
    raise InputFileError(f"{p}: no array {mi.name!r}{also}; the model takes {names} (it has: "
                         f"{', '.join(repr(k) for k in infos) or 'none'})",
                         f"save the model's inputs with numpy.savez(FILE, {', '.join(f'{m.name}=...' for m in model_inputs)})")


def _check_series_shape(where: str, array: np.ndarray, mi: ModelInput) -> np.ndarray:
    """``array`` as the model input ``mi`` takes it: its rank and fixed dimensions after the batch
    (nothing is reshaped: a times array (N, T) must not be read as (N*T,) samples)."""
    want = mi.shape
    fits = array.ndim == len(want) and all(not isinstance(d, int) or d == n
                                           for d, n in zip(want[1:], array.shape[1:], strict=True))
    if not fits:
        raise InputFileError(f"{where}: shape {format_shape(array.shape)}; the model's input {mi.name!r} takes "
                             f"{format_shape(want)}",
                             _SERIES_SHAPES.get(mi.name, "the first axis counts samples"))
    if isinstance(want[0], int) and array.shape[0] != want[0]:
        raise InputFileError(f"{where}: the model takes batches of exactly {want[0]} samples; the array holds "
                             f"{array.shape[0]}", f"save {want[0]} samples")
    return array


_SERIES_SHAPES = {
    "input": "input (N, T, F): T observation slots of F values per sample; pad a shorter series with mask 0",
    "times": "times (N, T): each sample's observation time per slot; pad by repeating the last time",
    "mask": "mask (N, T, F): 1 where a value was observed, 0 where it is missing or padding",
    "query_times": "query_times (N, T'): the times the outputs are at, T' fixed by the model",
}


def _conform_series(p: Path, infos: dict[str, dc.ArrayInfo], arrays: dict[str, np.ndarray],
                    inputs: dict[str, ModelInput], starts: dict[str, float]) -> dict[str, np.ndarray]:
    """The data contract's series rules on the arrays, then each cast to its input's dtype."""
    def where(name: str) -> str:
        key = next(k for k in _ALIASES.get(name, (name,)) if k in infos)
        return infos[key].where

    missing = None
    if "mask" in arrays:
        dc.check_mask(arrays["mask"], where("mask"), InputFileError)
        missing = arrays["mask"] == 0
    for name in ("times", "query_times"):
        if name in arrays:
            dc.check_times(arrays[name], where(name), InputFileError, what=name.replace("_", " "))
            if name in starts:
                _check_start(arrays[name], starts[name], where(name), name)
    x = arrays["input"]
    dc.check_finite(x, where("input"), InputFileError, missing=missing,
                    note="NaN marks a missing value only where mask is 0" if missing is not None else None)
    if missing is not None and x.dtype.kind == "f":
        arrays["input"] = np.where(missing, np.zeros((), dtype=x.dtype), x)
    return {name: dc.cast(a, inputs[name].dtype, where(name), InputFileError) for name, a in arrays.items()}


def _check_start(times: np.ndarray, start: float, where: str, name: str) -> None:
    early = times < start
    if early.any():
        i, j = (int(v) for v in np.argwhere(early)[0])
        layer = "ODE-RNN encoder" if name == "times" else "t: query ODE block"
        raise InputFileError(f"{where}: sample {i} has {times[i, j].item()!r} at index {j}, before {start!r}, the "
                             f"{layer}'s start", f"every {name.replace('_', ' ')} value must be at or after "
                             f"{start!r}: shift the times, or export with the {layer}'s start: at most "
                             f"{times.min().item()!r}")


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
