"""Adaptive step-size control: from a step's error ratio to the size of the next step.

A controller is a small object made once per solve (:func:`make_controller`) from the solve's
:class:`~odespec.solvers.options.AdaptiveOptions` and the method's order. It sees only Python
floats: step sizes as magnitudes (the integrator applies the direction of time) and the error
ratio, the scaled RMS norm of the step's error estimate (accept if ``<= 1``). Its interface, in
the order the integrator calls it:

* :meth:`~StepSizeController.init`: the first step's size, from ``first_step`` or an estimate;
* :meth:`~StepSizeController.accepts`: the accept/reject decision for a finite error ratio;
* :meth:`~StepSizeController.accepted`, :meth:`~StepSizeController.rejected`,
  :meth:`~StepSizeController.nonfinite`: the next step's size after an accepted step, a
  rejected one, or one whose error estimate was NaN or infinite (``None`` where no smaller step
  is allowed: the solve fails).

Two kinds, selected by the ``controller`` option: ``"pi"`` (default), Hairer's DOPRI5 PI
controller (beta = 0.04, alpha = 1/q - 0.75 beta), and ``"i"``, the plain I controller with
torchdiffeq's rule of never shrinking the step after an accepted one. The controller exponent
is ``1/q`` with ``q`` the method's order (for every built-in pair this equals Hairer's
``1/(min(p, p_hat) + 1)``; DOP853's combined estimator behaves like ``h**8``). After a
rejection neither kind grows the next step (Hairer).

The step sizes are plain floats rather than tensors: the integrator reads one float per step
from the device (the error ratio) and everything here is host arithmetic, with no further
synchronisation.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Callable, ClassVar, Optional

if TYPE_CHECKING:  # pragma: no cover
    # the options name their controller from CONTROLLER_NAMES below, so this module cannot
    # import them at run time
    from odespec.solvers.options import AdaptiveOptions

__all__ = ["StepSizeController", "PIController", "IController", "make_controller", "CONTROLLER_NAMES"]

_PI_BETA = 0.04  # Hairer's default for DOPRI5; with alpha = 1/q - 0.75 beta
_MIN_FACOLD = 1e-4  # Hairer: the previous error ratio is floored to keep the PI term bounded


class StepSizeController(ABC):
    """Proposes step sizes for one adaptive solve, from the error ratios of its steps.

    Holds the solve's constants (``safety``, ``ifactor``, ``dfactor``, ``min_step``,
    ``max_step`` from the options, ``alpha`` from the method's order) and the state the
    proposals depend on: whether the last attempt was rejected, plus whatever a kind keeps
    (the PI controller's previous error ratio). :meth:`init` resets that state, so one
    object serves one solve at a time.
    """

    #: the ``controller`` option's value that selects this kind
    name: ClassVar[str]

    __slots__ = ("safety", "ifactor", "dfactor", "min_step", "max_step", "first_step", "alpha",
                 "last_rejected")

    def __init__(self, opts: AdaptiveOptions, alpha: float) -> None:
        self.safety = opts.safety
        self.ifactor = opts.ifactor
        self.dfactor = opts.dfactor
        self.min_step = opts.min_step
        self.max_step = opts.max_step
        self.first_step = opts.first_step
        self.alpha = alpha
        self.last_rejected = False

    def init(self, span: float, estimate: Callable[[], float]) -> float:
        """The first step's size: the ``first_step`` option, else ``estimate()``, capped by
        ``max_step`` and the length ``span`` of the solve, and at least ``min_step``. NaN when
        the estimate is (the derivative at the start is not finite; the caller reports it)."""
        self.last_rejected = False
        h = self.first_step if self.first_step is not None else estimate()
        if math.isnan(h):
            return h  # min/max below would not pass it on
        return max(min(h, self.max_step, span), self.min_step)

    @staticmethod
    def accepts(ratio: float) -> bool:
        """Whether a step with this (finite) error ratio is accepted."""
        return ratio <= 1.0

    def accepted(self, ratio: float, h_step: float, h_planned: float, clipped: bool) -> float:
        """The next step's size after accepting a step of size ``h_step`` with error ``ratio``.

        ``h_planned`` is the size proposed before the step, ``clipped`` whether the step was
        shortened to land on a target (an output time or the end). A comfortably accurate
        clipped step does not shrink the proposal: the shortening was not the error's doing.
        """
        factor = self.ifactor if ratio == 0.0 else self._factor(ratio)
        h = h_step * factor
        if self.last_rejected:
            h = min(h, h_step)
        if clipped and factor >= 1.0:
            h = max(h, h_planned)
        self.last_rejected = False
        self._accepted(ratio)
        return max(min(h, self.max_step), self.min_step)

    def rejected(self, ratio: float, h_step: float) -> Optional[float]:
        """The size to retry with after rejecting a step of size ``h_step`` (``ratio > 1``);
        ``None`` when ``h_step`` was already ``min_step``."""
        self.last_rejected = True
        h = h_step * max(self.dfactor, self.safety * ratio ** (-self.alpha))
        if h < self.min_step:
            if h_step <= self.min_step * (1.0 + 1e-12):
                return None
            h = self.min_step
        return h

    def nonfinite(self, h_step: float) -> Optional[float]:
        """The size to retry with after a step of size ``h_step`` whose error estimate was NaN
        or infinite: shrunk by ``dfactor``, as the ratio says nothing; ``None`` below
        ``min_step``."""
        self.last_rejected = True
        h = h_step * self.dfactor
        return None if h < self.min_step else h

    @abstractmethod
    def _factor(self, ratio: float) -> float:
        """The growth factor after an accepted step with error ``ratio > 0``."""

    def _accepted(self, ratio: float) -> None:  # noqa: B027  (a hook with a default: not abstract)
        """Update what the kind keeps from an accepted step (nothing by default)."""


class PIController(StepSizeController):
    """Hairer's PI controller (DOPRI5's constants): the step also answers to the previous
    accepted step's error ratio, which damps the oscillating accept/reject pattern of a
    plain I controller near a stability boundary."""

    name = "pi"
    __slots__ = ("beta", "facold")

    def __init__(self, opts: AdaptiveOptions, order: int) -> None:
        super().__init__(opts, 1.0 / order - 0.75 * _PI_BETA)
        self.beta = _PI_BETA
        self.facold = _MIN_FACOLD

    def init(self, span: float, estimate: Callable[[], float]) -> float:
        self.facold = _MIN_FACOLD
        return super().init(span, estimate)

    def _factor(self, ratio: float) -> float:
        factor = self.safety * ratio ** (-self.alpha) * (self.facold**self.beta)
        return min(self.ifactor, max(self.dfactor, factor))

    def _accepted(self, ratio: float) -> None:
        self.facold = max(ratio, _MIN_FACOLD)


class IController(StepSizeController):
    """The plain I controller, with torchdiffeq's rule: an accepted step never shrinks the
    next one (the factor is at least 1)."""

    name = "i"
    __slots__ = ()

    def __init__(self, opts: AdaptiveOptions, order: int) -> None:
        super().__init__(opts, 1.0 / order)

    def _factor(self, ratio: float) -> float:
        return min(self.ifactor, max(1.0, self.safety * ratio ** (-self.alpha)))


_KINDS: dict[str, type[StepSizeController]] = {c.name: c for c in (PIController, IController)}
#: the controllers the ``controller`` option names, default first
CONTROLLER_NAMES = tuple(_KINDS)


def make_controller(opts: AdaptiveOptions, order: int) -> StepSizeController:
    """The controller ``opts.controller`` names, for a method of order ``order``."""
    return _KINDS[opts.controller](opts, order)
