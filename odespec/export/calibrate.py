"""Choosing the exported graph's step count: ``export.onnx.steps: auto``.

A spec's ODE blocks are trained with their own solver (often adaptive: dopri5 at some rtol/atol);
the exported graph takes a fixed number of steps of a fixed method. :func:`calibrate` finds the
cheapest fixed method and step count (fewest f-evaluations, steps x stages) whose output stays
within ``match_tol`` of the training-solver model, measured as :attr:`OutputError.max_abs
<odespec.export.metrics.OutputError.max_abs>` on an :class:`~odespec.export.inputs.InputSet`, or,
for a classifier, whose predictions agree with it on at least a given fraction of the inputs
(:class:`~odespec.export.metrics.Match`).

Without a ``match_tol``, :func:`default_match_tol` derives one from the training solvers'
tolerances: a fixed-step solve converges to the exact solution, not to the training solver's
approximation, so a tolerance below the training solver's own error fails by construction.

Calibration evaluates candidates with the PyTorch fixed-step twin (the function the graph
computes; parity bounds the difference) rather than exporting each one: an unrolled rk4 x 4096
graph would take long to build and load, while the twin costs one forward pass. Only the
candidates worth timing are exported, to measure their onnxruntime latency
(:mod:`odespec.export.latency`).

The search assumes the error falls as the step count grows, as it does once the steps resolve
the dynamics: doubling from 1 step finds a passing count, bisection then finds the smallest one,
so the next cheaper count of the same method was tried and failed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import torch

from odespec.compile.model import ODENet
from odespec.compile.ode_block import ODEBlock, ResNetBlock
from odespec.errors import ExportError, SolverError
from odespec.export.describe import training_solvers
from odespec.export.grids import calibration_threads
from odespec.export.inputs import InputSet, model_dtype
from odespec.export.metrics import Match, model_outputs, reference_outputs
from odespec.export.unroll import PerSampleEncoder, encoder_solver, takes_export_steps
from odespec.solvers.config import SolverConfig
from odespec.solvers.options import MAX_STEPS
from odespec.spec.schema import CALIBRATION_METHODS, MAX_CALIBRATION_STEPS, MAX_EXPORT_NEWTON_ITERS

if TYPE_CHECKING:  # pragma: no cover
    from odespec.export.grids import BlockGrids, GridRow
    from odespec.export.onnx_export import ExportSettings

__all__ = ["Candidate", "Calibration", "calibrate", "default_match_tol", "nfe_per_forward", "LATENCY_NFE_FACTOR",
           "TRAINING_TOL_FACTOR", "ROUNDING_ULPS"]

#: latency is measured only for candidates within this factor of the chosen one's f-evaluations
#: (the others cannot be competitive, and exporting, say, euler x 4096 unrolled takes long)
LATENCY_NFE_FACTOR = 4

#: the default ``match_tol`` of an adaptive training solver is this many times its error scale,
#: ``rtol * max |output| + atol``: the solver keeps each step's local error about that small, and
#: its distance from the exact solution (to which every fixed-step solve converges) stays of that
#: order (measured: the MNIST small ODE-Net's dopri5 at rtol = atol = 1e-3 lies 2.5e-4 from it,
#: 0.16 of the scale), so a default below it would fail by construction
TRAINING_TOL_FACTOR = 4.0
#: the smallest default ``match_tol``: float rounding, this many ulps (of the dtype) of the
#: output's largest magnitude (at least 1); the whole default when every ODE block trains
#: fixed-step (the graph then computes that very discrete map)
ROUNDING_ULPS = 1000


def nfe_per_forward(model: ODENet, method: str, steps: int, newton_iters: Optional[int] = None,
                    grids: Optional["BlockGrids"] = None) -> int:
    """f-evaluations of one forward pass of the fixed-step model (``method`` x ``steps``; an
    implicit method with ``newton_iters`` iterations and its forward-difference Jacobian) over
    every ODE block; a ResNet block evaluates its own steps. ``grids``: the ODE blocks' optimised
    grids (:mod:`odespec.export.grids`) instead of ``steps`` per output interval."""
    if grids:
        from odespec.export.grids import grid_nfe

        return grid_nfe(model, method, grids)
    solver = SolverConfig.unrolled(method, steps, newton_iters)
    blocks = sum((b.spec if isinstance(b, ResNetBlock) else b.spec.with_solver(solver)).nfe() or 0
                 for b in model.ode_blocks)
    # an ODE-RNN solves T gaps per forward pass (the graph skips the reverse pass's empty first one)
    return blocks + sum((encoder_solver(m, method, steps).nfe((0.0, 1.0)) or 0) * int(use.shape[0])
                        for m, use in zip(model, model.uses, strict=True) if isinstance(m, PerSampleEncoder) and use is not None)


@dataclass
class Candidate:
    """One method's outcome in the search: its cheapest passing step count, or where it stopped."""

    method: str
    steps: int
    nfe: int
    #: max abs error against the training-solver model (:attr:`OutputError.max_abs
    #: <odespec.export.metrics.OutputError.max_abs>`); calibrating on agreement or accuracy,
    #: 1 - agreement or 1 - accuracy
    error: float
    passed: bool
    #: ``chosen``, ``ok``, or why the method stopped without passing
    status: str = "ok"
    #: the error one step fewer (bisection's last failure), when the search tried it
    error_one_fewer: Optional[float] = None
    latency_ms: Optional[float] = None
    #: an implicit method: the Newton iterations per step (:mod:`odespec.export.newton_iters`)
    newton_iters: Optional[int] = None
    #: ``uniform`` (``steps`` per output interval) or ``optimised`` (``steps`` over each ODE
    #: block's whole span, placed by :mod:`odespec.export.grids`)
    grid: str = "uniform"
    #: an optimised grid's step points per ODE block (``None`` for a block it leaves uniform)
    grids: Optional["BlockGrids"] = None
    #: an optimised grid's error on the half of the inputs it was fitted on, and on the held-out half
    fit_error: Optional[float] = None
    heldout_error: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        """One row of the report's candidate table."""
        row = {"method": self.method, "grid": self.grid, "steps": self.steps, "nfe": self.nfe,
               "error": _finite(self.error), "passed": self.passed, "status": self.status,
               "error_one_fewer": _finite(self.error_one_fewer),
               "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 4),
               "newton_iters": self.newton_iters}
        if self.grid == "optimised":
            row.update(fit_error=_finite(self.fit_error), heldout_error=_finite(self.heldout_error),
                       points=grid_points(self.grids))
        return row


def grid_points(grids: Optional["BlockGrids"]) -> Optional[list[Optional[list[float]]]]:
    """Each ODE block's step points (``None``: a uniform block), for reports and metadata."""
    return None if grids is None else [None if g is None else g.to_list() for g in grids]


@dataclass
class Calibration:
    """The result of :func:`calibrate`: the chosen candidate, one row per method, every
    (method, steps, error) evaluated, and the settings."""

    chosen: Candidate
    candidates: list[Candidate]
    evaluations: list[tuple[str, int, float]]
    #: the largest max abs error accepted; ``None`` when calibrating on agreement or accuracy
    match_tol: Optional[float]
    inputs: str
    reference: list[str]
    max_steps: int
    #: how latencies were measured, in words (:func:`odespec.export.latency.latency_description`)
    latency: str
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: the criterion (max abs error, agreement or accuracy), its value and where the value came from
    match: Optional[Match] = None
    #: implicit methods: (method, steps, iterations, error) of the Newton iteration search
    newton_evaluations: list[tuple[str, int, int, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report's ``calibration`` entry."""
        match = self.match or Match("max_abs", self.match_tol or 0.0)
        return {
            "match_tol": self.match_tol,
            "match": {"criterion": match.kind, "value": match.value, "source": match.source},
            "method": self.chosen.method,
            "steps": self.chosen.steps,
            "grid": self.chosen.grid,
            **({"points": grid_points(self.chosen.grids), "heldout_error": _finite(self.chosen.heldout_error)}
               if self.chosen.grid == "optimised" else {}),
            "error": _finite(self.chosen.error),
            "nfe": self.chosen.nfe,
            "newton_iters": self.chosen.newton_iters,
            "inputs": self.inputs,
            "reference": self.reference,
            "max_steps": self.max_steps,
            "latency": self.latency,
            "candidates": [c.to_dict() for c in self.candidates],
            "evaluations": [[m, n, _finite(e)] for m, n, e in self.evaluations],
            "newton_evaluations": [[m, n, k, _finite(e)] for m, n, k, e in self.newton_evaluations],
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


def _finite(x: Optional[float]) -> Optional[float]:
    """JSON has no infinity; an infinite (diverged) error is reported as null."""
    return None if x is None or not math.isfinite(x) else x


def calibrate(
    model: ODENet,
    inputs: InputSet,
    *,
    match_tol: Optional[float] = None,
    agreement: Optional[float] = None,
    accuracy: Optional[float] = None,
    methods: Sequence[str] = CALIBRATION_METHODS,
    max_steps: int = MAX_CALIBRATION_STEPS,
    latency: bool = True,
    latency_settings: Optional["ExportSettings"] = None,
    reference: Optional[list[np.ndarray]] = None,
    newton_iters: Optional[int] = None,
    grid: str = "uniform",
) -> Calibration:
    """Choose the cheapest fixed method and step count within ``match_tol`` of the training solver
    (``None``: :func:`default_match_tol`), or, with ``agreement``, whose predicted classes agree
    with the training-solver model's on at least that fraction of ``inputs``, or, with
    ``accuracy``, whose predicted classes are the labels of at least that fraction of
    ``inputs`` (:attr:`InputSet.labels <odespec.export.inputs.InputSet.labels>`; one criterion).

    For each method, the step count doubles from 1 until the fixed-step model's max abs error
    against the training-solver model on ``inputs`` is at most ``match_tol``, then bisection
    finds the smallest passing count. A method stops early when it would need more
    f-evaluations than the best candidate so far, or when its error levels off (the training
    solver's own error, or float rounding, is larger than ``match_tol``). Ties in f-evaluations
    go to the method with less arithmetic per step (fewer nonzero Butcher coefficients, so fewer
    Mul nodes: rk4 before rk4_38, midpoint before heun), then to the smaller error.

    An implicit method's step count is searched with ``newton_iters`` Newton iterations per step
    (None: :data:`~odespec.spec.schema.MAX_EXPORT_NEWTON_ITERS`, then the fewest iterations that
    pass at that step count, :func:`odespec.export.newton_iters.fewest_iterations`).
    ``grid``: ``uniform`` searches uniform grids only; ``optimised`` also grids whose step
    points are placed for the model (:func:`odespec.export.grids.search_grids`; an
    :class:`ExportError` when the model has no block they apply to); ``auto`` as ``optimised``
    where they apply, else uniform with a note. An optimised grid passes only if its error on
    the held-out half of ``inputs`` passes too.

    ``reference``: the training-solver model's outputs on ``inputs``, if already computed.
    ``latency_settings`` (its method and steps are replaced) says how to export the candidates
    whose onnxruntime latency at batch 1 is measured; ``latency=False`` skips that.
    :class:`ExportError` if no method passes within ``max_steps`` steps per output interval.
    """
    from odespec.export.latency import latency_description

    start = time.perf_counter()
    _refuse_adaptive(methods)
    want = reference if reference is not None else reference_outputs(model, inputs)
    match = _match(model, inputs, want, match_tol, agreement, accuracy)
    search = _Search(model, inputs, want, match.tolerance, _step_cap(model, max_steps), match=match,
                     newton_iters=newton_iters)
    notes: list[str] = []
    with calibration_threads(model, max(int(b.shape[0]) for b in inputs.batches)):
        rows = _search_methods(search, methods)
        if grid != "uniform":
            rows += _grid_candidates(search, methods, grid, notes)
        passing = [r for r in rows if r.passed]  # in search order, which the latency runs follow
    chosen = _choose(search, rows)
    cal = Calibration(chosen=chosen, candidates=rows, evaluations=search.evaluations,
                      match_tol=match.value if match.kind == "max_abs" else None,
                      inputs=inputs.description, reference=training_solvers(model), max_steps=search.cap,
                      latency=latency_description(), match=match, newton_evaluations=search.newton_evaluations,
                      notes=notes)
    if latency and latency_settings is not None:
        _add_latencies(cal, passing, model, latency_settings)
    cal.seconds = time.perf_counter() - start
    return cal


def _match(model: ODENet, inputs: InputSet, want: Sequence[np.ndarray], match_tol: Optional[float],
           agreement: Optional[float], accuracy: Optional[float]) -> Match:
    """The one criterion given (none: :func:`default_match_tol`). Accuracy needs labelled inputs,
    and a threshold the training-solver model itself reaches (else no graph could pass, and the
    search would try every method up to its step cap to find that out)."""
    given = [m for m in (Match("max_abs", match_tol) if match_tol is not None else None,
                         Match("agreement", agreement) if agreement is not None else None,
                         Match("accuracy", accuracy) if accuracy is not None else None) if m is not None]
    if len(given) > 1:
        raise ExportError(f"calibrate on one criterion, not {' and '.join(m.kind for m in given)}")
    if not given:
        return default_match_tol(model, want)
    match = given[0]
    if match.kind == "accuracy":
        if not inputs.labels:
            raise ExportError(f"calibrating on accuracy needs labelled calibration data; the {inputs.description} "
                              "inputs have no labels",
                              "name an .npz with the inputs as x and their class labels as y (export.onnx."
                              "calibration_data in the spec, or --calibration-data FILE.npz), or calibrate on match: "
                              "{agreement: A} with the training-solver model's predictions")
        reached = 1.0 - Match("accuracy", 0.0).error(want, want, inputs.labels)
        if reached < match.value:
            raise ExportError(f"calibrating on accuracy {match.value:g}: the model solved with its training solver "
                              f"reaches only {reached:.4g} on the {inputs.description} inputs, and a fixed-step graph "
                              "approximates that model",
                              f"ask for at most {reached:.4g}, or calibrate on match: {{agreement: A}}")
    return match
def _grid_candidates(search: "_Search", methods: Sequence[str], grid: str, notes: list[str]) -> list[Candidate]:
    """The optimised-grid rows (:func:`odespec.export.grids.search_grids`), each cheaper than the
    best uniform candidate; none, with a note (``grid: auto``) or an :class:`ExportError`
    (``grid: optimised``), where the model has no block they apply to."""
    from odespec.export.grids import GRID_WORK_MACS, dynamics_macs, grid_eligibility, search_grids
    from odespec.solvers.tableaus import get_tableau

    blocks, why = grid_eligibility(search.model)
    if why is None and search.inputs.series:
        why = "the model reads series inputs"
    if why is None and search.match.kind == "accuracy":
        why = "they are fitted on max abs error or agreement, not on accuracy"
    if why is None and any(get_tableau(m).implicit for m in methods):
        why = "an implicit method's steps are not placed by the grid search"
    if why is not None:
        if grid == "optimised":
            raise ExportError(f"grid: optimised does not apply to this model: {why}",
                              "use grid: uniform (or auto, which falls back to uniform grids)")
        notes.append(f"optimised grids not searched: {why}")
        return []
    budget = search.best.nfe if search.best is not None else math.inf
    # the training solver's own method joins the search unless the methods were narrowed (a
    # written method is the only one searched)
    own = set(methods) >= set(CALIBRATION_METHODS)
    # the refinements' work in sample f-evaluations: GRID_WORK_MACS over one's multiply-accumulates
    work = GRID_WORK_MACS / dynamics_macs(search.model, blocks)
    rows = search_grids(search.model, search.inputs, search.want, search.match, methods, budget, blocks,
                        training_method=own, work_budget=work)
    # a method whose grids were never refined has no numbers for the table: one note says why
    skipped = [r for r in rows if r.fit is None]
    for status in dict.fromkeys(r.status for r in skipped):
        names = ", ".join(r.method for r in skipped if r.status == status)
        notes.append(f"optimised grids of {names}: {status}")
    return [_grid_candidate(r) for r in rows if r.fit is not None]


def _grid_candidate(row: "GridRow") -> Candidate:
    fit = row.fit
    assert fit is not None  # rows without a refined grid become notes
    steps = max(g.steps for g in fit.grids if g is not None)
    return Candidate(row.method, steps, fit.nfe, fit.error, row.passed, row.status, grid="optimised", grids=fit.grids,
                     fit_error=fit.fit_error, heldout_error=fit.heldout_error)


def default_match_tol(model: ODENet, reference: Sequence[np.ndarray]) -> Match:
    """The ``match_tol`` when none is given, from the training solvers (ODE blocks and ODE-RNN
    encoders) and the reference outputs' largest magnitude ``scale``: the largest of
    :data:`TRAINING_TOL_FACTOR` x ``(rtol * scale + atol)`` over the adaptive solvers, and
    :data:`ROUNDING_ULPS` ulps of ``max(scale, 1)`` (a fixed-step trained block is reproduced
    exactly, up to float rounding)."""
    scale = max((float(np.abs(y).max(initial=0.0)) for y in reference), default=0.0)
    eps = float(torch.finfo(model_dtype(model)).eps)
    tol, why = ROUNDING_ULPS * eps * max(scale, 1.0), f"float rounding, {ROUNDING_ULPS} ulps of max |output| {scale:.3g}"
    for solver in _training_solver_configs(model):
        if solver.adaptive and TRAINING_TOL_FACTOR * (solver.rtol * scale + solver.atol) > tol:
            tol = TRAINING_TOL_FACTOR * (solver.rtol * scale + solver.atol)
            why = (f"{TRAINING_TOL_FACTOR:g} x (rtol {solver.rtol:g} x max |output| {scale:.3g} + atol "
                   f"{solver.atol:g}) of the training solver {solver.method}")
    return Match("max_abs", float(f"{tol:.2g}"), f"derived: {why}")


def _training_solver_configs(model: ODENet) -> list[SolverConfig]:
    """The solvers the model trains with: each ODE block's and ODE-RNN encoder's (a ResNet
    block has none)."""
    from odespec.compile.ode_block import BlockBase

    return [m.solver if isinstance(m, PerSampleEncoder) else m.spec.solver for m in model
            if isinstance(m, PerSampleEncoder) or (isinstance(m, BlockBase) and not isinstance(m, ResNetBlock))]


def _refuse_adaptive(methods: Sequence[str]) -> None:
    from odespec.solvers.tableaus import is_adaptive

    for m in methods:
        if is_adaptive(m):
            raise ExportError(f"{m!r} is adaptive; calibration chooses among fixed-step methods",
                              f"use one of: {', '.join(CALIBRATION_METHODS)}")


def _step_cap(model: ODENet, max_steps: int) -> int:
    """Steps per interval calibration may try: ``max_steps``, less where a block has so many
    output intervals that more would exceed the solver's MAX_STEPS."""
    intervals = [b.spec.query_times if b.spec.query else len(b.spec.t) - 1
                 for b in model.ode_blocks if isinstance(b, ODEBlock)]
    # an ODE-RNN taking the export's steps solves a gap before each of its T slots, and one after
    # them when it runs backwards
    intervals += [int(use.shape[0]) + 1 for m, use in zip(model, model.uses, strict=True)
                  if isinstance(m, PerSampleEncoder) and use is not None and takes_export_steps(m)]
    return max(1, min([max_steps] + [MAX_STEPS // n for n in intervals if n > 0]))


def _method_order(methods: Sequence[str]) -> list[str]:
    """Highest order first: the high-order methods usually win, and once one passes, the
    others stop as soon as they need more f-evaluations than it."""
    from odespec.solvers.tableaus import get_tableau

    return sorted(dict.fromkeys(methods), key=lambda m: (-get_tableau(m).order, len(get_tableau(m).b), m))


@dataclass
class _Search:
    """What the search over the methods shares: the twin's errors (each (method, steps)
    evaluated once, in order), the best passing candidate so far, and the error floor."""

    model: ODENet
    inputs: InputSet
    want: list[np.ndarray]
    #: the largest error that passes (:attr:`Match.tolerance <odespec.export.metrics.Match.tolerance>`)
    match_tol: float
    #: steps per output interval the search may try
    cap: int
    #: what the error measures (max abs error, 1 - agreement or 1 - accuracy)
    match: Match = Match("max_abs", 0.0)
    evaluations: list[tuple[str, int, float]] = field(default_factory=list)
    errors: dict[tuple[str, int], float] = field(default_factory=dict)
    best: Optional[Candidate] = None
    #: a method whose error levelled off above match_tol, and the smallest error it reached
    floor: Optional[tuple[str, float]] = None
    #: implicit methods: the Newton iterations given (None: searched)
    newton_iters: Optional[int] = None
    newton_evaluations: list[tuple[str, int, int, float]] = field(default_factory=list)

    def iters(self, method: str) -> Optional[int]:
        """The Newton iterations the step search evaluates ``method`` with (explicit: None)."""
        from odespec.solvers.tableaus import get_tableau

        if not get_tableau(method).implicit:
            return None
        return self.newton_iters if self.newton_iters is not None else MAX_EXPORT_NEWTON_ITERS

    def newton_error(self, method: str, steps: int, iters: int) -> float:
        """The twin's error with ``iters`` Newton iterations per step (recorded)."""
        e = self._twin_error(method, steps, iters)
        self.newton_evaluations.append((method, steps, iters, e))
        return e

    def error(self, method: str, steps: int) -> float:
        """The fixed-step twin's error (recorded, each ``(method, steps)`` evaluated once)."""
        if (method, steps) not in self.errors:
            self.errors[method, steps] = self._twin_error(method, steps, self.iters(method))
            self.evaluations.append((method, steps, self.errors[method, steps]))
        return self.errors[method, steps]

    def _twin_error(self, method: str, steps: int, iters: Optional[int]) -> float:
        """:meth:`Match.error <odespec.export.metrics.Match.error>` of the fixed-step twin
        (``iters`` Newton iterations per step for an implicit method); a solve that produced
        non-finite values: inf."""
        from odespec.export.unroll import fixed_step_model

        try:
            got = model_outputs(fixed_step_model(self.model, method, steps, iters), self.inputs)
        except SolverError:
            return math.inf
        return self.match.error(got, self.want, self.inputs.labels)

    def nfe(self, method: str, steps: int) -> int:
        """f-evaluations per forward of ``method`` x ``steps``."""
        return nfe_per_forward(self.model, method, steps, self.iters(method))


def _search_methods(search: _Search, methods: Sequence[str]) -> list[Candidate]:
    """One candidate row per method, highest order first (:func:`_method_order`)."""
    rows: list[Candidate] = []
    continuous = any(isinstance(b, ODEBlock) for b in search.model.ode_blocks)
    trained = search.model.spec.training_steps
    if continuous and trained is not None and trained[0] in methods and trained[1] <= search.cap:
        # a model trained fixed-step is that discrete map: its own method and step count is the
        # first candidate (doubling from 1 would never try a count such as 3), and the other
        # methods stop where they would cost more
        m, n = trained
        if search.error(m, n) <= search.match_tol:
            search.best = Candidate(m, n, search.nfe(m, n), search.error(m, n), True)
    for method in _method_order(methods):
        if search.floor is not None:
            # Every convergent method tends to the same exact solution, so once one levels off
            # above match_tol (the training solver's own error, or float rounding, is larger),
            # the others cannot get within it either, short of luck; searching them would cost
            # thousands of steps each.
            rows.append(Candidate(method, 0, 0, math.inf, False,
                                  f"not searched: {search.floor[0]} levels off at {search.floor[1]:.2e}"))
            continue
        if not continuous:
            # no continuous ODE block: the step count changes nothing, one evaluation decides
            e = search.error(method, 1)
            passed = e <= search.match_tol
            rows.append(Candidate(method, 1, search.nfe(method, 1), e, passed, "ok" if passed else "over tolerance"))
            break
        row = _search_method(search, method)
        if row.passed and search.iters(method) is not None:
            _fewest_iterations(search, row)
        rows.append(row)
        if row.passed and (search.best is None or _cost(row) < _cost(search.best)):
            search.best = row
    return rows


def _search_method(search: _Search, method: str) -> Candidate:
    """``method``'s cheapest passing step count (doubling, then bisection), or where it stopped."""
    lo, hi, status = _double(search, method)
    if hi is None:
        e_last = search.error(method, lo) if lo else math.inf
        return Candidate(method, lo, search.nfe(method, lo) if lo else 0, e_last, False, status)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if search.error(method, mid) <= search.match_tol:
            hi = mid
        else:
            lo = mid
    return Candidate(method, hi, search.nfe(method, hi), search.error(method, hi), True,
                     error_one_fewer=search.errors.get((method, hi - 1)) if hi > 1 else None)


def _fewest_iterations(search: _Search, row: Candidate) -> None:
    """An implicit method's passing ``row``: its Newton iterations, the given count or the
    fewest that pass at its step count, with the cost and error they give."""
    from odespec.export.newton_iters import fewest_iterations

    iters = search.iters(row.method)
    assert iters is not None
    if search.newton_iters is None:
        found, _ = fewest_iterations(lambda k: search.newton_error(row.method, row.steps, k), search.match_tol, iters)
        if found is not None:  # the step search passed with `iters`, so one count passes
            iters = found
            row.error = search.newton_evaluations[-1][3]
    row.newton_iters = iters
    row.nfe = nfe_per_forward(search.model, row.method, row.steps, iters)


def _double(search: _Search, method: str) -> tuple[int, Optional[int], str]:
    """Double the step count from 1 until the error passes: ``(lo, hi, status)`` with ``lo``
    the largest failing count tried (0: none), ``hi`` the passing one (``None``: none, and
    ``status`` says why the doubling stopped). Records a levelling-off in ``search.floor``."""
    # the f-evaluations grow linearly in the step count: nfe(n) = fixed + n * per_step
    per_step = search.nfe(method, 2) - search.nfe(method, 1)
    fixed = search.nfe(method, 1) - per_step
    lo, n = 0, 1
    history: list[float] = []
    while True:
        best = search.best
        if best is not None and search.nfe(method, n) > best.nfe:
            # try the most steps that still cost no more than the best, if not tried yet
            n = min((best.nfe - fixed) // per_step, search.cap)
            if n <= lo:
                return lo, None, "stopped: more f-evaluations than the best"
        e = search.error(method, n)
        if e <= search.match_tol:
            return lo, n, "ok"
        lo = n
        history.append(e)
        if _levels_off(n, history):
            search.floor = (method, min(history))
            return lo, None, "stopped: error levels off"
        if n >= search.cap:
            return lo, None, "over tolerance"
        n = min(2 * n, search.cap)


def _levels_off(n: int, history: list[float]) -> bool:
    """At 8 steps or more, the last two doublings each cut the error by less than a factor
    1.25: the fixed-step solution has converged, to something farther than match_tol from the
    reference (a converging method of order p cuts it by about 2**p per doubling; euler by 2)."""
    if n < 8 or len(history) < 3:
        return False
    a, b, c = history[-3:]
    return math.isfinite(a) and b > 0.8 * a and c > 0.8 * b


def _cost(c: Candidate) -> tuple[int, int, float]:
    """What "cheapest" means: f-evaluations, then the step's arithmetic, then the error."""
    from odespec.solvers.tableaus import get_tableau

    tab = get_tableau(c.method)
    terms = sum(len(row) for row in tab.a_terms) + len(tab.b_terms)
    return (c.nfe, terms, c.error)


def _choose(search: _Search, rows: list[Candidate]) -> Candidate:
    """The cheapest passing row, marked ``chosen``; ``rows`` sorted passing first, by cost.
    :class:`ExportError` when none passed."""
    passing = [r for r in rows if r.passed]
    if not passing:
        raise _no_candidate_error(search)
    best = min(passing, key=_cost)
    best.status = "chosen"
    rows.sort(key=lambda r: (not r.passed, r.nfe if r.passed else math.inf, r.grid, r.method))
    return best


def _no_candidate_error(search: _Search) -> ExportError:
    m, n, e = min(search.evaluations, key=lambda ev: ev[2])
    solvers = "; ".join(training_solvers(search.model))
    why = (f"the error levels off at about {search.floor[1]:.3g} ({search.floor[0]})" if search.floor is not None
           else f"none passed with at most {search.cap} steps per output interval")
    criterion = (f"match_tol={search.match_tol:g}" if search.match.kind == "max_abs"
                 else f"{search.match.kind} {search.match.value:g}")
    closest = (f"max abs error {e:.3g}" if search.match.kind == "max_abs" else f"{search.match.kind} {1 - e:.4g}")
    return ExportError(
        f"calibration failed: no fixed-step method is within {criterion} of the training solver "
        f"({solvers}): {why}; the closest was {m} x {n} steps, {closest}",
        "a fixed-step solve converges to the exact solution, not to the training solver's approximation: "
        "raise match_tol (or lower the agreement or accuracy) to about the training solver's own error (set by its "
        "rtol/atol), tighten the training tolerances, or use dtype float64 where float32 rounding is the limit",
    )


def _add_latencies(cal: Calibration, passing: list[Candidate], model: ODENet, settings: "ExportSettings") -> None:
    """Time the ``passing`` candidates (uniform and optimised grids) within
    :data:`LATENCY_NFE_FACTOR` of the chosen one's f-evaluations, exported as ``settings`` says
    with each candidate's method, steps, step points and Newton iterations."""
    from odespec.export.latency import export_latencies

    timed = [r for r in passing if r.nfe <= LATENCY_NFE_FACTOR * cal.chosen.nfe]
    if len(timed) < len(passing):
        cal.notes.append(f"latency not measured for candidates above {LATENCY_NFE_FACTOR}x the chosen "
                         "one's f-evaluations")
    variants = {str(i): dataclasses.replace(settings, method=r.method, steps=r.steps, grids=r.grids or (),
                                            newton_iters=settings.newton_iters if r.newton_iters is None
                                            else r.newton_iters)
                for i, r in enumerate(timed)}
    for label, ms in export_latencies(model, variants).items():
        timed[int(label)].latency_ms = ms
