"""Runge-Kutta ODE solvers: tableaus, one generic RK step, fixed-step and adaptive integration,
and three ways for gradients to flow through a solve (backprop, adjoint, checkpoint).

Importing this package (or :mod:`odespec.solvers.tableaus`, :mod:`~odespec.solvers.tableau`,
:mod:`~odespec.solvers.options`, :mod:`~odespec.solvers.dense`) does not import torch: the spec
validator only needs method names, orders and option keys. The torch-backed names below are
resolved on first access (PEP 562). The functions live in private modules (``_odeint``) so that no
submodule shares a public function's name: the import system binds a loaded submodule as an
attribute of its package, which would otherwise shadow ``odespec.solvers.odeint`` the function.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_LAZY = {
    # torch-backed
    "odeint": "odespec.solvers._odeint",
    "solve": "odespec.solvers._odeint",
    "solve_per_sample": "odespec.solvers.per_sample",
    "PerSampleSolution": "odespec.solvers.per_sample",
    "odeint_adjoint": "odespec.solvers._odeint",
    "odeint_event": "odespec.solvers.events",
    "BackwardStats": "odespec.solvers.solution",
    "GradientMethod": "odespec.solvers.gradient",
    "Backprop": "odespec.solvers.gradient",
    "Adjoint": "odespec.solvers.gradient",
    "Checkpoint": "odespec.solvers.gradient",
    "UnknownGradientMethodError": "odespec.solvers.config",
    "register_gradient": "odespec.solvers.gradient",
    "unregister_gradient": "odespec.solvers.gradient",
    "gradient_names": "odespec.solvers.gradient",
    "Solution": "odespec.solvers.solution",
    "SolveStats": "odespec.solvers.solution",
    "rk_step": "odespec.solvers.step",
    "torch_combine": "odespec.solvers.step",
    "StepResult": "odespec.solvers.step",
    "Combine": "odespec.solvers.step",
    # torch-free
    "ButcherTableau": "odespec.solvers.tableau",
    "Interpolant": "odespec.solvers.tableau",
    "UnknownMethodError": "odespec.solvers.tableaus",
    "register_tableau": "odespec.solvers.tableaus",
    "unregister_tableau": "odespec.solvers.tableaus",
    "get_tableau": "odespec.solvers.tableaus",
    "method_names": "odespec.solvers.tableaus",
    "is_adaptive": "odespec.solvers.tableaus",
    "InvalidOptionError": "odespec.solvers.options",
    "SolverConfig": "odespec.solvers.config",
    "GradientConfig": "odespec.solvers.config",
    "GradientDecl": "odespec.solvers.config",
    "allowed_options": "odespec.solvers.options",
    "parse_options": "odespec.solvers.options",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    # `name as name` marks a re-export (PEP 484), for the type checkers and linters
    from odespec.solvers.gradient import (
        Adjoint as Adjoint,
        Backprop as Backprop,
        Checkpoint as Checkpoint,
        GradientMethod as GradientMethod,
        gradient_names as gradient_names,
        register_gradient as register_gradient,
        unregister_gradient as unregister_gradient,
    )
    from odespec.solvers._odeint import (
        odeint as odeint,
        odeint_adjoint as odeint_adjoint,
        solve as solve,
    )
    from odespec.solvers.events import odeint_event as odeint_event
    from odespec.solvers.config import (
        GradientConfig as GradientConfig,
        GradientDecl as GradientDecl,
        SolverConfig as SolverConfig,
        UnknownGradientMethodError as UnknownGradientMethodError,
    )
    from odespec.solvers.options import (
        InvalidOptionError as InvalidOptionError,
        allowed_options as allowed_options,
        parse_options as parse_options,
    )
    from odespec.solvers.solution import (
        BackwardStats as BackwardStats,
        Solution as Solution,
        SolveStats as SolveStats,
    )
    from odespec.solvers.step import (
        Combine as Combine,
        StepResult as StepResult,
        rk_step as rk_step,
        torch_combine as torch_combine,
    )
    from odespec.solvers.tableau import (
        ButcherTableau as ButcherTableau,
        Interpolant as Interpolant,
    )
    from odespec.solvers.tableaus import (
        UnknownMethodError as UnknownMethodError,
        get_tableau as get_tableau,
        is_adaptive as is_adaptive,
        method_names as method_names,
        register_tableau as register_tableau,
        unregister_tableau as unregister_tableau,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'odespec.solvers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
