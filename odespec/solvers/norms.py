"""Error norms of the adaptive step-size control.

:class:`ErrorNorm` is Hairer's scaled RMS norm over every element of the state. :class:`MixedNorm`
is the norm of a state made of several *channels* (the adjoint's augmented state ``[y, a,
dL/dtheta]``): the largest of the channels' scaled RMS norms, as torchdiffeq's default adjoint
norm; a *seminorm* (Kidger, Chen & Lyons 2021) leaves trailing channels out of error control
altogether.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Union

import torch

from odespec.solvers.step import const_tensor

__all__ = ["ErrorNorm", "MixedNorm", "CallableNorm", "Tol"]

Tol = Union[float, torch.Tensor]


class ErrorNorm:
    """Scaled RMS norm of error estimates with per-component ``atol``/``rtol``.

    Callers compute ``rms(x, scale(abs(y0), abs(y1))) * inv_sqrt_n``: the ``1/sqrt(n)`` is kept
    out of the tensor expression so it costs a Python multiplication, not an aten op.
    """

    def __init__(self, y0: torch.Tensor, rtol: Tol, atol: Tol):
        real = y0.dtype.to_real()
        # copies that never make the host wait (see const_tensor); a tolerance tensor the
        # user gave on the host is pageable memory, which CUDA stages before returning
        if isinstance(atol, torch.Tensor):
            self.atol = atol.to(dtype=real, device=y0.device, non_blocking=True)
        else:
            self.atol = const_tensor(float(atol), real, y0.device)
        if isinstance(rtol, torch.Tensor):
            self.rtol_t: Optional[torch.Tensor] = rtol.to(dtype=real, device=y0.device, non_blocking=True)
            self.rtol = 0.0
        else:
            self.rtol_t = None
            self.rtol = float(rtol)
        self.inv_sqrt_n = 1.0 / math.sqrt(max(1, y0.numel()))

    def abs(self, y: torch.Tensor) -> torch.Tensor:
        """``|y|`` of the components that enter the norm."""
        return y.abs()

    def scale(self, y0_abs: torch.Tensor, y1_abs: torch.Tensor) -> torch.Tensor:
        """``atol + rtol * max(|y0|, |y1|)`` (a NaN in y1 propagates, so it is never accepted)."""
        m = torch.maximum(y0_abs, y1_abs)
        if self.rtol_t is None:
            return torch.add(self.atol, m, alpha=self.rtol)
        return torch.addcmul(self.atol, self.rtol_t, m)

    def rms(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Unscaled 2-norm of ``x / scale`` (multiply by ``inv_sqrt_n`` for the RMS)."""
        return torch.linalg.vector_norm(x / scale)

    def rows(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """:meth:`rms` of each row of ``x`` (shape ``(r, numel)``, flat states): one norm op."""
        return torch.linalg.vector_norm(x / scale.reshape(-1), dim=1)

    def channels(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """:meth:`rms` of each channel of ``x``, as a 1-D tensor (one channel here)."""
        return self.rms(x, scale).reshape(1)


class MixedNorm(ErrorNorm):
    """``max_c RMS_c(x_c / scale_c)`` over the channels of a flat state.

    ``sizes`` are the channels' lengths in order; only the first ``active`` channels enter the
    norm (``active < len(sizes)`` is a seminorm). Tolerance tensors must have the full flat
    length. ``|y|`` is only ever taken of the active prefix, so a seminorm also saves the
    elementwise work on the ignored channels.
    """

    def __init__(self, z0: torch.Tensor, rtol: Tol, atol: Tol, sizes: Sequence[int], active: int):
        if not 1 <= active <= len(sizes) or sum(sizes) != z0.numel():
            raise ValueError(f"bad channels {list(sizes)} (active {active}) for a state of {z0.numel()}")
        self.end = sum(sizes[:active])
        head = z0.reshape(-1)[: self.end]
        super().__init__(head, _head(rtol, self.end), _head(atol, self.end))
        self.sizes = [n for n in sizes[:active] if n > 0]
        self.weights = [1.0 / math.sqrt(n) for n in self.sizes]
        self.inv_sqrt_n = 1.0  # rms() already returns the normalised value

    def abs(self, y: torch.Tensor) -> torch.Tensor:
        return y.reshape(-1)[: self.end].abs()

    def rms(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        norms = self._per_channel(x.reshape(-1)[: self.end] / scale)
        return norms[0] if len(norms) == 1 else torch.stack(norms).amax()

    def rows(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        norms = self._per_channel(x[:, : self.end] / scale, dim=1)
        return norms[0] if len(norms) == 1 else torch.stack(norms).amax(dim=0)

    def channels(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        norms = self._per_channel(x.reshape(-1)[: self.end] / scale)
        return norms[0].reshape(1) if len(norms) == 1 else torch.stack(norms)

    def _per_channel(self, q: torch.Tensor, dim: Optional[int] = None) -> list[torch.Tensor]:
        """Each active channel's RMS norm of ``q`` (already scaled; channels along the last
        dimension), over ``dim``. One channel needs no split."""
        if len(self.sizes) == 1:
            return [torch.linalg.vector_norm(q, dim=dim) * self.weights[0]]
        parts = q.split(self.sizes, dim=-1)
        return [torch.linalg.vector_norm(p, dim=dim) * w for p, w in zip(parts, self.weights, strict=True)]


def _head(tol: Tol, end: int) -> Tol:
    if isinstance(tol, torch.Tensor) and tol.ndim > 0:
        return tol.reshape(-1)[:end]
    return tol


class CallableNorm(ErrorNorm):
    """A norm the caller gives (torchdiffeq's ``norm`` option): ``norm(x / scale)`` with the
    scaled estimate shaped as the state. Being a norm, it is taken to be homogeneous: some
    estimates reach it without their factor ``|h|``, which multiplies its value instead."""

    def __init__(self, y0: torch.Tensor, rtol: Tol, atol: Tol, norm: Callable[[Any], Any]):
        super().__init__(y0, rtol, atol)
        self.norm = norm
        self.shape = y0.shape
        self.inv_sqrt_n = 1.0  # the callable's value is the norm itself

    def _apply(self, q: torch.Tensor) -> torch.Tensor:
        value = self.norm(q.reshape(self.shape))
        return torch.as_tensor(value, dtype=q.dtype.to_real(), device=q.device).reshape(())

    def rms(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self._apply(x / scale)

    def rows(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._apply(row / scale.reshape(-1)) for row in x])

    def channels(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.rms(x, scale).reshape(1)
