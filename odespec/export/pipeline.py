"""The export pipeline behind :func:`odespec.export_onnx` and ``odespec build``.

:func:`export_model` takes an :class:`ExportOptions` and runs short steps in order: resolve the
settings (the spec's ``export.onnx``, overridden by the options), choose the inputs, calibrate
the step count (``steps: auto``), build and check the graph, check parity with onnxruntime,
measure the deployment error, add the metadata, write the file. Nothing is written if a check
fails.

The graph's modules (onnx, onnxruntime) are imported inside the steps that use them, so that
importing this module (and :mod:`odespec.api`) does not load them.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from odespec.compile.model import ODENet
from odespec.errors import BuildError, ExportError
from odespec.export.calibrate import Calibration, calibrate, nfe_per_forward
from odespec.export.macs import count_macs
from odespec.export.inputs import InputSet, data_input_set, model_dtype, seeded_input_set, series_inputs
from odespec.export.metrics import DeploymentError, deployment_error, deployment_skipped, reference_outputs
from odespec.export.session import ort_session
from odespec.export.unroll import fixed_step_model
from odespec.spec.model import Spec
from odespec.spec.schema import CALIBRATION_METHODS

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from odespec.export.onnx_export import ExportSettings

__all__ = ["ExportOptions", "ExportResult", "export_model", "resolve_settings", "accuracy_inputs", "export_metadata"]

PathLike = Union[str, "os.PathLike[str]"]

#: the deployment error's fields the ONNX metadata keeps
_DEPLOYMENT_METADATA = ("max_abs_error", "max_scaled_error", "reference", "inputs", "skipped")


@dataclass(frozen=True)
class ExportOptions:
    """What :func:`export_model` does beyond the spec's ``export.onnx`` settings; ``None``
    fields take the spec's.

    ``steps="auto"`` (or the spec's ``steps: auto``, or a ``match_tol`` without ``steps``)
    calibrates the step count (:mod:`odespec.export.calibrate`). :class:`ExportError` at
    construction for a ``steps`` that is neither a count nor ``"auto"``, or a ``match_tol``
    beside a step count.
    """

    #: fixed-step method of the graph; with calibration, the only method searched
    method: Optional[str] = None
    #: steps per output interval of each ODE block, or ``"auto"``: calibrate
    steps: Union[int, str, None] = None
    opset: Optional[int] = None
    #: one ONNX ``Loop`` per output interval instead of unrolled steps
    loop: Optional[bool] = None
    #: check the graph against the PyTorch fixed-step model in onnxruntime
    parity: bool = True
    #: largest max abs difference the parity check accepts
    parity_tol: Optional[float] = None
    #: calibration: largest max abs error against the training-solver model
    match_tol: Optional[float] = None
    #: inputs of calibration and the deployment error (``.npy``, ``.npz``, ``.csv``) instead of
    #: the seeded random ones
    calibration_data: Optional[PathLike] = None
    #: measure onnxruntime's output against the training-solver model
    deployment: bool = True
    #: time the calibration candidates in onnxruntime
    latency: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.steps, str) and self.steps != "auto":
            raise ExportError(f"steps must be a positive integer or 'auto', got {self.steps!r}")
        if self.steps is not None and not isinstance(self.steps, str) and self.match_tol is not None:
            raise ExportError("match_tol is for steps='auto' (calibration); the step count is given",
                              "leave out steps to calibrate, or leave out match_tol")

    def calibrates(self, spec: Spec) -> bool:
        """Whether the step count is calibrated: ``steps="auto"``, or no ``steps`` and either
        the spec's ``steps: auto`` or a ``match_tol``."""
        if self.steps is not None:
            return self.steps == "auto"
        return spec.export.auto or self.match_tol is not None


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and measured."""

    path: Path
    sha256: str
    size_bytes: int
    method: str
    steps: int
    opset: int
    nfe_per_forward: int
    export_seconds: float
    #: :meth:`odespec.export.parity.ParityResult.to_dict`; ``None`` when not checked
    parity: Optional[dict[str, Any]] = None
    #: onnxruntime's output against the model solved with its training solver
    #: (:class:`odespec.export.metrics.DeploymentError`: ``max_abs_error``, ``max_scaled_error``
    #: (relative to the output's largest magnitude), ``reference`` (the training solvers),
    #: ``inputs``; ``skipped`` instead when the training solver failed on the inputs); ``None``
    #: when not measured
    deployment_error: Optional[DeploymentError] = None
    #: ``steps: auto``: the chosen method and steps, the table of candidates, the evaluations
    calibration: Optional[dict[str, Any]] = None
    layout: str = "unrolled"
    #: the written graph's multiply-accumulates per sample
    #: (:meth:`odespec.export.macs.MacsCount.to_dict`)
    macs: Optional[dict[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        """The report's ``onnx`` entry."""
        return {
            "file": self.path.name,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "method": self.method,
            "steps": self.steps,
            "steps_source": "calibrated" if self.calibration else "given",
            "layout": self.layout,
            "opset": self.opset,
            "nfe_per_forward": self.nfe_per_forward,
            "macs": self.macs,
            "export_seconds": round(self.export_seconds, 4),
            "parity": self.parity,
            "deployment_error": self.deployment_error,
            "calibration": self.calibration,
        }


def export_model(model: ODENet, path: PathLike, options: ExportOptions = ExportOptions()) -> ExportResult:
    """Export ``model`` to a fixed-step ONNX graph at ``path`` as ``options`` and the spec say:
    calibrate the step count if asked, check the graph with ``onnx.checker``, against
    onnxruntime (parity) and the training solver (deployment error), then write it atomically.
    Nothing is written if any check fails."""
    from odespec.export.onnx_export import add_metadata
    from odespec.fileio import atomic_write_bytes

    spec = model.spec
    auto = options.calibrates(spec)
    settings = resolve_settings(spec, options, auto)
    cpu = _on_cpu(model)
    inputs = accuracy_inputs(cpu, options)
    reference: Optional[list[np.ndarray]] = None
    calibration: Optional[Calibration] = None
    if auto:
        reference = reference_outputs(cpu, inputs)
        calibration = _calibrate(cpu, options, settings, inputs, reference)
        settings = dataclasses.replace(settings, method=calibration.chosen.method, steps=calibration.chosen.steps)
    onnx_model, data, seconds = _build_checked(cpu, settings)
    sess = ort_session(data) if options.parity or options.deployment else None
    parity = _parity(cpu, data, settings, options, sess) if options.parity else None
    deployment = _deployment(sess, cpu, inputs, settings, reference) if options.deployment else None
    add_metadata(onnx_model, export_metadata(calibration, deployment))
    data = onnx_model.SerializeToString()  # metadata only: the checked graph is unchanged
    target = atomic_write_bytes(path, data)
    return ExportResult(
        path=target, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), method=settings.method,
        steps=settings.steps, opset=settings.opset,
        nfe_per_forward=nfe_per_forward(cpu, settings.method, settings.steps), export_seconds=seconds,
        parity=parity, deployment_error=deployment,
        calibration=calibration.to_dict() if calibration is not None else None,
        layout="loop" if settings.loop else "unrolled", macs=count_macs(onnx_model).to_dict(),
    )


def _on_cpu(model: ODENet) -> ODENet:
    """``model`` itself if it is on the CPU, else a CPU copy: the graph is built and checked there."""
    return model if all(p.device.type == "cpu" for p in model.parameters()) else copy.deepcopy(model).cpu()


def resolve_settings(spec: Spec, options: ExportOptions, auto: bool) -> "ExportSettings":
    """The graph's settings: the spec's ``export.onnx``, overridden by ``options`` (with
    ``auto``, method and steps are placeholders calibration replaces). :class:`BuildError`
    for an adaptive method, which no fixed graph can compute."""
    from odespec.export.onnx_export import export_settings_from_spec
    from odespec.solvers.tableaus import is_adaptive

    steps = None if auto else options.steps
    assert not isinstance(steps, str)  # ExportOptions allows no other text than "auto"
    settings = export_settings_from_spec(spec, method=options.method, steps=steps, opset=options.opset,
                                         loop=options.loop)
    # calibration without a method searches the fixed-step methods, whatever the spec's method
    if is_adaptive(settings.method) and not (auto and options.method is None):
        raise BuildError(f"{settings.method!r} is adaptive; an exported graph is fixed-step",
                         "choose a fixed-step method such as rk4")
    return settings


def accuracy_inputs(model: ODENet, options: ExportOptions) -> InputSet:
    """The inputs of calibration and the deployment error: the file ``options.calibration_data``,
    or the parity check's seeded random batches."""
    spec = model.spec
    series = series_inputs(model)
    if options.calibration_data is not None:
        return data_input_set(options.calibration_data, spec.input_shape, dtype=model_dtype(model), series=series)
    return seeded_input_set(spec.input_shape, dtype=model_dtype(model), seed=spec.seed, series=series)


def _calibrate(model: ODENet, options: ExportOptions, settings: "ExportSettings", inputs: InputSet,
               reference: list[np.ndarray]) -> Calibration:
    export = model.spec.export
    tol = options.match_tol if options.match_tol is not None else export.match_tol
    methods = (options.method,) if options.method else (export.calibration_methods or CALIBRATION_METHODS)
    return calibrate(model, inputs, match_tol=tol, methods=methods, latency=options.latency,
                     latency_settings=dataclasses.replace(settings, steps=1), reference=reference)


def _build_checked(model: ODENet, settings: "ExportSettings") -> tuple["onnx.ModelProto", bytes, float]:
    """The graph, checked by ``onnx.checker``, its bytes, and the seconds both took."""
    from odespec.export.onnx_export import build_onnx, check_onnx

    start = time.perf_counter()
    onnx_model = build_onnx(model, settings)
    check_onnx(onnx_model)
    data = onnx_model.SerializeToString()
    return onnx_model, data, time.perf_counter() - start


def _parity(model: ODENet, data: bytes, settings: "ExportSettings", options: ExportOptions,
            sess: Any) -> dict[str, Any]:
    """onnxruntime against the PyTorch fixed-step twin: the report's ``parity`` entry."""
    from odespec.export.parity import check_parity, parity_batches

    spec = model.spec
    twin = fixed_step_model(model, settings.method, settings.steps)
    tol = options.parity_tol if options.parity_tol is not None else spec.export.parity_tol
    return check_parity(data, twin, spec.input_shape, dtype=model_dtype(model), tolerance=tol,
                        batch_sizes=parity_batches(settings.dynamic_batch), seed=spec.seed, session=sess,
                        series=series_inputs(model)).to_dict()


def _deployment(sess: Any, model: ODENet, inputs: InputSet, settings: "ExportSettings",
                reference: Optional[list[np.ndarray]]) -> DeploymentError:
    """The report's ``deployment_error`` entry; if the training solver fails on the inputs, the
    entry says so and the export goes ahead."""
    try:
        return deployment_error(sess, model, inputs, static_batch=not settings.dynamic_batch, reference=reference)
    except ExportError as e:
        return deployment_skipped(model, inputs, e)


def export_metadata(calibration: Optional[Calibration], deployment: Optional[DeploymentError]) -> dict[str, str]:
    """The ONNX metadata entries the checks add: where the step count came from, the
    calibration's choice and the deployment error."""
    meta = {"export_steps_source": "calibrated" if calibration else "given"}
    if calibration is not None:
        meta["calibration"] = json.dumps({
            "match_tol": calibration.match_tol, "error": calibration.chosen.error, "nfe": calibration.chosen.nfe,
            "methods": [c.method for c in calibration.candidates], "inputs": calibration.inputs,
        })
    if deployment is not None:
        meta["deployment_error"] = json.dumps({k: v for k, v in deployment.items() if k in _DEPLOYMENT_METADATA})
    return meta
