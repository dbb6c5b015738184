"""onnxruntime latency of export candidates."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import odespec
from odespec.export.latency import LATENCY_THREADS, export_latencies, latency_description, ort_latencies
from odespec.export.onnx_export import ExportSettings

ROOT = Path(__file__).resolve().parents[2]


class _Clock:
    """A fake session that counts its runs."""

    def __init__(self) -> None:
        self.runs = 0

    def run(self, outputs, feeds):
        self.runs += 1
        return [feeds["input"]]


def test_ort_latencies_interleave_warm_up_and_stop_at_max_repeats():
    a, b = _Clock(), _Clock()
    ms = ort_latencies({"a": a, "b": b}, np.zeros((1, 2), np.float32), budget_s=60.0, max_repeats=7)
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())
    assert a.runs == b.runs == 1 + 7  # one warm-up run each, then the same number of timed runs


def test_export_latencies_times_each_candidate_in_a_one_thread_session():
    model = odespec.build(ROOT / "specs" / "ode_demo.yaml")
    ms = export_latencies(model, {"rk4 x 2": ExportSettings(method="rk4", steps=2),
                                  "euler x 3": ExportSettings(method="euler", steps=3)})
    assert set(ms) == {"rk4 x 2", "euler x 3"} and all(v > 0 for v in ms.values())
    assert LATENCY_THREADS == 1 and latency_description() == "onnxruntime, batch 1, 1 thread(s), median"
