"""Precision x runtime: each spec exported at float32, float16 and mixed, verified on onnxruntime
and OpenVINO (CPU), with the error against the model solved with its training solver (the
deployment error) and against the float32 fixed-step model (parity), the file size, the latency at
batch 1 and 256 (median, one thread) and OpenVINO's error at its default precision.

    PYTHONPATH=. .venv/bin/python benchmarks/precision_runtimes.py [SPEC ...]

Needs OpenVINO (pip install 'odespec[openvino]'). Also lists, for the float16 graph, the
operator types onnxruntime's CPU provider has no float16 kernel for (it runs them in float32
between inserted Casts): read from the graph onnxruntime optimizes.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort

import odespec
from odespec.export.pipeline import ExportOptions, export_model

SPECS = ["specs/ode_demo.yaml", "specs/mnist_small_odenet.yaml"]
PRECISIONS = ["float32", "float16", "mixed"]


def fp32_fallbacks(path: Path) -> list[str]:
    """Operator types onnxruntime's CPU provider computes in float32 in a float16 graph: the
    nodes fed by the Casts to float32 it inserts."""
    out = path.with_suffix(".opt.onnx")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    g = onnx.load(out).graph
    to_f32 = {n.output[0] for n in g.node if n.op_type == "Cast"
              and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in a_list(n))}
    ops = Counter(n.op_type for n in g.node if n.op_type != "Cast" and any(i in to_f32 for i in n.input))
    return sorted(ops)


def a_list(n: onnx.NodeProto) -> list[onnx.AttributeProto]:
    return list(n.attribute)


def main(specs: list[str]) -> None:
    rows = [("spec", "precision", "size", "deploy err", "deploy rel", "parity err (vs f32)", "ort b=1", "ort b=256",
             "ov b=1", "ov b=256", "ov default (bf16) err")]
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            model = odespec.build(spec)
            for precision in PRECISIONS:
                path = Path(tmp) / f"{model.spec.name}-{precision}.onnx"
                r = export_model(model, path, ExportOptions(precision=precision, verify=("onnxruntime", "openvino")))
                ort_e, ov_e = r.runtimes or []
                dep = r.deployment_error or {}
                rows.append((model.spec.name, precision, f"{r.size_bytes / 1024:.0f} kB",
                             f"{dep['max_abs_error']:.2e}", f"{dep['max_scaled_error']:.2e}",
                             f"{ort_e['parity']['max_abs_error']:.2e}",
                             f"{ort_e['latency_ms']['1']:.2f} ms", f"{ort_e['latency_ms']['256']:.1f} ms",
                             f"{ov_e['latency_ms']['1']:.2f} ms", f"{ov_e['latency_ms']['256']:.1f} ms",
                             f"{ov_e['default_precision']['max_abs_error']:.2e}"))
                print(" | ".join(rows[-1]), flush=True)
                if precision == "float16":
                    notes.append(f"{model.spec.name}: onnxruntime CPU runs in float32 (no float16 kernel; at least, read from its inserted Casts): "
                                 f"{', '.join(fp32_fallbacks(path)) or 'none'}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for i, row in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print()
    for n in notes:
        print(n)


if __name__ == "__main__":
    main(sys.argv[1:] or SPECS)
