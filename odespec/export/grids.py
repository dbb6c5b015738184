"""Non-uniform calibrated grids: fixed-step grids whose step points are placed for the model.

A uniform grid spends its steps evenly, while the trained dynamics are usually fast in some
stretches of a block's span and slow in others; the adaptive training solver's accepted steps
say where. :func:`search_grids` seeds an ``N``-step grid per ODE block from the density of
those steps (:func:`seed_grid`), refines the step points by minimising the calibration error of
the fixed-step twin on part of the calibration inputs (gradient descent through the twin, the
points parameterised as softmax widths so that they stay ordered and span the block), and
accepts a grid only if its error on the held-out rest also passes.

:class:`GridBlock` is the twin of an ODE block solved on a grid: it walks the grid with
:func:`~odespec.solvers.grid_solve.grid_solve`, the very walk the ONNX exporter lays into the
graph, so the graph computes the twin's function.

Which blocks take a grid: continuous ODE blocks with fixed output times, trained with an
adaptive solver (a block trained fixed-step is that discrete map, reproduced exactly by its own
uniform grid). A model with a ``t: query`` block, an ODE-RNN encoder or a ResNet block keeps
uniform grids (:func:`grid_eligibility`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from odespec.compile.model import ODENet
from odespec.compile.ode_block import BlockBase, ODEBlock
from odespec.errors import SolverError
from odespec.export.inputs import InputSet
from odespec.export.metrics import Match, model_outputs, one_torch_thread
from odespec.solvers.grid import StepGrid
from odespec.solvers.grid_solve import grid_solve
from odespec.solvers.tableau import ButcherTableau

__all__ = ["BlockGrids", "GridBlock", "GridFit", "grid_eligibility", "grid_model", "grid_nfe", "seed_grid",
           "record_steps", "split_inputs", "fit_grid", "OPTIMISE_ITERATIONS", "FIT_SAMPLES", "UNIFORM_MIX"]

#: one grid per ODE block of the model (``model.ode_blocks`` order); ``None``: the block keeps
#: the export's uniform grid
BlockGrids = tuple[Optional[StepGrid], ...]

#: Adam iterations of one grid's refinement at most (it stops earlier once the fit passes with
#: a margin); measured on circles_anode and ode_demo_train, the error stops falling well before
OPTIMISE_ITERATIONS = 40
#: the worst samples of the fitting half the gradient steps use (the fit error is measured on all)
FIT_SAMPLES = 128
#: the seed's step density is this fraction uniform: a stretch where the adaptive solver took
#: no step still gets some
UNIFORM_MIX = 0.2
#: the max abs surrogate is this p-norm of the errors (a smooth stand-in for the max)
_P_NORM = 8.0
#: a fit stops early once its error is at most this fraction of the tolerance (room for the
#: held-out half)
_EARLY_FRACTION = 0.5
#: the narrowest step an optimised grid may take, as a fraction of the span's mean step
_MIN_WIDTH = 1e-3
#: iterations between measurements on the whole fitting half (which choose the worst samples)
_REFRESH = 10
#: Adam's step on the log step widths
_LEARNING_RATE = 0.08
#: a refinement gives up when, after this many iterations, its fit error is still above
#: :data:`_HOPELESS_FACTOR` x the tolerance (agreement: the allowed disagreement plus
#: :data:`SEED_AGREEMENT_SLACK` / 2): it would not pass within the iterations left
_HOPELESS_AFTER = 20
_HOPELESS_FACTOR = 3.0


#: a calibration whose largest batch of ODE states has at most this many numbers runs on one
#: thread: torch's intra-op threads cost more than they save on such small tensors, and on a
#: busy 2-core machine they made the search ~4x slower (41 ms against 11 ms a refinement step)
SMALL_STATE_NUMBERS = 1 << 16


@contextlib.contextmanager
def calibration_threads(model: ODENet, samples: int) -> Iterator[None]:
    """One torch thread while calibrating a model whose ODE states are small
    (:data:`SMALL_STATE_NUMBERS` numbers in a batch of ``samples``), else as it is."""
    largest = max((math.prod(b.spec.state_shape) for b in model.ode_blocks), default=0)
    with one_torch_thread(largest * samples <= SMALL_STATE_NUMBERS):
        yield


def _tensor_combine(base: Optional[torch.Tensor], h: Any, terms: Sequence[tuple[Any, torch.Tensor]]) -> torch.Tensor:
    """``base + h * sum(c * k)`` with plain tensor arithmetic: the coefficients may be 0-d
    tensors (Hermite weights of step points being optimised). With a float step and float
    coefficients, the arithmetic the ONNX graph does (:meth:`GraphBuilder.combine
    <odespec.export.graph.GraphBuilder.combine>`): each term times the constant ``h * c``, then
    the sum in order, so that the twin rounds as the graph does (summed another way, dopri5's
    seven-term combinations drifted 1.5e-5 from onnxruntime on logits of magnitude 7)."""
    if type(h) is float and all(type(c) is float for c, _ in terms):
        parts = [] if base is None else [base]
        parts += [k if float(h) * c == 1.0 else k * (float(h) * c) for c, k in terms]
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        return out
    acc = terms[0][0] * terms[0][1]
    for c, k in terms[1:]:
        acc = acc + c * k
    acc = acc * h if not (isinstance(h, float) and h == 1.0) else acc
    return acc if base is None else base + acc


class GridBlock(BlockBase):
    """An ODE block solved with ``tableau`` on the step points ``points`` (floats, or a 1-D tensor
    the grid search differentiates through), sharing ``block``'s dynamics network."""

    def __init__(self, block: ODEBlock, tableau: ButcherTableau, points: Any):
        super().__init__(block.spec)
        self.dynamics = block.dynamics
        self.t = block.t
        self.tableau = tableau
        self.points = points
        self.times = [float(x) for x in block.spec.t]
        self.train(block.training)

    def grid(self) -> StepGrid:
        """The current points as a :class:`StepGrid`."""
        pts = self.points.detach().tolist() if isinstance(self.points, torch.Tensor) else list(self.points)
        # the ends are the block's first and last times exactly (a float32 tensor rounds them)
        return StepGrid((self.times[0], *(float(p) for p in pts[1:-1]), self.times[-1]))

    def solve(self, y0: torch.Tensor, query_times: Optional[torch.Tensor] = None) -> torch.Tensor:
        assert query_times is None  # grid_eligibility keeps t: query blocks uniform
        walk = self.grid().walk(self.times)
        pts = list(self.points.unbind()) if isinstance(self.points, torch.Tensor) else list(self.points)
        dyn = self.dynamics

        def f(t: Any, y: torch.Tensor) -> torch.Tensor:
            return dyn(t if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=y.dtype), y)

        return torch.stack(grid_solve(f, y0, self.times, pts, walk, self.tableau, _tensor_combine))

    def extra_repr(self) -> str:
        return f"grid of {len(self.points) - 1} steps, method={self.tableau.name}"


def dynamics_macs(model: ODENet, blocks: Sequence[int]) -> float:
    """Multiply-accumulates of one f-evaluation of one sample, the largest over ``blocks``
    (torch's FLOP counter on a batch of one, halved)."""
    from torch.utils.flop_counter import FlopCounterMode

    dtype = next(model.parameters()).dtype
    most = 0.0
    for i in blocks:
        block = model.ode_blocks[i]
        assert isinstance(block, ODEBlock)  # grid_eligibility: every block a continuous one
        y = torch.zeros((1, *block.spec.state_shape), dtype=dtype)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            block.dynamics(torch.zeros((), dtype=dtype), y)
        most = max(most, counter.get_total_flops() / 2)
    return max(most, 1.0)


def grid_eligibility(model: ODENet) -> tuple[list[int], Optional[str]]:
    """The indices (in ``model.ode_blocks``) of the blocks an optimised grid applies to, and why
    none does (``None`` when some do)."""
    from odespec.export.unroll import PerSampleEncoder

    if any(isinstance(m, PerSampleEncoder) for m in model):
        return [], "the model has an ODE-RNN encoder (its solves follow each sample's own times)"
    blocks = model.ode_blocks
    if any(getattr(b.spec, "query", False) for b in blocks):
        return [], "the model has a t: query block (its solves follow each sample's own times)"
    if any(not isinstance(b, ODEBlock) for b in blocks):
        return [], "the model has a ResNet block (its steps are its layers)"
    eligible = [i for i, b in enumerate(blocks) if b.spec.solver.adaptive]
    if not eligible:
        return [], "no ODE block trains with an adaptive solver (a fixed-step block is reproduced by its own grid)"
    if len(eligible) < len(blocks):
        return [], "some ODE blocks train fixed-step (they are reproduced by their own uniform grid)"
    return eligible, None


def grid_model(model: ODENet, method: str, grids: BlockGrids | Sequence[Any]) -> ODENet:
    """The fixed-step twin of ``model`` whose ODE blocks are solved with ``method`` on
    ``grids`` (one per block: a :class:`StepGrid`, or a 1-D tensor of points). Weights are
    shared with ``model``."""
    from odespec.solvers.tableaus import get_tableau

    tableau = get_tableau(method)
    blocks = {id(b): g for b, g in zip(model.ode_blocks, grids, strict=True)}
    modules = []
    for m in model:
        g = blocks.get(id(m))
        if g is None:
            modules.append(m)
        else:
            assert isinstance(m, ODEBlock)
            modules.append(GridBlock(m, tableau, g.points if isinstance(g, StepGrid) else g))
    out = ODENet(model.spec, modules)
    out.train(model.training)
    return out


def grid_nfe(model: ODENet, method: str, grids: BlockGrids) -> int:
    """f-evaluations of one forward pass of :func:`grid_model`."""
    from odespec.solvers.tableaus import get_tableau

    tableau = get_tableau(method)
    return sum(g.nfe([float(x) for x in b.spec.t], tableau) for b, g in zip(model.ode_blocks, grids, strict=True)
               if g is not None)


# -- seeding from the adaptive solver's steps ----------------------------------------------------------


def record_steps(model: ODENet, inputs: InputSet, blocks: Sequence[int]) -> list[list[tuple[float, float]]]:
    """The accepted steps ``(t0, h)`` of the training solver in each of ``blocks`` (indices in
    ``model.ode_blocks``), over all batches of ``inputs``, read with the solver's
    ``callback_accept_step``."""
    steps: list[list[tuple[float, float]]] = [[] for _ in blocks]
    dyns = [model.ode_blocks[i].dynamics for i in blocks]

    def recorder(k: int) -> Callable[[Any, Any, Any], None]:
        def accept(t0: Any, y0: Any, dt: Any) -> None:
            steps[k].append((float(t0), float(dt)))
        return accept

    try:
        for k, d in enumerate(dyns):
            object.__setattr__(d, "callback_accept_step", recorder(k))
        model_outputs(model, inputs)
    finally:
        for d in dyns:
            if "callback_accept_step" in d.__dict__:
                object.__delattr__(d, "callback_accept_step")
    return steps


def seed_grid(start: float, stop: float, steps: Sequence[tuple[float, float]], n: int) -> StepGrid:
    """``n`` steps from ``start`` to ``stop`` placed by the density of the adaptive ``steps``
    (``(t0, h)``; density ``1 / |h|`` over each step), mixed with :data:`UNIFORM_MIX` of a
    uniform density: step ``k`` ends where the cumulative density reaches ``k / n``."""
    span = stop - start
    edges = np.linspace(0.0, 1.0, 513)
    dens = np.zeros(len(edges) - 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    for t0, h in steps:
        if h == 0.0:
            continue
        a, b = sorted(((t0 - start) / span, (t0 + h - start) / span))
        dens[(centres >= a) & (centres < b)] += 1.0 / abs(h / span)
    total = dens.sum()
    dens = (1 - UNIFORM_MIX) * dens / total + UNIFORM_MIX / len(dens) if total > 0 else np.full(len(dens), 1 / len(dens))
    cdf = np.concatenate([[0.0], np.cumsum(dens)])
    cdf /= cdf[-1]
    cuts = np.interp(np.arange(1, n) / n, cdf, edges)
    fractions = np.diff(np.concatenate([[0.0], cuts, [1.0]]))
    return StepGrid.from_widths(start, stop, np.maximum(fractions, 1e-6).tolist())


# -- fitting and the held-out check ---------------------------------------------------------------------


#: the halves' batches (their references are solved batch by batch, as calibration's are)
HALF_BATCH = 256


def split_inputs(model: ODENet, inputs: InputSet) -> tuple[InputSet, list[np.ndarray], InputSet, list[np.ndarray]]:
    """The calibration inputs halved: every other sample (of all batches, in order) for
    fitting, the rest held out; each half with its own reference outputs, the training solver
    run on that half alone. An adaptive solver's steps follow the batch it solves, so a
    reference shared with the fitting samples would hand the held-out half the very steps the
    grid was fitted to (on circles_anode that hid a 1.2e-2 error on fresh points behind a
    held-out 9.3e-3)."""
    from odespec.export.metrics import reference_outputs

    parts = []
    for offset, name in ((0, "fit"), (1, "held-out")):
        half = inputs.subset(np.arange(offset, inputs.samples, 2), f"{inputs.description}, {name} half", HALF_BATCH)
        parts.append((half, reference_outputs(model, half)))
    (fit, want_fit), (held, want_held) = parts
    return fit, want_fit, held, want_held


@dataclass
class GridFit:
    """One refined grid: its points per block, its errors on the fitting and held-out halves
    and on all the calibration inputs, its f-evaluations, and the Adam iterations it took."""

    method: str
    grids: BlockGrids
    nfe: int
    fit_error: float
    heldout_error: float
    error: float
    iterations: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def passes(self, tolerance: float) -> bool:
        """Whether the grid passes on both halves."""
        return self.fit_error <= tolerance and self.heldout_error <= tolerance


def _surrogate(got: torch.Tensor, want: torch.Tensor, match: Match, ref_margin: Optional[torch.Tensor]) -> torch.Tensor:
    """What the refinement minimises: a p-norm of the errors (a smooth max), and for the
    agreement criterion a hinge keeping each sample's predicted class ahead by half the
    reference's margin."""
    err = (got - want).reshape(got.shape[0], -1)
    scale = want.abs().max().clamp_min(1e-12)
    pnorm = ((err.abs() / scale) ** _P_NORM).mean() ** (1 / _P_NORM)
    if match.kind == "max_abs" or ref_margin is None:
        return pnorm
    cls = want.argmax(-1)
    own = got.gather(-1, cls.unsqueeze(-1)).squeeze(-1)
    other = got.scatter(-1, cls.unsqueeze(-1), float("-inf")).amax(-1)
    hinge = torch.relu(0.5 * ref_margin - (own - other)).mean() / scale
    return hinge + 0.1 * pnorm


def _margin(want: torch.Tensor) -> torch.Tensor:
    top2 = want.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def fit_grid(model: ODENet, method: str, blocks: Sequence[int], seeds: Sequence[StepGrid], fit: InputSet,
             want_fit: Sequence[np.ndarray], match: Match, *, iterations: int = OPTIMISE_ITERATIONS,
             ) -> tuple[BlockGrids, float, int]:
    """Refine the ``seeds`` (one per block of ``blocks``) by Adam on softmax widths, minimising
    :func:`_surrogate` on the :data:`FIT_SAMPLES` worst samples of ``fit`` (chosen again every
    :data:`_REFRESH` iterations, when the error on all of ``fit`` is measured); returns the grids
    with the smallest fit error measured (by the criterion itself), that error, and the
    iterations run."""
    n_blocks = len(model.ode_blocks)
    dtype = next(model.parameters()).dtype
    x_all = torch.cat(list(fit.batches))
    want_all = torch.as_tensor(np.concatenate(list(want_fit)), dtype=dtype)
    spans = [(seed.points[0], seed.points[-1]) for seed in seeds]
    thetas = [torch.log(torch.tensor(np.diff(seed.points), dtype=torch.float64).abs()).requires_grad_(True)
              for seed in seeds]
    opt = torch.optim.Adam(thetas, lr=_LEARNING_RATE)
    best: tuple[float, BlockGrids] = (math.inf, _as_grids(n_blocks, blocks, seeds))
    was_training = model.training
    model.eval()
    done = 0
    active = torch.arange(0)
    try:
        for done in range(iterations + 1):
            pts = [_points(th, a, b) for th, (a, b) in zip(thetas, spans, strict=True)]
            grids: list[Any] = [None] * n_blocks
            for i, p in zip(blocks, pts, strict=True):
                grids[i] = p.to(dtype)
            if done % _REFRESH == 0 or done == iterations:
                err, active = _measure(model, method, grids, x_all, want_all, match)
                if err < best[0]:
                    best = (err, _as_grids(n_blocks, blocks, [StepGrid(_float_points(p, a, b))
                                                              for p, (a, b) in zip(pts, spans, strict=True)]))
                if (not math.isfinite(err) or err <= _EARLY_FRACTION * match.tolerance or done == iterations
                        or (done >= _HOPELESS_AFTER and _hopeless(best[0], match))):
                    break
            want = want_all[active]
            margin = _margin(want) if match.kind == "agreement" else None
            try:
                loss = _surrogate(grid_model(model, method, grids)(x_all[active]), want, match, margin)
            except SolverError:
                break
            if not torch.isfinite(loss) or float(loss.detach()) == 0.0:
                break
            opt.zero_grad()
            loss.backward()
            if not all(th.grad is not None and bool(torch.isfinite(th.grad).all()) for th in thetas):
                break  # a diverging solve: keep the best grid measured so far
            opt.step()
    finally:
        model.train(was_training)
        for p in model.parameters():
            p.grad = None
    return best[1], best[0], done


def _hopeless(err: float, match: Match) -> bool:
    if match.kind == "agreement":
        return err > match.tolerance + SEED_AGREEMENT_SLACK / 2
    return err > _HOPELESS_FACTOR * match.tolerance


def _measure(model: ODENet, method: str, grids: list[Any], x: torch.Tensor, want: torch.Tensor,
             match: Match) -> tuple[float, torch.Tensor]:
    """The criterion's error on all of ``x`` and the indices of the :data:`FIT_SAMPLES` worst
    samples (largest error; for agreement, the least margin kept)."""
    with torch.no_grad():
        try:
            got = grid_model(model, method, [g.detach() if g is not None else None for g in grids])(x)
        except SolverError:
            return math.inf, torch.arange(0)
    err = match.error([got.double().numpy()], [want.double().numpy()])
    if match.kind == "agreement":
        cls = want.argmax(-1, keepdim=True)
        own = got.gather(-1, cls).squeeze(-1)
        badness = 0.5 * _margin(want) - (own - got.scatter(-1, cls, float("-inf")).amax(-1))
    else:
        badness = (got - want).reshape(got.shape[0], -1).abs().amax(-1)
    badness = torch.nan_to_num(badness, nan=math.inf)
    k = min(FIT_SAMPLES, int(x.shape[0]))
    return err, badness.topk(k).indices


def _points(theta: torch.Tensor, start: float, stop: float) -> torch.Tensor:
    """Step points from softmax widths: ordered, from ``start`` to ``stop`` exactly; every step at
    least :data:`_MIN_WIDTH` of the span / steps (no step collapses to nothing)."""
    n = theta.shape[0]
    w = (torch.softmax(theta, 0) + _MIN_WIDTH / n) / (1 + _MIN_WIDTH)
    inner = start + (stop - start) * torch.cumsum(w, 0)[:-1]
    return torch.cat([torch.tensor([start], dtype=theta.dtype), inner, torch.tensor([stop], dtype=theta.dtype)])


def _float_points(p: torch.Tensor, start: float, stop: float) -> tuple[float, ...]:
    vals = p.detach().tolist()
    return (float(start), *(float(v) for v in vals[1:-1]), float(stop))


def _as_grids(n_blocks: int, blocks: Sequence[int], grids: Sequence[StepGrid]) -> BlockGrids:
    out: list[Optional[StepGrid]] = [None] * n_blocks
    for i, g in zip(blocks, grids, strict=True):
        out[i] = g
    return tuple(out)


def evaluate_grids(model: ODENet, method: str, grids: BlockGrids, inputs: InputSet,
                   want: Sequence[np.ndarray], match: Match) -> float:
    """The criterion's error (:meth:`Match.error`) of the grid twin on ``inputs``; inf when
    the solve fails."""
    try:
        return match.error(model_outputs(grid_model(model, method, grids), inputs), want)
    except SolverError:
        return math.inf


def optimise(model: ODENet, method: str, n: int, blocks: Sequence[int], steps: Sequence[Sequence[tuple[float, float]]],
             halves: tuple[InputSet, list[np.ndarray], InputSet, list[np.ndarray]], match: Match,
             inputs: InputSet, want: Sequence[np.ndarray]) -> GridFit:
    """Seed ``n``-step grids from the adaptive ``steps``, refine them on the fitting half, and
    measure them on the held-out half and on all ``inputs``."""
    start = time.perf_counter()
    fit, want_fit, held, want_held = halves
    seeds = [seed_grid(float(model.ode_blocks[i].spec.t[0]), float(model.ode_blocks[i].spec.t[-1]), s, n)
             for i, s in zip(blocks, steps, strict=True)]
    if n == 1:  # nothing to place: one step over the span
        grids, iters = _as_grids(len(model.ode_blocks), blocks, seeds), 0
    else:
        grids, _, iters = fit_grid(model, method, blocks, seeds, fit, want_fit, match)
    fit_error = evaluate_grids(model, method, grids, fit, want_fit, match)
    held_error = evaluate_grids(model, method, grids, held, want_held, match)
    error = evaluate_grids(model, method, grids, inputs, want, match)
    return GridFit(method, grids, grid_nfe(model, method, grids), fit_error, held_error, error, iters,
                   time.perf_counter() - start)


# -- the search ------------------------------------------------------------------------------------------

#: a seed grid is refined only when its error is within this factor of the tolerance (the
#: refinement cut the error by 1.5-3x in the measurements; farther seeds do not pass)
SEED_GAIN = 4.0
#: calibrating on agreement, a seed is refined when its disagreement is at most this above the
#: allowed one
SEED_AGREEMENT_SLACK = 0.02
#: the most steps of an optimised grid per ODE block (when no uniform grid passes, nothing else
#: bounds the search; a grid this long is no longer "a handful of numbers")
MAX_GRID_STEPS = 64
#: refinements per method at most (the first at the smallest promising step count, then one
#: step more or fewer)
TRIES_PER_METHOD = 3
#: refinements of the whole search at most, in the methods' order: what bounds its time (on the
#: digits ODE-Net, 12 refinements took 35 s on a busy 2-core machine; the later ones, methods of
#: the same order and stages as earlier ones, rarely won)
TOTAL_REFINEMENTS = 6
#: the refinements' work at most, in multiply-accumulates (their sample f-evaluations, a
#: backward pass counted as two, times the dynamics' MACs per sample): a bound on their time that
#: does not depend on the machine. Six refinements of the digits ODE-Net (73,728 MACs an
#: f-evaluation) cost about 4e10 and 20 s on this busy 2-core machine; on the MNIST ODE-Net they
#: cost about 100 s, beside its uniform calibration's 138 s
GRID_WORK_MACS = 5e10


@dataclass
class _Budget:
    """What the search may still spend: refinements, and work in sample f-evaluations (one
    f-evaluation of one sample; a backward pass counted as two)."""

    refinements: int
    work: float

    def refinement_cost(self, nfe: int, fit: int, total: int) -> float:
        """An upper bound of one refinement's work: its gradient steps, its measurements on the
        fitting half, and the final errors on both halves and on all inputs."""
        measures = OPTIMISE_ITERATIONS // _REFRESH + 1
        return nfe * (OPTIMISE_ITERATIONS * min(FIT_SAMPLES, fit) * 3 + measures * fit + 2 * total)


@dataclass
class GridRow:
    """One method's outcome in the grid search: its cheapest passing grid, or where it stopped."""

    method: str
    fit: Optional[GridFit]
    passed: bool
    status: str


def grid_methods(model: ODENet, blocks: Sequence[int], methods: Sequence[str], training_method: bool = True,
                 ) -> list[str]:
    """The methods the grid search tries: ``methods`` and (``training_method``) the training
    solvers' own explicit Runge-Kutta method when all of ``blocks`` share one (the reference is
    that method on the steps it accepted, so a few of its steps placed well reproduce the
    reference closely, its own error included, which no convergent method can); highest order
    first, then fewer stages."""
    from odespec.solvers.tableaus import get_tableau

    names = list(dict.fromkeys(methods))
    own = {model.ode_blocks[i].spec.solver.method for i in blocks}
    if len(own) == 1 and training_method:
        (name,) = own
        try:
            tab = get_tableau(name)
        except Exception:  # a solver without a Butcher tableau (Adams, SciPy): not a grid method
            tab = None
        if tab is not None and not tab.implicit and name not in names:
            names.insert(0, name)
    return sorted(names, key=lambda m: (-get_tableau(m).order, get_tableau(m).stages, m))


def search_grids(model: ODENet, inputs: InputSet, want: Sequence[np.ndarray], match: Match, methods: Sequence[str],
                 budget: float, blocks: Sequence[int], *, training_method: bool = True,
                 work_budget: float = math.inf) -> list[GridRow]:
    """For each of :func:`grid_methods`, the cheapest grid (fewest f-evaluations, below
    ``budget``: the best uniform candidate's) whose error passes on both the fitting and the
    held-out half of ``inputs`` (:func:`split_inputs`); ``training_method``: whether the
    training solver's own method joins ``methods``. ``work_budget``: the most sample
    f-evaluations the refinements may spend (:class:`_Budget`); a method whose first refinement
    would exceed what is left is not refined.

    Each method's step count starts at the smallest whose seed grid (:func:`seed_grid`, no
    refinement) is promising (:data:`SEED_GAIN`), is refined (:func:`fit_grid`), then moves one
    step down after a pass or up after a failure, :data:`TRIES_PER_METHOD` refinements at most."""
    halves = split_inputs(model, inputs)
    fit, want_fit = halves[0], halves[1]
    steps = record_steps(model, fit, blocks)
    spans = [(float(model.ode_blocks[i].spec.t[0]), float(model.ode_blocks[i].spec.t[-1])) for i in blocks]
    n_blocks = len(model.ode_blocks)
    rows: list[GridRow] = []
    budget_left = _Budget(TOTAL_REFINEMENTS, work_budget)
    fit_size, total = halves[0].samples, inputs.samples

    def seeds(n: int) -> BlockGrids:
        return _as_grids(n_blocks, blocks, [seed_grid(a, b, s, n) for (a, b), s in zip(spans, steps, strict=True)])

    for method in grid_methods(model, blocks, methods, training_method):
        if budget_left.refinements <= 0:
            rows.append(GridRow(method, None, False, f"not refined: the search's {TOTAL_REFINEMENTS} refinements "
                                                     "were spent on earlier methods"))
            continue
        n_max = 0
        while n_max < MAX_GRID_STEPS and grid_nfe(model, method, seeds(n_max + 1)) < budget:
            n_max += 1
        if n_max == 0:
            rows.append(GridRow(method, None, False, "not searched: one step costs more than the best"))
            continue
        start = _first_promising(model, method, seeds, n_max, fit, want_fit, match)
        if start is not None and budget_left.refinement_cost(grid_nfe(model, method, seeds(start)), fit_size,
                                                             total) > budget_left.work:
            rows.append(GridRow(method, None, False, "not refined: the search's work budget "
                                                     f"({GRID_WORK_MACS:.0e} multiply-accumulates) is spent"))
            continue
        if start is None:
            rows.append(GridRow(method, None, False, "not refined: every seed grid within the budget is too far from "
                                                     "the tolerance"))
            continue
        row = _refine_from(model, method, start, n_max, blocks, steps, halves, match, inputs, want, budget_left)
        rows.append(row)
        if row.passed and row.fit is not None:
            budget = min(budget, row.fit.nfe)
    return rows


def _promising(err: float, match: Match) -> bool:
    if match.kind == "agreement":
        return err <= match.tolerance + SEED_AGREEMENT_SLACK
    return err <= SEED_GAIN * match.tolerance


def _first_promising(model: ODENet, method: str, seeds: Callable[[int], BlockGrids], n_max: int, fit: InputSet,
                     want_fit: Sequence[np.ndarray], match: Match) -> Optional[int]:
    """The smallest step count up to ``n_max`` whose seed grid is :func:`_promising` (one
    forward pass each, without refinement)."""
    for n in range(1, n_max + 1):
        if _promising(evaluate_grids(model, method, seeds(n), fit, want_fit, match), match):
            return n
    return None


def _refine_from(model: ODENet, method: str, n: int, n_max: int, blocks: Sequence[int],
                 steps: Sequence[Sequence[tuple[float, float]]],
                 halves: tuple[InputSet, list[np.ndarray], InputSet, list[np.ndarray]], match: Match,
                 inputs: InputSet, want: Sequence[np.ndarray], budget: _Budget) -> GridRow:
    """Refine at ``n`` steps; after a pass try one fewer, after a failure one more (up to
    ``n_max``), :data:`TRIES_PER_METHOD` refinements at most, within ``budget`` (spent here).
    The cheapest pass, else the closest failure."""
    from odespec.solvers.tableaus import get_tableau

    tried: dict[int, GridFit] = {}
    direction = 0
    while n not in tried and 1 <= n <= n_max and len(tried) < TRIES_PER_METHOD and budget.refinements > 0:
        # every stage of every step, and the interpolation's extra f-evaluation: a bound
        nfe_bound = len(blocks) * (n * get_tableau(method).stages + 1)
        cost = budget.refinement_cost(nfe_bound, halves[0].samples, inputs.samples)
        if tried and cost > budget.work:
            break
        budget.refinements -= 1
        budget.work -= cost
        tried[n] = optimise(model, method, n, blocks, steps, halves, match, inputs, want)
        ok = tried[n].passes(match.tolerance)
        if direction == 0:
            direction = -1 if ok else 1
        elif (direction < 0) != ok:
            break  # a failure below a pass, or a pass above failures: done
        n += direction
    passing = [f for f in tried.values() if f.passes(match.tolerance)]
    if passing:
        return GridRow(method, min(passing, key=lambda f: f.nfe), True, "ok")
    closest = min(tried.values(), key=lambda f: max(f.fit_error, f.heldout_error))
    why = "held-out error over tolerance" if closest.fit_error <= match.tolerance else "over tolerance"
    return GridRow(method, closest, False, why)
