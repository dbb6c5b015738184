"""Solver callbacks on the vector field and time perturbation, as torchdiffeq defines them.

A ``func`` may carry ``callback_step(t0, y0, dt)`` (before every step attempt),
``callback_accept_step(t0, y0, dt)`` and ``callback_reject_step(t0, y0, dt)`` (after the
decision on an adaptive step); the adjoint's backward solves call the same names with the
suffix ``_adjoint``. ``t0`` and ``dt`` are 0-d tensors in the state's real dtype, as in
torchdiffeq. A fixed-step solve has no accepted or rejected steps: a ``func`` carrying those
callbacks gets a warning (torchdiffeq's behaviour), since they would never be called.

Perturbation (:func:`nudge`) moves a time by one float of the state's dtype, so that ``func``
evaluated at the end of a step sees the side of a discontinuity the step lies on.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

__all__ = ["CALLBACK_NAMES", "Callbacks", "warn_unsupported", "nudge"]

CALLBACK_NAMES = ("callback_step", "callback_accept_step", "callback_reject_step")
#: the callbacks a fixed-step solve calls
FIXED_CALLBACKS = ("callback_step",)


@dataclass(frozen=True)
class Callbacks:
    """The callbacks found on a ``func`` (``None`` where it has none)."""

    step: Optional[Callable[..., Any]] = None
    accept: Optional[Callable[..., Any]] = None
    reject: Optional[Callable[..., Any]] = None

    @classmethod
    def of(cls, func: Any, suffix: str = "") -> Optional["Callbacks"]:
        """The callbacks ``func`` carries under the names :data:`CALLBACK_NAMES` + ``suffix``;
        ``None`` when it carries none (the integrators then skip the calls altogether)."""
        found = [getattr(func, name + suffix, None) for name in CALLBACK_NAMES]
        if not any(callable(c) for c in found):
            return None
        return cls(*(c if callable(c) else None for c in found))

    @staticmethod
    def call(callback: Optional[Callable[..., Any]], t: float, y: torch.Tensor, h: float) -> None:
        """``callback(t0, y0, dt)`` with ``t0``, ``dt`` as 0-d tensors of ``y``'s real dtype."""
        if callback is None:
            return
        real = y.dtype.to_real()
        callback(torch.scalar_tensor(t, dtype=real, device=y.device), y,
                 torch.scalar_tensor(h, dtype=real, device=y.device))


def warn_unsupported(func: Any, method: str, fixed: bool, supported: Optional[tuple[str, ...]] = None) -> None:
    """Warn when ``func`` carries callbacks the solve never calls (a fixed-step method's
    accept/reject callbacks; ``supported``: the callbacks a method calls, where that is neither
    rule, e.g. none for SciPy's solvers)."""
    if supported is None:
        if not fixed:
            return
        supported = FIXED_CALLBACKS
    unused = sorted(n for n in CALLBACK_NAMES if n not in supported and callable(getattr(func, n, None)))
    if unused:
        why = "a fixed-step solve accepts every step" if fixed else "its steps are taken outside odespec"
        warnings.warn(f"solver {method!r} does not support callbacks {unused}: {why}, so they would never be called",
                      stacklevel=3)


def nudge(t: float, toward: float, dtype: torch.dtype) -> float:
    """The float of ``dtype`` next to ``t`` (rounded to ``dtype``) in the direction of ``toward``."""
    a = torch.tensor(t, dtype=dtype)
    return float(torch.nextafter(a, torch.tensor(toward, dtype=dtype)))
