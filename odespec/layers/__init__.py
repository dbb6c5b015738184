"""Layer types: each bundles its options schema, shape rule, parameter count, torch builder and
export form.

Importing this package does not import torch.
"""

from odespec.layers.base import ExportContext, LayerContext, LayerEntry, LayerType, LayerUse, Shape, ShapeError
from odespec.layers.registry import UnknownLayerError, all_types, get, names, register

__all__ = [
    "ExportContext",
    "LayerContext",
    "LayerEntry",
    "LayerType",
    "LayerUse",
    "Shape",
    "ShapeError",
    "UnknownLayerError",
    "all_types",
    "get",
    "names",
    "register",
]
