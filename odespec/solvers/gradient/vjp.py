"""Vector-Jacobian products for the gradient methods' backward passes.

The adjoint takes one vector-Jacobian product per stage of every backward step (600 for 100
DOPRI5 steps), each on a small graph. ``torch.autograd.grad`` spends ~23 us of Python per call
before the engine starts (normalising its arguments, checking every ``grad_output``'s shape
through the symbolic-shape machinery), about 7 % of the adjoint's backward pass for a tiny MLP at
batch 512 on CPU. :func:`vjp` checks what those checks would, with plain tuple comparisons, and
calls the function ``torch.autograd.grad`` ends in. Where that private function is missing
(another torch release), or a check fails, it is ``torch.autograd.grad`` itself, so errors read
the same.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

try:  # the function torch.autograd.grad calls once its arguments are normalised
    from torch.autograd.graph import _engine_run_backward
except ImportError:  # pragma: no cover - other torch releases
    _engine_run_backward = None  # type: ignore[assignment]  # vjp then calls torch.autograd.grad

__all__ = ["vjp"]


def vjp(
    outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor], vectors: Sequence[torch.Tensor]
) -> tuple[Optional[torch.Tensor], ...]:
    """``torch.autograd.grad(outputs, inputs, vectors, allow_unused=True, retain_graph=True)``.

    ``retain_graph``: the vector field may close over non-leaf tensors whose graph belongs to
    the caller (a latent ODE's dynamics conditioned on an encoder output); freeing it here would
    break the caller's own backward pass.
    """
    outputs, inputs, vectors = tuple(outputs), tuple(inputs), tuple(vectors)
    if _engine_run_backward is not None and _plain(outputs, vectors):
        return _engine_run_backward(outputs, vectors, True, False, inputs, True, accumulate_grad=False)
    return torch.autograd.grad(outputs, inputs, vectors, allow_unused=True, retain_graph=True)


def _plain(outputs: tuple[torch.Tensor, ...], vectors: tuple[torch.Tensor, ...]) -> bool:
    """True where ``torch.autograd.grad``'s own checks would pass: as many vectors as outputs,
    each a dense real tensor of its output's shape and dtype, every output requiring grad."""
    if len(outputs) != len(vectors):
        return False
    for out, v in zip(outputs, vectors, strict=True):
        if (type(v) is not torch.Tensor or v.shape != out.shape or v.dtype != out.dtype
                or not out.requires_grad or out.is_nested or v.is_complex()):
            return False
    return True
