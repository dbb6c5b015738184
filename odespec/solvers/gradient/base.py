"""The gradient-method abstraction (as diffrax's ``AbstractAdjoint``): one abstract class with
one method to implement, :meth:`GradientMethod.solve`, one subclass per method, and a registry
by name that :func:`odespec.solvers.solve` consults for its ``gradient=`` argument."""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional, TypeVar, Union

import torch

from odespec.solvers.callbacks import Callbacks
from odespec.solvers.common import Outcome, TimedFunc
from odespec.solvers.integrate import Setup
from odespec.solvers.options import OptionsArg
from odespec.solvers.gradient.params import resolve_params
from odespec.solvers.config import (
    GradientConfig,
    GradientDecl,
    UnknownGradientMethodError,
    declare_gradient,
    declared_gradients,
    gradient_decl,
    undeclare_gradient,
)
from odespec.solvers.solution import BackwardStats

__all__ = [
    "Problem",
    "Solved",
    "GradientMethod",
    "UnknownGradientMethodError",
    "register_gradient",
    "unregister_gradient",
    "gradient_names",
    "get_gradient",
    "make_gradient",
    "plain_solve",
]


@dataclass(frozen=True)
class Problem:
    """A checked initial value problem: ``func(t, y)``, ``y0``, the output times (as a tensor
    ``t`` and as floats ``times``), the forward :class:`Setup` and the raw ``options`` mapping
    (the adjoint reuses it for its backward solve)."""

    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    y0: torch.Tensor
    t: torch.Tensor
    times: list[float]
    setup: Setup
    options: OptionsArg

    def timed(self, func: Optional[Callable] = None) -> TimedFunc:
        """``func`` (default: the problem's) wrapped for the integrators, counting calls, with
        the callbacks the problem's ``func`` carries."""
        # func sees t in the state's real dtype, as torchdiffeq's: a float32 state with float64 output
        # times must not have its derivative promoted to float64
        return TimedFunc(self.func if func is None else func, self.y0.dtype.to_real(), self.y0.device,
                         Callbacks.of(self.func))


@dataclass(frozen=True)
class Solved:
    """What a gradient method's forward solve produced: the outputs reached (stacked; their
    autograd history is the method's business), the integrator's outcome and the forward NFE."""

    ys: torch.Tensor
    outcome: Outcome
    nfe: int


def plain_solve(problem: Problem) -> Solved:
    """Solve with ordinary autograd through every operation (also the no-gradient path)."""
    f = problem.timed()
    outcome = problem.setup.integrate(f, problem.y0, problem.times)
    return Solved(torch.stack(outcome.outs), outcome, f.nfe)


_T = TypeVar("_T", bound="GradientMethod")


class GradientMethod(abc.ABC):
    """How gradients flow through a solve.

    Subclasses set ``name`` (the registry key) and ``decl`` (the options their constructor
    takes from a :class:`~odespec.solvers.config.GradientConfig`), and implement :meth:`solve`.
    """

    name: ClassVar[str]
    decl: ClassVar[GradientDecl]

    @abc.abstractmethod
    def solve(self, problem: Problem, stats: BackwardStats) -> Solved:
        """Solve ``problem`` so that ``Solved.ys`` carries gradients the method's way. A method
        with work in the backward pass adds it to ``stats`` when that pass runs."""

    def for_function(self: _T, func: Callable) -> _T:
        """This method bound to ``func`` before a tuple state is flattened (the flattening wraps
        ``func`` in a closure, hiding an ``nn.Module``'s parameters). Default: unchanged."""
        return self

    def replace(self: _T, **changes: Any) -> _T:
        """A copy with some attributes changed."""
        new = copy.copy(self)
        new.__dict__.update(changes)
        return new

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if v is not None)
        return f"{type(self).__name__}({args})"


class ParamsGradientMethod(GradientMethod):
    """A method that computes parameter gradients itself, inside a ``torch.autograd.Function``
    (adjoint, checkpoint): it must know the parameters ``func`` depends on."""

    params: Optional[tuple[torch.Tensor, ...]] = None

    def for_function(self: _P, func: Callable) -> _P:
        if self.params is None and isinstance(func, torch.nn.Module):
            return self.replace(params=tuple(func.parameters()))
        return self

    def grad_params(self, problem: Problem) -> Optional[tuple[torch.Tensor, ...]]:
        """The parameters to differentiate, or ``None`` when nothing needs a gradient (then a
        plain solve is all there is to do)."""
        params: tuple[torch.Tensor, ...] = ()
        if torch.is_grad_enabled():
            params = resolve_params(problem.func, self.params, problem.y0, problem.t[0])
        return params if (problem.y0.requires_grad or params) else None


_P = TypeVar("_P", bound="ParamsGradientMethod")


class SolveRun:
    """State shared by the forward and the backward of one solve whose gradients a method
    computes itself: the problem, the parameters, the backward statistics, and what the
    forward solve (without graph) produced."""

    def __init__(self, problem: Problem, params: tuple[torch.Tensor, ...], stats: BackwardStats):
        self.problem = problem
        self.params = params
        self.stats = stats
        self.outcome: Any = None
        self.nfe = 0

    def forward(self, y0: torch.Tensor, **integrate_kw: Any) -> torch.Tensor:
        f = self.problem.timed()
        self.outcome = self.problem.setup.integrate(f, y0, self.problem.times, **integrate_kw)
        self.nfe = f.nfe
        return torch.stack(self.outcome.outs)


_REGISTRY: dict[str, type[GradientMethod]] = {}


def register_gradient(cls: type[GradientMethod]) -> type[GradientMethod]:
    """Class decorator: make ``cls`` available as ``gradient=cls.name`` and, through its
    declaration ``cls.decl`` (a :class:`~odespec.solvers.config.GradientDecl`; one without
    options is made from its docstring when the class has none), to specs and their schema.
    A name already registered is refused (``ValueError``)."""
    if cls.name in _REGISTRY:
        raise ValueError(f"gradient method {cls.name!r} is already registered; choose another name")
    decl = cls.__dict__.get("decl")
    if decl is None:
        summary = (cls.__doc__ or cls.name).strip().splitlines()[0]
        decl = cls.decl = GradientDecl(cls.name, summary)
    if decl.name != cls.name:
        raise ValueError(f"{cls.__name__}.decl declares {decl.name!r}, but the class is named {cls.name!r}")
    if decl not in declared_gradients():
        declare_gradient(decl)
    _REGISTRY[cls.name] = cls
    return cls


def unregister_gradient(name: str) -> type[GradientMethod]:
    """Remove a registered gradient method (class and declaration); returns its class."""
    cls = get_gradient(name)
    del _REGISTRY[name]
    undeclare_gradient(name)
    return cls


def gradient_names() -> tuple[str, ...]:
    """Registered gradient method names, in registration order."""
    return tuple(_REGISTRY)


def get_gradient(name: str) -> type[GradientMethod]:
    """The class registered as ``name``; :class:`UnknownGradientMethodError` with a did-you-mean
    otherwise."""
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        gradient_decl(name)  # an unknown name: the error with its did-you-mean
        raise UnknownGradientMethodError(f"gradient method {name!r} is declared but has no implementation "
                                         "registered (register_gradient)", key="gradient", allowed=gradient_names())
    return cls


def make_gradient(gradient: Union[str, GradientConfig, GradientMethod]) -> GradientMethod:
    """The :class:`GradientMethod` for ``solve(gradient=...)``: a name (default options), a
    :class:`~odespec.solvers.config.GradientConfig`, or an instance."""
    if isinstance(gradient, GradientMethod):
        return gradient
    if isinstance(gradient, GradientConfig):
        return gradient.make()
    return get_gradient(gradient)()
