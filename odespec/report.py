"""Human-readable rendering of build reports (the JSON form is the report itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _shape(s: list[int]) -> str:
    return "(" + ", ".join(str(d) for d in s) + ")"


def render_summary(summary: dict[str, Any]) -> str:
    """A table of layers: index, kind, output shape, parameters, solver."""
    rows = [("#", "layer", "output shape", "params", "solver / gradient")]
    rows.append(("", "input", _shape(summary["input_shape"]), "", ""))
    for r in summary["layers"]:
        solver = ""
        if r["kind"] == "ode":
            s = r["solver"]
            how = f"steps={s['steps']}" if s.get("steps") else (
                f"step_size={s['step_size']:g}" if s.get("step_size") else f"rtol={s['rtol']:g} atol={s['atol']:g}")
            nfe = r.get("nfe_per_forward")
            solver = f"{s['method']} {how} / {r['gradient']}" + (f" ({r['family']})" if r.get("family", "ode") != "ode" else "")
            solver += f", {nfe} f-evals/forward" if nfe is not None else ", adaptive f-evals"
        rows.append((str(r["index"]), r["kind"], _shape(r["output_shape"]), f"{r['parameters']:,}", solver))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"total parameters: {summary['parameters']:,}")
    return "\n".join(lines)


def render_build(report: dict[str, Any], onnx_path: Path, report_path: Path) -> str:
    o = report["onnx"]
    p = o["parity"]
    parity = (f"max abs error {p['max_abs_error']:.2e} (tolerance {p['tolerance']:g}) on batches "
              f"{', '.join(map(str, p['batch_sizes']))}") if p else "not checked"
    return "\n".join([
        f"{report['spec']['name']}: built",
        render_summary(report["summary"]),
        f"onnx:   {onnx_path} ({o['size_bytes']:,} bytes, {o['method']} x {o['steps']} steps, "
        f"{o['nfe_per_forward']} f-evaluations per forward, opset {o['opset']}, exported in {o['export_seconds']:.2f} s)",
        f"parity: onnxruntime vs PyTorch {parity}",
        f"report: {report_path}",
    ])
