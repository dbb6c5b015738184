"""Solver options: which keys a method accepts, their defaults and their validation.

Torch-free, so the spec validator can check ``solver.options`` without importing torch.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

from odespec.errors import OdespecError
from odespec.solvers.tableau import ButcherTableau

__all__ = [
    "InvalidOptionError",
    "FixedStepOptions",
    "AdaptiveOptions",
    "FIXED_STEP_KEYS",
    "ADAPTIVE_KEYS",
    "DEFAULT_MAX_NUM_STEPS",
    "allowed_options",
    "parse_options",
]

FIXED_STEP_KEYS = ("step_size", "steps")
ADAPTIVE_KEYS = (
    "first_step",
    "min_step",
    "max_step",
    "max_num_steps",
    "controller",
    "force_output_steps",
    "safety",
    "ifactor",
    "dfactor",
)
# Finite by default so a stiff or blown-up model fails with a clear error instead of spinning.
DEFAULT_MAX_NUM_STEPS = 100_000
CONTROLLERS = ("pi", "i")


class InvalidOptionError(OdespecError, ValueError):
    """An unknown or ill-valued solver option. ``allowed`` lists the keys the method accepts."""

    def __init__(self, message: str, *, key: Optional[str] = None, allowed: tuple[str, ...] = ()):
        self.key = key
        self.allowed = allowed
        super().__init__(message)


@dataclass(frozen=True)
class FixedStepOptions:
    """Fixed-step integration: each output interval is split into equal steps.

    ``step_size``: the largest step allowed (the interval is divided into the fewest equal steps
    not larger than it); ``steps``: the number of steps per output interval. Neither: one step
    per output interval.
    """

    step_size: Optional[float] = None
    steps: Optional[int] = None


@dataclass(frozen=True)
class AdaptiveOptions:
    """Adaptive integration (methods with an error estimator)."""

    first_step: Optional[float] = None
    min_step: float = 0.0
    max_step: float = math.inf
    max_num_steps: int = DEFAULT_MAX_NUM_STEPS
    controller: str = "pi"
    force_output_steps: bool = False
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2


SolverOptions = Union[FixedStepOptions, AdaptiveOptions]


def allowed_options(tableau: ButcherTableau) -> tuple[str, ...]:
    """Option keys a method accepts. Adaptive methods also accept the fixed-step keys, which
    switch them to fixed steps (the error estimator is then unused)."""
    return (ADAPTIVE_KEYS + FIXED_STEP_KEYS) if tableau.adaptive else FIXED_STEP_KEYS


def _positive(key: str, value: Any, *, allow_inf: bool = False, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidOptionError(f"option {key!r} must be a number, got {value!r}", key=key)
    v = float(value)
    ok = (v >= 0 if allow_zero else v > 0) and (allow_inf or math.isfinite(v)) and not math.isnan(v)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidOptionError(f"option {key!r} must be {bound}, got {value!r}", key=key)
    return v


def _count(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidOptionError(f"option {key!r} must be a positive int, got {value!r}", key=key)
    return value


def parse_options(tableau: ButcherTableau, options: Optional[Mapping[str, Any]]) -> SolverOptions:
    """Validate ``options`` for ``tableau`` and fill in defaults.

    Raises :class:`InvalidOptionError` naming the allowed keys (with a did-you-mean) for an
    unknown key, and for values out of range.
    """
    # a key given as None means "not given" (spec objects fill unset fields with None)
    options = {k: v for k, v in dict(options or {}).items() if v is not None}
    allowed = allowed_options(tableau)
    for key in options:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            extra = ""
            if key in ADAPTIVE_KEYS and not tableau.adaptive:
                extra = f" ({tableau.name!r} is a fixed-step method; {key!r} is for adaptive methods)"
            raise InvalidOptionError(
                f"unknown solver option {key!r} for method {tableau.name!r}{hint}{extra}; "
                f"allowed: {', '.join(allowed)}",
                key=str(key),
                allowed=allowed,
            )

    fixed_keys = [k for k in options if k in FIXED_STEP_KEYS]
    adaptive_keys = [k for k in options if k in ADAPTIVE_KEYS]
    if len(fixed_keys) == 2:
        raise InvalidOptionError("options 'step_size' and 'steps' are mutually exclusive", key="steps")
    if fixed_keys and adaptive_keys:
        raise InvalidOptionError(
            f"option {fixed_keys[0]!r} asks for fixed steps, but {adaptive_keys[0]!r} is an "
            "adaptive-step option; use one kind",
            key=adaptive_keys[0],
            allowed=allowed,
        )
    if not tableau.adaptive or fixed_keys:
        step_size = options.get("step_size")
        steps = options.get("steps")
        return FixedStepOptions(
            step_size=None if step_size is None else _positive("step_size", step_size),
            steps=None if steps is None else _count("steps", steps),
        )

    kw: dict[str, Any] = {}
    if options.get("first_step") is not None:
        kw["first_step"] = _positive("first_step", options["first_step"])
    if "min_step" in options:
        kw["min_step"] = _positive("min_step", options["min_step"], allow_zero=True)
    if "max_step" in options:
        kw["max_step"] = _positive("max_step", options["max_step"], allow_inf=True)
    if "max_num_steps" in options:
        kw["max_num_steps"] = _count("max_num_steps", options["max_num_steps"])
    if "controller" in options:
        c = options["controller"]
        if c not in CONTROLLERS:
            raise InvalidOptionError(
                f"option 'controller' must be one of {CONTROLLERS}, got {c!r}", key="controller"
            )
        kw["controller"] = c
    if "force_output_steps" in options:
        v = options["force_output_steps"]
        if not isinstance(v, bool):
            raise InvalidOptionError(
                f"option 'force_output_steps' must be a bool, got {v!r}", key="force_output_steps"
            )
        kw["force_output_steps"] = v
    if "safety" in options:
        v = _positive("safety", options["safety"])
        if v > 1:
            raise InvalidOptionError(f"option 'safety' must be in (0, 1], got {v!r}", key="safety")
        kw["safety"] = v
    if "ifactor" in options:
        v = _positive("ifactor", options["ifactor"])
        if v <= 1:
            raise InvalidOptionError(f"option 'ifactor' must be > 1, got {v!r}", key="ifactor")
        kw["ifactor"] = v
    if "dfactor" in options:
        v = _positive("dfactor", options["dfactor"])
        if v >= 1:
            raise InvalidOptionError(f"option 'dfactor' must be in (0, 1), got {v!r}", key="dfactor")
        kw["dfactor"] = v
    opts = AdaptiveOptions(**kw)
    if opts.min_step > opts.max_step:
        raise InvalidOptionError(
            f"min_step ({opts.min_step}) is larger than max_step ({opts.max_step})", key="min_step"
        )
    return opts
