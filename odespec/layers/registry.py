"""The layer registry: one name, one :class:`LayerType`; duplicates are refused.

Built-in families register on import of :mod:`odespec.layers`; third-party packages register
through the ``odespec.layers`` entry-point group (each entry point names a module or a callable
that calls :func:`register`).
"""

from __future__ import annotations

from typing import Optional, TypeVar

from odespec.components import ComponentRegistry, did_you_mean
from odespec.layers.base import LayerType

__all__ = ["register", "get", "names", "all_types", "UnknownLayerError", "did_you_mean"]

# names that are not layers but can stand in the same place (model lists), for suggestions
RESERVED = ("ode",)

L = TypeVar("L", bound=type)


class UnknownLayerError(KeyError):
    """No layer type of that name; the message carries a did-you-mean."""

    def __init__(self, name: str):
        self.name = name
        self.suggestion: Optional[str] = did_you_mean(name, names())
        super().__init__(f"unknown layer {name!r}" + (f"; did you mean {self.suggestion!r}?" if self.suggestion else ""))


def _builtins() -> None:
    from odespec.layers import activation, blocks, conv, dense, known, norm, series  # noqa: F401  (register built-ins)


_REGISTRY: ComponentRegistry[LayerType] = ComponentRegistry(
    "layer", LayerType, "odespec.layers", _builtins, UnknownLayerError, RESERVED)


def register(cls: L) -> L:
    """Register a :class:`LayerType` subclass (usable as a decorator). Refuses duplicate names."""
    return _REGISTRY.register(cls)


def get(name: str) -> LayerType:
    """The layer type called ``name``; raises :class:`UnknownLayerError`."""
    return _REGISTRY.get(name)


def names() -> list[str]:
    """Registered layer names, sorted."""
    return _REGISTRY.names()


def all_types() -> list[LayerType]:
    """Registered layer types, sorted by name."""
    return _REGISTRY.all()


def plugin_names() -> list[str]:
    """Names registered by third-party entry points (they extend the shipped schema)."""
    return _REGISTRY.plugin_names()
