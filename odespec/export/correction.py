"""Learned step correction (a hypersolver, Poli et al. 2020, "Hypersolvers: toward fast
continuous-depth models"), trained after calibration and exported inside the graph.

A fixed-step method of order p leaves a local error of order h^(p+1) per step. A small network
g (:class:`CorrectionNet`), one per ODE block, learns that error divided by h^(p+1) from the
training solver, and every exported step becomes::

    y_{n+1} = y_n + h * sum(b_i k_i) + h^(p+1) * g(t_n, h, y_n, k1)

``k1 = f(t_n, y_n)`` is the step's first stage, already computed, so the correction costs no
f-evaluation; its own multiply-accumulates are counted in the graph like any other.

**Training** (:func:`fit_corrections`): the calibration inputs are split (``held_out`` of them are
kept aside). On the fit part, each ODE block's input (as the training-solver model computes it)
is solved with the block's training solver to every step point of the grid; each step's target
is the one-step residual ``(y_ref(t_{n+1}) - step(y_ref(t_n))) / h^(p+1)``, and g is fitted to it
by full-batch Adam on the mean squared error (relative to the targets' mean square). The targets
need one f-evaluation per stage and step once; the fit itself evaluates only g.

The one-step fit leaves small errors in every step, and they add up over the solve; the training
solver's outputs also carry its own error, which no step-by-step target sees. So the nets are then
fine-tuned (``refine`` Adam steps) through the whole corrected solve: the loss is the mean fourth
power of the model's output error against the training solver's outputs on the fit inputs
(relative to their root mean square; the fourth power leans on the worst samples, as the max abs
criterion does), gradients flow through the unrolled steps to the nets alone (the model's weights
stay fixed), and the best iterate is kept. Poli et al. fit hypersolvers the same two ways (their
"residual" and "trajectory" fitting). On the trained ``circles_anode`` model, rk4 x 5 corrected
(hidden 32): held-out max abs error 0.059 after the one-step fit, 0.0076 refined.

**Choice** (:func:`choose_correction`): the correction is judged on the held-out inputs by the
calibration's own criterion (max abs error, or 1 - agreement) on the whole model's output. A
corrected grid is used only when its held-out error is within the tolerance *and* below the same
grid's plain error, and its graph costs fewer multiply-accumulates than the plain grid it
replaces; otherwise the export falls back to the plain grid, with the reason in the report.

With ``steps: auto`` the search looks for a grid *cheaper* than the calibrated one: the ladder of
fixed-step grids (method x steps) with fewer f-evaluations, keeping at each cost only methods of
at least the order of every cheaper one (rk4 x 3 stays, euler x 11 goes), and only grids whose
corrected graph, the net's own MACs included, costs fewer MACs than the plain one, is bisected by
f-evaluations on the assumption that the corrected error falls as the cost grows, training one
correction per grid tried, at most ``trials`` of them. A corrected graph whose held-out error
exceeds the tolerance is never chosen. With a given step count the correction is trained for that
grid alone.

The loop layout is refused (the correction is laid into each unrolled step), and so are models
that read irregular series and FSAL methods (the corrected state is not the one the last stage
was evaluated at).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from odespec.compile.model import ODENet
from odespec.compile.correction_net import CorrectionNet
from odespec.compile.ode_block import BlockBase, ODEBlock
from odespec.errors import ExportError
from odespec.export.inputs import InputSet, call_model
from odespec.export.metrics import Match, model_outputs, one_torch_thread
from odespec.export.unroll import fixed_step_model
from odespec.spec.correction import CorrectionSpec

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from odespec.export.graph import GraphBuilder, Value
    from odespec.export.onnx_export import ExportSettings

__all__ = ["CorrectionNet", "Corrections", "CorrectedBlock", "CorrectionOutcome", "corrected_model",
           "fit_corrections", "choose_correction", "split_inputs", "step_corrector", "check_correctable"]

#: rows of one batch when the inputs are re-batched after the split
_BATCH = 256


@dataclass(frozen=True, eq=False)
class Corrections:
    """One :class:`CorrectionNet` per ODE block of the model (:func:`correctable_blocks` order),
    for steps of ``method`` x ``steps`` per output interval."""

    nets: tuple[CorrectionNet, ...]
    method: str
    steps: int

    @property
    def power(self) -> int:
        """p + 1 for a method of order p: the correction is scaled by h^(p+1)."""
        from odespec.solvers.tableaus import get_tableau

        return get_tableau(self.method).order + 1

    @property
    def parameters(self) -> int:
        """Trainable parameters over all nets."""
        return sum(n.parameter_count() for n in self.nets)

    def to(self, dtype: torch.dtype) -> "Corrections":
        """These corrections with nets cast to ``dtype`` (copies when the type differs)."""
        nets = tuple(n if next(n.parameters()).dtype == dtype else copy.deepcopy(n).to(dtype) for n in self.nets)
        return Corrections(nets, self.method, self.steps)


def correctable_blocks(model: ODENet) -> list[ODEBlock]:
    """The ODE blocks a correction applies to, in order: continuous blocks and RK-Nets on their
    own time grid (a ResNet block has its own weights per step; a ``t: query`` block is refused
    with the series models)."""
    return [b for b in model.ode_blocks if isinstance(b, ODEBlock) and not b.spec.query]


def check_correctable(model: ODENet, method: str, *, loop: bool = False) -> None:
    """:class:`ExportError` when a correction cannot apply: the loop layout, a model that reads
    series, no ODE block to correct, an implicit or FSAL method."""
    from odespec.solvers.tableaus import get_tableau

    if loop:
        raise ExportError("the correction network is laid into each unrolled step; the loop layout is not "
                          "available with it", "export unrolled (no loop), or without the correction")
    if model.spec.series is not None:
        raise ExportError("the correction is not available for a model that reads irregular series",
                          "export without the correction")
    if not correctable_blocks(model):
        raise ExportError("the model has no ODE block the correction can apply to (a continuous ODE block or "
                          "RK-Net; not a ResNet block)", "export without the correction")
    tab = get_tableau(method)
    if tab.fsal or tab.implicit or tab.adaptive:
        raise ExportError(f"the correction needs an explicit fixed-step method without FSAL; {method!r} is not one",
                          "use one of euler, midpoint, heun, ralston, rk4, rk4_38")


class CorrectedBlock(BlockBase):
    """An ODE block solved with ``method`` x ``steps`` per output interval, each step corrected
    by ``net``: the PyTorch twin of the corrected graph (parity is checked against it). Shares
    the block's dynamics."""

    def __init__(self, block: ODEBlock, net: CorrectionNet, method: str, steps: int):
        super().__init__(block.spec)
        from odespec.solvers.grid import fixed_grid
        from odespec.solvers.tableaus import get_tableau

        self.dynamics = block.dynamics
        self.net = net
        self.tableau = get_tableau(method)
        self.power = self.tableau.order + 1
        self.grid = fixed_grid(block.spec.t, steps)
        self.t = block.t
        self.train(block.training)

    def solve(self, y0: torch.Tensor, query_times: Optional[torch.Tensor] = None) -> torch.Tensor:
        assert query_times is None  # check_correctable refuses t: query
        outs, y = [y0], y0
        before = self.dynamics.nfe
        for interval in self.grid:
            for t0, h in interval:
                y = corrected_step(self.dynamics, self.net, t0, y, h, self.tableau, self.power)
            outs.append(y)
        self.nfe_forward = self.dynamics.nfe - before
        return torch.stack(outs)


def corrected_step(f: Callable[[Any, torch.Tensor], torch.Tensor], net: CorrectionNet, t0: float, y: torch.Tensor,
                   h: float, tableau: Any, power: int) -> torch.Tensor:
    """One step of ``tableau`` plus ``h^power * net(t0, h, y, k1)``, as the graph computes it."""
    from odespec.solvers.step import rk_step, torch_combine

    res = rk_step(f, t0, y, h, tableau, with_error=False)
    g = net(torch.tensor(t0, dtype=y.dtype), torch.tensor(h, dtype=y.dtype), y, res.ks[0])
    return torch_combine(res.y_next, float(h) ** power, [(1.0, g)])


def corrected_model(model: ODENet, corrections: Corrections) -> ODENet:
    """The fixed-step twin of ``model`` (:func:`~odespec.export.unroll.fixed_step_model`) with each
    correctable ODE block's steps corrected; weights shared with ``model`` and ``corrections``."""
    twin = fixed_step_model(model, corrections.method, corrections.steps)
    nets = iter(corrections.nets)
    blocks = {id(b): b for b in correctable_blocks(model)}
    modules = [CorrectedBlock(blocks[id(orig)], next(nets), corrections.method, corrections.steps)
               if id(orig) in blocks else m for orig, m in zip(model, twin, strict=True)]
    out = ODENet(model.spec, modules)
    out.train(model.training)
    return out


# -- training ------------------------------------------------------------------------------------

def _block_inputs(model: ODENet, inputs: InputSet, blocks: list[ODEBlock]) -> list[torch.Tensor]:
    """Each block's initial state (after its augmentation) on ``inputs``, as the training-solver
    model computes it, all batches concatenated."""
    seen: dict[int, list[torch.Tensor]] = {id(b): [] for b in blocks}

    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0]
        aug = getattr(module, "augmenter", None)
        seen[id(module)].append((aug(x) if aug is not None else x).detach())

    handles = [b.register_forward_pre_hook(hook) for b in blocks]
    try:
        model_outputs(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(seen[id(b)]) for b in blocks]


@dataclass
class _Residuals:
    """One block's training rows: the step's start time, size, state and first stage, and the
    target ``(y_ref(t + h) - step(y_ref(t))) / h^(p+1)``."""

    t: torch.Tensor
    h: torch.Tensor
    y: torch.Tensor
    k: torch.Tensor
    target: torch.Tensor


def _residuals(block: ODEBlock, y0: torch.Tensor, method: str, steps: int) -> _Residuals:
    """The training rows of ``block`` from its initial states ``y0``: the training solver's
    states at every step point of ``method`` x ``steps``, and each step's residual."""
    from odespec.solvers import solve
    from odespec.solvers.grid import fixed_grid
    from odespec.solvers.step import rk_step
    from odespec.solvers.tableaus import get_tableau

    tab = get_tableau(method)
    power = tab.order + 1
    points = [(t0, h) for interval in fixed_grid(block.spec.t, steps) for t0, h in interval]
    times = torch.tensor([t0 for t0, _ in points] + [block.spec.t[-1]], dtype=y0.dtype)
    solver = block.spec.solver
    with torch.no_grad():
        ref = solve(block.dynamics, y0, times, method=solver.tableau, rtol=solver.rtol, atol=solver.atol,
                    options=solver.integration_options(), gradient="backprop").ys
        rows: dict[str, list[torch.Tensor]] = {"t": [], "h": [], "y": [], "k": [], "target": []}
        for j, (t0, h) in enumerate(points):
            res = rk_step(block.dynamics, t0, ref[j], h, tab, with_error=False)
            n = ref[j].shape[0]
            rows["t"].append(torch.full((n,), t0, dtype=y0.dtype))
            rows["h"].append(torch.full((n,), h, dtype=y0.dtype))
            rows["y"].append(ref[j])
            rows["k"].append(res.ks[0])
            rows["target"].append((ref[j + 1] - res.y_next) / float(h) ** power)
    return _Residuals(**{k: torch.cat(v) for k, v in rows.items()})


@dataclass
class FitStats:
    """What fitting one grid's corrections took and reached."""

    seconds: float
    #: the final loss (mean squared error relative to the targets' mean square), per block
    loss: list[float]
    #: the same before training (g = 0): 1.0, unless the targets are all zero
    rows: int
    #: the refining loss (root mean fourth power of the output error relative to the reference's
    #: root mean square) before and after refining; ``None`` without refining
    refined: Optional[tuple[float, float]] = None


def fit_corrections(model: ODENet, inputs: InputSet, method: str, steps: int, options: CorrectionSpec,
                    reference: Optional[list[np.ndarray]] = None) -> tuple[Corrections, FitStats]:
    """Train one :class:`CorrectionNet` per correctable ODE block of ``model`` on ``inputs`` for
    steps of ``method`` x ``steps``, then refine them together through the whole solve against
    ``reference`` (the training-solver model's outputs on ``inputs``; solved here when ``None``)
    (module docstring: Training)."""
    start = time.perf_counter()
    check_correctable(model, method)
    blocks = correctable_blocks(model)
    dtype = next(model.parameters()).dtype
    nets, losses, rows = [], [], 0
    was_training = model.training
    model.eval()
    try:
        for block, y0 in zip(blocks, _block_inputs(model, inputs, blocks), strict=True):
            data = _residuals(block, y0, method, steps)
            rows += int(data.y.shape[0])
            torch.manual_seed(options.seed)
            net = CorrectionNet(block.spec.state_shape, options.hidden).to(dtype)
            with one_torch_thread():
                losses.append(_train(net, data, options))
            nets.append(net.eval())
        corrections = Corrections(tuple(nets), method, steps)
        refined = None
        if options.refine:
            want = reference if reference is not None else model_outputs(model, inputs)
            with one_torch_thread():
                refined = _refine(model, corrections, inputs, want, options)
    finally:
        model.train(was_training)
    return corrections, FitStats(time.perf_counter() - start, losses, rows, refined)


def _train(net: CorrectionNet, data: _Residuals, options: CorrectionSpec) -> float:
    """Full-batch Adam on the relative mean squared error of ``net`` against the targets; the
    final loss. The parameters of the best iterate are kept."""
    with torch.no_grad():
        net.standardise(net.features(data.t, data.h, data.y, data.k), data.target)
    norm = data.target.pow(2).mean().clamp_min(torch.finfo(data.target.dtype).tiny)
    params = list(net.parameters())
    opt = torch.optim.Adam(params, lr=options.lr)
    best = _Best(params)
    feats = (data.t, data.h, data.y, data.k)
    for _ in range(options.iterations):
        opt.zero_grad()
        loss = (net(*feats) - data.target).pow(2).mean() / norm
        value = loss.item()
        if not math.isfinite(value):
            break
        best.offer(value)
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = ((net(*feats) - data.target).pow(2).mean() / norm).item()
    if not final <= best.value:  # Adam's last step made it worse (or not finite): the best iterate
        best.restore()
        final = best.value
    return final


class _Best:
    """The parameters ``params`` had when the lowest loss so far was offered (at first: as they
    are, at ``value``)."""

    def __init__(self, params: Sequence[torch.Tensor], value: float = math.inf):
        self.params = params
        self.value = value
        self.kept = [p.detach().clone() for p in params]

    def offer(self, value: float) -> None:
        """Keep the present parameters if ``value`` is the lowest loss yet."""
        if value < self.value:
            self.value = value
            for keep, p in zip(self.kept, self.params, strict=True):
                keep.copy_(p.detach())

    def restore(self) -> None:
        """Put the kept parameters back."""
        with torch.no_grad():
            for keep, p in zip(self.kept, self.params, strict=True):
                p.copy_(keep)


def _refine(model: ODENet, corrections: Corrections, inputs: InputSet, reference: list[np.ndarray],
            options: CorrectionSpec) -> tuple[float, float]:
    """Fine-tune ``corrections``' nets through the corrected model's whole solve so its outputs
    on ``inputs`` match ``reference``; the loss before and after (module docstring: Training).

    The loss is the root mean fourth power of the error relative to the reference's root mean
    square, minimised by Adam at a third of ``options.lr``, warmed up over the first tenth of the
    ``refine`` steps and decayed to zero over them all (a cosine): the one-step fit is already
    close, and Adam's first full-size steps would throw it away before its running averages
    settle (on ``ode_demo_train``, without the warm-up the refined loss never got below the
    one-step fit's). A pass sums the batches' gradients of the mean fourth power, scaled by the
    root's derivative at the previous pass's loss: the root keeps the gradients' size steady as
    the error falls by orders of magnitude (Adam's running averages lag behind such a fall), and
    the batches need not be held in memory together. The best iterate is kept."""
    twin = corrected_model(model, corrections)
    dtype = next(model.parameters()).dtype
    want = [torch.as_tensor(r, dtype=dtype) for r in reference]
    count = sum(w.numel() for w in want)
    scale = math.sqrt(sum(float(w.pow(2).sum()) for w in want) / count) or 1.0
    params = [p for net in corrections.nets for p in net.parameters()]
    frozen = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=options.lr / 3)
    warm = options.refine // 10
    decay = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / (warm + 1)) * 0.5 * (1 + math.cos(math.pi * k / options.refine)))

    def fourth_power(learn: float) -> float:
        """The mean fourth power at the nets' present parameters; its gradient times ``learn``
        is added to theirs (0: measure only)."""
        total = 0.0
        for feeds, w in zip(inputs.feeds(), want, strict=True):
            with torch.set_grad_enabled(learn > 0):
                loss = ((call_model(twin, feeds) - w) / scale).pow(4).sum() / count
            if learn > 0:
                (loss * learn).backward()
            total += float(loss.detach())
        return total

    for p in frozen:  # only the nets learn; the model's weights need no gradients
        p.requires_grad_(False)
    try:
        opt.zero_grad()
        mean4 = fourth_power(0.0)  # the start: the first slope needs its loss before that pass
        first = mean4 ** 0.25
        best = _Best(params, first)
        for step in range(options.refine + 1):
            last = step == options.refine  # the last pass only measures the last update
            # the gradient of the root: the fourth power's, scaled by the root's derivative at
            # the previous pass's loss
            mean4 = fourth_power(0.0 if last else 0.25 * max(mean4, 1e-300) ** -0.75)
            value = mean4 ** 0.25
            if not math.isfinite(value):
                break
            best.offer(value)
            if not last:
                opt.step()
                decay.step()
                opt.zero_grad()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    best.restore()
    return first, best.value


# -- the split -----------------------------------------------------------------------------------

def split_inputs(model: ODENet, inputs: InputSet, held_out: float,
                 seed: int) -> tuple[InputSet, list[np.ndarray], InputSet, list[np.ndarray]]:
    """``(fit, fit_reference, held, held_reference)``: the samples of ``inputs`` split at
    random, ``held_out`` of them held out (at least one sample on each side), each part with
    the training-solver model's outputs on it, solved on that part alone (an adaptive solver's
    steps follow its batch: a shared reference would hand the held-out part the fit part's
    steps). :class:`ExportError` for fewer than 2 samples, or series inputs."""
    from odespec.export.metrics import reference_outputs

    if inputs.series:
        raise ExportError("the correction is not available for a model that reads irregular series")
    n = inputs.samples
    if n < 2:
        raise ExportError(f"the correction needs at least 2 calibration samples (a fit and a held-out part); "
                          f"the inputs ({inputs.description}) have {n}", "pass more calibration data")
    held_n = min(n - 1, max(1, round(n * held_out)))
    order = np.random.default_rng(seed).permutation(n)
    fit = inputs.subset(np.sort(order[held_n:]), f"fit: {n - held_n} of the {n} samples of {inputs.description}",
                        _BATCH)
    held = inputs.subset(np.sort(order[:held_n]), f"held out: {held_n} of the {n} samples of {inputs.description}",
                         _BATCH)
    return fit, reference_outputs(model, fit), held, reference_outputs(model, held)


# -- the choice ----------------------------------------------------------------------------------

@dataclass
class Trial:
    """One grid tried with a correction."""

    method: str
    steps: int
    nfe: int
    #: the plain grid's and the corrected grid's error on the held-out inputs
    held_out_error_plain: float
    held_out_error: float
    #: the corrected grid's error on the fit inputs
    fit_error: float
    passed: bool
    train_seconds: float
    loss: list[float]
    corrections: Optional[Corrections] = None
    #: the refining loss before and after (:class:`FitStats`)
    refined: Optional[tuple[float, float]] = None

    def to_dict(self) -> dict[str, Any]:
        """One row of the report's ``trials``."""
        return {"method": self.method, "steps": self.steps, "nfe": self.nfe,
                "held_out_error_plain": _finite(self.held_out_error_plain),
                "held_out_error": _finite(self.held_out_error), "fit_error": _finite(self.fit_error),
                "passed": self.passed, "train_seconds": round(self.train_seconds, 3),
                "relative_loss": [round(v, 6) for v in self.loss],
                **({"refine_loss": [_finite(round(v, 6)) for v in self.refined]} if self.refined else {})}


def _finite(x: float) -> Optional[float]:
    return x if math.isfinite(x) else None


@dataclass
class CorrectionOutcome:
    """What :func:`choose_correction` decided: the corrections to export (``None``: the plain
    grid) and the report's ``correction`` entry."""

    corrections: Optional[Corrections]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def note(self) -> str:
        """One line saying what was chosen, or why the plain grid was kept."""
        return str(self.report.get("note", ""))


#: ``(method, steps, nfe)``: one grid of the correction's search
Grid = tuple[str, int, int]


def _ladder(model: ODENet, methods: Sequence[str], below: int, cap: int) -> list[list[Grid]]:
    """The grids with fewer than ``below`` f-evaluations, by f-evaluations: at each cost, the
    grids of the highest order there (ties: ``midpoint``, ``heun`` and ``ralston`` x 1 all cost
    two f-evaluations a step), keeping only costs whose order is at least every cheaper kept
    one's."""
    from odespec.export.calibrate import nfe_per_forward
    from odespec.solvers.tableaus import get_tableau

    by_nfe: dict[int, list[tuple[int, str, int]]] = {}
    for m in methods:
        tab = get_tableau(m)
        if tab.fsal or tab.implicit or tab.adaptive:
            continue
        n = 1
        while n <= cap and (nfe := nfe_per_forward(model, m, n)) < below:
            by_nfe.setdefault(nfe, []).append((tab.order, m, n))
            n += 1
    out: list[list[Grid]] = []
    top = 0
    for nfe in sorted(by_nfe):
        order = max(o for o, _, _ in by_nfe[nfe])
        if order >= top:
            top = order
            out.append(sorted((m, n, nfe) for o, m, n in by_nfe[nfe] if o == order))
    return out


@dataclass
class _Judge:
    """Trains and judges the correction of one grid at a time on a fixed split."""

    model: ODENet
    fit: InputSet
    fit_ref: list[np.ndarray]
    held: InputSet
    held_ref: list[np.ndarray]
    match: Match
    options: CorrectionSpec
    trials: list[Trial] = field(default_factory=list)

    def plain_error(self, method: str, steps: int) -> float:
        return _error(fixed_step_model(self.model, method, steps), self.held, self.held_ref, self.match)

    def first_passing(self, grids: list[Grid], trials: int) -> Trial:
        """Trials of ``grids`` (all of one cost and order), by their plain error on the held-out
        inputs, until one passes or ``trials`` have been trained in all: the passing trial, else
        the last. Every tie is worth a try: how well a correction fits does not follow the plain
        error (ode_demo_train: midpoint x 1, plain 0.016, corrected 1.6e-4; ralston x 1, plain
        0.017, corrected 8.9e-5)."""
        ranked = sorted(grids, key=lambda g: self.plain_error(g[0], g[1])) if len(grids) > 1 else grids
        row = self.trial(*ranked[0])
        for grid in ranked[1:]:
            if row.passed or len(self.trials) >= trials:
                break
            row = self.trial(*grid)
        return row

    def trial(self, method: str, steps: int, nfe: int) -> Trial:
        corr, stats = fit_corrections(self.model, self.fit, method, steps, self.options, self.fit_ref)
        twin = corrected_model(self.model, corr)
        held = _error(twin, self.held, self.held_ref, self.match)
        plain = self.plain_error(method, steps)
        row = Trial(method, steps, nfe, plain, held, _error(twin, self.fit, self.fit_ref, self.match),
                    held <= self.match.tolerance and held < plain, stats.seconds, stats.loss, corr, stats.refined)
        self.trials.append(row)
        return row


def _error(model: ODENet, inputs: InputSet, want: list[np.ndarray], match: Match) -> float:
    from odespec.errors import SolverError

    try:
        return match.error(model_outputs(model, inputs), want)
    except SolverError:
        return math.inf


def choose_correction(model: ODENet, inputs: InputSet, settings: "ExportSettings",
                      match: Match, options: CorrectionSpec, *, methods: Optional[Sequence[str]] = None,
                      cap: int = 4096) -> CorrectionOutcome:
    """Train corrections and decide whether the export uses one (module docstring: Choice).

    ``settings``: the plain grid the export would use (calibrated, or given). ``methods``: the
    methods calibration searched (``None``: the step count was given; only that grid is tried).
    ``cap``: the most steps per interval calibration may use."""
    from odespec.export.calibrate import nfe_per_forward

    start = time.perf_counter()
    check_correctable(model, settings.method, loop=settings.loop)
    base_nfe = nfe_per_forward(model, settings.method, settings.steps)
    macs_plain = graph_macs(model, settings)
    ladder, dearer = ([], []) if methods is None else _affordable(
        model, settings, _ladder(model, methods, base_nfe, cap), options, macs_plain)
    fit, fit_ref, held, held_ref = split_inputs(model, inputs, options.held_out, options.seed)
    judge = _Judge(model, fit, fit_ref, held, held_ref, match, options)
    base = {"method": settings.method, "steps": settings.steps, "nfe": base_nfe, "macs": macs_plain,
            "held_out_error": _finite(judge.plain_error(settings.method, settings.steps))}
    if methods is None:
        best = judge.trial(settings.method, settings.steps, base_nfe)
        chosen = best if best.passed else None
    else:
        chosen = _bisect(judge, ladder, options.trials)
    report: dict[str, Any] = {
        "options": {"hidden": options.hidden, "iterations": options.iterations, "lr": options.lr,
                    "refine": options.refine,
                    "held_out": options.held_out, "trials": options.trials, "seed": options.seed},
        "criterion": (match.describe() if math.isfinite(match.tolerance)
                      else "max abs error, below the plain grid's (the step count is given: no tolerance)"),
        "tolerance": _finite(match.tolerance),
        "fit_samples": fit.samples, "held_out_samples": held.samples,
        "search": "given grid" if methods is None else "cheaper grids, bisected by f-evaluations",
        "plain": base, "trials": [t.to_dict() for t in judge.trials],
        "train_seconds": round(sum(t.train_seconds for t in judge.trials), 3),
        **({"not_cheaper": dearer} if dearer else {}),
    }
    outcome = _decide(model, settings, chosen, report, base_nfe, macs_plain, searched=methods is not None)
    report["seconds"] = round(time.perf_counter() - start, 3)
    return outcome


def _affordable(model: ODENet, settings: "ExportSettings", ladder: list[list[Grid]], options: CorrectionSpec,
                macs_plain: int) -> tuple[list[list[Grid]], list[dict[str, Any]]]:
    """``(kept, dropped)``: the ladder's costs whose corrected graph (built with untrained nets of
    the options' width: the MACs do not depend on the weights) costs fewer multiply-accumulates
    than the plain grid's ``macs_plain``, and the others as report rows. Where the dynamics is
    cheap, the net's own MACs outweigh the f-evaluations a grid saves (ode_demo_train: a 200-MAC
    MLP against a 1,280-MAC correction at hidden 32), and training for such a grid is wasted."""
    import dataclasses

    dtype = next(model.parameters()).dtype
    kept, dropped = [], []
    for group in ladder:
        method, steps, nfe = group[0]  # one cost and order: the same stages and steps
        nets = tuple(CorrectionNet(b.spec.state_shape, options.hidden).to(dtype).eval()
                     for b in correctable_blocks(model))
        corrected = dataclasses.replace(settings, method=method, steps=steps, grids=(),
                                        correction=Corrections(nets, method, steps))
        macs = graph_macs(model, corrected)
        if macs < macs_plain:
            kept.append(group)
        else:
            dropped.append({"methods": [g[0] for g in group], "steps": steps, "nfe": nfe, "macs": macs})
    return kept, dropped


def _bisect(judge: _Judge, ladder: list[list[Grid]], trials: int) -> Optional[Trial]:
    """The cheapest passing grid of ``ladder`` found by bisection (the calibrated grid above the
    ladder's top passes uncorrected), within ``trials`` trainings; ``None`` if none passed."""
    lo, hi, best = -1, len(ladder), None
    while hi - lo > 1 and len(judge.trials) < trials:
        mid = (lo + hi) // 2
        row = judge.first_passing(ladder[mid], trials)
        if row.passed:
            hi, best = mid, row
        else:
            lo = mid
    return best


def _decide(model: ODENet, settings: "ExportSettings", chosen: Optional[Trial], report: dict[str, Any],
            base_nfe: int, macs_plain: int, *, searched: bool) -> CorrectionOutcome:
    """The outcome: ``chosen``'s corrections if it passed; else the plain grid, with the reason in
    ``report["note"]``."""
    import dataclasses

    plain = f"{settings.method} x {settings.steps}"
    if chosen is None or chosen.corrections is None:
        if not report["trials"] and report.get("not_cheaper"):
            why = (f"every grid with fewer f-evaluations costs at least the plain grid's {macs_plain:,} MACs per "
                   f"sample once the correction's own are added (hidden {report['options']['hidden']}; the "
                   "dynamics is cheaper than the net), so none was trained")
        elif not report["trials"]:
            why = "no grid is cheaper than the calibrated one" if searched else "nothing was tried"
        elif searched:
            why = (f"no cheaper grid's correction reached the tolerance ({report['criterion']}) on the held-out "
                   "inputs while lowering that grid's error")
        else:
            t = report["trials"][-1]
            tol = report["tolerance"]
            why = (f"the correction did not help on the held-out inputs: error {_fmt(t['held_out_error'])} "
                   f"against {_fmt(t['held_out_error_plain'])} uncorrected"
                   + (f" (tolerance {tol:.3g})" if tol is not None else ""))
        report.update(used=False, chosen=None, note=f"correction not used: {why}; exported the plain grid {plain}")
        return CorrectionOutcome(None, report)
    corrected = dataclasses.replace(settings, method=chosen.method, steps=chosen.steps, correction=chosen.corrections)
    macs_corr = graph_macs(model, corrected)
    report["macs"] = {"plain": macs_plain, "corrected": macs_corr, "saved": macs_plain - macs_corr}
    entry = {**chosen.to_dict(), "parameters": chosen.corrections.parameters, "power": chosen.corrections.power}
    # a searched grid costs fewer MACs (_affordable kept only those);
    # a given grid keeps its f-evaluations and adds the net's MACs: it buys accuracy, not speed
    saves = (f"saves {base_nfe - chosen.nfe} f-evaluations and {macs_plain - macs_corr:,} MACs per sample"
             if macs_corr < macs_plain else
             f"the same f-evaluations and {macs_corr - macs_plain:,} more MACs per sample, for a lower error")
    head = f"{chosen.method} x {chosen.steps} corrected" + ("" if searched else " (the given grid)")
    report.update(used=True, chosen=entry, nfe_saved=base_nfe - chosen.nfe,
                  note=(f"correction used: {head}: {chosen.nfe} f-evaluations, held-out error "
                        f"{_fmt(chosen.held_out_error)} (uncorrected {_fmt(chosen.held_out_error_plain)}), against the "
                        f"plain {plain}'s {base_nfe} f-evaluations and held-out error "
                        f"{_fmt(report['plain']['held_out_error'])}: {saves}"))
    return CorrectionOutcome(chosen.corrections, report)


def _fmt(x: Optional[float]) -> str:
    return "inf" if x is None else f"{x:.3g}"


def graph_macs(model: ODENet, settings: "ExportSettings") -> int:
    """Multiply-accumulates per sample of the graph ``settings`` describe (built, not written)."""
    from odespec.export.macs import count_macs
    from odespec.export.onnx_export import build_onnx

    return int(count_macs(build_onnx(model, settings)).macs)


# -- the graph -----------------------------------------------------------------------------------

#: ``exporter(module, args, names, batched) -> GraphProto``: torch's exporter as the graph uses it
PieceExporter = Callable[[nn.Module, tuple, list[str], tuple[str, ...]], "onnx.GraphProto"]


def step_corrector(gb: "GraphBuilder", net: CorrectionNet, power: int, state_shape: Sequence[int],
                   compute: torch.dtype, exporter: PieceExporter, prefix: str,
                   to_compute: Callable[[str], str], to_state: Callable[[str], str]
                   ) -> Callable[[float, float, "Value", "Value", "Value"], "Value"]:
    """``correct(t0, h, y, k1, y_next) -> y_next + h^power * g(t0, h, y, k1)`` laying ``net``
    into ``gb`` once per call, its weights stored once under ``prefix``. ``net`` is exported
    in ``compute``; ``to_compute``/``to_state`` cast the state and the output (mixed precision)."""
    from odespec.export.graph import NUMPY_DTYPES, Value

    net = net if next(net.parameters()).dtype == compute else copy.deepcopy(net).to(compute)
    scalar = torch.tensor(0.0, dtype=compute)
    state = torch.zeros((2, *state_shape), dtype=compute)
    piece = exporter(net.eval(), (scalar, scalar, state, state), ["t", "h", "y", "k"], ("y", "k"))
    np_dtype = NUMPY_DTYPES[str(compute).removeprefix("torch.")]

    def correct(t0: float, h: float, y: Value, k1: Value, y_next: Value) -> Value:
        feeds = {"t": gb.const(float(t0), dtype=np_dtype), "h": gb.const(float(h), dtype=np_dtype),
                 "y": to_compute(y.name), "k": to_compute(k1.name)}
        (g,) = gb.splice(piece, feeds, prefix)
        return gb.combine(y_next, float(h) ** power, [(1.0, Value(to_state(g)))])

    return correct


def correction_metadata(report: dict[str, Any]) -> dict[str, Any]:
    """The ONNX metadata entry ``correction``: whether a correction is in the graph and what
    it saves (the build report has the whole search)."""
    chosen = report.get("chosen") or {}
    keys = ("method", "steps", "nfe", "held_out_error", "held_out_error_plain", "parameters", "train_seconds")
    return {"used": report.get("used", False), "criterion": report.get("criterion"),
            "plain": report.get("plain"), **({"chosen": {k: chosen.get(k) for k in keys}} if chosen else {}),
            **({"nfe_saved": report["nfe_saved"]} if "nfe_saved" in report else {}),
            **({"macs": report["macs"]} if "macs" in report else {})}
