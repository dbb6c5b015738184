"""Solver options as data: each option's JSON-Schema fragment, default, description and the kind
of method it belongs to, in one table (:data:`SOLVER_OPTIONS`) that the spec schema, the spec
validator, :class:`~odespec.solvers.config.SolverConfig` and ``odeint``'s ``options`` all read.

Torch-free, so the spec validator can check solver options without importing torch.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Union

from odespec.errors import OdespecError
from odespec.solvers.controller import CONTROLLER_NAMES
from odespec.solvers.tableau import ButcherTableau
from odespec.solvers.tableaus import OtherMethod

__all__ = [
    "InvalidOptionError",
    "OptionSpec",
    "SOLVER_OPTIONS",
    "FixedStepOptions",
    "AdaptiveOptions",
    "FIXED_STEP_KEYS",
    "STEP_COUNT_KEYS",
    "ADAPTIVE_KEYS",
    "TOLERANCE_KEYS",
    "DEFAULT_MAX_NUM_STEPS",
    "MAX_STEPS",
    "MAX_NUM_STEPS",
    "IMPLICIT_KEYS",
    "ScipyOptions",
    "SCIPY_SOLVERS",
    "DEFAULT_NEWTON_ITERS",
    "DEFAULT_ADAMS_ITERS",
    "MAX_NEWTON_ITERS",
    "JACOBIANS",
    "allowed_options",
    "check_option_value",
    "parse_options",
]

#: most fixed steps per output interval (and in a whole spec's solve): a spec cannot ask for a
#: billion steps
MAX_STEPS = 100_000
MAX_NUM_STEPS = 10_000_000
# Finite by default so a stiff or blown-up model fails with a clear error instead of spinning.
DEFAULT_MAX_NUM_STEPS = 100_000
CONTROLLERS = CONTROLLER_NAMES
#: the most Newton iterations per step of an implicit Runge-Kutta method, and corrector iterations
#: per step of implicit_adams (torchdiffeq's), when ``max_iters`` is not given
DEFAULT_NEWTON_ITERS = 25
DEFAULT_ADAMS_ITERS = 4
#: the most Newton iterations per step a spec may ask for (a budget on work, as MAX_STEPS)
MAX_NEWTON_ITERS = 100
#: the Jacobians of the Newton iteration (see the ``jacobian`` option)
JACOBIANS = ("auto", "dense", "batch", "fd")
#: the methods of scipy.integrate.solve_ivp
SCIPY_SOLVERS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


class InvalidOptionError(OdespecError, ValueError):
    """An unknown or ill-valued solver option. ``allowed`` lists the keys the method accepts."""

    def __init__(self, message: str, *, key: Optional[str] = None, allowed: tuple[str, ...] = ()):
        self.key = key
        self.allowed = allowed
        super().__init__(message)


@dataclass(frozen=True)
class OptionSpec:
    """One option of a solve or of a gradient method.

    ``schema``: its JSON-Schema fragment (type and bounds; the description and default are
    added from the fields here); an option only the Python API takes (``in_spec=False``) may
    instead name a Python value kind, ``{"x-python": "callable"}`` or ``{"x-python": "times"}``
    (a 1-D tensor or sequence of times), which no spec can hold; ``kind``: ``fixed`` or ``adaptive`` for solver options (the
    methods it applies to), ``implicit`` (the Newton/corrector iteration of implicit fixed-step
    methods), ``adams`` (the Adams methods), ``scipy`` (``scipy_solver``), ``tolerance`` for rtol/atol (adaptive methods; ``odeint`` takes
    them as arguments, not options), or the gradient method's name; ``in_spec``: whether the
    spec language exposes it (the rest are ``odeint``'s fine controls).
    """

    key: str
    schema: Mapping[str, Any]
    description: str
    default: Any = None
    kind: str = "adaptive"
    in_spec: bool = True
    #: the largest value the spec language accepts (a budget on work, checked before anything
    #: runs); the Python API has no such limit
    budget: Optional[int] = None

    def json_schema(self, *, prefix: str = "") -> dict[str, Any]:
        """The option's property in the spec schema (``prefix`` names who it is for). A ``None``
        default (unset: the solver chooses, as the description says) is left out: editors would
        insert it as ``null``, which is not a value of the option."""
        bound = {} if self.budget is None else {"maximum": self.budget}
        default = {} if self.default is None else {"default": self.default}
        return {**self.schema, **bound, "description": prefix + self.description, **default}


_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
_TOL = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}

#: every solver option, fixed-step ones first (error messages list them in this order)
SOLVER_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("step_size", _POSITIVE, "Fixed-step methods: the largest step; each output interval is divided "
               "into the fewest equal steps no larger (alternative to steps).", kind="fixed"),
    OptionSpec("steps", {"type": "integer", "minimum": 1}, "Fixed-step methods: number of equal steps per "
               "output interval (over the whole span when t is [t0, t1]).", kind="fixed", budget=MAX_STEPS),
    OptionSpec("grid_constructor", {"x-python": "callable"}, "Fixed-step methods: grid_constructor(func, y0, t) "
               "returns the 1-D tensor of step times, from t[0] to t[-1] (instead of steps/step_size); outputs "
               "inside a step are interpolated (interp).", kind="fixed", in_spec=False),
    OptionSpec("interp", {"enum": ["linear", "cubic"]}, "Fixed-step methods with a grid_constructor: how an "
               "output inside a step is interpolated (cubic: Hermite, one more evaluation of func).", "linear",
               kind="fixed", in_spec=False),
    OptionSpec("perturb", {"type": "boolean"}, "Fixed-step methods: evaluate func one float just inside each "
               "step at its ends, so a discontinuity at a grid point is seen from the step's own side.", False,
               kind="fixed", in_spec=False),
    OptionSpec("max_iters", {"type": "integer", "minimum": 1}, "Implicit fixed-step methods: the most Newton "
               f"iterations per step (default {DEFAULT_NEWTON_ITERS}); implicit_adams: the most corrector iterations "
               f"per step (default {DEFAULT_ADAMS_ITERS}).", kind="implicit", budget=MAX_NEWTON_ITERS),
    OptionSpec("newton_tol", {"type": "number", "minimum": 0}, "Implicit Runge-Kutta methods: the Newton "
               "iteration stops once its estimated remaining error in h*k is below newton_tol * (1 + max|y|) "
               "(default 100 machine epsilons of the state's dtype); 0: always max_iters iterations, with no "
               "host synchronisation (the form that unrolls into a graph).", kind="implicit"),
    OptionSpec("jacobian", {"enum": list(JACOBIANS)}, "Implicit Runge-Kutta methods: the Jacobian "
               "of the Newton iteration; dense: of the whole state as one vector; batch: the first dimension "
               "indexes independent samples, so the Jacobian is block diagonal and each sample's block is "
               "solved alone (a batched solve, not one of batch*n unknowns); auto: batch for a state of two or "
               "more dimensions; fd: batch's blocks by forward differences, from one evaluation of func on "
               "batch*n perturbed states (what an exported ONNX graph computes: it has no autodiff). The "
               "solution is the same either way once the iteration converges.", "auto",
               kind="implicit", in_spec=False),
    OptionSpec("max_order", {"type": "integer", "minimum": 1, "maximum": 12}, "explicit_adams/implicit_adams: "
               "the largest order (as torchdiffeq's: Adams-Bashforth up to max_order - 1, the corrector one "
               "more; below 4 the method is RK4).", 12, kind="adams", in_spec=False),
    OptionSpec("solver", {"enum": list(SCIPY_SOLVERS)}, "scipy_solver: the method of scipy.integrate.solve_ivp.",
               "LSODA", kind="scipy", in_spec=False),
    OptionSpec("rtol", _TOL, "Adaptive methods: relative tolerance.", 1e-7, kind="tolerance"),
    OptionSpec("atol", _TOL, "Adaptive methods: absolute tolerance.", 1e-9, kind="tolerance"),
    OptionSpec("first_step", _POSITIVE, "Adaptive methods: initial step size (default: chosen automatically)."),
    OptionSpec("min_step", {"type": "number", "minimum": 0}, "Adaptive methods: smallest step allowed.", 0.0,
               in_spec=False),
    OptionSpec("max_step", _POSITIVE, "Adaptive methods: largest step allowed."),
    OptionSpec("max_num_steps", {"type": "integer", "minimum": 1},
               "Adaptive methods: give up after this many steps (a solve never hangs).", DEFAULT_MAX_NUM_STEPS,
               budget=MAX_NUM_STEPS),
    OptionSpec("controller", {"enum": list(CONTROLLERS)}, "Adaptive methods: step-size controller; pi "
               "(proportional-integral, smoother step sequences) or i (the plain controller torchdiffeq uses; "
               "often fewer steps).", "pi"),
    OptionSpec("norm", {"x-python": "callable"}, "Adaptive methods: the error norm, a callable taking the "
               "error estimate divided by atol + rtol * |y| (shaped as the state; a tuple for a tuple state) "
               "and returning a number; default Hairer's RMS norm over all elements.", in_spec=False),
    OptionSpec("step_t", {"x-python": "times"}, "Adaptive methods: times every solve steps onto (the step "
               "ending there is shortened; the integration carries on).", in_spec=False),
    OptionSpec("jump_t", {"x-python": "times"}, "Adaptive methods: times where func is discontinuous: a step "
               "ends on each, its last stages see func from before the jump, and the next step starts from a "
               "fresh evaluation of func just after it.", in_spec=False),
    OptionSpec("force_output_steps", {"type": "boolean"}, "Adaptive methods: end a step at every output time "
               "instead of interpolating.", False, in_spec=False),
    OptionSpec("safety", {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
               "Adaptive methods: safety factor of the step-size controller.", 0.9, in_spec=False),
    OptionSpec("ifactor", {"type": "number", "exclusiveMinimum": 1}, "Adaptive methods: largest growth of the "
               "step size in one step.", 10.0, in_spec=False),
    OptionSpec("dfactor", {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
               "Adaptive methods: largest shrinking of the step size in one step.", 0.2, in_spec=False),
)
_BY_KEY = {o.key: o for o in SOLVER_OPTIONS}

FIXED_STEP_KEYS = tuple(o.key for o in SOLVER_OPTIONS if o.kind == "fixed")
#: the options that set a fixed-step solve's step count (mutually exclusive; specs need one)
STEP_COUNT_KEYS = ("step_size", "steps")
ADAPTIVE_KEYS = tuple(o.key for o in SOLVER_OPTIONS if o.kind == "adaptive")
TOLERANCE_KEYS = tuple(o.key for o in SOLVER_OPTIONS if o.kind == "tolerance")
IMPLICIT_KEYS = tuple(o.key for o in SOLVER_OPTIONS if o.kind == "implicit")


@dataclass(frozen=True)
class FixedStepOptions:
    """Fixed-step integration: each output interval is split into equal steps.

    ``step_size``: the largest step allowed (the interval is divided into the fewest equal steps
    not larger than it); ``steps``: the number of steps per output interval. Neither: one step
    per output interval. ``grid_constructor`` (torchdiffeq's): the step times come from
    ``grid_constructor(func, y0, t)``, outputs inside a step by ``interp``. ``perturb``: see
    :data:`SOLVER_OPTIONS`.
    """

    step_size: Optional[float] = None
    steps: Optional[int] = None
    grid_constructor: Optional[Callable[..., Any]] = None
    interp: str = _BY_KEY["interp"].default
    perturb: bool = _BY_KEY["perturb"].default
    #: implicit methods (None: the method's default); see :data:`SOLVER_OPTIONS`
    max_iters: Optional[int] = None
    newton_tol: Optional[float] = None
    jacobian: str = _BY_KEY["jacobian"].default
    #: the Adams methods
    max_order: int = _BY_KEY["max_order"].default


@dataclass(frozen=True)
class AdaptiveOptions:
    """Adaptive integration (methods with an error estimator); defaults from :data:`SOLVER_OPTIONS`."""

    first_step: Optional[float] = _BY_KEY["first_step"].default
    min_step: float = _BY_KEY["min_step"].default
    max_step: float = math.inf  # the table's None: no limit
    max_num_steps: int = _BY_KEY["max_num_steps"].default
    controller: str = _BY_KEY["controller"].default
    #: a callable error norm (None: Hairer's RMS norm)
    norm: Optional[Callable[..., Any]] = None
    #: sorted, as Python floats
    step_t: tuple[float, ...] = ()
    jump_t: tuple[float, ...] = ()
    force_output_steps: bool = _BY_KEY["force_output_steps"].default
    safety: float = _BY_KEY["safety"].default
    ifactor: float = _BY_KEY["ifactor"].default
    dfactor: float = _BY_KEY["dfactor"].default


@dataclass(frozen=True)
class ScipyOptions:
    """``scipy_solver``: the method of ``scipy.integrate.solve_ivp`` and its step limits."""

    solver: str = _BY_KEY["solver"].default
    min_step: float = _BY_KEY["min_step"].default
    max_step: float = math.inf


SolverOptions = Union[FixedStepOptions, AdaptiveOptions, ScipyOptions]
#: what a solve runs: a Runge-Kutta tableau, or one of odeint's other methods
AnyMethod = Union[ButcherTableau, OtherMethod]
#: the options a solve is given: a mapping to parse, options parsed already, or none
OptionsArg = Union[Mapping[str, Any], SolverOptions, None]


def allowed_options(tableau: AnyMethod) -> tuple[str, ...]:
    """Option keys ``odeint`` accepts for a method: the same rule as the spec language's (an
    adaptive method takes no ``steps``/``step_size``: ``tableau.fixed_step()`` is its fixed-step
    form); implicit methods add their iteration's options, the Adams methods ``max_order``,
    ``scipy_solver`` takes ``solver`` and the step limits."""
    if isinstance(tableau, OtherMethod):
        if tableau.kind == "scipy":
            return ("solver", "min_step", "max_step")
        return FIXED_STEP_KEYS + ("max_order",) + (("max_iters",) if tableau.implicit else ())
    if tableau.implicit:
        return FIXED_STEP_KEYS + IMPLICIT_KEYS
    return ADAPTIVE_KEYS if tableau.adaptive else FIXED_STEP_KEYS


def _bounds_text(schema: Mapping[str, Any]) -> str:
    parts = [f"{op} {schema[k]}" for k, op in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                               ("maximum", "<="), ("exclusiveMaximum", "<")) if k in schema]
    return " and ".join(parts)


def check_option_value(opt: OptionSpec, value: Any) -> Any:
    """``value`` checked against ``opt``'s schema fragment (type, bounds, enum); numbers are
    returned as floats (integers as ints). :class:`InvalidOptionError` names the option."""
    s = opt.schema
    if "x-python" in s:
        return _python_value(opt, value)
    if "enum" in s:
        if value not in s["enum"]:
            raise InvalidOptionError(f"option {opt.key!r} must be one of {tuple(s['enum'])}, got {value!r}",
                                     key=opt.key)
        return value
    kind = s.get("type")
    if kind == "boolean":
        if not isinstance(value, bool):
            raise InvalidOptionError(f"option {opt.key!r} must be a bool, got {value!r}", key=opt.key)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "integer" and not isinstance(value, int)):
        what = "an int" if kind == "integer" else "a number"
        raise InvalidOptionError(f"option {opt.key!r} must be {what}, got {value!r}", key=opt.key)
    v = value if kind == "integer" else float(value)
    ok = not math.isnan(v) and (
        ("minimum" not in s or v >= s["minimum"]) and ("exclusiveMinimum" not in s or v > s["exclusiveMinimum"])
        and ("maximum" not in s or v <= s["maximum"]) and ("exclusiveMaximum" not in s or v < s["exclusiveMaximum"]))
    # a step-size limit may be infinite (no limit); every other number is finite
    if not ok or (math.isinf(v) and opt.key != "max_step"):
        raise InvalidOptionError(f"option {opt.key!r} must be {_bounds_text(s) or 'finite'}, got {value!r}",
                                 key=opt.key)
    return v


def _python_value(opt: OptionSpec, value: Any) -> Any:
    """An option of the Python API only: a callable, or times (a 1-D tensor or a sequence of
    numbers, returned as sorted Python floats)."""
    if opt.schema["x-python"] == "callable":
        if not callable(value):
            raise InvalidOptionError(f"option {opt.key!r} must be a callable, got {value!r}", key=opt.key)
        return value
    tolist = getattr(value, "tolist", None)
    raw = tolist() if tolist is not None else value
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        raw = [raw]
    ok = isinstance(raw, (list, tuple)) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                and math.isfinite(x) for x in raw)
    if not ok:
        raise InvalidOptionError(f"option {opt.key!r} must be a 1-D tensor or a sequence of finite times, "
                                 f"got {value!r}", key=opt.key)
    return tuple(sorted(float(x) for x in raw))


def _unknown(key: Any, tableau: AnyMethod, allowed: tuple[str, ...]) -> InvalidOptionError:
    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    extra = ""
    if key in ADAPTIVE_KEYS and not tableau.adaptive:
        extra = f" ({tableau.name!r} is a fixed-step method; {key!r} is for adaptive methods)"
    if key in FIXED_STEP_KEYS and tableau.adaptive and isinstance(tableau, ButcherTableau):
        extra = (f" ({tableau.name!r} is adaptive; {key!r} is for fixed-step methods: give rtol/atol, or "
                 f"take fixed steps with get_tableau({tableau.name!r}).fixed_step())")
    if key in IMPLICIT_KEYS and key not in allowed:
        extra = f" ({key!r} is for implicit methods)"
    return InvalidOptionError(
        f"unknown solver option {key!r} for method {tableau.name!r}{hint}{extra}; allowed: {', '.join(allowed)}",
        key=str(key), allowed=allowed)


def parse_options(tableau: AnyMethod, options: OptionsArg) -> SolverOptions:
    """Validate ``odeint``'s ``options`` for ``tableau`` and fill in defaults (an already parsed
    :class:`FixedStepOptions`/:class:`AdaptiveOptions` is returned as it is).

    Raises :class:`InvalidOptionError` naming the allowed keys (with a did-you-mean) for an
    unknown key, and for values out of range.
    """
    if isinstance(options, (FixedStepOptions, AdaptiveOptions, ScipyOptions)):
        return options
    # a key given as None means "not given" (spec objects fill unset fields with None)
    given = {k: v for k, v in dict(options or {}).items() if v is not None}
    allowed = allowed_options(tableau)
    for key in given:
        if key not in allowed:
            raise _unknown(key, tableau, allowed)
    if all(k in given for k in STEP_COUNT_KEYS):
        raise InvalidOptionError("options 'step_size' and 'steps' are mutually exclusive", key="steps")
    if "grid_constructor" in given and any(k in given for k in STEP_COUNT_KEYS):
        raise InvalidOptionError("option 'grid_constructor' sets the steps itself: give it without "
                                 "'steps'/'step_size'", key="grid_constructor")
    values = {k: check_option_value(_BY_KEY[k], v) for k, v in given.items()}
    if isinstance(tableau, OtherMethod) and tableau.kind == "scipy":
        scipy_opts = ScipyOptions(**values)
        if scipy_opts.min_step > scipy_opts.max_step:
            raise InvalidOptionError(f"min_step ({scipy_opts.min_step}) is larger than max_step "
                                     f"({scipy_opts.max_step})", key="min_step")
        return scipy_opts
    if not tableau.adaptive:
        return FixedStepOptions(**values)
    opts = AdaptiveOptions(**values)
    if opts.min_step > opts.max_step:
        raise InvalidOptionError(f"min_step ({opts.min_step}) is larger than max_step ({opts.max_step})",
                                 key="min_step")
    shared = set(opts.step_t) & set(opts.jump_t)
    if shared:
        raise InvalidOptionError(f"step_t and jump_t share the time(s) {sorted(shared)}: a time is either a "
                                 "step boundary or a jump", key="jump_t")
    return opts


def option_spec(key: str) -> OptionSpec:
    """The table entry of solver option ``key``."""
    return _BY_KEY[key]
