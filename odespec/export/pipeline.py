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
import difflib
import hashlib
import json
import math
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
from odespec.export.newton_iters import NewtonChoice, converged_iterations
from odespec.export.runtimes import get_runtime
from odespec.export.unroll import fixed_step_model
from odespec.export.verdict import DeploymentWarning, deployment_warnings
from odespec.spec.model import Spec
from odespec.spec.schema import CALIBRATION_METHODS, EXPORT_PRECISIONS, GRID_MODES, MAX_EXPORT_NEWTON_ITERS

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from odespec.export.onnx_export import ExportSettings
    from odespec.export.parity import ParityResult
    from odespec.spec.correction import CorrectionSpec

__all__ = ["ExportOptions", "ExportResult", "export_model", "resolve_settings", "accuracy_inputs", "export_metadata"]

PathLike = Union[str, "os.PathLike[str]"]

#: the deployment error's fields the ONNX metadata keeps
_DEPLOYMENT_METADATA = ("max_abs_error", "max_scaled_error", "agreement", "accuracy", "reference", "inputs", "skipped")


#: the calibration criteria, as fields of both :class:`ExportOptions` and the spec's export settings
_CRITERIA = ("match_tol", "match_agreement", "match_accuracy")


@dataclass(frozen=True)
class ExportOptions:
    """What :func:`export_model` does beyond the spec's ``export.onnx`` settings; ``None``
    fields take the spec's.

    ``steps="auto"`` (or the spec's ``steps: auto``, or a ``match_tol``, ``match_agreement`` or
    ``match_accuracy`` without ``steps``) calibrates the step count (:mod:`odespec.export.calibrate`).
    :class:`ExportError` at construction for a ``steps`` that is neither a count nor ``"auto"``,
    a criterion beside a step count, or more than one criterion.
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
    #: calibration: largest max abs error against the training-solver model (neither this nor
    #: ``match_agreement``, here or in the spec: derived from the training solvers' tolerances)
    match_tol: Optional[float] = None
    #: calibration of a classifier: smallest fraction of predictions (argmax) that agree with the
    #: training-solver model's, instead of ``match_tol``
    match_agreement: Optional[float] = None
    #: calibration of a classifier on labelled ``calibration_data``: smallest fraction of
    #: predictions (argmax) that are the labels, instead of ``match_tol``
    match_accuracy: Optional[float] = None
    #: inputs of calibration and the deployment error (``.npy``, ``.npz``, ``.csv``) instead of
    #: the seeded random ones
    calibration_data: Optional[PathLike] = None
    #: measure onnxruntime's output against the training-solver model
    deployment: bool = True
    #: time the calibration candidates in onnxruntime, and each verified runtime
    latency: bool = True
    #: a large deployment error (:mod:`odespec.export.verdict`) is an :class:`ExportError`, and
    #: nothing is written, instead of a warning
    strict: bool = False
    #: the graph's precision (``float32``, ``float16``, ``mixed``; None: the spec's
    #: ``export.onnx.precision``, else the model's dtype)
    precision: Optional[str] = None
    #: the runtimes the graph is checked on, by name (None: the spec's ``export.onnx.verify``)
    verify: Optional[tuple[str, ...]] = None
    #: a learned step correction (:mod:`odespec.export.correction`): its options
    #: (:class:`~odespec.spec.correction.CorrectionSpec`), or a hidden width N (the spec's options,
    #: else the defaults, with ``hidden: N``); ``False`` or 0: none, whatever the spec says; None:
    #: the spec's ``export.onnx.correction``
    correction: Union["CorrectionSpec", int, None] = None
    #: an implicit method's Newton iterations per step, or ``"auto"`` (None: the spec's
    #: ``export.onnx.newton_iters``); :mod:`odespec.export.newton_iters`
    newton_iters: Union[int, str, None] = None
    #: calibration's grids (:data:`~odespec.spec.schema.GRID_MODES`): ``uniform``, ``optimised``
    #: or ``auto`` (None: the spec's ``export.onnx.grid``)
    grid: Optional[str] = None

    def __post_init__(self) -> None:
        if isinstance(self.steps, str) and self.steps != "auto":
            raise ExportError(f"steps must be a positive integer or 'auto', got {self.steps!r}")
        given = [name for name in _CRITERIA if getattr(self, name) is not None]
        for name in given:
            if self.steps is not None and not isinstance(self.steps, str):
                raise ExportError(f"{name} is for steps='auto' (calibration); the step count is given",
                                  f"leave out steps to calibrate, or leave out {name}")
        if len(given) > 1:
            raise ExportError(f"{' and '.join(given)} are {('two', 'three')[len(given) - 2]} criteria for calibration; "
                              "give one")
        if isinstance(self.newton_iters, str) and self.newton_iters != "auto" or (
                isinstance(self.newton_iters, int) and not 1 <= self.newton_iters <= MAX_EXPORT_NEWTON_ITERS):
            raise ExportError(f"newton_iters must be an integer from 1 to {MAX_EXPORT_NEWTON_ITERS} or 'auto', "
                              f"got {self.newton_iters!r}")
        if self.grid is not None and self.grid not in GRID_MODES:
            raise ExportError(f"unknown grid {self.grid!r}", f"use one of {', '.join(GRID_MODES)}")
        if self.grid == "optimised" and self.steps is not None and not isinstance(self.steps, str):
            raise ExportError("grid 'optimised' is for steps='auto' (calibration places the steps); the step count "
                              "is given", "leave out steps to calibrate, or leave out grid")
        if self.precision is not None and self.precision not in EXPORT_PRECISIONS:
            close = difflib.get_close_matches(self.precision, list(EXPORT_PRECISIONS), n=1)
            raise ExportError(f"unknown precision {self.precision!r}",
                              f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(EXPORT_PRECISIONS)}")
        if self.correction is True or (isinstance(self.correction, int) and not 0 <= self.correction <= 1024):
            raise ExportError(f"correction must be its options (a CorrectionSpec), a hidden width from 1 to 1024, or "
                              f"0 / False (none); got {self.correction!r}",
                              "pass odespec.spec.correction.CorrectionSpec() for the defaults")
        if self.verify is not None:
            from odespec.export.runtimes import get_runtime

            if not self.verify:
                raise ExportError("verify names no runtime", "name at least one, such as onnxruntime")
            for name in self.verify:
                get_runtime(name)  # ExportError with a did-you-mean for an unknown name
            if len(set(self.verify)) != len(self.verify):
                raise ExportError(f"verify names a runtime twice: {', '.join(self.verify)}")

    def calibrates(self, spec: Spec) -> bool:
        """Whether the step count is calibrated: ``steps="auto"``, or no ``steps`` and either
        the spec's ``steps: auto`` or a calibration criterion (``match_tol``, ``match_agreement``,
        ``match_accuracy``)."""
        if self.steps is not None:
            return self.steps == "auto"
        return spec.export.auto or any(getattr(self, name) is not None for name in _CRITERIA)

    @property
    def classifier(self) -> bool:
        """Whether a criterion given here judges predicted classes."""
        return self.match_agreement is not None or self.match_accuracy is not None


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
    #: a large deployment error's likely cause and fix (:mod:`odespec.export.verdict`)
    warnings: list[DeploymentWarning] = dataclasses.field(default_factory=list)
    #: method and steps are the spec's default from its fixed-step training solver
    from_training: bool = False
    #: the graph's precision (None: the model's dtype)
    precision: Optional[str] = None
    #: each verified runtime: what it is, parity, latency by batch size (or why it was skipped)
    runtimes: Optional[list[dict[str, Any]]] = None
    #: the written graph's multiply-accumulates per sample
    #: (:meth:`odespec.export.macs.MacsCount.to_dict`)
    macs: Optional[dict[str, Any]] = None
    #: the learned step correction's search and choice (:mod:`odespec.export.correction`); None:
    #: not asked for
    correction: Optional[dict[str, Any]] = None
    #: an implicit method: its Newton iterations per step and where the count came from
    #: (:meth:`odespec.export.newton_iters.NewtonChoice.to_dict`)
    newton_iters: Optional[dict[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        """The report's ``onnx`` entry."""
        return {
            "file": self.path.name,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "method": self.method,
            "steps": self.steps,
            "steps_source": "calibrated" if self.calibration else self._given(),
            "layout": self.layout,
            "opset": self.opset,
            "nfe_per_forward": self.nfe_per_forward,
            "macs": self.macs,
            "export_seconds": round(self.export_seconds, 4),
            "parity": self.parity,
            "deployment_error": self.deployment_error,
            "calibration": self.calibration,
            "warnings": self.warnings,
            "precision": self.precision,
            "runtimes": self.runtimes,
            **({"correction": self.correction} if self.correction is not None else {}),
            "newton_iters": self.newton_iters,
        }

    def _given(self) -> str:
        """``training`` when the spec writes no method and steps and they are the ODE blocks'
        fixed-step training solver's (:attr:`OnnxExportSpec.from_training
        <odespec.spec.model.OnnxExportSpec.from_training>`), else ``given``."""
        return "training" if self.from_training else "given"


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
    classifier = spec.classifier or options.classifier
    inputs = accuracy_inputs(cpu, options, classifier)
    reference: Optional[list[np.ndarray]] = None
    calibration: Optional[Calibration] = None
    _refuse_implicit_layout(cpu, settings)
    if auto:
        reference = reference_outputs(cpu, inputs)
        calibration = _calibrate(cpu, options, settings, inputs, reference)
        settings = dataclasses.replace(settings, method=calibration.chosen.method, steps=calibration.chosen.steps,
                                       grids=calibration.chosen.grids or ())
    newton = _newton_choice(cpu, settings, options, calibration, inputs)
    if newton is not None:
        settings = dataclasses.replace(settings, newton_iters=newton.iters)
    correction: Optional[dict[str, Any]] = None
    wanted = _correction_options(spec, options)
    if wanted is not None:
        settings, correction = _correct(cpu, inputs, settings, calibration, wanted)
    onnx_model, data, seconds = _build_checked(cpu, settings)
    sess = get_runtime("onnxruntime").load(data) if options.parity or options.deployment else None
    check = _parity_check(cpu, settings, options) if options.parity else None
    parity = check.run(data, sess).to_dict() if check is not None else None
    deployment = _deployment(sess, cpu, inputs, settings, reference, classifier) if options.deployment else None
    warnings = deployment_warnings(spec, settings.method, settings.steps, deployment, calibrated=auto)
    if options.strict and warnings:
        raise ExportError(f"{warnings[0]['warning']} (--strict: nothing written)", warnings[0]["fix"])
    runtimes = verify_runtimes(cpu, data, settings, options, check, parity) if check is not None else None
    # method and steps are the spec's default from its fixed-step training solver (not overridden)
    from_training = spec.export.from_training and options.method is None and options.steps is None
    add_metadata(onnx_model, {**export_metadata(calibration, deployment, from_training=from_training),
                              **runtime_metadata(runtimes), **_correction_metadata(correction),
                              **({"export_newton_iters_source": newton.source} if newton is not None else {})})
    data = onnx_model.SerializeToString()  # metadata only: the checked graph is unchanged
    target = atomic_write_bytes(path, data)
    return ExportResult(
        path=target, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), method=settings.method,
        steps=settings.steps, opset=settings.opset,
        nfe_per_forward=nfe_per_forward(cpu, settings.method, settings.steps, settings.newton_iters, settings.grids),
        export_seconds=seconds,
        parity=parity, deployment_error=deployment,
        calibration=calibration.to_dict() if calibration is not None else None,
        layout="loop" if settings.loop else "unrolled", warnings=warnings,
        from_training=from_training, precision=settings.precision, runtimes=runtimes,
        macs=count_macs(onnx_model).to_dict(), correction=correction,
        newton_iters=newton.to_dict() if newton is not None else None,
    )


def _correction_options(spec: Spec, options: ExportOptions) -> Optional["CorrectionSpec"]:
    """The correction asked for: the options', else the spec's; None: none."""
    from odespec.spec.correction import CorrectionSpec

    given = options.correction
    if given is None or isinstance(given, CorrectionSpec):
        return given or spec.export.correction
    if not given:  # False or 0
        return None
    return dataclasses.replace(spec.export.correction or CorrectionSpec(), hidden=int(given))


def _correct(model: ODENet, inputs: InputSet, settings: "ExportSettings",
             calibration: Optional[Calibration], wanted: "CorrectionSpec") -> tuple["ExportSettings", dict[str, Any]]:
    """Train the step correction and decide (:func:`odespec.export.correction.choose_correction`):
    the settings to export (with the corrections, or the plain grid's) and the report's entry.
    Calibrated: the tolerance and methods are calibration's; given steps: no tolerance was asked
    for (the plain grid is the user's), the correction must lower the max abs error."""
    from odespec.export.correction import choose_correction
    from odespec.export.metrics import Match

    match = calibration.match if calibration is not None and calibration.match is not None else None
    if match is not None and match.kind == "accuracy":
        raise ExportError("a learned step correction is judged by max abs error or agreement with the training "
                          "solver, not by accuracy on labels",
                          "calibrate on match_tol or match: {agreement: A} to use a correction, or leave it out")
    if match is None:
        match = Match("max_abs", math.inf, "none: the step count is given")
    methods = sorted({c.method for c in calibration.candidates}) if calibration is not None else None
    cap = calibration.max_steps if calibration is not None else 4096
    # a correction is laid into uniform steps: against an optimised grid, it starts from the
    # cheapest passing uniform grid and must end up cheaper than the optimised one
    optimised = calibration.chosen if calibration is not None and settings.grids else None
    plain = settings
    if optimised is not None:
        assert calibration is not None
        uniform = min((c for c in calibration.candidates if c.passed and c.grid == "uniform"), key=lambda c: c.nfe)
        plain = dataclasses.replace(settings, method=uniform.method, steps=uniform.steps, grids=())
    outcome = choose_correction(model, inputs, plain, match, wanted, methods=methods, cap=cap)
    c = outcome.corrections
    if c is not None and optimised is not None and (nfe := outcome.report["chosen"]["nfe"]) >= optimised.nfe:
        outcome.report.update(used=False, note=(
            f"correction not used: {c.method} x {c.steps} corrected costs {nfe} f-evaluations, not fewer than the "
            f"optimised grid's {optimised.nfe} ({optimised.method}, {optimised.steps} steps in all); exported the "
            "optimised grid"))
        c = None
    if c is not None:
        settings = dataclasses.replace(settings, method=c.method, steps=c.steps, correction=c, grids=())
    return settings, outcome.report


def _correction_metadata(report: Optional[dict[str, Any]]) -> dict[str, str]:
    if report is None:
        return {}
    from odespec.export.correction import correction_metadata

    return {"correction": json.dumps(correction_metadata(report))}


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
                                         loop=options.loop, precision=options.precision)
    # calibration without a method searches the fixed-step methods, whatever the spec's method
    if is_adaptive(settings.method) and not (auto and options.method is None):
        raise BuildError(f"{settings.method!r} is adaptive; an exported graph is fixed-step",
                         "choose a fixed-step method such as rk4")
    return settings


def _refuse_implicit_layout(model: ODENet, settings: "ExportSettings") -> None:
    """:class:`ExportError` before any work when the settings' implicit method cannot be laid
    into this model's graph (:func:`odespec.export.onnx_export.implicit_problem`)."""
    from odespec.export.onnx_export import graph_precision, implicit_problem

    problem = implicit_problem(model, settings, graph_precision(model_dtype(model), settings.precision))
    if problem is not None:
        raise problem


def _given_newton_iters(spec: Spec, options: ExportOptions) -> Optional[int]:
    """The Newton iterations written in the options, else in the spec (None: auto)."""
    given = options.newton_iters if options.newton_iters is not None else spec.export.newton_iters
    return given if isinstance(given, int) else None


def _newton_choice(model: ODENet, settings: "ExportSettings", options: ExportOptions,
                   calibration: Optional[Calibration], inputs: InputSet) -> Optional[NewtonChoice]:
    """An implicit method's Newton iterations per step (None: the method is explicit): given,
    calibrated with the step count, or the fewest that reach the converged iteration."""
    from odespec.solvers.tableaus import get_tableau

    if not get_tableau(settings.method).implicit:
        return None
    given = _given_newton_iters(model.spec, options)
    if calibration is not None and calibration.chosen.newton_iters is not None:
        seen = [(k, e) for m, n, k, e in calibration.newton_evaluations
                if m == settings.method and n == settings.steps]
        match = calibration.match
        return NewtonChoice(calibration.chosen.newton_iters, "given" if given is not None else "calibrated",
                            None if given is not None or match is None else match.tolerance,
                            "the training solver" if given is None else "", seen)
    if given is not None:
        return NewtonChoice(given, "given")
    return converged_iterations(model, settings.method, settings.steps, inputs)


def accuracy_inputs(model: ODENet, options: ExportOptions, classifier: bool = False) -> InputSet:
    """The inputs of calibration and the deployment error: the file ``options.calibration_data``,
    else the spec's ``export.onnx.calibration_data`` (with a ``classifier``'s labels, when a
    ``.npz`` has them as ``y``), or the parity check's seeded random batches."""
    spec = model.spec
    series = series_inputs(model)
    path = options.calibration_data if options.calibration_data is not None else spec.calibration_path()
    if path is not None:
        return data_input_set(path, spec.input_shape, dtype=model_dtype(model), series=series,
                              classes=spec.output_shape if classifier else None)
    return seeded_input_set(spec.input_shape, dtype=model_dtype(model), seed=spec.seed, series=series)


def _calibrate(model: ODENet, options: ExportOptions, settings: "ExportSettings", inputs: InputSet,
               reference: list[np.ndarray]) -> Calibration:
    export = model.spec.export
    # the options' criterion wins over the spec's; with neither, calibrate derives match_tol
    source = options if any(getattr(options, name) is not None for name in _CRITERIA) else export
    tol, agreement, accuracy = (getattr(source, name) for name in _CRITERIA)
    out = model.spec.output_shape
    if (agreement is not None or accuracy is not None) and (not out or out[-1] < 2):
        raise ExportError(f"calibrating on {'agreement' if agreement is not None else 'accuracy'} compares predicted "
                          f"classes (the argmax of the output's last axis); the model's output {out} has no class "
                          "axis of 2 or more scores", "use match_tol for a model that outputs values")
    methods = (options.method,) if options.method else (export.calibration_methods or CALIBRATION_METHODS)
    grid = options.grid or export.grid
    if grid == "optimised" and settings.loop:
        raise ExportError("grid: optimised is exported unrolled (its steps differ in size; a Loop repeats one)",
                          "leave out loop, or use grid: uniform")
    return calibrate(model, inputs, match_tol=tol, agreement=agreement, accuracy=accuracy, methods=methods,
                     latency=options.latency, latency_settings=dataclasses.replace(settings, steps=1),
                     reference=reference, newton_iters=_given_newton_iters(model.spec, options),
                     grid="uniform" if settings.loop else grid)


def _build_checked(model: ODENet, settings: "ExportSettings") -> tuple["onnx.ModelProto", bytes, float]:
    """The graph, checked by ``onnx.checker``, its bytes, and the seconds both took."""
    from odespec.export.onnx_export import build_onnx, check_onnx

    start = time.perf_counter()
    onnx_model = build_onnx(model, settings)
    check_onnx(onnx_model)
    data = onnx_model.SerializeToString()
    return onnx_model, data, time.perf_counter() - start


#: the least tolerance of a graph computing in float16, relative to the output's largest
#: magnitude: each operation rounds to 11 significant bits (~5e-4), and the rounding adds up
#: over the steps of a solve
HALF_PARITY_TOL = 1e-2


@dataclass(frozen=True)
class ParityCheck:
    """What a graph is compared with on every runtime: the PyTorch fixed-step ``twin`` in the
    graph's precision, fed ``dtype``. A graph computing in float16 (``float16``, ``mixed``) is
    compared with the float32 twin (the graph rounds its inputs on the way in): PyTorch's own float16
    arithmetic on the CPU is no reference (on a 2-8-16-8-2 model with rk4 x 32 it drifts 2.6 %
    of the output's magnitude from float32, the float16 graph in onnxruntime 0.06 %), so there
    ``scaled`` is set and the tolerance is relative to the output's largest magnitude.
    """

    twin: Any
    dtype: Any
    tolerance: float
    scaled: bool
    batch_sizes: tuple[int, ...]
    seed: int
    series: Any

    def run(self, data: bytes, session: Any, runtime: str = "onnxruntime", *,
            tolerance: Optional[float] = None) -> "ParityResult":
        """Parity of ``session`` (``data`` opened in ``runtime``); :class:`ParityError` above the
        tolerance (``tolerance``: another, for a measurement)."""
        from odespec.export.parity import check_parity

        return check_parity(data, self.twin, self.twin.spec.input_shape, dtype=self.dtype,
                            tolerance=self.tolerance if tolerance is None else tolerance,
                            batch_sizes=self.batch_sizes, seed=self.seed, session=session, series=self.series,
                            scaled=self.scaled, runtime=runtime)


def _parity_check(model: ODENet, settings: "ExportSettings", options: ExportOptions) -> ParityCheck:
    """The parity check of the graph ``settings`` describe."""
    import torch

    from odespec.export.onnx_export import graph_precision, precision_model
    from odespec.export.parity import parity_batches

    spec = model.spec
    prec = graph_precision(model_dtype(model), settings.precision)
    half = prec.compute == torch.float16
    dtype = torch.float32 if half else prec.compute
    cast = precision_model(model, dtype)
    if settings.correction is not None:  # the corrected grid's twin (odespec.export.correction)
        from odespec.export.correction import corrected_model

        twin = corrected_model(cast, settings.correction.to(dtype))
    elif settings.grids:  # an optimised grid's twin (odespec.export.grids)
        from odespec.export.grids import grid_model

        twin = grid_model(cast, settings.method, settings.grids)
    else:
        twin = fixed_step_model(cast, settings.method, settings.steps, settings.newton_iters)
    tol = options.parity_tol if options.parity_tol is not None else spec.export.parity_tol
    return ParityCheck(twin=twin, dtype=dtype, tolerance=max(tol, HALF_PARITY_TOL) if half else tol, scaled=half,
                       batch_sizes=parity_batches(settings.dynamic_batch), seed=spec.seed,
                       series=series_inputs(model))


def verify_runtimes(model: ODENet, data: bytes, settings: "ExportSettings", options: ExportOptions,
                    check: ParityCheck, parity: Optional[dict[str, Any]]) -> list[dict[str, Any]]:
    """The report's ``runtimes``: each runtime of ``options.verify`` (or the spec's
    ``export.onnx.verify``) with what it is, its parity (onnxruntime's: ``parity``, the
    build's own check), its latency at batch 1 and 256 (``options.latency``) and, for
    OpenVINO, the error at its default precision. A GPU runtime this machine cannot run is
    skipped with the reason; any other unavailable runtime is a :class:`BuildError`."""
    from odespec.export.runtimes import get_runtime

    entries = []
    for name in options.verify or model.spec.export.verify:
        runtime = get_runtime(name)
        reason = runtime.unavailable()
        if reason is not None:
            if not runtime.needs_device:
                raise BuildError(f"cannot verify on {name}: {reason}", runtime.install_hint or None)
            entries.append({"runtime": name, "skipped": reason})
            continue
        entries.append(_verify_one(runtime, model, data, settings, options, check,
                                   parity if name == "onnxruntime" else None))
    return entries


def _verify_one(runtime: Any, model: ODENet, data: bytes, settings: "ExportSettings", options: ExportOptions,
                check: ParityCheck, parity: Optional[dict[str, Any]]) -> dict[str, Any]:
    from odespec.export.latency import LATENCY_THREADS, RUNTIME_BATCHES, runtime_latencies
    from odespec.export.runtimes import OpenVinoRuntime

    entry = runtime.describe()
    entry["parity"] = parity if parity is not None else check.run(data, runtime.load(data), runtime.name).to_dict()
    if isinstance(runtime, OpenVinoRuntime):
        # what a user gets without the hint: measured and shown, never a failure
        unhinted = check.run(data, runtime.load(data, default_precision=True), runtime.name, tolerance=math.inf)
        entry["default_precision"] = {"precision": runtime.default_precision(),
                                      "max_abs_error": unhinted.max_abs_error,
                                      "max_scaled_error": unhinted.max_scaled_error}
    if options.latency:
        batches = RUNTIME_BATCHES if settings.dynamic_batch else (1,)
        entry["latency_ms"] = runtime_latencies(runtime.load(data, threads=LATENCY_THREADS), model, batches)
        entry["latency_threads"] = LATENCY_THREADS
    return entry


def runtime_metadata(runtimes: Optional[list[dict[str, Any]]]) -> dict[str, str]:
    """The metadata entries of the verified runtimes: OpenVINO's configuration, which a user must
    compile the file with to get the verified precision."""
    from odespec.export.runtimes import METADATA_KEY_OPENVINO, OPENVINO_CONFIG

    if any(r["runtime"] == "openvino" and "skipped" not in r for r in runtimes or []):
        return {METADATA_KEY_OPENVINO: json.dumps(OPENVINO_CONFIG)}
    return {}


def _deployment(sess: Any, model: ODENet, inputs: InputSet, settings: "ExportSettings",
                reference: Optional[list[np.ndarray]], classifier: bool) -> DeploymentError:
    """The report's ``deployment_error`` entry; if the training solver fails on the inputs, the
    entry says so and the export goes ahead."""
    try:
        return deployment_error(sess, model, inputs, static_batch=not settings.dynamic_batch, reference=reference,
                                classifier=classifier)
    except ExportError as e:
        return deployment_skipped(model, inputs, e)


def export_metadata(calibration: Optional[Calibration], deployment: Optional[DeploymentError], *,
                    from_training: bool = False) -> dict[str, str]:
    """The ONNX metadata entries the checks add: where the step count came from (calibrated,
    the spec's fixed-step training solver, or given), the calibration's choice and the
    deployment error."""
    meta = {"export_steps_source": "calibrated" if calibration else "training" if from_training else "given"}
    if calibration is not None:
        on_classes = calibration.match is not None and calibration.match.kind != "max_abs"
        meta["calibration"] = json.dumps({
            "match_tol": calibration.match_tol, "error": calibration.chosen.error, "nfe": calibration.chosen.nfe,
            "methods": [c.method for c in calibration.candidates], "inputs": calibration.inputs,
            **({calibration.match.kind: calibration.match.value} if on_classes and calibration.match else {}),
            "grid": calibration.chosen.grid,
            **({"heldout_error": calibration.chosen.heldout_error} if calibration.chosen.grid == "optimised" else {}),
        })
    if deployment is not None:
        meta["deployment_error"] = json.dumps({k: v for k, v in deployment.items() if k in _DEPLOYMENT_METADATA})
    return meta
