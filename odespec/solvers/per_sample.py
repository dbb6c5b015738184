"""Per-sample output times: every sample of a batch solved at its own times, in one batched solve
per output interval.

Sample ``b`` asks for its state at ``times[b, 0] <= times[b, 1] <= ...``, starting from
``y0[b]`` at ``start[b]``. Output interval ``k`` runs, for sample ``b``, from ``a_b`` (its
previous time) to ``b_b = times[b, k]``, of length ``d_b = b_b - a_b``. The change of time
variable ``t = a_b + s * d_b`` maps every sample's interval onto the same ``s`` in ``[0, 1]``:

    dy/ds = d_b * f(a_b + s * d_b, y)

so one solve over ``s in [0, 1]`` advances the whole batch through interval ``k``, each sample
in its own time. Why this and not the union of the batch's times (torchdiffeq's answer to its
issues #43, #86, #122):

* **Fixed steps are exactly per sample.** ``steps: n`` puts ``n`` steps of size ``d_b / n`` in
  every sample's interval, which is precisely what solving that sample alone does; the batch
  changes nothing (to float round-off). On the union grid a sample's steps would depend on the
  other samples' times, and a batch of B samples with K times each would take up to B*K
  intervals.
* **It is the exported graph.** The unrolled ONNX model computes ``d_b`` from its ``times``
  inputs and runs a fixed number of steps per interval: the same computation as here.
* **Adaptive solves** control the error of the rescaled system in ``s``, with one step size for
  the batch (as every batched adaptive solve does); the error norm is over the whole batch. Each
  interval is its own solve, because the field is discontinuous in ``s`` where ``d_b`` changes,
  and the next interval's first step is the last one's accepted step, so no step-size search is
  repeated. The restarts cost evaluations: dopri5 takes about 5x the NFE of one shared grid at
  30 intervals, where the union grid's dense output takes none extra; in wall time the
  per-sample solve still wins from batch ~32 on (the union serves thousands of output times).
  ``benchmarks/per_sample_times.py`` measures it (benchmarks/RESULTS.md).

Time bounds given in ``t`` units (``step_size``, ``first_step``, ``min_step``, ``max_step``)
become ``s`` units through the batch's longest interval, so no sample's step exceeds them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from odespec.errors import SolverError
from odespec.solvers.common import solver_error
from odespec.solvers.config import GradientConfig
from odespec.solvers.gradient import GradientMethod
from odespec.solvers.grid import steps_for_interval
from odespec.solvers.options import AdaptiveOptions, FixedStepOptions, OptionsArg, SolverOptions, parse_options
from odespec.solvers.solution import BackwardStats, SolveStats
from odespec.solvers.tableau import ButcherTableau

__all__ = ["solve_per_sample", "PerSampleSolution", "PerSampleStats", "RescaledFunc", "RescaledModule", "rescaled"]

Func = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class RescaledFunc:
    """``g(s, y) = d * f(a + s * d, y)``: one output interval of every sample mapped onto
    ``s in [0, 1]``. ``a`` and ``d`` have shape ``(batch,)``; ``f`` receives one time per sample
    shaped ``(batch, 1, ..., 1)``, broadcastable against the (first) state tensor. For a tuple
    state, every output tensor is scaled by its sample's ``d`` (an integral carried in the state
    stays an integral over ``t``).

    A plain callable, so that the adjoint discovers the tensors a closure ``f`` uses;
    :func:`rescaled` makes the ``nn.Module`` twin for a module ``f``."""

    def __init__(self, func: Func, start: torch.Tensor, delta: torch.Tensor, rank: int):
        self.func = func
        self.start = start
        self.delta = delta
        self.t_shape = (-1,) + (1,) * rank

    def __call__(self, s: torch.Tensor, y: Any) -> Any:
        t = (self.start + s * self.delta).reshape(self.t_shape)
        out = self.func(t, y)
        if isinstance(out, torch.Tensor):
            return _scaled(out, self.delta)
        return tuple(_scaled(o, self.delta) for o in out)


class RescaledModule(nn.Module):
    """:class:`RescaledFunc` of an ``nn.Module`` ``f``, which it holds as a submodule: the
    adjoint takes this module's parameters, which are ``f``'s."""

    def __init__(self, func: nn.Module, start: torch.Tensor, delta: torch.Tensor, rank: int):
        super().__init__()
        self.func = func
        self.rescaled = RescaledFunc(func, start, delta, rank)

    def forward(self, s: torch.Tensor, y: Any) -> Any:
        return self.rescaled(s, y)


def rescaled(func: Func, start: torch.Tensor, delta: torch.Tensor, rank: int) -> Func:
    """``func`` on one output interval per sample, rescaled to ``s in [0, 1]``."""
    if isinstance(func, nn.Module):
        return RescaledModule(func, start, delta, rank)
    return RescaledFunc(func, start, delta, rank)


def _scaled(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return x * delta.reshape((-1,) + (1,) * (x.dim() - 1))


@dataclass
class PerSampleStats:
    """The counters of a per-sample solve: the sums over its interval solves (``parts``).
    ``backward`` is summed when read, so read it after ``.backward()`` has run."""

    method: str
    parts: list[SolveStats] = field(default_factory=list)

    @property
    def nfe(self) -> int:
        return sum(p.nfe for p in self.parts)

    @property
    def n_steps(self) -> int:
        return sum(p.n_steps for p in self.parts)

    @property
    def n_accepted(self) -> int:
        return sum(p.n_accepted for p in self.parts)

    @property
    def n_rejected(self) -> int:
        return sum(p.n_rejected for p in self.parts)

    @property
    def status(self) -> str:
        return next((p.status for p in self.parts if p.status != "success"), "success")

    @property
    def backward(self) -> BackwardStats:
        total = BackwardStats()
        for p in self.parts:
            for f in dataclasses.fields(BackwardStats):
                setattr(total, f.name, getattr(total, f.name) + getattr(p.backward, f.name))
        return total


@dataclass(frozen=True)
class PerSampleSolution:
    """``ys[k, b]``: sample ``b``'s state at its time ``times[b, k]``; shape ``(K, batch, *state)``."""

    ys: torch.Tensor
    stats: PerSampleStats


def solve_per_sample(
    func: Func,
    y0: Any,
    times: torch.Tensor,
    *,
    start: Union[float, torch.Tensor] = 0.0,
    method: Union[str, ButcherTableau, None] = None,
    rtol: Any = 1e-7,
    atol: Any = 1e-9,
    options: OptionsArg = None,
    gradient: Union[str, GradientConfig, GradientMethod] = "backprop",
) -> PerSampleSolution:
    """Solve ``dy/dt = func(t, y)`` for every sample ``b`` from ``y0[b]`` at ``start[b]`` to each
    of its own times ``times[b, :]``, in one batched solve per output interval.

    ``times`` has shape ``(batch, K)``, each row non-decreasing and at or after its start (a
    repeated time, as in padding, repeats the state); ``start`` is a number or a ``(batch,)``
    tensor. ``func`` receives ``t`` of shape ``(batch, 1, ..., 1)``. Returns the states at the K
    times, ``ys`` of shape ``(K, batch, *state)`` (a tuple for a tuple ``y0``).

    ``method``, tolerances, ``options`` and ``gradient`` are those of
    :func:`~odespec.solvers.solve`. Fixed-step methods take ``steps`` per output interval (every
    sample's interval gets that many equal steps: exactly what solving the sample alone does) or
    ``step_size`` (then the interval's step count follows the batch's longest interval). Raises
    :class:`~odespec.errors.SolverError` naming the interval and the times of its first sample
    when an interval's solve fails.
    """
    from odespec.solvers._odeint import _resolve_method, solve

    tableau = _resolve_method(method)
    first = y0[0] if isinstance(y0, (tuple, list)) and y0 else y0
    times, prev = _check_times(times, start, first)
    if isinstance(y0, (tuple, list)):
        _check_tuple_batch(y0, times.shape[0])
    rank = first.dim() - 1
    parsed = parse_options(tableau, options)
    span = torch.tensor([0.0, 1.0], dtype=times.dtype, device=times.device)
    stats = PerSampleStats(tableau.name)
    outs: list[Any] = []
    # the adaptive step carried from one interval to the next, in t units: the intervals'
    # lengths differ, and the dynamics in s are d times faster than in t
    y, carried = y0, None
    for k in range(times.shape[1]):
        delta = times[:, k] - prev
        longest = float(delta.abs().max())
        g = rescaled(func, prev, delta, rank)
        try:
            sol = solve(g, y, span, method=tableau, rtol=rtol, atol=atol,
                        options=_options_in_s(parsed, longest, carried), gradient=gradient)
        except SolverError as e:
            raise _in_interval(e, k, prev, times[:, k]) from None
        stats.parts.append(sol.stats)
        y = sol.y_last
        if longest > 0:  # an interval of padding only (d = 0 everywhere) says nothing of the step
            carried = abs(sol.stats.final_step_size) * longest or None
        prev = times[:, k]
        outs.append(y)
    return PerSampleSolution(_stack(outs, y0), stats)


def _stack(outs: list[Any], y0: Any) -> Any:
    if isinstance(y0, (tuple, list)):
        return tuple(torch.stack(parts) for parts in zip(*outs, strict=True))
    return torch.stack(outs)


def _check_times(times: Any, start: Union[float, torch.Tensor], like: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``times`` as a ``(batch, K)`` tensor of ``like``'s real dtype and device, K >= 1, and
    ``start`` as ``(batch,)``; finite, each row non-decreasing from its start. Both detached:
    per-sample times are not differentiable (unlike ``odeint``'s ``t``), and a ``times`` requiring grad would otherwise
    reach the gradients through the ``d`` of the rescaling alone, differently for each gradient
    method (the adjoint would even take it for a parameter of ``func``)."""
    dtype = like.abs().dtype
    times = torch.as_tensor(times, dtype=dtype, device=like.device).detach()
    if like.dim() == 0:
        raise ValueError("solve_per_sample needs a state with a batch dimension, shape (batch, ...), got a scalar")
    batch = like.shape[0]
    if times.dim() != 2 or times.shape[0] != batch or times.shape[1] == 0:
        raise ValueError(f"per-sample times must have shape (batch, K) = ({batch}, K >= 1) for a state of batch "
                         f"{batch}, got shape {tuple(times.shape)}")
    start_t = torch.as_tensor(start, dtype=dtype, device=like.device).detach()
    start_t = start_t.expand(batch) if start_t.dim() == 0 else start_t
    if start_t.shape != (batch,):
        raise ValueError(f"start must be a number or one time per sample, shape ({batch},), got {tuple(start_t.shape)}")
    full = torch.cat([start_t[:, None], times], dim=1)
    if not bool(torch.isfinite(full).all()):
        b, k = (int(i) for i in torch.nonzero(~torch.isfinite(full))[0])
        raise ValueError(f"per-sample times must be finite: sample {b} has {full[b, k].item()} at "
                         f"{'its start' if k == 0 else f'index {k - 1}'}")
    steps = full[:, 1:] - full[:, :-1]
    if bool((steps < 0).any()):
        b, k = (int(i) for i in torch.nonzero(steps < 0)[0])
        where = "its start" if k == 0 else f"index {k - 1}"
        raise ValueError(f"per-sample times must be non-decreasing from the start: sample {b} goes from "
                         f"{full[b, k].item():g} ({where}) to {full[b, k + 1].item():g} (index {k})")
    return times, start_t


def _check_tuple_batch(y0: Any, batch: int) -> None:
    """Every tensor of a tuple state has the batch dimension first (each is scaled by its
    sample's interval length)."""
    for i, y in enumerate(y0):
        if not isinstance(y, torch.Tensor) or y.dim() == 0 or y.shape[0] != batch:
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"every tensor of a tuple state must have the batch dimension first, ({batch}, ...): "
                             f"y0[{i}] has shape {shape}")


def _options_in_s(parsed: SolverOptions, longest: float, carried: Optional[float]) -> SolverOptions:
    """The solve's options with its ``t``-unit bounds turned into units of ``s`` for an interval
    whose longest per-sample length is ``longest``; ``carried``: the last interval's step (in
    ``t`` units)."""
    if isinstance(parsed, FixedStepOptions):
        if parsed.step_size is None:
            return parsed
        # the longest interval's count, by the rule a single solve uses (grid.py)
        return FixedStepOptions(steps=steps_for_interval(longest, parsed))
    assert isinstance(parsed, AdaptiveOptions)
    scale = 1.0 / longest if longest > 0 else 1.0
    first = carried if carried is not None else parsed.first_step
    first = first * scale if first is not None else None
    return dataclasses.replace(parsed, first_step=None if first is None else min(first, 1.0),
                               min_step=parsed.min_step * scale, max_step=parsed.max_step * scale)


def _in_interval(error: SolverError, k: int, start: torch.Tensor, stop: torch.Tensor) -> SolverError:
    """``error`` of interval ``k``'s rescaled solve, told in the own times of the sample with the
    longest interval (the one whose time the solve's step sizes follow; a padded sample's
    interval may have length 0)."""
    b = int(torch.argmax((stop - start).abs()))
    t0, t1 = float(start[b]), float(stop[b])
    t = t0 + error.t * (t1 - t0)
    message = str(error).split(" (t=")[0]
    # the standard hint quotes the failure's time: in s, so tell it again in t
    standard = solver_error(error.reason, error.t, error.h, "").hint
    hint = None if error.hint == standard else error.hint
    return solver_error(error.reason, t, error.h * (t1 - t0),
                        f"{message}, in output interval {k} (sample {b}: t from {t0:g} to {t1:g}; per-sample "
                        f"times are solved one interval at a time, rescaled to s in [0, 1])", hint)
