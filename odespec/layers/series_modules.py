"""Torch modules of the layers that read irregular series (``ode_rnn``, ``rnn``/``gru`` with
``time_gaps``, ``rnn_decoder``), and the protocol by which the model hands them the series
inputs. Imported only when building.

The protocol: a module with ``reads_series = True`` is called ``module(x, series)`` with a
:class:`Series` holding the model's ``times``, ``mask`` and ``query_times`` (each None when the
model has no such input); every other module is called ``module(x)``, as in ``nn.Sequential``.
Everything here is written for tracing (``torch.onnx.export``): loops run over time slots (a
fixed T, unrolled), never over samples, and no value of the batch decides control flow.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
from torch import nn

from odespec.errors import SeriesInputError
from odespec.solvers.config import GradientConfig, SolverConfig

__all__ = ["Series", "SeriesDynamics", "ODERNN", "GapRecurrentEncoder", "RNNDecoder", "masked_input",
           "observed_any"]


class Series(NamedTuple):
    """The model's inputs beside ``input``: ``times`` (batch, T), ``mask`` (batch, T, F),
    ``query_times`` (batch, T'); None where the model has no such input."""

    times: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    query_times: Optional[torch.Tensor] = None


def masked_input(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """A recurrent step's input: ``cat(x * mask, mask)`` over the features, with unobserved values
    replaced by 0 (``where``, not a product: a missing value may be NaN, and ``NaN * 0`` is NaN),
    or ``x`` itself without a mask."""
    if mask is None:
        return x
    m = mask.to(x.dtype)
    return torch.cat([torch.where(m > 0, x, torch.zeros_like(x)), m], dim=-1)


def observed_any(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(batch, T, 1): 1 where a sample observed any feature at that slot, else 0 (``like``'s dtype)."""
    return (mask.to(like.dtype).amax(dim=-1, keepdim=True) > 0).to(like.dtype)


def _need(series: Optional[Series], name: str, layer: str) -> torch.Tensor:
    value = None if series is None else getattr(series, name)
    if value is None:
        raise SeriesInputError(f"{layer} reads the model input '{name}', but the call gave none",
                               f"call the model as model(input, {name}=...) (ODENet.forward's keywords)")
    return value


class SeriesDynamics(nn.Module):
    """An ODE-RNN's hidden-state dynamics f(t, h): its layers in order (autonomous: t is not fed).
    ``nfe`` counts calls, as an ODE block's dynamics does."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.nfe = 0

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        for layer in self.layers:
            h = layer(h)
        return h


class _Backwards(nn.Module):
    """``g(s, h) = -f(-s, h)``: f solved backwards in time, as a forward solve in ``s = -t``
    (the per-sample solver takes non-decreasing times). A module, so the adjoint finds f's
    parameters."""

    def __init__(self, func: nn.Module):
        super().__init__()
        self.func = func

    def forward(self, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return -self.func(-s, h)


class ODERNN(nn.Module):
    """ODE-RNN (Rubanova et al. 2019): between consecutive observation times the hidden state
    ``h`` (batch, hidden) follows ``dh/dt = f(h)``; at each observation a GRU cell updates it
    from ``cat(x * mask, mask)`` (``x`` without a mask), only in the samples that observed any
    feature there (``h = o * gru(.) + (1 - o) * h``). ``h`` starts at 0.

    ``reverse`` (the latent ODE's encoder) reads the last observation first: ``h`` starts at
    the sample's last observation time, runs backwards through its observations and ends at
    ``start``; otherwise it starts at ``start`` and ends at the last observation. Every interval
    is solved per sample (:func:`~odespec.solvers.solve_per_sample`), one interval at a time
    between the updates. Output: the final ``h``, or with ``sequence`` the state after each
    slot's update, (batch, T, hidden), in time order.

    :meth:`with_solver` makes a twin solved another way (the export's fixed-step unroll).
    """

    reads_series = True

    def __init__(self, features: int, hidden: int, dynamics: SeriesDynamics, *, solver: SolverConfig,
                 gradient: GradientConfig, reverse: bool, sequence: bool, start: float, use_mask: bool,
                 cell: Optional[nn.GRUCell] = None):
        super().__init__()
        self.cell = cell if cell is not None else nn.GRUCell(features * (2 if use_mask else 1), hidden)
        self.dynamics = dynamics
        self.hidden = hidden
        self.solver = solver
        self.gradient = gradient
        self.reverse = reverse
        self.sequence = sequence
        self.start = start
        self.use_mask = use_mask
        self._tableau = solver.tableau
        self._options = solver.integration_options()
        self._gradient = gradient.for_solver(solver).make()
        #: function evaluations of the last forward pass (all gaps), as an ODE block reports them
        self.nfe_forward = 0

    def with_solver(self, solver: SolverConfig, gradient: Optional[GradientConfig] = None) -> "ODERNN":
        """This encoder solved with ``solver`` (and ``gradient``, else its own): a new module that
        shares this one's GRU cell and dynamics (so its weights), in the same mode."""
        twin = ODERNN(0, self.hidden, self.dynamics, solver=solver, gradient=gradient or self.gradient,
                      reverse=self.reverse, sequence=self.sequence, start=self.start, use_mask=self.use_mask,
                      cell=self.cell)
        twin.train(self.training)
        return twin

    def update(self, x: torch.Tensor, h: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One observation slot's update of ``h`` (batch, hidden) from the slot's values ``x``
        (batch, F) and, with a mask, its ``mask`` (batch, F): the GRU cell on ``cat(x * mask,
        mask)``, kept only in the samples that observed any feature there. The exporter lays
        this very function into the graph once per slot."""
        new = self.cell(masked_input(x, mask), h)
        if mask is None:
            return new
        observed = observed_any(mask[:, None], x[:, None])[:, 0]
        return observed * new + (1 - observed) * h

    def _evolve(self, h: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``h`` carried from each sample's time ``a`` to its ``b`` (both (batch,); ``b >= a``
        forwards, ``b <= a`` when reversed)."""
        from odespec.solvers import solve_per_sample

        # backwards: a fresh wrapper each time (registering it would list f's weights twice)
        func, a, b = (_Backwards(self.dynamics), -a, -b) if self.reverse else (self.dynamics, a, b)
        try:
            sol = solve_per_sample(func, h, b[:, None], start=a, method=self._tableau, options=self._options,
                                   rtol=self.solver.rtol, atol=self.solver.atol,
                                   gradient=self._gradient if torch.is_grad_enabled() else "backprop")
        except ValueError as e:  # times out of order: the caller's input, told as such
            raise SeriesInputError(f"ode_rnn: {e}", "each sample's times must be non-decreasing "
                                   "and at or after start") from None
        return sol.ys[-1]

    def forward(self, x: torch.Tensor, series: Series) -> torch.Tensor:
        times = _need(series, "times", "ode_rnn").to(x.dtype)
        mask = _need(series, "mask", "ode_rnn") if self.use_mask else None
        before = self.dynamics.nfe
        steps = x.shape[1]
        h = x.new_zeros((x.shape[0], self.hidden))
        start = torch.full_like(times[:, 0], self.start)
        order = range(steps - 1, -1, -1) if self.reverse else range(steps)
        prev = times[:, -1] if self.reverse else start
        outs: list[torch.Tensor] = [h] * steps
        for k in order:
            h = self._evolve(h, prev, times[:, k])
            h = self.update(x[:, k], h, None if mask is None else mask[:, k])
            outs[k] = h
            prev = times[:, k]
        if self.reverse:
            h = self._evolve(h, prev, start)
        self.nfe_forward = self.dynamics.nfe - before
        return torch.stack(outs, dim=1) if self.sequence else h

    def extra_repr(self) -> str:
        return (f"hidden={self.hidden}, reverse={self.reverse}, method={self.solver.method}, "
                f"{self.solver.describe_options()}, gradient={self.gradient.method}")


class GapRecurrentEncoder(nn.Module):
    """An RNN/GRU fed the time gaps: its step input is ``cat(x * mask, mask, dt)`` (``cat(x, dt)``
    without a mask), ``dt`` the gap to the previous observation time (0 at the first; with
    ``reverse``, the gap to the next one, 0 at the last). The recurrent part is
    :class:`~odespec.layers.torch_modules.RecurrentEncoder` (same parameters, same export)."""

    reads_series = True

    def __init__(self, encoder: nn.Module, *, reverse: bool, use_mask: bool):
        super().__init__()
        self.encoder = encoder
        self.reverse = reverse
        self.use_mask = use_mask

    def forward(self, x: torch.Tensor, series: Series) -> torch.Tensor:
        times = _need(series, "times", "rnn/gru with time_gaps").to(x.dtype)
        mask = _need(series, "mask", "rnn/gru with time_gaps") if self.use_mask else None
        gaps = times[:, 1:] - times[:, :-1]
        zero = torch.zeros_like(times[:, :1])
        dt = torch.cat([gaps, zero] if self.reverse else [zero, gaps], dim=1)
        return self.encoder(torch.cat([masked_input(x, mask), dt[..., None]], dim=-1))


class RNNDecoder(nn.Module):
    """The RNN decoder baseline: from ``h0`` (the input, (batch, hidden)), ``h_k = cell(dt_k,
    h_{k-1})`` at each query time ``k``, ``dt_k`` the gap from the previous query time (from
    ``start`` for the first); output (batch, T', hidden)."""

    reads_series = True

    def __init__(self, cell: str, hidden: int, start: float):
        super().__init__()
        self.cell: Any = nn.GRUCell(1, hidden) if cell == "gru" else nn.RNNCell(1, hidden)
        self.start = start

    def forward(self, x: torch.Tensor, series: Series) -> torch.Tensor:
        query = _need(series, "query_times", "rnn_decoder").to(x.dtype)
        prev = torch.full_like(query[:, 0], self.start)
        h, outs = x, []
        for k in range(query.shape[1]):
            h = self.cell((query[:, k] - prev)[:, None], h)
            outs.append(h)
            prev = query[:, k]
        return torch.stack(outs, dim=1)
