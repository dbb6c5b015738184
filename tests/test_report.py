"""The text of a build report, assembled from its parts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from odespec.report import render_accuracy, render_build, render_summary

SUMMARY = {"input_shape": [2], "output_shape": [2], "parameters": 6, "layers": [
    {"index": 0, "kind": "linear", "line": 1, "output_shape": [2], "parameters": 6}]}
ONNX_LINE = ("onnx:   out/m.onnx (1,234 bytes, rk4 x 2 steps, 8 f-evaluations per forward, opset 17, "
             "exported in 0.50 s)")
PARITY_LINE = "parity: onnxruntime vs PyTorch max abs error 1.00e-07 (tolerance 1e-05) on batches 1, 7, 256"
DEPLOYMENT = {"reference": ["dopri5 rtol=1e-07 atol=1e-09"], "inputs": "x.npy (3 samples)", "samples": 3,
              "max_abs_error": 2e-5, "max_scaled_error": 4e-6, "seconds": 0.1}
DEPLOYMENT_LINE = ("deployment: onnxruntime vs training solver (dopri5 rtol=1e-07 atol=1e-09): max abs error 2.00e-05, "
                   "relative 4.00e-06 (of the output's largest magnitude) on x.npy (3 samples)")


def _report(**onnx: Any) -> dict[str, Any]:
    o = {"size_bytes": 1234, "method": "rk4", "steps": 2, "nfe_per_forward": 8, "opset": 17, "export_seconds": 0.5,
         "parity": {"max_abs_error": 1e-7, "tolerance": 1e-5, "batch_sizes": [1, 7, 256]},
         "calibration": None, "deployment_error": None}
    o.update(onnx)
    return {"spec": {"name": "m"}, "summary": SUMMARY, "weights": None, "onnx": o}


def _render(report: dict[str, Any]) -> list[str]:
    return render_build(report, Path("out/m.onnx"), Path("out/m.build.json")).split("\n")


def test_the_parts_in_order():
    report = _report(deployment_error=DEPLOYMENT)
    report["weights"] = {"file": "w.pt", "tensors": 2, "sha256": "0123456789abcdef"}
    assert _render(report) == [
        "m: built", *render_summary(SUMMARY).split("\n"), ONNX_LINE, PARITY_LINE,
        "weights: w.pt (2 tensors, sha256 0123456789ab)", DEPLOYMENT_LINE, "report: out/m.build.json",
    ]


def test_without_weights_parity_or_deployment():
    assert _render(_report(parity=None))[-4:] == [
        ONNX_LINE, "parity: onnxruntime vs PyTorch not checked",
        "weights: the spec's initial weights (seeded, untrained); --weights FILE exports trained ones",
        "report: out/m.build.json"]


def test_a_skipped_deployment_error_is_rendered_as_such():
    dep = {"reference": ["dopri5 rtol=1e-07 atol=1e-09"], "inputs": "seeded", "skipped": "the solver failed"}
    assert _render(_report(deployment_error=dep))[-2:] == [
        "deployment: error against the training solver not measured: the solver failed", "report: out/m.build.json"]


def test_the_calibration_table_then_the_deployment_error():
    cal = {"match_tol": 1e-5, "reference": ["dopri5 rtol=1e-07 atol=1e-09"], "inputs": "seeded",
           "latency": "onnxruntime, batch 1, 1 thread(s), median", "candidates": [
               {"method": "rk4", "steps": 3, "nfe": 60, "error": 6.5e-6, "error_one_fewer": 2.2e-5,
                "latency_ms": 0.1161, "status": "chosen"},
               {"method": "euler", "steps": 0, "nfe": 0, "error": None, "error_one_fewer": None,
                "latency_ms": None, "status": "not searched"}]}
    assert render_accuracy({"calibration": cal, "deployment_error": DEPLOYMENT}) == [
        "calibration: steps chosen within match_tol 1e-05 of the training solver (dopri5 rtol=1e-07 atol=1e-09) "
        "on seeded; latency: onnxruntime, batch 1, 1 thread(s), median",
        "  method  grid     steps  f-evals  max abs error  held-out  error at steps-1  latency   status",
        "  ------  -------  -----  -------  -------------  --------  ----------------  --------  ------------",
        "  rk4     uniform  3      60       6.50e-06       -         2.20e-05          0.116 ms  chosen",
        "  euler   uniform  -      -        inf            -         -                 -         not searched",
        DEPLOYMENT_LINE,
    ]
