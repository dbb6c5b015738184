"""Data sources for ``odespec train``: a registry like the layers'.

Built-in sources register on first use; third-party packages register through the
``odespec.data`` entry-point group (each entry point names a :class:`DataSource` subclass, or a
callable that is handed :func:`register`), and the schema used for validation grows with them.

A source bundles, side by side: its options schema (which the spec schema is generated from),
what it yields per sample when that is known before loading anything (so ``odespec validate``
can compare it with the model), or else what its files' headers say (:meth:`DataSource.inspect`,
checked by the data contract, :mod:`odespec.data_contract`), checks against the model (the
ode_demo windows' times must be the ODE block's times), and a loader.

This module and the source modules must not import torch or numpy at import time: the spec
validator uses the schemas and the checks, and ``odespec validate`` must start fast. Loaders
import what they need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, TypeVar

from odespec.components import ComponentRegistry, OptionsComponent, did_you_mean
from odespec.spec.model import ModelItem, OdeBlockSpec, SeriesSpec, Shape

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from odespec.data_contract import ArrayInfo

__all__ = ["DataShapes", "Problem", "Need", "FileSplit", "LoadedData", "Augmentation", "DataSource", "register", "get",
           "names", "all_sources", "plugin_names", "resolve_path", "UnknownDataSourceError", "ENTRY_POINT_GROUP"]

#: the entry-point group third-party data sources register through
ENTRY_POINT_GROUP = "odespec.data"


@dataclass(frozen=True)
class DataShapes:
    """Per-sample input shape and targets of a source: values of ``target`` shape, or class
    labels in ``range(classes)``."""

    input: Shape
    target: Optional[Shape] = None
    classes: Optional[int] = None
    #: the source gives irregularly sampled series (per-sample times and masks): the model must
    #: read them (``input: {times, mask, query}``)
    series: bool = False
    #: series only: T', the query times per sample when they differ from the observation times
    #: (None: the outputs are at the observation times)
    query: Optional[int] = None


@dataclass(frozen=True)
class Problem:
    """A mismatch between a source and the model, found before training; ``path`` is the spec
    path to point at (``None``: the ``train.data`` entry itself)."""

    message: str
    hint: Optional[str] = None
    path: Optional[tuple] = None


@dataclass(frozen=True)
class Need:
    """What the model needs from the data, handed to loaders (user files are checked here)."""

    input_shape: Shape
    output_shape: Shape
    #: True when the loss takes class labels (cross_entropy)
    labels: bool
    #: what the model reads beside ``input`` (``Spec.series``); None: a plain input
    series: Optional[SeriesSpec] = None
    #: series: the start of the ODE block that outputs at the query times (they may not be earlier)
    query_start: Optional[float] = None

    @classmethod
    def of(cls, input_shape: Shape, output_shape: Shape, labels: bool, series: Optional[SeriesSpec],
           items: Sequence[ModelItem]) -> "Need":
        """What a model of these shapes and items needs, with its query block's start."""
        start = next((it.start for it in items if isinstance(it, OdeBlockSpec) and it.query), None)
        return cls(input_shape, output_shape, labels, series, start)


@dataclass(frozen=True)
class FileSplit:
    """One split of a source's files as their headers describe them, values unread: what
    ``odespec validate`` checks against the model by the data contract."""

    #: ``training`` or ``evaluation``
    name: str
    x: "ArrayInfo"
    #: the targets (for a series file without ``y``, ``x``: the reconstruction's targets)
    y: "ArrayInfo"
    #: a series file's arrays by name (``x``, ``times``, ``mask``, ``query_times``, ``y``,
    #: ``y_mask``, those it has), checked by :func:`odespec.data_contract.check_series`; empty
    #: for a plain (x, y) pair
    arrays: Mapping[str, "ArrayInfo"] = field(default_factory=dict)
    #: the file, in messages about the split as a whole (a series file's missing array)
    file: str = ""


class Augmentation:
    """A random transform of the training inputs, applied by the batcher to each training batch
    (never to evaluation data). Split in two so that a batch's draws do not depend on how it is
    sharded across data-parallel processes: :meth:`draw` makes per-sample parameters for a whole
    batch from a generator seeded by the run's seed and the step, :meth:`apply` transforms
    (some rows of) the batch with the matching rows of those parameters."""

    def draw(self, n: int, rng: "np.random.Generator") -> "np.ndarray":
        """Parameters for ``n`` samples, first axis = samples."""
        raise NotImplementedError

    def apply(self, x: Any, params: Any) -> Any:
        """The transformed inputs: ``x`` a torch tensor (samples first, the model's dtype),
        ``params`` the rows of :meth:`draw`'s array for those samples, as a tensor on x's device."""
        raise NotImplementedError


@dataclass
class LoadedData:
    """Training (and optionally evaluation) arrays, first axis = samples.

    ``x_scale`` multiplies inputs when batches are made, so MNIST can stay uint8 in memory;
    ``augment`` transforms training batches (after scaling), never evaluation data.

    Irregular series (a model with ``Spec.series``) add ``series`` and ``series_eval``: per
    split, arrays by name, samples first, in the order of ``x``: the model inputs beside ``x``
    that the model reads (``times`` (N, T), ``mask`` (N, T, F), ``query_times`` (N, T')) and the
    targets' ``y_mask`` (N, *output) when they have one (1 = observed). Batches cut them with
    the same rows as ``x`` and ``y``. ``series_eval`` is needed exactly when ``x_eval`` is given.
    """

    x: "np.ndarray"
    y: "np.ndarray"
    x_eval: "Optional[np.ndarray]" = None
    y_eval: "Optional[np.ndarray]" = None
    x_scale: Optional[float] = None
    augment: Optional[Augmentation] = None
    series: "Optional[dict[str, np.ndarray]]" = None
    series_eval: "Optional[dict[str, np.ndarray]]" = None


class DataSource(OptionsComponent):
    """Base class of every data source. Subclasses set the class attributes and override
    :meth:`shapes`, :meth:`check` and :meth:`load` as they need. ``shorthand``: ``npz: data.npz``
    means ``{path: data.npz}``."""

    # -- rules (torch-free) --------------------------------------------------------------------
    def shapes(self, options: Mapping[str, Any]) -> Optional[DataShapes]:
        """Per-sample shapes, or None when only the files can tell (checked when loading)."""
        return None

    def check(self, options: Mapping[str, Any], input_shape: Shape, items: Sequence[ModelItem]) -> list[Problem]:
        """Checks against the model beyond shapes (for example the ODE block's times)."""
        return []

    def inspect(self, options: Mapping[str, Any], *, base_dir: Path) -> list[FileSplit]:
        """The source's files as their headers describe them (no values read), for ``odespec
        validate`` to check against the model and to choose the default loss by. A file that is
        not there is left out (training reports it); one that cannot be read raises
        :class:`~odespec.train.errors.DataError`. Default: nothing to inspect."""
        return []

    #: the source can give irregular series (per-sample ``times``, ``mask``, ``query_times``) to
    #: a model that reads them (``Spec.series``); others are refused for such a model
    series_arrays = False

    def noise_std(self, options: Mapping[str, Any]) -> Optional[float]:
        """The observation noise the data was made with, if the source knows it (elbo default)."""
        return None

    # -- loading -------------------------------------------------------------------------------
    def load(self, options: Mapping[str, Any], *, seed: int, base_dir: Path, need: Need) -> LoadedData:
        """The arrays. ``base_dir`` resolves relative paths; ``need`` says what the model takes."""
        raise NotImplementedError


def resolve_path(base_dir: Path, value: str) -> Path:
    """A path from the spec: absolute as written, else relative to the spec's directory."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else base_dir / p


def trajectory_block(items: Sequence[ModelItem]) -> Optional[tuple[int, OdeBlockSpec]]:
    """The first ODE block with ``output: trajectory`` and its index in the model list."""
    for i, item in enumerate(items):
        if isinstance(item, OdeBlockSpec) and item.output == "trajectory":
            return i, item
    return None


def same_times(got: Sequence[float], want: Sequence[float]) -> bool:
    """Times equal up to rounding (``{start, stop, num}`` and a list may differ in the last bit)."""
    if len(got) != len(want):
        return False
    scale = max(abs(want[-1] - want[0]), 1e-300)
    return all(math.isclose(a, b, rel_tol=0, abs_tol=1e-9 * scale) for a, b in zip(got, want, strict=True))


# -- the registry ---------------------------------------------------------------------------------
S = TypeVar("S", bound=type)


class UnknownDataSourceError(KeyError):
    """No data source of that name; the message carries a did-you-mean."""

    def __init__(self, name: str):
        self.name = name
        self.suggestion: Optional[str] = did_you_mean(name, names())
        super().__init__(f"unknown data source {name!r}"
                         + (f"; did you mean {self.suggestion!r}?" if self.suggestion else ""))


def _builtins() -> None:
    from odespec.train import digits, files, generators, stiff  # noqa: F401  (register the built-ins)


_REGISTRY: ComponentRegistry[DataSource] = ComponentRegistry(
    "data source", DataSource, ENTRY_POINT_GROUP, _builtins, UnknownDataSourceError)


def register(cls: S) -> S:
    """Register a :class:`DataSource` subclass (usable as a decorator). Refuses duplicates."""
    return _REGISTRY.register(cls)


def get(name: str) -> DataSource:
    """The data source called ``name``; raises :class:`UnknownDataSourceError` (a KeyError)."""
    return _REGISTRY.get(name)


def names() -> list[str]:
    """Registered data source names, sorted."""
    return _REGISTRY.names()


def all_sources() -> list[DataSource]:
    """Registered data sources, sorted by name."""
    return _REGISTRY.all()


def plugin_names() -> list[str]:
    """Names registered by third-party entry points (they extend the shipped schema)."""
    return _REGISTRY.plugin_names()
