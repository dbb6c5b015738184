"""The inputs an export is checked on: seeded random batches, or samples read from a data file.

The parity check (:mod:`odespec.export.parity`) feeds the seeded batches; the deployment error
and calibration (:mod:`odespec.export.metrics`, :mod:`odespec.export.calibrate`) measure on the
same ones unless a calibration data file replaces them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from odespec.errors import InputFileError

__all__ = ["SEEDED_BATCHES", "SEEDED_SPAN", "INPUT", "Feeds", "InputSet", "SeriesInputs", "series_inputs", "call_model", "numpy_feeds",
           "model_dtype", "seeded_inputs", "seeded_input_set", "seeded_series", "data_input_set"]

#: batch sizes of the seeded inputs, hence of the parity check of a graph with a dynamic batch
SEEDED_BATCHES: tuple[int, ...] = (1, 7, 256)


#: one batch of a model's inputs by their ONNX names: ``input``, and for a model reading
#: irregular series ``times``, ``mask``, ``query_times`` (as far as it reads them)
Feeds = dict[str, torch.Tensor]


@dataclass(frozen=True)
class InputSet:
    """The inputs accuracy is measured on, in batches, and how to describe them in a report.

    ``batches`` holds each batch's ``input``; ``series``, for a model that reads irregular
    series, each batch's other inputs by name (empty otherwise). :meth:`feeds` gives them
    together, and :func:`call_model` runs a model on them."""

    batches: tuple[torch.Tensor, ...]
    description: str
    series: tuple[Feeds, ...] = ()
    #: each batch's class labels (int64, one per sample), when a classifier's data file has them
    labels: tuple[np.ndarray, ...] = ()

    def __post_init__(self) -> None:
        if self.series and len(self.series) != len(self.batches):
            raise ValueError(f"{len(self.series)} series batches for {len(self.batches)} input batches")

    @property
    def samples(self) -> int:
        """Samples over all batches."""
        return sum(int(b.shape[0]) for b in self.batches)

    def feeds(self) -> list[Feeds]:
        """Every batch's inputs by name, ``input`` first."""
        return [{INPUT: x, **(self.series[i] if self.series else {})} for i, x in enumerate(self.batches)]

    def subset(self, index: np.ndarray, description: str, batch: int = 256) -> "InputSet":
        """The samples at ``index`` (positions over all batches, in order), with their labels,
        re-batched ``batch`` at a time: the fit and held-out parts of calibration's searches.
        ``ValueError`` for series inputs (their batches are not split here)."""
        if self.series:
            raise ValueError("the inputs of a model that reads series are not split")
        x = torch.cat(list(self.batches))[torch.from_numpy(np.asarray(index, dtype=np.int64))]
        batches = tuple(x.split(batch))
        labels = ()
        if self.labels:
            picked = np.concatenate(list(self.labels))[index]
            labels = tuple(picked[i:i + batch] for i in range(0, len(picked), batch))
        return InputSet(batches, description, labels=labels)


#: the name of the model's (first) input, as the ONNX graph names it
INPUT = "input"


def call_model(model: torch.nn.Module, feeds: Feeds) -> torch.Tensor:
    """``model(input, times=..., mask=..., query_times=...)``: the model's output on one batch of
    :meth:`InputSet.feeds` (the keywords of ``ODENet.forward`` are the inputs' names)."""
    rest = {k: v for k, v in feeds.items() if k != INPUT}
    return model(feeds[INPUT], **rest)


def numpy_feeds(feeds: Feeds) -> dict[str, np.ndarray]:
    """One batch as onnxruntime takes it."""
    return {k: v.numpy() for k, v in feeds.items()}


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of ``model``'s inputs: its parameters' (float32 for a model without any)."""
    param = next(model.parameters(), None)
    return param.dtype if param is not None else torch.float32


def seeded_inputs(input_shape: Sequence[int], *, dtype: torch.dtype, batch_sizes: Sequence[int] = SEEDED_BATCHES,
                  seed: int = 0) -> list[torch.Tensor]:
    """Standard-normal input batches drawn from ``seed`` (in float64, then cast, so that both
    dtypes see the same values): the inputs of the parity check and of the deployment error."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn((b, *input_shape), generator=gen, dtype=torch.float64).to(dtype) for b in batch_sizes]


def seeded_input_set(input_shape: Sequence[int], *, dtype: torch.dtype, seed: int,
                     batch_sizes: Sequence[int] = SEEDED_BATCHES, series: Optional[SeriesInputs] = None) -> InputSet:
    """Standard-normal inputs from ``seed``: the very batches the parity check feeds; with
    ``series``, each batch's random per-sample grids too (:func:`seeded_series`)."""
    batches = seeded_inputs(input_shape, dtype=dtype, batch_sizes=batch_sizes, seed=seed)
    sizes = ", ".join(map(str, batch_sizes))
    if series is None:
        return InputSet(tuple(batches), f"seeded random (seed {seed}), batches {sizes}")
    grids = seeded_series(series, [int(b.shape[0]) for b in batches], dtype=dtype, seed=seed)
    return InputSet(tuple(batches), f"seeded random (seed {seed}) with random per-sample times on "
                    f"[start, start + {SEEDED_SPAN:g}], batches {sizes}", tuple(grids))


#: the span of the seeded per-sample times after their start (observation times; query times
#: reach 1.5 times as far, into extrapolation); the built-in irregular series' default span
SEEDED_SPAN = 10.0


@dataclass(frozen=True)
class SeriesInputs:
    """What a model reading irregular series takes beside ``input``, for drawing seeded grids:
    the names (``SeriesSpec.input_names`` after ``input``), T, F, T' (None: no query times),
    and the earliest observation and query times (the ODE-RNN's and the ``t: query`` block's
    starts)."""

    names: tuple[str, ...]
    slots: int
    features: int
    query: Optional[int]
    #: None: no layer bounds the times from below
    times_start: Optional[float] = None
    query_start: Optional[float] = None

    @property
    def starts(self) -> dict[str, float]:
        """Input name -> the earliest time it may hold, for the inputs that have one."""
        starts = {"times": self.times_start, "query_times": self.query_start}
        return {k: v for k, v in starts.items() if v is not None and k in self.names}


def series_inputs(model: torch.nn.Module) -> Optional[SeriesInputs]:
    """The :class:`SeriesInputs` of a compiled model (an ``ODENet``); None when it reads no series.
    Observation times start at the latest ODE-RNN ``start``, query times at the latest
    ``t: query`` block's ``start``."""
    from odespec.compile.ode_block import BlockBase
    from odespec.export.unroll import PerSampleEncoder

    spec = getattr(model, "spec", None)
    series = getattr(spec, "series", None)
    if spec is None or series is None:
        return None
    rnn = [m.start for m in model.modules() if isinstance(m, PerSampleEncoder)]
    query = [m.spec.start for m in model.modules() if isinstance(m, BlockBase) and m.spec.query]
    return SeriesInputs(tuple(series.input_names[1:]), int(spec.input_shape[0]), int(spec.input_shape[-1]),
                        series.query, max(rnn) if rnn else None, max(query) if query else None)


def seeded_series(series: SeriesInputs, batch_sizes: Sequence[int], *, dtype: torch.dtype, seed: int) -> list[Feeds]:
    """Random per-sample grids, one set per batch: each sample observed at sorted uniform times
    of its own on ``[times_start, times_start + SEEDED_SPAN]``, a random length of at least half
    the T slots (the rest padded as the data contract says: the last time repeated, mask 0),
    about 30 % of the values masked; query times sorted uniform on ``[query_start, query_start +
    1.5 * SEEDED_SPAN]`` per sample. Drawn in float64 from ``seed`` (a stream apart from the
    inputs'), then cast."""
    gen = torch.Generator().manual_seed(seed + 1)
    out = []
    for n in batch_sizes:
        lengths = torch.randint(max(1, (series.slots + 1) // 2), series.slots + 1, (n,), generator=gen)
        times = torch.sort(torch.rand((n, series.slots), generator=gen, dtype=torch.float64), dim=1).values
        real = torch.arange(series.slots)[None, :] < lengths[:, None]
        last = times.gather(1, (lengths - 1)[:, None])
        times = (series.times_start or 0.0) + SEEDED_SPAN * torch.where(real, times, last)
        mask = (torch.rand((n, series.slots, series.features), generator=gen, dtype=torch.float64) >= 0.3) & real[..., None]
        mask[:, 0, :] = True  # every sample observes something
        drawn = {"times": times, "mask": mask.to(torch.float64)}
        if series.query is not None:
            q = torch.sort(torch.rand((n, series.query), generator=gen, dtype=torch.float64), dim=1).values
            drawn["query_times"] = (series.query_start or 0.0) + 1.5 * SEEDED_SPAN * q
        out.append({name: drawn[name].to(dtype) for name in series.names})
    return out


def data_input_set(path: Union[str, "os.PathLike[str]"], input_shape: Sequence[int], *, dtype: torch.dtype,
                   batch_size: int = 256, series: Optional[SeriesInputs] = None,
                   classes: Optional[Sequence[int]] = None) -> InputSet:
    """Inputs read from a ``.npy``, ``.npz`` or ``.csv`` file by ``odespec run``'s readers
    (rows = samples), split into batches of ``batch_size``. With ``series``: a ``.npz`` holding
    an array per model input (``input`` or ``x``, ``times``, ``mask``, ``query_times``), checked
    as ``odespec run`` checks them. ``classes``: the output shape of a classifier; a ``.npz``
    with an array ``y`` then gives the samples' class labels (as training reads them)."""
    from odespec.export.run import ModelInput, load_input, load_series_inputs

    np_dtype = np.dtype(np.float64 if dtype == torch.float64 else np.float32)
    if series is None:
        arrays = {INPUT: load_input(path, ModelInput(INPUT, ("batch", *input_shape), np_dtype))}
    else:
        shapes = {"times": (series.slots,), "mask": tuple(input_shape), "query_times": (series.query,)}
        wanted = [ModelInput(INPUT, ("batch", *input_shape), np_dtype)] + [
            ModelInput(name, ("batch", *shapes[name]), np_dtype) for name in series.names]
        arrays = load_series_inputs(path, wanted, series.starts)
    count = arrays[INPUT].shape[0]
    if count == 0:
        raise InputFileError(f"{path}: holds no samples")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in arrays.items()}
    cuts = range(0, count, batch_size)
    batches = tuple(tensors[INPUT][i:i + batch_size] for i in cuts)
    grids = tuple({k: v[i:i + batch_size] for k, v in tensors.items() if k != INPUT} for i in cuts) if series else ()
    y = _labels(path, classes, count) if classes is not None and series is None else None
    labelled = tuple(y[i:i + batch_size] for i in cuts) if y is not None else ()
    # the file's name only: reports and ONNX metadata must not carry machine paths
    return InputSet(batches, f"{Path(path).name} ({count} samples{', labelled' if labelled else ''})", grids,
                    labelled)


def _labels(path: Union[str, "os.PathLike[str]"], out: Sequence[int], count: int) -> Optional[np.ndarray]:
    """The class labels in the ``.npz`` file's array ``y`` (labels or one-hot rows, by the data
    contract), or ``None`` when the file has no ``y``."""
    from odespec import data_contract as dc

    if Path(path).suffix.lower() != ".npz":
        return None
    info = dc.npz_infos(Path(path), InputFileError).get("y")
    if info is None or info.read is None:
        return None
    y = dc.conform_targets(info.read(), info, tuple(out), True, InputFileError)
    if len(y) != count:
        raise InputFileError(f"{info.where}: {len(y)} labels for {count} samples", "save one label per sample")
    return y
