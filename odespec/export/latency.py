"""onnxruntime latency at batch 1: how calibration compares the candidates it would export."""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

import numpy as np
import torch

from odespec.compile.model import ODENet
from odespec.export.inputs import INPUT, model_dtype, numpy_feeds, seeded_series, series_inputs
from odespec.export.session import ort_session

if TYPE_CHECKING:  # pragma: no cover
    from odespec.export.onnx_export import ExportSettings

__all__ = ["LATENCY_THREADS", "RUNTIME_BATCHES", "latency_description", "ort_latencies", "export_latencies",
           "runtime_latencies"]

#: intra-op threads of the timed sessions: a fixed count makes the candidates' latencies comparable
LATENCY_THREADS = 1


#: the batch sizes each verified runtime is timed at (``odespec build --verify``)
RUNTIME_BATCHES = (1, 256)


def latency_description() -> str:
    """How latencies are measured, in words (the calibration report's ``latency``)."""
    return f"onnxruntime, batch 1, {LATENCY_THREADS} thread(s), median"


def ort_latencies(sessions: dict[str, Any], x: Union[np.ndarray, dict[str, np.ndarray]], *, budget_s: float = 1.0,
                  max_repeats: int = 50) -> dict[str, float]:
    """Median milliseconds per run of each session on ``x`` (the ``input`` array, or every
    input by name), runs interleaved across the sessions so that machine noise hits them alike;
    about ``budget_s`` seconds in all."""
    feeds = x if isinstance(x, dict) else {INPUT: x}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for sess in sessions.values():  # warm up: first runs allocate
        sess.run(None, feeds)
    deadline = time.perf_counter() + budget_s
    for i in range(max_repeats):
        for k, sess in sessions.items():
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times[k].append(time.perf_counter() - t0)
        if i >= 4 and time.perf_counter() > deadline:
            break
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def export_latencies(model: ODENet, variants: Mapping[str, "ExportSettings"]) -> dict[str, float]:
    """Export ``model`` once per entry of ``variants`` (a label and how to export: method, steps,
    grids, Newton iterations) and time each graph at batch 1: median milliseconds by label."""
    from odespec.export.onnx_export import build_onnx

    sessions = {label: ort_session(build_onnx(model, settings).SerializeToString(), threads=LATENCY_THREADS)
                for label, settings in variants.items()}
    dtype = model_dtype(model)
    x = torch.zeros((1, *model.spec.input_shape), dtype=dtype)
    series = series_inputs(model)
    if series is None:
        return ort_latencies(sessions, x.numpy())
    # a model of series runs on one seeded random grid: its cost does not depend on the values
    (grid,) = seeded_series(series, [1], dtype=dtype, seed=model.spec.seed)
    return ort_latencies(sessions, numpy_feeds({INPUT: x, **grid}))


def runtime_latencies(session: Any, model: ODENet, batches: Sequence[int] = RUNTIME_BATCHES, *,
                      budget_s: float = 0.3) -> dict[str, float]:
    """Median milliseconds per run of ``session`` (a :class:`~odespec.export.runtimes.Session`
    of ``model``'s graph, opened with :data:`LATENCY_THREADS` threads) at each batch size, on
    zero inputs (and one seeded random grid per sample for a model of series: the cost does not
    depend on the values), cast beforehand to the graph's input types so that only the runtime
    is timed. By batch size, as text (the report's JSON keys)."""
    dtype = model_dtype(model)
    series = series_inputs(model)
    out = {}
    for b in batches:
        feeds = {INPUT: torch.zeros((b, *model.spec.input_shape), dtype=dtype)}
        if series is not None:
            (grid,) = seeded_series(series, [b], dtype=dtype, seed=model.spec.seed)
            feeds.update(grid)
        (ms,) = ort_latencies({"x": session}, session.cast(numpy_feeds(feeds)), budget_s=budget_s,
                              max_repeats=20).values()
        out[str(b)] = ms
    return out
