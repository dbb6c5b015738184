"""What the export benchmarks share: an onnxruntime session pinned to a thread count, and
interleaved timing of several functions (so that machine noise hits every peer alike)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import onnxruntime as ort


def session(path: Path, threads: int) -> Any:
    """A CPU session with ``threads`` intra-op threads, one inter-op thread, sequential."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def interleaved(fns: dict[str, Callable[[], Any]], *, min_time: float, repeat: int) -> dict[str, list[float]]:
    """Seconds per call of each function, calls interleaved across the functions: at least
    ``repeat`` rounds and ``min_time`` seconds, at most 2000 rounds."""
    for fn in fns.values():  # warm up: allocations, lazy initialisation, caches
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    while True:
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
        n = len(next(iter(times.values())))
        if (n >= repeat and time.perf_counter() - start >= min_time) or n >= 2000:
            return times
