"""Which tensors a gradient method differentiates besides ``y0``: the *parameters* of ``func``.

A custom ``autograd.Function`` (the adjoint, the checkpointed solve) only passes gradients to
tensors given to it as inputs, so the parameters must be known: ``adjoint_params`` if given, an
``nn.Module``'s parameters, or else those found in the autograd graph of one evaluation of
``func``.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

__all__ = ["resolve_params", "discover_params"]


def resolve_params(
    func: Callable, params: Optional[Iterable[torch.Tensor]], y0: torch.Tensor, t0: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """The tensors requiring grad that the gradient method differentiates (see the module doc)."""
    if params is None and isinstance(func, torch.nn.Module):
        params = func.parameters()
    if params is not None:
        found = tuple(p for p in params if isinstance(p, torch.Tensor) and p.requires_grad)
    else:
        found = discover_params(func, y0, t0)
    # a tensor given twice would receive its gradient twice
    unique: dict[int, torch.Tensor] = {}
    for p in found:
        unique.setdefault(id(p), p)
    return tuple(unique.values())


def discover_params(func: Callable, y0: torch.Tensor, t0: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The leaf tensors requiring grad that ``func(t0, y0)`` depends on other than through
    ``y0``: one evaluation of ``func`` (not counted as an NFE) and a walk of its graph.

    A closure over a *non-leaf* tensor (computed from parameters outside ``func``) is
    differentiated through to the leaves it comes from.
    """
    with torch.enable_grad():
        out = func(t0, y0.detach())
    fn = getattr(out, "grad_fn", None)
    found: dict[int, torch.Tensor] = {}
    seen: set = set()
    stack = [fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        var = getattr(node, "variable", None)  # AccumulateGrad: the leaf it accumulates into
        if isinstance(var, torch.Tensor):
            found.setdefault(id(var), var)
        stack.extend(nxt for nxt, _ in node.next_functions)
    return tuple(found.values())
