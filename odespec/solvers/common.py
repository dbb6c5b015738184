"""Pieces shared by the fixed-step and adaptive integrators."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence, Union, cast

import torch

from odespec.errors import SolverError
from odespec.solvers.callbacks import Callbacks

__all__ = ["TimedFunc", "Outcome", "Quadrature", "solver_error", "nonfinite_start"]


class Quadrature(Protocol):
    """A quantity integrated *alongside* the state, which nothing in the dynamics depends on
    (the adjoint's parameter gradient). Carrying it in the state would cost every stage
    combination its size; as a quadrature it costs one weighted sum per accepted step. The
    vector field attaches each stage's integrand to the derivative it returns; the integrators
    hand every accepted step's stages to :meth:`accept` (and nothing of a rejected one)."""

    def accept(self, h: float, ks: Sequence[torch.Tensor]) -> None:
        """Add ``h * sum(b_i q_i)`` of an accepted step with stage derivatives ``ks``."""


class TimedFunc:
    """Wraps the user's ``func(t, y)``: the integrators keep time as Python floats (exact
    bookkeeping, no device syncs), the user's function gets a 0-d tensor ``t`` as in
    torchdiffeq. Also counts evaluations, and carries the solver callbacks found on the user's
    function (``callbacks``, ``None`` when it has none; see :mod:`odespec.solvers.callbacks`)."""

    __slots__ = ("func", "dtype", "device", "nfe", "callbacks", "jac_hook", "_t_float", "_t_tensor")

    def __init__(self, func: Callable, dtype: torch.dtype, device: torch.device,
                 callbacks: Optional[Callbacks] = None):
        self.func = func
        self.callbacks = callbacks
        self.dtype = dtype
        self.device = device
        self.nfe = 0
        # an odespec vector field that knows its Newton Jacobian (the adjoint's augmented dynamics,
        # whose output autograd cannot connect to its input): see odespec.solvers.implicit
        hook = getattr(func, "odespec_newton_jacobian", None)
        self.jac_hook: Optional[Callable[[float, torch.Tensor], torch.Tensor]] = None
        if hook is not None:
            # the hook gets the time as func does, a 0-d tensor
            self.jac_hook = lambda t, y: hook(self._tensor(t), y)
        self._t_float: Optional[float] = None
        self._t_tensor: Optional[torch.Tensor] = None

    def __call__(self, t: Union[float, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        # _tensor inlined: this call is the hot path of every solve
        if not isinstance(t, torch.Tensor):
            if t != self._t_float:
                # scalar_tensor is the cheapest way to a 0-d tensor and, on a GPU, a fill kernel
                # rather than a host-to-device copy. The last one is reused for the same time
                # (DOPRI5/Tsit5's last two stages both sit at t + h).
                self._t_float = t
                self._t_tensor = torch.scalar_tensor(t, dtype=self.dtype, device=self.device)
            t = cast(torch.Tensor, self._t_tensor)  # made above, or by an earlier call at this time
        return self.func(t, y)

    def _tensor(self, t: Union[float, torch.Tensor]) -> torch.Tensor:
        """``t`` as the 0-d tensor ``func`` gets."""
        if isinstance(t, torch.Tensor):
            return t
        return torch.scalar_tensor(t, dtype=self.dtype, device=self.device)


@dataclass
class Outcome:
    """What an integrator returns: the outputs reached (``outs[i]`` at ``times[i]``), the last
    accepted state, step statistics and the failure, if any."""

    outs: list
    t_last: float
    y_last: torch.Tensor
    n_steps: int = 0
    n_accepted: int = 0
    n_rejected: int = 0
    step_size: float = 0.0
    error: Optional[SolverError] = field(default=None)


_HINTS = {
    "non-finite": (
        "the dynamics produced NaN or inf near t={t:.6g}; check the model for overflow "
        "(unbounded activations, large weights) or try a smaller step / fixed-step method"
    ),
    "step-size-underflow": (
        "the dynamics may be stiff or singular near t={t:.6g}; try a fixed-step method, "
        "looser tolerances or regularisation"
    ),
    "max-steps": (
        "raise options['max_num_steps'] or loosen rtol/atol; if the steps are tiny the "
        "dynamics may be stiff near t={t:.6g}: try a fixed-step method or regularisation"
    ),
}


def solver_error(reason: str, t: float, h: float, message: str, hint: Optional[str] = None) -> SolverError:
    """A :class:`SolverError` with ``hint``, else the standard hint for ``reason``."""
    return SolverError(reason, float(t), float(h), message, hint or _HINTS[reason].format(t=t))


def nonfinite_start(func: Callable, y0: torch.Tensor, *, fixed: bool) -> tuple[str, str]:
    """(message, hint) for a solve that is not finite from its start, naming the cause the data
    shows: the initial state (the input batch, or the layers before the solve), the parameters
    of ``func`` (an ``nn.Module``, possibly wrapped by :class:`TimedFunc`), or ``func`` itself."""
    finite = torch.isfinite(y0.detach())
    if not bool(finite.all()):
        n = int((~finite).sum())
        return (f"the initial state holds {n} NaN or inf value(s) of {y0.numel()}",
                "the input batch (or a layer before this solve) carries NaN or inf: check the inputs")
    inner = getattr(func, "func", func)
    bad = ([name for name, p in inner.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
           if isinstance(inner, torch.nn.Module) else [])
    if bad:
        return (f"the derivative at the initial state is not finite: parameter(s) {', '.join(bad[:3])} hold NaN or inf",
                "the weights diverged (an optimizer step too large): lower the learning rate, clip gradients, or "
                "start again from a checkpoint")
    how = "unbounded activations, large weights" + ("" if fixed else "; or try a fixed-step method")
    return ("the derivative at the initial state is not finite, though the state and the parameters are",
            f"the dynamics overflow at this state: look for {how}")
