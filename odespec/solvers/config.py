"""The configuration of a solve and of its gradient method, torch-free.

:class:`SolverConfig` (method and options) and :class:`GradientConfig` (gradient method and its
options) are the one owner of the solver and gradient vocabulary: which options go with which
method, their defaults (from :data:`~odespec.solvers.options.SOLVER_OPTIONS` and each gradient
method's declaration), their JSON-Schema fragments, how a configuration is described in words and
what a fixed-step solve costs. The spec language stores these objects and builds its schema from
them; compile turns them once into what a solve needs; export, calibration and regularisers make
variants with :meth:`SolverConfig.replace` or :meth:`SolverConfig.fixed`.

Gradient methods are declared here (:class:`GradientDecl`: name, description, options), so the
spec validator knows them without importing torch; the torch classes in
:mod:`odespec.solvers.gradient` implement them, and ``register_gradient`` declares a new one.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from odespec.solvers import tableaus
from odespec.solvers.grid import count_steps, fixed_nfe
from odespec.solvers.options import (
    ADAPTIVE_KEYS,
    DEFAULT_NEWTON_ITERS,
    FIXED_STEP_KEYS,
    IMPLICIT_KEYS,
    SOLVER_OPTIONS,
    STEP_COUNT_KEYS,
    TOLERANCE_KEYS,
    AdaptiveOptions,
    FixedStepOptions,
    InvalidOptionError,
    OptionSpec,
    SolverOptions,
    check_option_value,
    option_spec,
)
from odespec.solvers.tableau import ButcherTableau

__all__ = [
    "DEFAULT_METHOD",
    "DEFAULT_GRADIENT",
    "SolverConfig",
    "GradientConfig",
    "GradientDecl",
    "OptionProblem",
    "UnknownGradientMethodError",
    "declare_gradient",
    "undeclare_gradient",
    "gradient_decl",
    "declared_gradients",
    "SPEC_SOLVER_KEYS",
]

DEFAULT_METHOD = "dopri5"
DEFAULT_GRADIENT = "backprop"

#: the solver options the spec language exposes, besides ``method``
SPEC_SOLVER_KEYS = tuple(o.key for o in SOLVER_OPTIONS if o.in_spec)
#: the Newton iteration's options a configuration keeps (the spec language exposes those of
#: SPEC_SOLVER_KEYS among them; ``jacobian`` is set by the export's twin)
_NEWTON_KEYS = ("max_iters", "newton_tol", "jacobian")
_SPEC_ADAPTIVE = tuple(k for k in SPEC_SOLVER_KEYS if k in ADAPTIVE_KEYS or k in TOLERANCE_KEYS)


@dataclass(frozen=True)
class OptionProblem:
    """A rule a configuration breaks: the option at fault (``None``: the configuration as a
    whole), what is wrong, and how to fix it. The spec validator adds the location."""

    key: Optional[str]
    message: str
    hint: Optional[str] = None


def _default(key: str) -> Any:
    return option_spec(key).default


@dataclass(frozen=True)
class SolverConfig:
    """How an ODE is solved: a registered method and the spec language's solver options.

    Fixed-step methods take ``steps`` or ``step_size`` (exactly one); adaptive methods take
    tolerances and step controls, never ``steps``/``step_size``; implicit methods (fixed-step)
    also take their Newton iteration's ``max_iters`` and ``newton_tol`` (``jacobian``: the
    Python API's and the export twin's, ``"fd"`` there). Construction checks these rules
    (:class:`InvalidOptionError`); :meth:`from_spec` reports every broken rule instead.
    """

    method: str = DEFAULT_METHOD
    steps: Optional[int] = None
    step_size: Optional[float] = None
    rtol: float = _default("rtol")
    atol: float = _default("atol")
    first_step: Optional[float] = None
    max_step: Optional[float] = None
    max_num_steps: int = _default("max_num_steps")
    controller: str = _default("controller")
    #: implicit methods: the Newton iteration (None: its defaults); see :data:`SOLVER_OPTIONS`
    max_iters: Optional[int] = None
    newton_tol: Optional[float] = None
    jacobian: str = _default("jacobian")

    def __post_init__(self) -> None:
        given = {k: getattr(self, k) for k in STEP_COUNT_KEYS + _NEWTON_KEYS if getattr(self, k) is not None}
        if given.get("jacobian") == _default("jacobian"):
            del given["jacobian"]
        problems = _combination_problems(self.method, given)
        if problems:
            p = problems[0]
            raise InvalidOptionError(p.message + (f"; {p.hint}" if p.hint else ""), key=p.key)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, raw: Any) -> tuple[Optional["SolverConfig"], list[OptionProblem]]:
        """The spec language's ``solver:`` value (a method name, or a mapping with ``method`` and
        options, already schema-checked) as a config, or ``None`` and every rule it breaks."""
        raw = {"method": raw} if isinstance(raw, str) else dict(raw)
        method = raw.pop("method", DEFAULT_METHOD)
        problems = _combination_problems(method, raw)
        if problems:
            return None, problems
        return cls(method=method, **raw), []

    @classmethod
    def fixed(cls, method: str, steps: int) -> "SolverConfig":
        """A fixed-step configuration (``steps`` equal steps per output interval)."""
        return cls(method=method, steps=steps)

    @classmethod
    def unrolled(cls, method: str, steps: int, newton_iters: Optional[int] = None) -> "SolverConfig":
        """What an exported graph computes (:meth:`fixed`); for an implicit method, exactly
        ``newton_iters`` Newton iterations per step (``newton_tol`` 0; None: the default
        ``max_iters``) with the forward-difference Jacobian, since ONNX has no autodiff."""
        if not tableaus.get_tableau(method).implicit:
            return cls.fixed(method, steps)
        iters = newton_iters if newton_iters is not None else DEFAULT_NEWTON_ITERS
        return cls(method=method, steps=steps, max_iters=iters, newton_tol=0.0, jacobian="fd")

    def replace(self, **changes: Any) -> "SolverConfig":
        """A copy with some fields changed (the rules are checked again)."""
        return dataclasses.replace(self, **changes)

    # -- what a solve needs ---------------------------------------------------------------------
    @property
    def tableau(self) -> ButcherTableau:
        """The registered tableau of :attr:`method`."""
        return tableaus.get_tableau(self.method)

    @property
    def adaptive(self) -> bool:
        """Whether the solve is adaptive (error-controlled steps)."""
        return self.tableau.adaptive

    def integration_options(self) -> SolverOptions:
        """The integrator's parsed options."""
        if not self.adaptive:
            return FixedStepOptions(steps=self.steps, step_size=self.step_size, max_iters=self.max_iters,
                                    newton_tol=self.newton_tol, jacobian=self.jacobian)
        extra = {k: getattr(self, k) for k in ("first_step", "max_step") if getattr(self, k) is not None}
        return AdaptiveOptions(max_num_steps=self.max_num_steps, controller=self.controller, **extra)

    # -- cost -----------------------------------------------------------------------------------
    def count_steps(self, times: Sequence[float]) -> Optional[int]:
        """Steps a fixed-step solve through ``times`` takes (``None``: adaptive, it varies)."""
        if self.adaptive:
            return None
        return count_steps(times, FixedStepOptions(steps=self.steps, step_size=self.step_size))

    def nfe(self, times: Sequence[float], state_size: int = 0) -> Optional[int]:
        """f-evaluations of a fixed-step solve through ``times`` (``None``: adaptive); an implicit
        method's with ``max_iters`` Newton iterations per step (the most it takes), and, with the
        forward-difference Jacobian, ``state_size`` (elements per sample) evaluations per step
        for it."""
        if self.adaptive:
            return None
        jacobian_evals = state_size if self.tableau.implicit and self.jacobian == "fd" else 0
        return fixed_nfe(times, self.integration_options(), self.tableau, jacobian_evals)  # type: ignore[arg-type]

    # -- in words -------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Method and the options that decide the steps: tolerances (adaptive) or
        ``steps``/``step_size`` (fixed); the form reports and metadata use."""
        keys = ("rtol", "atol") if self.adaptive else STEP_COUNT_KEYS[::-1]
        newton = {k: getattr(self, k) for k in _NEWTON_KEYS
                  if self.tableau.implicit and getattr(self, k) not in (None, _default(k))}
        return {"method": self.method, **{k: getattr(self, k) for k in keys}, **newton}

    @staticmethod
    def option_words(summary: Mapping[str, Any]) -> list[str]:
        """The options of a :meth:`summary` (as a build report stores it) in words, e.g.
        ``["rtol=1e-07", "atol=1e-09"]`` or ``["steps=1000000"]``; options not given are left out."""
        return [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in summary.items() if k != "method" and v is not None]

    @classmethod
    def words(cls, summary: Mapping[str, Any]) -> str:
        """A :meth:`summary` in words, e.g. ``dopri5 rtol=1e-07 atol=1e-09`` or ``rk4 steps=8``."""
        return " ".join([summary["method"], *cls.option_words(summary)])

    def describe_options(self) -> str:
        """The options that decide the steps, e.g. ``rtol=1e-07, atol=1e-09`` or ``steps=8``."""
        return ", ".join(self.option_words(self.summary()))

    def describe(self) -> str:
        """One line, e.g. ``dopri5 rtol=1e-07 atol=1e-09`` or ``rk4 steps=8``."""
        return self.words(self.summary())

    # -- the spec language --------------------------------------------------------------------------
    @staticmethod
    def method_schema() -> dict[str, Any]:
        """The JSON-Schema fragment of a method name (every registered method a spec may name)."""
        methods = list(tableaus.spec_method_names())
        fixed = [m for m in methods if not tableaus.is_adaptive(m) and not tableaus.get_tableau(m).implicit]
        implicit = [m for m in methods if tableaus.get_tableau(m).implicit]
        adaptive = [m for m in methods if tableaus.is_adaptive(m)]
        return {"enum": methods, "enumDescriptions": [_method_words(tableaus.get_tableau(m)) for m in methods],
                "description": "Runge-Kutta method. Fixed-step: " + ", ".join(fixed)
                + ". Implicit fixed-step (for stiff dynamics; Newton options max_iters, newton_tol): "
                + ", ".join(implicit) + ". Adaptive: " + ", ".join(adaptive) + "."}

    @classmethod
    def schema(cls) -> dict[str, Any]:
        """The JSON-Schema fragment of ``solver:``'s object form."""
        props = {"method": {**cls.method_schema(), "default": DEFAULT_METHOD}}
        props.update({o.key: o.json_schema() for o in SOLVER_OPTIONS if o.in_spec})
        return {"type": "object", "description": "How the ODE block is solved: the method and its options; an "
                "option left out takes its default, except that a fixed-step method needs steps or step_size.",
                "properties": props,
                "additionalProperties": False}


def _method_words(tableau: ButcherTableau) -> str:
    """A method in a few words, for editors: kind, order, stages."""
    kind = ("adaptive (takes rtol, atol)" if tableau.adaptive
            else "implicit fixed-step (takes steps or step_size; max_iters, newton_tol)" if tableau.implicit
            else "fixed-step (takes steps or step_size)")
    return f"{tableau.name}: {kind}, order {tableau.order}, {len(tableau.c)} stages."


def _combination_problems(method: str, given: Mapping[str, Any]) -> list[OptionProblem]:
    """The rules of which options go with which method, for the options ``given``."""
    tableau = tableaus.get_tableau(method)
    adaptive = tableau.adaptive
    problems = []
    if not tableau.implicit:
        problems += [OptionProblem(k, f"{k!r} is for implicit methods (their Newton iteration); {method!r} is "
                                   "explicit", "remove it, or choose an implicit method such as radauIIA5")
                     for k in IMPLICIT_KEYS if k in given]
    if adaptive:
        problems += [OptionProblem(k, f"{k!r} is for fixed-step methods; {method!r} is adaptive",
                                   "give rtol/atol for an adaptive method, or choose a fixed-step method such as rk4")
                     for k in FIXED_STEP_KEYS if k in given]
        return problems
    problems += [OptionProblem(k, f"{k!r} is for adaptive methods; {method!r} is fixed-step",
                               "give steps (or step_size) for a fixed-step method, or choose an adaptive method "
                               "such as dopri5") for k in _SPEC_ADAPTIVE if k in given]
    if "steps" in given and "step_size" in given:
        problems.append(OptionProblem("step_size", "give steps or step_size, not both"))
    elif "steps" not in given and "step_size" not in given:
        problems.append(OptionProblem(None, f"fixed-step method {method!r} needs steps or step_size",
                                      f"for example: {{method: {method}, steps: 10}}"))
    return problems


# ------------------------------------------------------------------------------- gradient methods


class UnknownGradientMethodError(InvalidOptionError):
    """No gradient method of that name is declared (did-you-mean in the message)."""


@dataclass(frozen=True)
class GradientDecl:
    """A gradient method as the configuration knows it: its name, a description for the
    schema, its options, and whether it can differentiate a discrete solve (an RK-Net's or a
    ResNet's steps); the torch class registered under the same name implements it."""

    name: str
    description: str
    options: tuple[OptionSpec, ...] = ()
    discrete: bool = True


_GRADIENTS: dict[str, GradientDecl] = {}


def declare_gradient(decl: GradientDecl) -> GradientDecl:
    """Make ``decl`` known to configurations and the spec schema. A name already declared is
    refused (``ValueError``), as in every odespec registry."""
    if decl.name in _GRADIENTS:
        raise ValueError(f"gradient method {decl.name!r} is already registered; choose another name")
    _GRADIENTS[decl.name] = decl
    return decl


def undeclare_gradient(name: str) -> GradientDecl:
    """Forget a declared gradient method; returns its declaration."""
    return _GRADIENTS.pop(gradient_decl(name).name)


def declared_gradients() -> tuple[GradientDecl, ...]:
    """Every declared gradient method, in declaration order."""
    return tuple(_GRADIENTS.values())


def gradient_decl(name: Any) -> GradientDecl:
    """The declaration of ``name``; :class:`UnknownGradientMethodError` with a did-you-mean."""
    decl = _GRADIENTS.get(name) if isinstance(name, str) else None
    if decl is None:
        names = tuple(_GRADIENTS)
        close = difflib.get_close_matches(str(name).lower(), names, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownGradientMethodError(f"unknown gradient method {name!r}{hint} (known: {', '.join(names)})",
                                         key="gradient", allowed=names)
    return decl


_TOL = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
BACKPROP = declare_gradient(GradientDecl(
    "backprop", "autograd through the solver (memory grows with steps)"))
ADJOINT = declare_gradient(GradientDecl(
    "adjoint", "continuous adjoint (O(1) memory, approximate gradients)",
    (OptionSpec("rtol", _TOL, "relative tolerance of the backward solve (default: the solver's).", kind="adjoint"),
     OptionSpec("atol", _TOL, "absolute tolerance of the backward solve (default: the solver's).", kind="adjoint"),
     OptionSpec("seminorm", {"type": "boolean"}, "leave the parameter-gradient channels out of error control "
                "(fewer backward steps).", False, kind="adjoint")),
    discrete=False))
CHECKPOINT = declare_gradient(GradientDecl(
    "checkpoint", "exact gradients, recomputing steps from stored checkpoints (sub-linear memory)",
    (OptionSpec("checkpoints", {"type": "integer", "minimum": 1}, "how many states to keep (default: about the "
                "square root of the step count).", kind="checkpoint", budget=option_spec("steps").budget),)))


@dataclass(frozen=True)
class GradientConfig:
    """How gradients flow through a solve: a declared gradient method and its options, kept
    as sorted ``(key, value)`` pairs (only those given; :meth:`get` fills in defaults)."""

    method: str = DEFAULT_GRADIENT
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        decl = gradient_decl(self.method)
        given = dict(self.options)
        allowed = {o.key: o for o in decl.options}
        for key, value in given.items():
            if key not in allowed:
                takes = ", ".join(allowed) if allowed else "no options"
                raise InvalidOptionError(f"{key!r} is not an option of gradient method {self.method!r} "
                                         f"({self.method!r} takes {takes})", key=key, allowed=tuple(allowed))
            check_option_value(allowed[key], value)
        object.__setattr__(self, "options", tuple(sorted(given.items())))

    @classmethod
    def of(cls, method: str = DEFAULT_GRADIENT, **options: Any) -> "GradientConfig":
        """``GradientConfig.of("adjoint", seminorm=True)``; options given as ``None`` are left out."""
        return cls(method, tuple((k, v) for k, v in options.items() if v is not None))

    @classmethod
    def from_spec(cls, raw: Any) -> tuple[Optional["GradientConfig"], list[OptionProblem]]:
        """The spec language's ``gradient:`` value (a name, or a mapping with ``method`` and
        options, already schema-checked), or ``None`` and every option its method does not take."""
        raw = {"method": raw} if isinstance(raw, str) else dict(raw)
        method = raw.pop("method", DEFAULT_GRADIENT)
        allowed = [o.key for o in gradient_decl(method).options]
        bad = [k for k in raw if k not in allowed]
        if bad:
            hint = f"{method!r} takes: {', '.join(allowed)}" if allowed else f"{method!r} takes no options"
            return None, [OptionProblem(k, f"{k!r} is not an option of gradient method {method!r}", hint) for k in bad]
        return cls.of(method, **raw), []

    @property
    def decl(self) -> GradientDecl:
        """The method's declaration."""
        return gradient_decl(self.method)

    def get(self, key: str) -> Any:
        """The value of option ``key``: as given, else its declared default."""
        given = dict(self.options)
        if key in given:
            return given[key]
        for o in self.decl.options:
            if o.key == key:
                return o.default
        raise KeyError(f"gradient method {self.method!r} has no option {key!r}")

    def for_solver(self, solver: SolverConfig) -> "GradientConfig":
        """Options of the gradient method named like a solver tolerance (the adjoint's backward
        ``rtol``/``atol``) that are not given take the solver's value, so that the backward solve
        keeps the block's tolerances even when a solve is given others (e.g. training's
        regulariser channels)."""
        given = dict(self.options)
        fill = {o.key: getattr(solver, o.key) for o in self.decl.options
                if o.key in TOLERANCE_KEYS and o.key not in given}
        return self if not fill else GradientConfig(self.method, tuple({**given, **fill}.items()))

    def make(self) -> Any:
        """The :class:`~odespec.solvers.gradient.GradientMethod` this configures (imports torch)."""
        from odespec.solvers.gradient import get_gradient

        return get_gradient(self.method)(**dict(self.options))

    @staticmethod
    def schema() -> dict[str, Any]:
        """The JSON-Schema fragment of ``gradient:``'s object form (every declared method's options)."""
        decls = declared_gradients()
        method = {"enum": [d.name for d in decls], "enumDescriptions": [f"{d.name}: {d.description}." for d in decls],
                  "default": DEFAULT_GRADIENT,
                  "description": "; ".join(f"{d.name}: {d.description}" for d in decls) + "."}
        props: dict[str, Any] = {"method": method}
        for d in decls:
            for o in d.options:
                users = [u.name for u in decls if any(p.key == o.key for p in u.options)]
                props.setdefault(o.key, o.json_schema(prefix=", ".join(users) + ": "))
        return {"type": "object", "description": "How gradients flow through the ODE solve.", "properties": props,
                "required": ["method"], "additionalProperties": False}
