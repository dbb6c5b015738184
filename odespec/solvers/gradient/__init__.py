"""Gradient methods of :func:`odespec.solvers.solve`: ``backprop``, ``adjoint``, ``checkpoint``.

Importing this package registers the built-in methods (in that order).
"""

from odespec.solvers.gradient.base import (
    GradientMethod,
    Problem,
    Solved,
    UnknownGradientMethodError,
    get_gradient,
    gradient_names,
    make_gradient,
    register_gradient,
    unregister_gradient,
)
from odespec.solvers.gradient.backprop import Backprop  # noqa: E402  (registration order)
from odespec.solvers.gradient.adjoint import Adjoint  # noqa: E402
from odespec.solvers.gradient.checkpoint import Checkpoint  # noqa: E402

__all__ = [
    "GradientMethod",
    "Problem",
    "Solved",
    "UnknownGradientMethodError",
    "get_gradient",
    "gradient_names",
    "make_gradient",
    "register_gradient",
    "unregister_gradient",
    "Backprop",
    "Adjoint",
    "Checkpoint",
]
