"""The Python API behind ``odespec build``: spec -> model -> ONNX -> parity -> report."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

import odespec
from odespec.compile.model import ODENet, compile_spec, count_parameters
from odespec.errors import BuildError, ExportError
from odespec.export.pipeline import ExportOptions, ExportResult, export_model
from odespec.spec import load_spec
from odespec.spec.correction import CorrectionSpec
from odespec.spec.model import OdeBlockSpec, Spec

SpecLike = Union[Spec, str, "os.PathLike[str]"]

__all__ = ["build", "export_onnx", "build_all", "load_weights", "ExportOptions", "ExportResult", "BuildResult"]


def _as_spec(spec: SpecLike) -> Spec:
    return spec if isinstance(spec, Spec) else load_spec(spec)


def build(spec: SpecLike, *, device: Optional[str] = None, dtype: Optional[str] = None) -> ODENet:
    """Compile a spec (object or path) into a ``torch.nn.Module``.

    ``device``/``dtype`` override the spec's (``cpu``/``cuda``, ``float32``/``float64``).
    """
    return compile_spec(_as_spec(spec), device=device, dtype=dtype)


def export_onnx(
    model: ODENet,
    path: Union[str, "os.PathLike[str]"],
    *,
    method: Optional[str] = None,
    steps: Union[int, str, None] = None,
    opset: Optional[int] = None,
    parity: bool = True,
    parity_tol: Optional[float] = None,
    loop: Optional[bool] = None,
    match_tol: Optional[float] = None,
    match_agreement: Optional[float] = None,
    match_accuracy: Optional[float] = None,
    calibration_data: Union[str, "os.PathLike[str]", None] = None,
    deployment: bool = True,
    latency: bool = True,
    precision: Optional[str] = None,
    verify: Optional[tuple[str, ...]] = None,
    correction: Union[CorrectionSpec, int, None] = None,
    grid: Optional[str] = None,
) -> ExportResult:
    """Unroll ``model`` with a fixed-step method, export it to ONNX, check it with
    ``onnx.checker`` and (by default) against onnxruntime, then write it atomically.

    ``loop=True`` writes each output interval's steps as one ONNX ``Loop`` node instead of
    unrolling them (``None``: the spec's ``export.onnx.loop``). Nothing is written if any
    check fails.

    ``steps="auto"`` (or the spec's ``steps: auto``, or a ``match_tol`` without ``steps``)
    calibrates: the cheapest fixed method and step count whose output stays within
    ``match_tol`` (default: the spec's, 1e-4) of the model solved with its training solver,
    searching ``method`` alone when it is given (see :mod:`odespec.export.calibrate`;
    ``latency=False`` skips timing the candidates). ``deployment`` measures onnxruntime's
    output against the training-solver model (``ExportResult.deployment_error``). Both use
    the parity check's seeded inputs, or the samples in ``calibration_data`` (``.npy``,
    ``.npz`` or ``.csv``, read as ``odespec run`` reads inputs). A classifier may be calibrated
    on its predictions instead: ``match_agreement`` (the smallest fraction agreeing with the
    training-solver model's) or ``match_accuracy`` (the smallest fraction of labelled
    ``calibration_data``, a ``.npz`` with labels ``y``, predicted right); one criterion.

    ``precision`` (``float32``, ``float16``, ``mixed``; None: the spec's, else the model's
    dtype) sets the graph's element types; ``verify`` names the runtimes it is checked on
    (parity, and latency at batch 1 and 256; None: the spec's ``export.onnx.verify``), see
    :mod:`odespec.export.runtimes`. ``grid`` (``uniform``, ``optimised``, ``auto``; None: the
    spec's ``export.onnx.grid``) says which grids calibration searches (:mod:`odespec.export.grids`).

    ``correction`` trains a learned step correction (hypersolver) after calibration and exports
    it in the graph when it lowers the held-out error within the tolerance (see
    :mod:`odespec.export.correction`): its options (a
    :class:`~odespec.spec.correction.CorrectionSpec`), or a hidden width; 0 or ``False``: none;
    None: the spec's ``export.onnx.correction``. ``ExportResult.correction`` reports the choice.

    The keywords are the fields of :class:`~odespec.export.pipeline.ExportOptions`;
    :func:`~odespec.export.pipeline.export_model` takes that object. ``model`` must be an odespec
    model (:func:`build`); any other module raises :class:`~odespec.errors.ExportError`.
    """
    if not isinstance(model, ODENet):
        raise ExportError(
            f"export_onnx exports an odespec model (odespec.build(spec) or odespec.api.build gives one), "
            f"not a {type(model).__module__}.{type(model).__qualname__}",
            "write the model as a spec and build it with odespec.build('model.yaml'); for a module of your own "
            "that calls odespec.solvers.odeint, solve with a fixed-step method (method='rk4', "
            "options={'steps': N}) and export it with torch.onnx.export",
        )
    options = ExportOptions(method=method, steps=steps, opset=opset, parity=parity, parity_tol=parity_tol, loop=loop,
                            match_tol=match_tol, match_agreement=match_agreement, match_accuracy=match_accuracy,
                            calibration_data=calibration_data, deployment=deployment,
                            latency=latency, precision=precision, verify=verify, correction=correction, grid=grid)
    return export_model(model, path, options)


@dataclass
class BuildResult:
    """Everything ``odespec build`` produced, serialisable as the build report."""

    spec: Spec
    model: ODENet
    export: ExportResult
    report_path: Path
    report: dict[str, Any] = field(default_factory=dict)


def summary(spec: Spec) -> dict[str, Any]:
    """Layers with output shapes and parameter counts, and each ODE block's solver."""
    rows = []
    for i, item in enumerate(spec.model):
        row: dict[str, Any] = {"index": i, "kind": item.kind, "line": item.loc.line,
                               "output_shape": list(item.out_shape), "parameters": item.num_params}
        if isinstance(item, OdeBlockSpec):
            row["solver"] = item.solver.summary()
            row["gradient"] = item.gradient.method
            row["t"] = "query" if item.query else [item.t[0], item.t[-1]]
            if item.query:
                row["start"] = item.start
            row["output"] = item.output
            row["family"] = item.family
            row["nfe_per_forward"] = item.nfe()
        rows.append(row)
    return {"input_shape": list(spec.input_shape), "output_shape": list(spec.output_shape),
            "parameters": spec.num_params, "layers": rows}


def build_all(
    spec_path: Union[str, "os.PathLike[str]"],
    out_dir: Union[str, "os.PathLike[str]"],
    *,
    method: Optional[str] = None,
    steps: Union[int, str, None] = None,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    loop: Optional[bool] = None,
    match_tol: Optional[float] = None,
    weights: Union[str, "os.PathLike[str]", None] = None,
    calibration_data: Union[str, "os.PathLike[str]", None] = None,
    options: Optional[ExportOptions] = None,
    triton_repo: Union[str, "os.PathLike[str]", None] = None,
) -> BuildResult:
    """The whole chain: validate, compile, (load ``weights``), export, check parity, measure
    the deployment error, write ``NAME.onnx`` and ``NAME.build.json`` into ``out_dir``.
    ``weights`` as in :func:`load_weights`. The export follows ``options``; ``method``,
    ``steps``, ``loop``, ``match_tol`` and ``calibration_data`` are shorthands for those fields
    of :class:`~odespec.export.pipeline.ExportOptions` (as in :func:`export_onnx`), for use
    without ``options``. ``triton_repo``: also write a Triton Inference Server model repository
    there (:func:`odespec.export.triton.write_triton_repository`)."""
    import json

    from odespec.fileio import atomic_write_text

    t0 = time.perf_counter()
    spec = load_spec(spec_path)
    model = build(spec, device=device, dtype=dtype)
    n_params = count_parameters(model)
    if n_params != spec.num_params:  # the validator's shape-based count must be exact
        raise BuildError(f"internal error: built {n_params} parameters, the spec promised {spec.num_params}")
    weights_info = load_weights(model, weights) if weights is not None else None
    t_built = time.perf_counter()
    out = Path(out_dir)
    shorthands = {"method": method, "steps": steps, "loop": loop, "match_tol": match_tol,
                  "calibration_data": calibration_data}
    result = export_model(model, out / spec.export.file, _export_options(options, shorthands))
    triton = None
    if triton_repo is not None:
        from odespec.export.triton import write_triton_repository

        triton = write_triton_repository(triton_repo, spec.name, result.path.read_bytes())
    report: dict[str, Any] = {
        "odespec_version": odespec.__version__,
        "spec": {"file": os.path.basename(str(spec_path)), "name": spec.name, "sha256": spec.source_sha256},
        "dtype": dtype or spec.dtype,
        "device": device or spec.device,
        "parameters": n_params,
        "weights": weights_info,
        "summary": summary(spec),
        "onnx": result.to_dict(),
        "timings_seconds": {"build": round(t_built - t0, 4), "export": round(result.export_seconds, 4),
                            "total": round(time.perf_counter() - t0, 4)},
    }
    if result.calibration is not None:
        report["timings_seconds"]["calibration"] = result.calibration["seconds"]
    if triton is not None:
        report["triton"] = triton
    # last: a large deployment error's cause and fix (odespec.export.verdict)
    report["warnings"] = result.warnings
    report_path = atomic_write_text(out / f"{spec.name}.build.json", json.dumps(report, indent=2) + "\n")
    return BuildResult(spec=spec, model=model, export=result, report_path=report_path, report=report)


def _export_options(options: Optional[ExportOptions], shorthands: dict[str, Any]) -> ExportOptions:
    """``options``, or the :class:`ExportOptions` the shorthand keywords make; not both."""
    given = [k for k, v in shorthands.items() if v is not None]
    if options is None:
        return ExportOptions(**shorthands)
    if given:
        raise BuildError(f"build_all got options and also {', '.join(given)}",
                         "set those fields in options (dataclasses.replace(options, ...)), or leave out options")
    return options


#: keys under which common checkpoint layouts keep the model's state dict
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


def load_weights(model: ODENet, path: Union[str, "os.PathLike[str]"]) -> dict[str, Any]:
    """Load a state dict from ``path`` into ``model`` (every parameter and buffer, shapes checked).

    ``.safetensors`` files are read with ``safetensors`` (an optional dependency); anything
    else with ``torch.load(weights_only=True)``, which refuses pickled code: a plain state dict
    (``torch.save(model.state_dict(), path)``) or a checkpoint dict holding one under
    ``state_dict``, ``model_state_dict`` or ``model``. A training checkpoint of ``odespec train``
    (``RUN/checkpoints/iter-N.safetensors``, or its ``iter-N.json``) gives the model's weights at
    that iteration. Values are cast to the model's dtype. Returns the report's ``weights`` entry
    (file name, sha256, tensor count; ``checkpoint: true`` for a checkpoint).
    """
    from odespec.train.checkpoint import checkpoint_model_state, checkpoint_tensors_file

    p = Path(path)
    if not p.is_file():
        raise BuildError(f"{p}: no such weights file" if not p.exists() else f"{p}: not a file")
    if p.suffix.lower() == ".json":
        tensors_file = checkpoint_tensors_file(p)
        if tensors_file is None:
            raise BuildError(f"{p}: not a complete odespec training checkpoint",
                             "pass the checkpoint's .safetensors file, RUN/model.safetensors, or a torch.save "
                             "state dict")
        p = tensors_file
    raw = p.read_bytes()
    state: Any  # what the file holds, checked below to be a state dict
    if p.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load as load_safetensors
        except ImportError as e:
            raise BuildError(f"{p}: reading .safetensors needs the safetensors package",
                             "pip install safetensors, or save the state dict with torch.save") from e
        try:
            state = load_safetensors(raw)
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise BuildError(f"{p}: not a readable safetensors file: {e}") from e
    else:
        import io
        import pickle
        import warnings

        # torch.save writes a zip archive (legacy files: a pickle, protocol 2+ starts with 0x80)
        if not (raw[:4] == b"PK\x03\x04" or raw[:1] == b"\x80"):
            raise BuildError(f"{p}: neither a torch.save file nor .safetensors",
                             "save a state dict with torch.save(model.state_dict(), path), or "
                             "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')")
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols it may not support
                warnings.simplefilter("ignore")
                state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # objects beyond tensors and containers: never run pickled code
            raise BuildError(f"{p}: holds objects other than tensors, which a weights-only load refuses "
                             "(it never runs pickled code)",
                             "save only the state dict: torch.save(model.state_dict(), path)") from e
        except Exception as e:  # a truncated or corrupt archive
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BuildError(f"{p}: cannot read it as a torch.save file: {first}") from e
        if isinstance(state, dict):
            for key in _STATE_DICT_KEYS:
                if isinstance(state.get(key), dict):
                    state = state[key]
                    break
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise BuildError(f"{p}: holds no state dict (a mapping of names to tensors)",
                         "save one with torch.save(model.state_dict(), path)")
    own = model.state_dict()
    checkpoint = checkpoint_model_state(state) if not set(own) <= set(state) else None
    if checkpoint is not None:
        state = checkpoint
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {_some(missing)}")
        if unexpected:
            parts.append(f"unexpected {_some(unexpected)}")
        if wrong:
            parts.append("wrong shape " + ", ".join(f"{k} {tuple(state[k].shape)} (model: {tuple(own[k].shape)})"
                                                    for k in wrong[:3]) + (" ..." if len(wrong) > 3 else ""))
        raise BuildError(f"{p}: the weights do not fit the spec's model: " + "; ".join(parts),
                         "the weights must come from a model built from this spec (same layers and shapes)")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise BuildError(f"{p}: non-finite values in {_some(bad)}")
    model.load_state_dict(state, strict=True)  # copies, casting to each tensor's dtype and device
    info: dict[str, Any] = {"file": p.name, "sha256": hashlib.sha256(raw).hexdigest(), "tensors": len(state)}
    if checkpoint is not None:
        info["checkpoint"] = True
    return info


def _some(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
