"""Validation of the arguments of :func:`odespec.solvers.solve`: state, times, tolerances."""

from __future__ import annotations

import math
from typing import Any, Union

import torch

from odespec.solvers.options import InvalidOptionError

__all__ = ["check_state", "check_times", "check_monotonic", "check_tolerance"]

Tol = Union[float, torch.Tensor]


def check_state(y0: Any) -> torch.Tensor:
    """``y0`` must be a floating point (or complex) tensor."""
    if not isinstance(y0, torch.Tensor):
        raise TypeError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
    if not (y0.is_floating_point() or y0.is_complex()):
        raise TypeError(f"y0 must be a floating point tensor, got dtype {y0.dtype}")
    return y0


def check_times(t: Any, y0: torch.Tensor) -> torch.Tensor:
    """``t`` as a non-empty 1-D floating point tensor on ``y0``'s device."""
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t, dtype=y0.abs().dtype)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"t must be a non-empty 1-D tensor of times, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(y0.abs().dtype)
    return t.to(y0.device)


def check_monotonic(times: list[float]) -> None:
    """Finite and strictly increasing or strictly decreasing."""
    if not all(math.isfinite(x) for x in times):
        raise ValueError("t must be finite")
    increasing = times[1] > times[0]
    for a, b in zip(times, times[1:], strict=False):
        if (b > a) != increasing or a == b:
            raise ValueError("t must be strictly increasing or strictly decreasing")


def check_tolerance(name: str, tol: Tol, y0: torch.Tensor) -> None:
    """A finite number >= 0, or a tensor of such that broadcasts to the state's shape."""
    if isinstance(tol, torch.Tensor):
        try:
            shape = torch.broadcast_shapes(tol.shape, y0.shape)
        except RuntimeError:
            shape = None
        if shape != y0.shape:
            raise InvalidOptionError(
                f"{name} of shape {tuple(tol.shape)} does not broadcast to the state shape "
                f"{tuple(y0.shape)}",
                key=name,
            )
        if bool((tol < 0).any()):
            raise InvalidOptionError(f"{name} must be >= 0", key=name)
        return
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (tol >= 0) or math.isinf(tol):
        raise InvalidOptionError(f"{name} must be a finite number >= 0 or a tensor, got {tol!r}", key=name)
