"""torchdiffeq's fixed-step Adams methods: ``explicit_adams`` (Adams-Bashforth) and
``implicit_adams``/``fixed_adams`` (Adams-Bashforth-Moulton, predictor-corrector).

Semantics as torchdiffeq's: every step evaluates ``f`` at its start and keeps it in a history of
at most ``max_order - 1`` derivatives; while the history holds fewer than three, the step is one
RK4 step (the 3/8 rule, from the derivative just taken); then it is Adams-Bashforth of the order
the history allows (3 up to ``max_order - 1``), and for the implicit method the Adams-Moulton
corrector of one order more is iterated (a functional iteration, at most ``max_iters`` times,
until two successive increments agree within ``rtol``/``atol``; without agreement the oldest
derivative leaves the history and a warning says so).

One difference on purpose: the coefficients are those of equal steps, so the history starts
again (with RK4) wherever the step size changes: torchdiffeq's keeps it across output intervals
of different lengths, which is a formula for equal steps applied to unequal ones.

The coefficients are computed here, exactly, by integrating the Lagrange basis polynomials of
the nodes (rational arithmetic, at import).
"""

from __future__ import annotations

import warnings
from fractions import Fraction
from typing import Iterator, Optional

import torch

from odespec.solvers.callbacks import Callbacks
from odespec.solvers.common import Outcome, TimedFunc
from odespec.solvers.fixed import _grid, _Perturbed, _check_finite, outputs_in_step
from odespec.solvers.grid import steps_for_interval
from odespec.solvers.norms import Tol
from odespec.solvers.options import DEFAULT_ADAMS_ITERS, FixedStepOptions
from odespec.solvers.step import own, stepper
from odespec.solvers.tableaus import RK4_38, OtherMethod

__all__ = ["integrate_adams", "adams_steps", "bashforth", "moulton", "MAX_ORDER"]

MAX_ORDER = 12
# the history restarts where the step size changes by more than this, relatively
_SAME_STEP = 1e-9


def _adams(nodes: list[int]) -> tuple[Fraction, ...]:
    """``int_0^1 l_j(s) ds`` for the Lagrange basis ``l_j`` of ``nodes`` (in steps, relative to
    the step's start): the weights of ``f`` at those nodes."""
    out = []
    for j, xj in enumerate(nodes):
        poly = [Fraction(1)]  # coefficients, lowest degree first
        denom = Fraction(1)
        for k, xk in enumerate(nodes):
            if k == j:
                continue
            poly = [Fraction(0)] + poly  # * s
            for i in range(len(poly) - 1):
                poly[i] -= xk * poly[i + 1]  # - xk
            denom *= xj - xk
        out.append(sum((c / (i + 1) for i, c in enumerate(poly)), Fraction(0)) / denom)
    return tuple(out)


def bashforth(order: int) -> tuple[Fraction, ...]:
    """Adams-Bashforth weights of ``f_n, f_{n-1}, ...`` (``order`` of them)."""
    return _adams([-j for j in range(order)])


def moulton(order: int) -> tuple[Fraction, ...]:
    """Adams-Moulton weights of ``f_{n+1}, f_n, f_{n-1}, ...`` (``order`` of them)."""
    return _adams([1 - j for j in range(order)])


_AB = [tuple(float(c) for c in bashforth(k)) if k else () for k in range(MAX_ORDER + 1)]
_AM = [tuple(float(c) for c in moulton(k)) if k else () for k in range(MAX_ORDER + 1)]
# fewer than this many derivatives in the history: the step is RK4
_MIN_HISTORY = 3


class _Adams:
    """The state of one Adams solve: the history of derivatives and the step it was taken with."""

    def __init__(self, f: TimedFunc, method: OtherMethod, opts: FixedStepOptions, rtol: Tol, atol: Tol,
                 y0: torch.Tensor):
        self.f, self.opts = f, opts
        self.implicit = method.implicit
        self.max_order = opts.max_order
        self.max_iters = opts.max_iters if opts.max_iters is not None else DEFAULT_ADAMS_ITERS
        self.rtol, self.atol = rtol, atol
        self.capacity = max(1, self.max_order - 1)
        # the history as one tensor, a row per derivative, newest first: a step adds its row
        # by one cat, and one matrix-vector product sums it with a formula's weights (a sum
        # term by term costs two operations per derivative, and as many again in backward)
        self.history: Optional[torch.Tensor] = None
        self.h: Optional[float] = None
        self.rk4 = stepper(RK4_38, y0, with_error=False)
        self.warned = False
        self.like = y0
        self.weights: dict[tuple[int, bool], torch.Tensor] = {}  # made on first use

    def step(self, t0: float, y: torch.Tensor, h: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y_next, f(t0, y))`` of one step."""
        f = self.f
        if f.callbacks is not None:
            Callbacks.call(f.callbacks.step, t0, y, h)
        g = _Perturbed(f, t0, t0 + h) if self.opts.perturb else f
        if self.h is None or abs(h - self.h) > _SAME_STEP * abs(h):
            self.history = None
            self.h = h
        f0 = g(t0, y)
        row = f0.reshape(1, -1)
        old = self.history
        self.history = row if old is None else torch.cat((row, old[: self.capacity - 1]))
        order = min(self.history.shape[0], self.max_order - 1)
        if order < _MIN_HISTORY:
            return self.rk4(g, t0, y, h, f0).y_next, f0
        if not self.implicit:
            return self._sum(order, False, h, y), f0
        dy = self._sum(order, False, h)
        return y + self._correct(g, t0 + h, y, h, dy, order + 1), f0

    def _sum(self, order: int, moulton: bool, h: float, base: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``base + h * sum_j c_j f_j`` over the history with the weights of Adams-Bashforth of
        ``order`` (``moulton``: those of Adams-Moulton of ``order + 1`` but its first), ``base``
        left out when None."""
        key = (order, moulton)
        w = self.weights.get(key)
        if w is None:
            coeffs = _AM[order + 1][1:] if moulton else _AB[order]
            w = self.weights[key] = torch.tensor(coeffs, dtype=self.like.dtype, device=self.like.device)
        history = self.history  # as many rows as the order: the history is why the order is what it is
        assert history is not None
        if base is None:
            return torch.mv(history.t(), w).mul_(h).view(self.like.shape)
        return torch.addmv(base.reshape(-1), history.t(), w, alpha=h).view(self.like.shape)

    def _correct(self, g: object, t1: float, y: torch.Tensor, h: float, dy: torch.Tensor, order: int) -> torch.Tensor:
        """The Adams-Moulton corrector of ``order`` iterated on the increment ``dy`` (a functional
        iteration), until two successive increments agree within rtol/atol."""
        known = self._sum(order - 1, True, h)
        c0h = h * _AM[order][0]
        converged = False
        previous_abs = None
        for _ in range(self.max_iters):
            previous = dy
            dy = torch.add(known, g(t1, y + dy), alpha=c0h)  # type: ignore[operator]
            # the test is no part of the solution: recorded by no graph
            with torch.no_grad():
                dy_abs = dy.abs()
                bound = torch.maximum(previous.abs() if previous_abs is None else previous_abs, dy_abs)
                bound = self.atol + self.rtol * bound
                converged = bool(torch.le(torch.sub(previous, dy).abs_(), bound).all())
            if converged:
                break
            previous_abs = dy_abs
        if not converged:
            if not self.warned:
                warnings.warn("implicit_adams: the corrector did not converge in max_iters iterations; the solution "
                              "may be inaccurate (take smaller steps or raise options['max_iters'])", RuntimeWarning,
                              stacklevel=4)
                self.warned = True
            assert self.history is not None
            self.history = self.history[:-1]  # the oldest derivative leaves
        return dy


def adams_steps(f: TimedFunc, y0: torch.Tensor, t0: float, h: float, method: OtherMethod, opts: FixedStepOptions,
                rtol: Tol, atol: Tol) -> Iterator[tuple[float, torch.Tensor, torch.Tensor, float, torch.Tensor]]:
    """Steps of exactly ``h`` (signed) from ``(t0, y0)``, without end, as :func:`integrate_adams`
    takes them (one history throughout): yields ``(t_a, y_a, f(t_a, y_a), t_b, y_b)`` for each
    step from ``t_a`` to ``t_b``. Step ``k`` ends at ``t0 + k * h``, so the times do not drift,
    and is taken as ``integrate_adams`` takes a ``grid_constructor``'s step between those times
    (size ``t_b - t_a``), so that a solve on that grid repeats the walk to round-off. The event
    search walks these (:mod:`odespec.solvers.events`)."""
    adams = _Adams(f, method, opts, rtol, atol, y0)
    t, y, k = t0, y0, 0
    while True:
        k += 1
        t1 = t0 + k * h
        y1, f0 = adams.step(t, y, t1 - t)
        yield t, y, f0, t1, y1
        t, y = t1, y1


def integrate_adams(f: TimedFunc, y0: torch.Tensor, times: list[float], method: OtherMethod,
                    opts: FixedStepOptions, rtol: Tol, atol: Tol) -> Outcome:
    """Integrate through ``times`` with the Adams ``method``: each output interval in equal steps
    (``steps``/``step_size``, one step without either), or ``grid_constructor``'s grid with the
    outputs inside a step interpolated (``interp``)."""
    adams = _Adams(f, method, opts, rtol, atol, y0)
    outcome = Outcome(outs=[y0], t_last=times[0], y_last=y0)
    y, h = y0, 0.0
    if opts.grid_constructor is not None:
        grid = _grid(f, y0, times, opts)
        direction = 1.0 if times[-1] > times[0] else -1.0
        j = 1
        for t0, t1 in zip(grid[:-1], grid[1:], strict=True):
            h = t1 - t0
            y1, f0 = adams.step(t0, y, h)

            def slopes(f0: torch.Tensor = f0, t1: float = t1, y1: torch.Tensor = y1
                       ) -> tuple[torch.Tensor, torch.Tensor]:
                return f0, f(t1, y1)

            j = outputs_in_step(outcome, times, j, direction, opts.interp, t0, y, t1, y1, slopes)
            y = y1
            outcome.n_steps += 1
    else:
        for t0, t1 in zip(times[:-1], times[1:], strict=True):
            n = steps_for_interval(t1 - t0, opts)
            h = (t1 - t0) / n
            for k in range(n):
                y, _ = adams.step(t0 + k * h, y, h)
            outcome.n_steps += n
            outcome.outs.append(own(y))
    outcome.n_accepted = outcome.n_steps
    outcome.step_size = h
    outcome.t_last, outcome.y_last = times[-1], y
    return _check_finite(f, y0, times, outcome)
