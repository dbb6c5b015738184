"""How far the fixed-step export is from the model as trained, and choosing its step count.

A spec's ODE blocks are trained with their own solver (often adaptive: dopri5 at some rtol/atol);
the exported graph takes a fixed number of steps of a fixed method. Parity
(:mod:`odespec.export.parity`) only shows that onnxruntime computes the fixed-step model
faithfully. This module measures what a deployment actually changes:

* :func:`deployment_error` — onnxruntime's output of the exported graph against the model solved
  with its *training* solver, on the same inputs (seeded random ones, or calibration data);
* :func:`calibrate` — ``export.onnx.steps: auto``: the cheapest fixed method and step count
  (fewest f-evaluations, steps x stages) whose output stays within ``match_tol`` of the
  training-solver model.

Calibration evaluates candidates with the PyTorch fixed-step twin (the function the graph
computes; parity bounds the difference) rather than exporting each one: an unrolled rk4 x 4096
graph would take long to build and load, while the twin costs one forward pass. Only the
candidates worth timing are exported, to measure their onnxruntime latency.

Errors: ``max_abs_error`` is ``max |export - reference|``; ``max_rel_error`` is that divided by
``max |reference|`` (relative to the output's scale, so that outputs near zero, such as logits,
do not make it meaningless). The search assumes the error falls as the step count grows, as
it does once the steps resolve the dynamics: doubling from 1 step finds a passing count, bisection
then finds the smallest one, so the next cheaper count of the same method was tried and failed.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from odespec.compile.model import ODENet
from odespec.compile.ode_block import ODEBlock, ResNetBlock
from odespec.errors import ExportError, SolverError
from odespec.solvers.config import SolverConfig
from odespec.solvers.options import MAX_STEPS
from odespec.spec.schema import CALIBRATION_METHODS, MAX_CALIBRATION_STEPS

__all__ = [
    "InputSet",
    "seeded_input_set",
    "data_input_set",
    "training_solvers",
    "reference_outputs",
    "output_error",
    "deployment_error",
    "Candidate",
    "Calibration",
    "calibrate",
    "nfe_per_forward",
    "ort_latencies",
    "render_accuracy",
    "render_report",
]

#: batch sizes of the seeded inputs: the parity check's, so both see the same inputs
SEEDED_BATCHES = (1, 7, 256)
#: latency is measured only for candidates within this factor of the chosen one's f-evaluations
#: (the others cannot be competitive, and exporting, say, euler x 4096 unrolled takes long)
LATENCY_NFE_FACTOR = 4


@dataclass(frozen=True)
class InputSet:
    """The inputs accuracy is measured on, in batches, and how to describe them in a report."""

    batches: tuple[torch.Tensor, ...]
    description: str

    @property
    def samples(self) -> int:
        """Samples over all batches."""
        return sum(int(b.shape[0]) for b in self.batches)


def seeded_input_set(input_shape: Sequence[int], *, dtype: torch.dtype, seed: int,
                     batch_sizes: Sequence[int] = SEEDED_BATCHES) -> InputSet:
    """Standard-normal inputs from ``seed``: the very batches the parity check feeds."""
    from odespec.export.parity import seeded_inputs

    batches = seeded_inputs(input_shape, dtype=dtype, batch_sizes=batch_sizes, seed=seed)
    return InputSet(tuple(batches), f"seeded random (seed {seed}), batches {', '.join(map(str, batch_sizes))}")


def data_input_set(path: Any, input_shape: Sequence[int], *, dtype: torch.dtype, batch_size: int = 256) -> InputSet:
    """Inputs read from a ``.npy``, ``.npz`` or ``.csv`` file by ``odespec run``'s readers
    (rows = samples), split into batches of ``batch_size``."""
    from pathlib import Path

    from odespec.export.onnx_export import INPUT_NAME
    from odespec.export.run import ModelInput, load_input

    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    x = load_input(path, ModelInput(INPUT_NAME, ("batch", *input_shape), np.dtype(np_dtype)))
    if x.shape[0] == 0:
        from odespec.errors import InputFileError

        raise InputFileError(f"{path}: holds no samples")
    t = torch.from_numpy(np.ascontiguousarray(x))
    batches = tuple(t[i:i + batch_size] for i in range(0, t.shape[0], batch_size))
    # the file's name only: reports and ONNX metadata must not carry machine paths
    return InputSet(batches, f"{Path(path).name} ({t.shape[0]} samples)")


def training_solvers(model: ODENet) -> list[str]:
    """Each ODE block's training solver in words, e.g. ``dopri5 rtol=1e-07 atol=1e-09``."""
    out = []
    for b in model.ode_blocks:
        s = b.spec.solver
        if isinstance(b, ResNetBlock):
            out.append(f"resnet ({len(b.dynamics)} Euler steps, own weights)")
        elif s.adaptive:
            out.append(f"{s.method} rtol={s.rtol:g} atol={s.atol:g}")
        else:
            out.append(f"{s.method} " + (f"steps={s.steps}" if s.steps is not None else f"step_size={s.step_size:g}"))
    return out


def _forward(model: torch.nn.Module, inputs: InputSet) -> list[np.ndarray]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [model(x).detach().cpu().to(torch.float64).numpy() for x in inputs.batches]
    finally:
        model.train(was_training)


def reference_outputs(model: ODENet, inputs: InputSet) -> list[np.ndarray]:
    """The model solved with its training solver (in eval mode), per batch, as float64.

    :class:`ExportError` if the training solver fails on these inputs (an adaptive solve that
    gives up, or non-finite values).
    """
    try:
        outs = _forward(model, inputs)
    except SolverError as e:
        raise ExportError(f"the training solver failed on the {inputs.description} inputs: {e}",
                          "check the inputs' scale, or the spec's solver settings") from e
    if not all(np.all(np.isfinite(y)) for y in outs):
        raise ExportError(f"the model solved with its training solver gives non-finite outputs on the "
                          f"{inputs.description} inputs")
    return outs


def output_error(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> tuple[float, float]:
    """``(max |got - want|, that / max |want|)`` over all batches; non-finite outputs give inf."""
    max_abs, scale = 0.0, 0.0
    for g, w in zip(got, want):
        g = np.asarray(g, dtype=np.float64)
        if g.shape != w.shape:
            raise ExportError(f"internal error: output shape {g.shape} != reference shape {w.shape}")
        if not np.all(np.isfinite(g)):
            return math.inf, math.inf
        max_abs = max(max_abs, float(np.abs(g - w).max(initial=0.0)))
        scale = max(scale, float(np.abs(w).max(initial=0.0)))
    return max_abs, (max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf))


def _ort_run(sess: Any, inputs: InputSet, static_batch: bool) -> list[np.ndarray]:
    """onnxruntime's outputs per batch; a graph with a fixed batch of 1 is fed sample by sample."""
    from odespec.export.onnx_export import INPUT_NAME

    outs = []
    for x in inputs.batches:
        xs = x.numpy()
        if static_batch:
            outs.append(np.concatenate([sess.run(None, {INPUT_NAME: xs[i:i + 1]})[0] for i in range(xs.shape[0])]))
        else:
            outs.append(sess.run(None, {INPUT_NAME: xs})[0])
    return outs


def deployment_error(sess: Any, model: ODENet, inputs: InputSet, *, static_batch: bool = False,
                     reference: Optional[list[np.ndarray]] = None) -> dict[str, Any]:
    """onnxruntime's output of the exported graph (``sess``) against ``model`` solved with its
    training solver, on ``inputs``. Returns the report's ``deployment_error`` entry."""
    start = time.perf_counter()
    want = reference if reference is not None else reference_outputs(model, inputs)
    max_abs, max_rel = output_error(_ort_run(sess, inputs, static_batch), want)
    return {
        "reference": training_solvers(model),
        "inputs": inputs.description,
        "samples": inputs.samples,
        "max_abs_error": max_abs,
        "max_rel_error": max_rel,
        "seconds": round(time.perf_counter() - start, 4),
    }


def nfe_per_forward(model: ODENet, method: str, steps: int) -> int:
    """f-evaluations of one forward pass of the fixed-step model (``method`` x ``steps``) over
    every ODE block; a ResNet block evaluates its own steps."""
    solver = SolverConfig.fixed(method, steps)
    return sum((b.spec if isinstance(b, ResNetBlock) else b.spec.with_solver(solver)).nfe() or 0
               for b in model.ode_blocks)


@dataclass
class Candidate:
    """One method's outcome in the search: its cheapest passing step count, or where it stopped."""

    method: str
    steps: int
    nfe: int
    error: float
    passed: bool
    #: ``chosen``, ``ok``, or why the method stopped without passing
    status: str = "ok"
    #: the error one step fewer (bisection's last failure), when the search tried it
    error_one_fewer: Optional[float] = None
    latency_ms: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        """One row of the report's candidate table."""
        return {"method": self.method, "steps": self.steps, "nfe": self.nfe, "error": _finite(self.error),
                "passed": self.passed, "status": self.status, "error_one_fewer": _finite(self.error_one_fewer),
                "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 4)}


@dataclass
class Calibration:
    """The result of :func:`calibrate`: the chosen candidate, one row per method, every
    (method, steps, error) evaluated, and the settings."""

    chosen: Candidate
    candidates: list[Candidate]
    evaluations: list[tuple[str, int, float]]
    match_tol: float
    inputs: str
    reference: list[str]
    max_steps: int
    latency_threads: int
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report's ``calibration`` entry."""
        return {
            "match_tol": self.match_tol,
            "method": self.chosen.method,
            "steps": self.chosen.steps,
            "error": _finite(self.chosen.error),
            "nfe": self.chosen.nfe,
            "inputs": self.inputs,
            "reference": self.reference,
            "max_steps": self.max_steps,
            "latency": f"onnxruntime, batch 1, {self.latency_threads} thread(s), median",
            "candidates": [c.to_dict() for c in self.candidates],
            "evaluations": [[m, n, _finite(e)] for m, n, e in self.evaluations],
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


def _finite(x: Optional[float]) -> Optional[float]:
    """JSON has no infinity; an infinite (diverged) error is reported as null."""
    return None if x is None or not math.isfinite(x) else x


def _step_cap(model: ODENet, max_steps: int) -> int:
    """Steps per interval calibration may try: ``max_steps``, less where a block has so many
    output intervals that more would exceed the solver's MAX_STEPS."""
    intervals = [len(b.spec.t) - 1 for b in model.ode_blocks if isinstance(b, ODEBlock)]
    return max(1, min([max_steps] + [MAX_STEPS // n for n in intervals]))


def _method_order(methods: Sequence[str]) -> list[str]:
    """Highest order first: the high-order methods usually win, and once one passes, the
    others stop as soon as they need more f-evaluations than it."""
    from odespec.solvers.tableaus import get_tableau

    return sorted(dict.fromkeys(methods), key=lambda m: (-get_tableau(m).order, len(get_tableau(m).b), m))


def calibrate(
    model: ODENet,
    inputs: InputSet,
    *,
    match_tol: float,
    methods: Sequence[str] = CALIBRATION_METHODS,
    max_steps: int = MAX_CALIBRATION_STEPS,
    latency: bool = True,
    latency_settings: Optional[Any] = None,
    reference: Optional[list[np.ndarray]] = None,
) -> Calibration:
    """Choose the cheapest fixed method and step count within ``match_tol`` of the training solver.

    For each method, the step count doubles from 1 until the fixed-step model's max abs error
    against the training-solver model on ``inputs`` is at most ``match_tol``, then bisection
    finds the smallest passing count. A method stops early when it would need more
    f-evaluations than the best candidate so far, or when its error levels off (the training
    solver's own error, or float rounding, is larger than ``match_tol``). Ties in f-evaluations
    go to the method with less arithmetic per step (fewer nonzero Butcher coefficients, so fewer
    Mul nodes: rk4 before rk4_38, midpoint before heun), then to the smaller error.

    ``latency_settings`` (an :class:`ExportSettings`; its method and steps are replaced) says
    how to export the candidates whose onnxruntime latency at batch 1 is measured.
    :class:`ExportError` if no method passes within ``max_steps`` steps per output interval.
    """
    from odespec.export.unroll import fixed_step_model
    from odespec.solvers.tableaus import is_adaptive

    start = time.perf_counter()
    for m in methods:
        if is_adaptive(m):
            raise ExportError(f"{m!r} is adaptive; calibration chooses among fixed-step methods",
                              f"use one of: {', '.join(CALIBRATION_METHODS)}")
    want = reference if reference is not None else reference_outputs(model, inputs)
    cap = _step_cap(model, max_steps)
    has_continuous = any(isinstance(b, ODEBlock) for b in model.ode_blocks)
    evaluations: list[tuple[str, int, float]] = []
    cache: dict[tuple[str, int], float] = {}

    def error(method: str, steps: int) -> float:
        if (method, steps) not in cache:
            try:
                got = _forward(fixed_step_model(model, method, steps), inputs)
                cache[method, steps] = output_error(got, want)[0]
            except SolverError:  # a fixed-step solve that produced non-finite values
                cache[method, steps] = math.inf
            evaluations.append((method, steps, cache[method, steps]))
        return cache[method, steps]

    rows: list[Candidate] = []
    best: Optional[Candidate] = None
    floor: Optional[tuple[str, float]] = None  # a method whose error levelled off above match_tol
    for method in _method_order(methods):
        if floor is not None:
            # Every convergent method tends to the same exact solution, so once one levels off
            # above match_tol (the training solver's own error, or float rounding, is larger),
            # the others cannot get within it either, short of luck; searching them would cost
            # thousands of steps each.
            rows.append(Candidate(method, 0, 0, math.inf, False,
                                  f"not searched: {floor[0]} levels off at {floor[1]:.2e}"))
            continue
        nfe = lambda n, m=method: nfe_per_forward(model, m, n)  # noqa: E731
        if not has_continuous:
            # no continuous ODE block: the step count changes nothing, one evaluation decides
            e = error(method, 1)
            rows.append(Candidate(method, 1, nfe(1), e, e <= match_tol, "ok" if e <= match_tol else "over tolerance"))
            break
        # the f-evaluations grow linearly in the step count: nfe(n) = fixed + n * per_step
        per_step = nfe(2) - nfe(1)
        fixed = nfe(1) - per_step
        lo, hi, status = 0, None, "over tolerance"
        n = 1
        history: list[float] = []
        while True:
            if best is not None and nfe(n) > best.nfe:
                # try the most steps that still cost no more than the best, if not tried yet
                n = min((best.nfe - fixed) // per_step, cap)
                if n <= lo:
                    status = "stopped: more f-evaluations than the best"
                    break
            e = error(method, n)
            if e <= match_tol:
                hi = n
                break
            lo = n
            history.append(e)
            if _levels_off(n, history):
                status = "stopped: error levels off"
                floor = (method, min(history))
                break
            if n >= cap:
                break
            n = min(2 * n, cap)
        if hi is None:
            e_last = error(method, lo) if lo else math.inf
            rows.append(Candidate(method, lo, nfe(lo) if lo else 0, e_last, False, status))
            continue
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if error(method, mid) <= match_tol:
                hi = mid
            else:
                lo = mid
        cand = Candidate(method, hi, nfe(hi), error(method, hi), True,
                         error_one_fewer=cache.get((method, hi - 1)) if hi > 1 else None)
        rows.append(cand)
        if best is None or _cost(cand) < _cost(best):
            best = cand
    passing = [r for r in rows if r.passed]
    if not passing:
        m, n, e = min(evaluations, key=lambda ev: ev[2])
        solvers = "; ".join(training_solvers(model))
        why = (f"the error levels off at about {floor[1]:.3g} ({floor[0]})" if floor is not None
               else f"none passed with at most {cap} steps per output interval")
        raise ExportError(
            f"calibration failed: no fixed-step method is within match_tol={match_tol:g} of the training solver "
            f"({solvers}): {why}; the closest was {m} x {n} steps, max abs error {e:.3g}",
            "a fixed-step solve converges to the exact solution, not to the training solver's approximation: "
            "raise match_tol to about the training solver's own error (set by its rtol/atol), tighten the "
            "training tolerances, or use dtype float64 where float32 rounding is the limit",
        )
    best = min(passing, key=_cost)
    best.status = "chosen"
    rows.sort(key=lambda r: (not r.passed, r.nfe if r.passed else math.inf, r.method))
    cal = Calibration(chosen=best, candidates=rows, evaluations=evaluations, match_tol=match_tol,
                      inputs=inputs.description, reference=training_solvers(model), max_steps=cap,
                      latency_threads=1)
    if latency and latency_settings is not None:
        timed = [r for r in passing if r.nfe <= LATENCY_NFE_FACTOR * best.nfe]
        if len(timed) < len(passing):
            cal.notes.append(f"latency not measured for candidates above {LATENCY_NFE_FACTOR}x the chosen "
                             "one's f-evaluations")
        _measure_latency(model, timed, latency_settings)
    cal.seconds = time.perf_counter() - start
    return cal


def _cost(c: Candidate) -> tuple[int, int, float]:
    """What "cheapest" means: f-evaluations, then the step's arithmetic, then the error."""
    from odespec.solvers.tableaus import get_tableau

    tab = get_tableau(c.method)
    terms = sum(len(row) for row in tab.a_terms) + len(tab.b_terms)
    return (c.nfe, terms, c.error)


def _levels_off(n: int, history: list[float]) -> bool:
    """At 8 steps or more, the last two doublings each cut the error by less than a factor
    1.25: the fixed-step solution has converged, to something farther than match_tol from the
    reference (a converging method of order p cuts it by about 2**p per doubling; euler by 2)."""
    if n < 8 or len(history) < 3:
        return False
    a, b, c = history[-3:]
    return math.isfinite(a) and b > 0.8 * a and c > 0.8 * b


def _measure_latency(model: ODENet, rows: list[Candidate], settings: Any) -> None:
    """Export each candidate as ``settings`` says and time it in onnxruntime at batch 1."""
    import dataclasses

    from odespec.export.onnx_export import build_onnx

    sessions = {}
    for r in rows:
        s = dataclasses.replace(settings, method=r.method, steps=r.steps)
        sessions[r.method] = ort_session_threads(build_onnx(model, s).SerializeToString(), threads=1)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    x = torch.zeros((1, *model.spec.input_shape), dtype=dtype).numpy()
    for method, ms in ort_latencies(sessions, x).items():
        next(r for r in rows if r.method == method).latency_ms = ms


def ort_session_threads(model_bytes: bytes, *, threads: int) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads and no inter-op pool
    (a fixed thread count makes latencies comparable)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def ort_latencies(sessions: dict[str, Any], x: np.ndarray, *, budget_s: float = 1.0, max_repeats: int = 50) -> dict[str, float]:
    """Median milliseconds per run of each session on ``x``, runs interleaved across the
    sessions so that machine noise hits them alike; about ``budget_s`` seconds in all."""
    from odespec.export.onnx_export import INPUT_NAME

    feeds = {INPUT_NAME: x}
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


def render_accuracy(onnx_report: dict[str, Any]) -> list[str]:
    """Text lines for ``odespec build``/``export``: the calibration table, if any, then the
    deployment error."""
    lines: list[str] = []
    cal = onnx_report.get("calibration")
    if cal:
        lines.append(f"calibration: steps chosen within match_tol {cal['match_tol']:g} of the training solver "
                     f"({'; '.join(cal['reference'])}) on {cal['inputs']}; latency: {cal['latency']}")
        head = ("method", "steps", "f-evals", "max abs error", "error at steps-1", "latency", "status")
        rows = [head]
        for c in cal["candidates"]:
            rows.append((
                c["method"], str(c["steps"]) if c["steps"] else "-", str(c["nfe"]) if c["nfe"] else "-",
                _fmt_err(c["error"]), _fmt_err(c["error_one_fewer"]) if c["error_one_fewer"] is not None else "-",
                f"{c['latency_ms']:.3f} ms" if c["latency_ms"] is not None else "-", c["status"],
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        for i, r in enumerate(rows):
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
            if i == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
    dep = onnx_report.get("deployment_error")
    if dep:
        lines.append(f"deployment: onnxruntime vs training solver ({'; '.join(dep['reference'])}): max abs error "
                     f"{_fmt_err(dep['max_abs_error'])}, relative {_fmt_err(dep['max_rel_error'])} "
                     f"(of the output's largest magnitude) on {dep['inputs']}")
    return lines


def _fmt_err(x: Optional[float]) -> str:
    return "inf" if x is None else f"{x:.2e}"


def render_report(report: dict[str, Any], onnx_path: Any, report_path: Any) -> str:
    """The text output of ``odespec build`` and ``odespec export``: the build summary
    (:func:`odespec.report.render_build`) with the weights, the calibration table and the
    deployment error added before its last line (the report's path)."""
    from odespec.report import render_build

    lines = render_build(report, onnx_path, report_path).split("\n")
    extra = []
    w = report.get("weights")
    if w:
        extra.append(f"weights: {w['file']} ({w['tensors']} tensors, sha256 {w['sha256'][:12]})")
    extra += render_accuracy(report["onnx"])
    dep = report["onnx"].get("deployment_error") or {}
    if dep.get("skipped"):
        extra.append(f"deployment: error against the training solver not measured: {dep['skipped']}")
    return "\n".join(lines[:-1] + extra + lines[-1:])
