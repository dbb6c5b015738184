"""Layer types: each bundles its options schema, shape rule, parameter count and torch builder.

Importing this package does not import torch.
"""

from odespec.layers.base import LayerContext, LayerType, Shape, ShapeError
from odespec.layers.registry import UnknownLayerError, all_types, get, names, register

__all__ = [
    "LayerContext",
    "LayerType",
    "Shape",
    "ShapeError",
    "UnknownLayerError",
    "all_types",
    "get",
    "names",
    "register",
]
