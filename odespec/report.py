"""Human-readable rendering of build reports (the JSON form is the report itself).

:func:`render_build` is the text ``odespec build`` and ``odespec export`` print: one part per
section of the report, in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from odespec.solvers.config import SolverConfig

__all__ = ["render_summary", "render_accuracy", "render_warnings", "render_build"]


def _shape(s: list[int]) -> str:
    return "(" + ", ".join(str(d) for d in s) + ")"


def _table(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Left-aligned columns two spaces apart, a rule of dashes under the first (header) row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, indent + "  ".join("-" * w for w in widths))
    return lines


def render_summary(summary: dict[str, Any]) -> str:
    """A table of layers: index, kind, output shape, parameters, solver."""
    rows = [("#", "layer", "output shape", "params", "solver / gradient")]
    rows.append(("", "input", _shape(summary["input_shape"]), "", ""))
    for r in summary["layers"]:
        solver = ""
        if r["kind"] == "ode":
            nfe = r.get("nfe_per_forward")
            family = f" ({r['family']})" if r.get("family", "ode") != "ode" else ""
            solver = f"{SolverConfig.words(r['solver'])} / {r['gradient']}{family}"
            solver += f", {nfe} f-evals/forward" if nfe is not None else ", adaptive f-evals"
        rows.append((str(r["index"]), r["kind"], _shape(r["output_shape"]), f"{r['parameters']:,}", solver))
    return "\n".join(_table(rows) + [f"total parameters: {summary['parameters']:,}"])


def _onnx_line(onnx: dict[str, Any], onnx_path: Path) -> str:
    source = " (the training solver's)" if onnx.get("steps_source") == "training" else ""
    if (onnx.get("correction") or {}).get("used"):
        source = " with a learned step correction"  # on uniform steps, whatever calibration chose
    elif (onnx.get("calibration") or {}).get("grid") == "optimised":
        source = " on an optimised grid"
    newton = onnx.get("newton_iters")
    if newton:  # an implicit method: its unrolled Newton iterations and where the count came from
        source += f", {newton['iters']} Newton iterations per step ({newton['source']})"
    return (f"onnx:   {onnx_path} ({onnx['size_bytes']:,} bytes, {onnx['method']} x {onnx['steps']} steps{source}, "
            f"{onnx['nfe_per_forward']} f-evaluations per forward, opset {onnx['opset']}, "
            f"exported in {onnx['export_seconds']:.2f} s)")


def _macs_line(macs: Optional[dict[str, Any]]) -> list[str]:
    """The deployed graph's MACs per sample and where they are (the two costliest operators)."""
    if not macs:
        return []
    top = [f"{op} {c['macs']:,}" for op, c in macs["by_op"].items() if c["macs"]][:2]
    bound = "" if macs["exact"] else " at least (some shapes unknown)"
    return [f"cost:   {macs['macs_per_sample']:,} multiply-accumulates per sample{bound}"
            + (f" ({', '.join(top)})" if top else "")]


def _parity_line(parity: Optional[dict[str, Any]]) -> str:
    scaled = parity is not None and parity.get("measure") == "scaled"
    error = (f"error {parity['max_scaled_error']:.2e} relative to the output's largest magnitude"
             if scaled else f"max abs error {parity['max_abs_error']:.2e}") if parity else ""
    bound = f", x max |output| = {parity['bound']:.3g}" if parity and "bound" in parity else ""
    checked = (f"{error} (tolerance {parity['tolerance']:g}{bound}) on batches "
               f"{', '.join(map(str, parity['batch_sizes']))}") if parity else "not checked"
    return f"parity: onnxruntime vs PyTorch {checked}"


def _weights_lines(weights: Optional[dict[str, Any]]) -> list[str]:
    if not weights:
        return ["weights: the spec's initial weights (seeded, untrained); --weights FILE exports trained ones"]
    source = ", a training checkpoint" if weights.get("checkpoint") else ""
    return [f"weights: {weights['file']} ({weights['tensors']} tensors{source}, sha256 {weights['sha256'][:12]})"]


def _fmt_err(x: Optional[float]) -> str:
    return "inf" if x is None else f"{x:.2e}"


def _calibration_lines(cal: Optional[dict[str, Any]]) -> list[str]:
    """The calibration's settings, then its table of candidates."""
    if not cal:
        return []
    match = cal.get("match") or {"criterion": "max_abs", "value": cal["match_tol"], "source": "given"}
    kind = match["criterion"]
    within = {"agreement": f"with at least {match['value']:g} of predictions agreeing with the training solver",
              "accuracy": f"with an accuracy of at least {match['value']:g} on the labels, against the training "
                          "solver's"}.get(kind, f"within match_tol {match['value']:g} of the training solver")
    source = f" ({match['source']})" if match["source"] != "given" else ""
    head = (f"calibration: steps chosen {within}{source} "
            f"({'; '.join(cal['reference'])}) on {cal['inputs']}; latency: {cal['latency']}")
    error = "max abs error" if kind == "max_abs" else f"1 - {kind}"
    rows = [("method", "grid", "steps", "f-evals", error, "held-out", "error at steps-1", "latency", "status")]
    for c in cal["candidates"]:
        optimised = c.get("grid") == "optimised"
        # an implicit candidate: the Newton iterations per step it was measured with
        newton = f" ({c['newton_iters']} Newton iterations)" if c.get("newton_iters") else ""
        rows.append((
            c["method"] + newton, c.get("grid", "uniform"),
            (str(c["steps"]) + (" in all" if optimised else "")) if c["steps"] else "-",
            str(c["nfe"]) if c["nfe"] else "-", _fmt_err(c["error"]),
            _fmt_err(c.get("heldout_error")) if optimised and c["nfe"] else "-",
            _fmt_err(c["error_one_fewer"]) if c["error_one_fewer"] is not None else "-",
            f"{c['latency_ms']:.3f} ms" if c["latency_ms"] is not None else "-", c["status"],
        ))
    lines = [head, *_table(rows, indent="  ")]
    if cal.get("grid") == "optimised":
        points = "; ".join(", ".join(f"{p:.4g}" for p in pts) for pts in cal["points"] if pts is not None)
        lines.append(f"  chosen grid's step points: {points}")
    lines += [f"  note: {n}" for n in cal.get("notes", [])]
    return lines


def _correction_lines(corr: Optional[dict[str, Any]]) -> list[str]:
    """The learned step correction's decision, then the grids it was trained for."""
    if not corr:
        return []
    head = (f"correction: {corr['note']} (criterion {corr['criterion']}; trained on {corr['fit_samples']} samples, "
            f"judged on {corr['held_out_samples']} held out; {corr['train_seconds']:.1f} s training)")
    rows = [("method", "steps", "f-evals", "held-out plain", "held-out corrected", "fit corrected", "train s", "passed")]
    for t in corr["trials"]:
        rows.append((t["method"], str(t["steps"]), str(t["nfe"]), _fmt_err(t["held_out_error_plain"]),
                     _fmt_err(t["held_out_error"]), _fmt_err(t["fit_error"]), f"{t['train_seconds']:.1f}",
                     "yes" if t["passed"] else "no"))
    return [head, *(_table(rows, indent="  ") if corr["trials"] else [])]


def _deployment_lines(dep: Optional[dict[str, Any]]) -> list[str]:
    """The deployment error, or why it was not measured."""
    if not dep:
        return []
    if dep.get("skipped"):
        return [f"deployment: error against the training solver not measured: {dep['skipped']}"]
    solvers = "; ".join(dep["reference"]) or "no ODE solves: the same function"
    line = (f"deployment: onnxruntime vs training solver ({solvers}): max abs error "
            f"{_fmt_err(dep['max_abs_error'])}, relative {_fmt_err(dep['max_scaled_error'])} "
            f"(of the output's largest magnitude)")
    if "agreement" in dep:
        line += (f"; predictions: {dep['agreement']:.2%} agree ({dep['disagreements']} differ)")
    if "accuracy" in dep:
        acc = dep["accuracy"]
        line += (f"; accuracy {acc['onnx']:.2%} (training solver {acc['reference']:.2%}) on {acc['labels']} labels")
    return [f"{line} on {dep['inputs']}"]


def _triton_lines(triton: Optional[dict[str, Any]]) -> list[str]:
    if not triton:
        return []
    batching = ", dynamic batching" if triton["dynamic_batching"] else ""
    return [f"triton: model {triton['model']!r} ({', '.join(triton['files'])}; backend {triton['backend']}, "
            f"max_batch_size {triton['max_batch_size']}{batching})"]


def render_warnings(warnings: Sequence[dict[str, str]]) -> list[str]:
    """Each warning of a build (:mod:`odespec.export.verdict`), and its fix."""
    return [f"warning: {w['warning']}\n  fix: {w['fix']}" for w in warnings]


def _runtime_lines(onnx: dict[str, Any]) -> list[str]:
    """The graph's precision, then a table of the verified runtimes: parity, latency at each
    batch size, OpenVINO's error at its default precision; a skipped runtime with why."""
    runtimes = onnx.get("runtimes")
    if not runtimes:
        return []
    head = f"runtimes (graph precision {onnx.get('precision') or 'the model dtype'}; parity against PyTorch, " \
           "latency median, 1 thread):"
    rows = [("runtime", "computes in", "parity error", "tolerance", "latency b=1", "latency b=256", "note")]
    skipped = []
    for r in runtimes:
        if "skipped" in r:
            skipped.append(f"  {r['runtime']}: skipped: {r['skipped']}")
            continue
        p, lat = r["parity"], r.get("latency_ms") or {}
        scaled = p.get("measure") == "scaled"
        err = p["max_scaled_error"] if scaled else p["max_abs_error"]
        dp = r.get("default_precision")
        note = (f"at its default {dp['precision']}: max abs error {_fmt_err(dp['max_abs_error'])}"
                if dp else "")
        rows.append((r["runtime"], r.get("precision", ""), f"{_fmt_err(err)}{' rel' if scaled else ''}",
                     f"{p.get('bound', p['tolerance']):.3g}", f"{lat['1']:.3f} ms" if "1" in lat else "-",
                     f"{lat['256']:.3f} ms" if "256" in lat else "-", note))
    return [head, *_table(rows, indent="  "), *skipped]


def render_accuracy(onnx_report: dict[str, Any]) -> list[str]:
    """Text lines for the report's ``onnx`` entry: the calibration table, if any, then the
    deployment error (or why it was not measured)."""
    return (_calibration_lines(onnx_report.get("calibration")) + _correction_lines(onnx_report.get("correction"))
            + _deployment_lines(onnx_report.get("deployment_error")))


def render_build(report: dict[str, Any], onnx_path: Path, report_path: Path) -> str:
    """The text output of ``odespec build`` and ``odespec export``: what was built, the ONNX
    file, parity, the weights loaded, calibration and deployment error, and the report's path."""
    onnx = report["onnx"]
    return "\n".join([
        f"{report['spec']['name']}: built",
        render_summary(report["summary"]),
        _onnx_line(onnx, onnx_path),
        *_macs_line(onnx.get("macs")),
        _parity_line(onnx["parity"]),
        *_runtime_lines(onnx),
        *_weights_lines(report.get("weights")),
        *render_accuracy(onnx),
        *_triton_lines(report.get("triton")),
        f"report: {report_path}",
        # last, where a user reads them
        *render_warnings(report.get("warnings") or []),
    ])
