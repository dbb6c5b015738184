"""Typed, frozen spec objects: what the validator produces and every later stage consumes.

Every object that came from the text carries a :class:`Location`, so later stages (shape
checks, building, export) can still point at the line a problem comes from.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence, Union

from odespec.solvers.config import GradientConfig, SolverConfig
from odespec.spec.correction import CorrectionSpec

Shape = tuple[int, ...]

__all__ = [
    "Location",
    "SeriesSpec",
    "LayerSpec",
    "DynamicsSpec",
    "SolverSpec",
    "GradientSpec",
    "OdeBlockSpec",
    "OnnxExportSpec",
    "DataSpec",
    "LossSpec",
    "OptimizerSpec",
    "ScheduleSpec",
    "InitSpec",
    "RegulariseSpec",
    "TrainSpec",
    "Spec",
    "ModelItem",
    "fixed_training_steps",
]


class _WithOptions:
    """Frozen spec objects holding a read-only ``options`` mapping (a ``mappingproxy``, made
    from the given mapping after init; it cannot be pickled): copies share the object, which is immutable, and pickles carry the
    options as a plain dict. Compiled modules keep their spec, so this is what lets a model be
    deep-copied (EMA/SWA averaging, moving a CUDA model's copy to the CPU for export) or
    pickled whole."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))  # type: ignore[attr-defined]

    def __copy__(self) -> "_WithOptions":
        return self

    def __deepcopy__(self, memo: dict) -> "_WithOptions":
        return self

    def __reduce__(self) -> tuple:
        values = (getattr(self, f.name) for f in fields(self))  # type: ignore[arg-type]
        return type(self), tuple(dict(v) if isinstance(v, MappingProxyType) else v for v in values)


@dataclass(frozen=True)
class Location:
    """Where something is written: file, 1-based line and column, and its spec path."""

    file: str
    line: int
    column: int
    path: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class SeriesSpec:
    """The model reads irregularly sampled series (``input: {times, mask, query}``): beside
    ``input`` (batch, T, F) it takes ``times`` (batch, T), each sample's observation times,
    ``mask`` (batch, T, F), 1 where a value was observed, and ``query_times`` (batch, T'), the
    times each sample's outputs are at. Each flag says whether the model reads that input."""

    times: bool = False
    mask: bool = False
    #: T', the number of query times per sample; None: the model reads no query times
    query: Optional[int] = None

    @property
    def input_names(self) -> tuple[str, ...]:
        """The model's inputs, in the order ``ODENet.forward`` and the ONNX graph take them."""
        names = ["input"]
        names += ["times"] if self.times else []
        names += ["mask"] if self.mask else []
        names += ["query_times"] if self.query is not None else []
        return tuple(names)


@dataclass(frozen=True)
class LayerSpec(_WithOptions):
    """One layer: its registered type name and complete options (defaults filled in)."""

    kind: str
    options: Mapping[str, Any]
    loc: Location
    #: per-sample output shape, inferred by the validator
    out_shape: Shape = ()
    #: trainable parameters, computed from shapes
    num_params: int = 0


@dataclass(frozen=True)
class DynamicsSpec:
    """The network f(t, y): its layers and how t enters (``none`` or ``concat``)."""

    time: str
    layers: tuple[LayerSpec, ...]
    loc: Location


#: an ODE block's solver and gradient method are the solvers' own configuration objects (one
#: owner for that vocabulary: options, defaults, rules, schema fragments, step counts)
SolverSpec = SolverConfig
GradientSpec = GradientConfig


@dataclass(frozen=True)
class OdeBlockSpec:
    """An ODE block: solve dy/dt = f(t, y) over ``t`` starting from the block's input."""

    t: tuple[float, ...]
    output: str
    dynamics: DynamicsSpec
    solver: SolverConfig
    gradient: GradientConfig
    loc: Location
    out_shape: Shape = ()
    num_params: int = 0
    #: ode: continuous block; rknet: fixed steps, shared weights; resnet: Euler steps, own weights
    family: str = "ode"
    #: extra zero channels/features appended to the state (augmented neural ODE)
    augment: int = 0
    #: ``t: query``: the outputs are at each sample's own ``query_times`` (then ``t`` is empty),
    #: solved from ``start``
    query: bool = False
    start: float = 0.0
    #: ``t: query``: how many query times each sample has (the model's ``input.query``); 0 otherwise
    query_times: int = 0
    kind: str = field(default="ode", init=False)

    @property
    def state_shape(self) -> Shape:
        """Per-sample shape of the ODE state (the block's input plus any augmentation)."""
        return self.out_shape[1:] if self.output == "trajectory" else self.out_shape

    def with_solver(self, solver: SolverConfig, gradient: Optional[GradientConfig] = None) -> "OdeBlockSpec":
        """This block solved another way (the export's fixed-step twin, calibration candidates);
        the gradient method is kept unless given."""
        return replace(self, solver=solver, gradient=self.gradient if gradient is None else gradient)

    def count_steps(self) -> Optional[int]:
        """Steps of one fixed-step forward solve (``None``: adaptive, or ``t: query`` with a
        ``step_size``, where the count follows each batch's times)."""
        if not self.query:
            return self.solver.count_steps(self.t)
        if self.solver.adaptive or self.solver.steps is None:
            return None
        return self.query_times * self.solver.steps

    def nfe(self) -> Optional[int]:
        """f-evaluations of one forward solve (``None``: adaptive, it varies). A ResNet block
        evaluates each of its step functions once. A ``t: query`` block solves each of its
        ``query_times`` intervals on its own (the per-sample change of time variable), so a
        first-same-as-last method's last stage is not carried across intervals."""
        # a forward-difference Jacobian (an implicit method's export twin) evaluates f per element
        size = math.prod(self.state_shape)
        if not self.query:
            return self.solver.nfe(self.t, size)
        if self.solver.adaptive or self.solver.steps is None:
            return None
        per_interval = self.solver.nfe((0.0, 1.0), size)
        return None if per_interval is None else self.query_times * per_interval

    def describe_times(self) -> str:
        """The block's times in words: ``t=[0..1] (50 times)`` or ``t=query from 0 (40 per sample)``."""
        if self.query:
            return f"t=query from {self.start:g} ({self.query_times} per sample)"
        return f"t=[{self.t[0]:g}..{self.t[-1]:g}] ({len(self.t)} times)"


ModelItem = Union[LayerSpec, OdeBlockSpec]


def fixed_training_steps(items: Optional[Sequence[ModelItem]]) -> Optional[tuple[str, int]]:
    """The one fixed-step method and step count every ODE block trains with, or ``None``: an
    adaptive or ``step_size`` solver, blocks that differ, no ODE block (``items`` ``None``: a
    model that is not valid). A ResNet block, with its own weights per step, exports as it is
    and does not count."""
    blocks = [b for b in items or () if isinstance(b, OdeBlockSpec) and b.family != "resnet"]
    if not blocks or any(b.solver.adaptive or b.solver.steps is None for b in blocks):
        return None
    solvers = {(b.solver.method, b.solver.steps) for b in blocks}
    return next(iter(solvers)) if len(solvers) == 1 else None  # type: ignore[return-value]


@dataclass(frozen=True)
class OnnxExportSpec:
    """How the model is unrolled and written to ONNX."""

    file: str
    method: str = "rk4"
    #: steps per output interval, or ``"auto"``: calibrate against the training solver
    steps: Union[int, str] = 8
    opset: int = 17
    dynamic_batch: bool = True
    parity_tol: float = 1e-5
    loop: bool = False
    #: the inputs of calibration and the deployment error, a file relative to the spec's
    #: directory (``None``: seeded random inputs); :meth:`Spec.calibration_path` resolves it
    calibration_data: Optional[str] = None
    #: ``steps: auto`` only: largest max abs error against the training-solver model; ``None``:
    #: derived from the training solvers' tolerances when calibrating
    #: (:func:`odespec.export.calibrate.default_match_tol`)
    match_tol: Optional[float] = None
    #: ``steps: auto`` only (``match: {agreement: A}``): instead of ``match_tol``, the smallest
    #: fraction of samples whose predicted class (argmax of the output's last axis) must be the
    #: training-solver model's
    match_agreement: Optional[float] = None
    #: ``steps: auto`` only (``match: {accuracy: A}``): instead of ``match_tol``, the smallest
    #: fraction of labelled calibration samples whose predicted class must be their label
    match_accuracy: Optional[float] = None
    #: ``steps: auto`` only: the methods calibration searches (the written ``method`` alone,
    #: or every built-in fixed-step method when none is written); empty otherwise
    calibration_methods: tuple[str, ...] = ()
    #: ``steps: auto`` only: the grids calibration searches (``uniform``, ``optimised``, ``auto``:
    #: optimised where they apply; :data:`~odespec.spec.schema.GRID_MODES`)
    grid: str = "auto"
    #: the graph's element types (``float32``, ``float16``, ``mixed``); None: the model's dtype
    precision: Optional[str] = None
    #: the runtimes the graph is checked on (parity and latency), by name
    verify: tuple[str, ...] = ("onnxruntime",)
    #: a learned step correction exported with the model (:mod:`odespec.spec.correction`); None: none
    correction: Optional[CorrectionSpec] = None
    #: an implicit method: the Newton iterations the graph unrolls per step, or ``"auto"``:
    #: chosen by calibration (``steps: auto``), else the fewest whose output is the converged
    #: iteration's up to float rounding (:mod:`odespec.export.newton_iters`)
    newton_iters: Union[int, str] = "auto"

    #: ``method`` and ``steps`` are the ODE blocks' fixed-step training solver's: the spec writes
    #: neither, and every ODE block trains with that method and step count (a discrete model
    #: trained at one step count is a different function at another)
    from_training: bool = False

    @property
    def auto(self) -> bool:
        """Whether the step count (and maybe the method) is chosen by calibration."""
        return self.steps == "auto"


@dataclass(frozen=True)
class DataSpec(_WithOptions):
    """Where training data comes from: a registered data source and its complete options."""

    source: str
    options: Mapping[str, Any]
    loc: Location


@dataclass(frozen=True)
class LossSpec:
    """The training loss: ``mse``, ``l1``, ``cross_entropy`` or ``elbo`` (with its noise std)."""

    kind: str
    #: elbo only: the fixed standard deviation of the Gaussian observation noise
    noise_std: Optional[float] = None


@dataclass(frozen=True)
class OptimizerSpec:
    """Optimizer and its options; ``None`` means torch's default for that optimizer."""

    method: str = "adam"
    weight_decay: Optional[float] = None
    momentum: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: Optional[float] = None
    alpha: float = 0.99


@dataclass(frozen=True)
class ScheduleSpec:
    """Learning-rate schedule: ``constant``, ``step``, ``multistep`` or ``cosine``.

    ``every`` and ``milestones`` count in ``unit``: iterations, or epochs (passes over the
    training data) when the run's length is given in epochs."""

    kind: str = "constant"
    #: step: multiply the rate by ``gamma`` every ``every`` units
    every: Optional[int] = None
    gamma: float = 0.1
    #: multistep: multiply the rate by ``gamma`` at each of these units (strictly increasing)
    milestones: tuple[int, ...] = ()
    #: cosine: the rate reached at the last iteration
    min_lr: float = 0.0
    #: what ``every`` and ``milestones`` count: ``iterations`` or ``epochs``
    unit: str = "iterations"


@dataclass(frozen=True)
class InitSpec:
    """Re-initialisation of the linear layers of every ODE block's dynamics before training."""

    weights: str = "default"
    std: float = 0.1


@dataclass(frozen=True)
class RegulariseSpec:
    """RNODE regularisers (Finlay et al. 2020) of the ODE blocks, added to the training loss.

    Per sample, the kinetic energy is the integral of ``|f(t, y)|^2`` and the Jacobian term the
    integral of ``|df/dy|_F^2`` (estimated with one Hutchinson probe per solve) over the block's
    time span; each is averaged over the batch and multiplied by its weight."""

    kinetic: float = 0.0
    jacobian: float = 0.0
    #: the Hutchinson probe's distribution: ``gaussian`` or ``rademacher``
    noise: str = "gaussian"


@dataclass(frozen=True)
class TrainSpec:
    """Training settings, used by ``odespec train``."""

    data: DataSpec
    loss: LossSpec
    loc: Location
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    lr: float = 1e-3
    #: optimizer steps; None when ``epochs`` is given (then known once the data is loaded)
    iterations: Optional[int] = None
    epochs: Optional[int] = None
    batch_size: int = 32
    #: evaluate every N iterations (0: only after the last)
    eval_every: int = 0
    #: write a checkpoint every N iterations (0: only at the end and on Ctrl-C)
    checkpoint_every: int = 500
    #: a progress line every N iterations when stderr is not a terminal (None: about 50 per run)
    log_every: Optional[int] = None
    seed: int = 0
    #: None: the spec's top-level device
    device: Optional[str] = None
    init: InitSpec = InitSpec()
    #: None: no regularisation
    regularise: Optional[RegulariseSpec] = None
    #: f-evaluations allowed per training forward pass (all ODE blocks together); None: no budget
    max_nfe: Optional[int] = None
    #: clip the gradients' global 2-norm to this before each optimizer step; None: no clipping
    clip_grad_norm: Optional[float] = None


@dataclass(frozen=True)
class Spec:
    """A whole validated spec."""

    name: str
    input_shape: Shape
    model: tuple[ModelItem, ...]
    export: OnnxExportSpec
    source_file: str
    source_sha256: str
    format_version: int = 1
    description: str = ""
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    #: None: the model's only input is ``input``; else what else it reads (irregular series)
    series: Optional[SeriesSpec] = None
    #: the ``train:`` section, checked by the section registered under that name
    #: (:mod:`odespec.spec.sections`); a field marked ``section`` is one a registered section fills
    train: Optional[TrainSpec] = field(default=None, metadata={"section": True})
    num_params: int = 0

    @property
    def output_shape(self) -> Shape:
        """Per-sample output shape of the whole model."""
        return self.model[-1].out_shape

    def calibration_path(self) -> Optional[str]:
        """``export.onnx.calibration_data`` as a path: as written when absolute (or when the spec
        was parsed from a string), else relative to the spec file's directory."""
        value = self.export.calibration_data
        if value is None or os.path.isabs(value) or self.source_file.startswith("<"):
            return value
        return os.path.join(os.path.dirname(self.source_file), value)

    @property
    def classifier(self) -> bool:
        """Whether the model's output is class scores, judged by its predictions (argmax
        agreement): trained with ``cross_entropy``, or calibrated on ``match: {agreement}`` or
        ``match: {accuracy}``."""
        trained = self.train is not None and self.train.loss.kind == "cross_entropy"
        return trained or self.export.match_agreement is not None or self.export.match_accuracy is not None

    @property
    def training_steps(self) -> Optional[tuple[str, int]]:
        """:func:`fixed_training_steps` of the model: the discrete map it was trained as."""
        return fixed_training_steps(self.model)

    @property
    def ode_blocks(self) -> tuple[OdeBlockSpec, ...]:
        return tuple(m for m in self.model if isinstance(m, OdeBlockSpec))
