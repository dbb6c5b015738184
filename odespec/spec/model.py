"""Typed, frozen spec objects: what the validator produces and every later stage consumes.

Every object that came from the text carries a :class:`Location`, so later stages (shape
checks, building, export) can still point at the line a problem comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional, Union

Shape = tuple[int, ...]

__all__ = [
    "Location",
    "LayerSpec",
    "DynamicsSpec",
    "SolverSpec",
    "GradientSpec",
    "OdeBlockSpec",
    "OnnxExportSpec",
    "TrainSpec",
    "Spec",
    "ModelItem",
]


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
class LayerSpec:
    """One layer: its registered type name and complete options (defaults filled in)."""

    kind: str
    options: Mapping[str, Any]
    loc: Location
    #: per-sample output shape, inferred by the validator
    out_shape: Shape = ()
    #: trainable parameters, computed from shapes
    num_params: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))


@dataclass(frozen=True)
class DynamicsSpec:
    """The network f(t, y): its layers and how t enters (``none`` or ``concat``)."""

    time: str
    layers: tuple[LayerSpec, ...]
    loc: Location


@dataclass(frozen=True)
class SolverSpec:
    """Solver method and options; fixed-step methods use ``steps``, adaptive ones tolerances."""

    method: str
    adaptive: bool
    steps: Optional[int] = None
    step_size: Optional[float] = None
    rtol: float = 1e-7
    atol: float = 1e-9
    first_step: Optional[float] = None
    max_step: Optional[float] = None
    max_num_steps: int = 100_000

    def options(self) -> dict[str, Any]:
        """torchdiffeq-style ``options`` for :func:`odespec.solvers.odeint`."""
        if not self.adaptive:
            return {"steps": self.steps} if self.steps is not None else {"step_size": self.step_size}
        out: dict[str, Any] = {"max_num_steps": self.max_num_steps}
        if self.first_step is not None:
            out["first_step"] = self.first_step
        if self.max_step is not None:
            out["max_step"] = self.max_step
        return out


@dataclass(frozen=True)
class GradientSpec:
    """How gradients flow through a solve: ``backprop``, ``adjoint`` or ``checkpoint``."""

    method: str = "backprop"
    rtol: Optional[float] = None
    atol: Optional[float] = None
    seminorm: bool = False
    checkpoints: Optional[int] = None


@dataclass(frozen=True)
class OdeBlockSpec:
    """An ODE block: solve dy/dt = f(t, y) over ``t`` starting from the block's input."""

    t: tuple[float, ...]
    output: str
    dynamics: DynamicsSpec
    solver: SolverSpec
    gradient: GradientSpec
    loc: Location
    out_shape: Shape = ()
    num_params: int = 0
    #: ode: continuous block; rknet: fixed steps, shared weights; resnet: Euler steps, own weights
    family: str = "ode"
    #: extra zero channels/features appended to the state (augmented neural ODE)
    augment: int = 0
    kind: str = field(default="ode", init=False)

    @property
    def state_shape(self) -> Shape:
        """Per-sample shape of the ODE state (the block's input plus any augmentation)."""
        return self.out_shape[1:] if self.output == "trajectory" else self.out_shape


ModelItem = Union[LayerSpec, OdeBlockSpec]


@dataclass(frozen=True)
class OnnxExportSpec:
    """How the model is unrolled and written to ONNX."""

    file: str
    method: str = "rk4"
    steps: int = 8
    opset: int = 17
    dynamic_batch: bool = True
    parity_tol: float = 1e-5
    loop: bool = False


@dataclass(frozen=True)
class TrainSpec:
    """Training settings (filled out by the training issue)."""

    iterations: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"


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
    train: Optional[TrainSpec] = None
    num_params: int = 0

    @property
    def output_shape(self) -> Shape:
        """Per-sample output shape of the whole model."""
        return self.model[-1].out_shape

    @property
    def ode_blocks(self) -> tuple[OdeBlockSpec, ...]:
        return tuple(m for m in self.model if isinstance(m, OdeBlockSpec))
