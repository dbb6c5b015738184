"""Public entry points: :func:`odeint` (torchdiffeq-compatible), :func:`odeint_adjoint`
(torchdiffeq's drop-in) and :func:`solve` (with statistics and a choice of gradient method).

How gradients flow is the ``gradient`` argument (see :mod:`odespec.solvers.gradient`):
``"backprop"`` (default) differentiates the solver's operations (discretise-then-optimise, step
sizes are constants), ``"adjoint"`` solves the continuous adjoint backwards, ``"checkpoint"``
recomputes backprop's graph segment by segment. Gradients reach the output times ``t`` too,
by the same closed form for every method (:mod:`odespec.solvers.time_grad`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union, overload

import torch

from odespec.errors import TracedAdaptiveSolveError
from odespec.solvers.callbacks import CALLBACK_NAMES, warn_unsupported
from odespec.solvers.checks import check_monotonic, check_state, check_times, check_tolerance
from odespec.solvers.common import Outcome
from odespec.solvers.config import DEFAULT_METHOD, GradientConfig
from odespec.solvers.gradient import Adjoint, GradientMethod, Problem, make_gradient
from odespec.solvers.integrate import make_setup
from odespec.solvers.options import AdaptiveOptions, AnyMethod, InvalidOptionError, ScipyOptions, SolverOptions
from odespec.solvers.solution import BackwardStats, Solution, SolveStats
from odespec.solvers.tableau import ButcherTableau
from odespec.solvers.tableaus import OtherMethod, get_tableau, other_method
from odespec.solvers.time_grad import TimeGradient

__all__ = ["odeint", "odeint_adjoint", "solve", "DEFAULT_METHOD"]

Func = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
EventFn = Callable[[torch.Tensor, Any], torch.Tensor]
Tol = Union[float, torch.Tensor]
Method = Union[str, ButcherTableau, OtherMethod, None]
Times = Union[torch.Tensor, Sequence[float]]


@overload
def odeint(func: Func, y0: torch.Tensor, t: Times, *, rtol: Tol = ..., atol: Tol = ..., method: Method = ...,
           options: Optional[Mapping[str, Any]] = ..., event_fn: None = ...) -> torch.Tensor: ...
@overload
def odeint(func: Func, y0: torch.Tensor, t: Times, *, rtol: Tol = ..., atol: Tol = ..., method: Method = ...,
           options: Optional[Mapping[str, Any]] = ..., event_fn: EventFn) -> tuple[torch.Tensor, Any]: ...


def odeint(
    func: Func,
    y0: torch.Tensor,
    t: Union[torch.Tensor, Sequence[float]],
    *,
    rtol: Tol = 1e-7,
    atol: Tol = 1e-9,
    method: Method = None,
    options: Optional[Mapping[str, Any]] = None,
    event_fn: Optional[EventFn] = None,
) -> Any:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0``, and return ``y`` at every time in ``t``.

    Same semantics as ``torchdiffeq.odeint``: ``t`` is 1-D and strictly increasing or
    decreasing, the result has shape ``(len(t), *y0.shape)`` and ``result[0] == y0``. ``method``
    is a registered name or a :class:`ButcherTableau` (default ``"dopri5"``). ``options``:
    ``step_size``, ``steps`` or ``grid_constructor`` (with ``interp``), and ``perturb``, for fixed
    steps; ``first_step``, ``min_step``, ``max_step``, ``max_num_steps``, ``controller``
    ("pi"/"i"), ``norm``, ``step_t``, ``jump_t``, ``force_output_steps``, ``safety``,
    ``ifactor``, ``dfactor`` for adaptive methods (each described in
    :data:`~odespec.solvers.options.SOLVER_OPTIONS`). ``func`` may carry torchdiffeq's solver
    callbacks (:mod:`odespec.solvers.callbacks`). Raises :class:`~odespec.errors.SolverError`
    when the solve fails. ``y0`` may also be a tuple of tensors (solved as one flat state; the
    result is then a tuple, and ``rtol``/``atol`` may be tuples with one entry per tensor).

    With ``event_fn``, as in torchdiffeq, ``t = [t0, t1]`` and the solve runs from ``t0`` towards
    ``t1`` (whose value is otherwise ignored) until ``event_fn(t, y)`` crosses zero, and
    returns ``(event_t, [y0, y(event_t)])``, both with gradients (see
    :mod:`odespec.solvers.events`).
    """
    if event_fn is not None:
        return _until_event(func, y0, t, event_fn, method=method, rtol=rtol, atol=atol, options=options,
                            gradient="backprop")
    return solve(func, y0, t, method=method, rtol=rtol, atol=atol, options=options).ys


@overload
def odeint_adjoint(func: Func, y0: torch.Tensor, t: Times, *, rtol: Tol = ..., atol: Tol = ..., method: Method = ...,
                   options: Optional[Mapping[str, Any]] = ..., adjoint_rtol: Optional[Tol] = ...,
                   adjoint_atol: Optional[Tol] = ..., adjoint_method: Method = ...,
                   adjoint_options: Optional[Mapping[str, Any]] = ...,
                   adjoint_params: Optional[Iterable[torch.Tensor]] = ..., event_fn: None = ...) -> torch.Tensor: ...
@overload
def odeint_adjoint(func: Func, y0: torch.Tensor, t: Times, *, rtol: Tol = ..., atol: Tol = ..., method: Method = ...,
                   options: Optional[Mapping[str, Any]] = ..., adjoint_rtol: Optional[Tol] = ...,
                   adjoint_atol: Optional[Tol] = ..., adjoint_method: Method = ...,
                   adjoint_options: Optional[Mapping[str, Any]] = ...,
                   adjoint_params: Optional[Iterable[torch.Tensor]] = ...,
                   event_fn: EventFn) -> tuple[torch.Tensor, Any]: ...


def odeint_adjoint(
    func: Func,
    y0: torch.Tensor,
    t: Union[torch.Tensor, Sequence[float]],
    *,
    rtol: Tol = 1e-7,
    atol: Tol = 1e-9,
    method: Method = None,
    options: Optional[Mapping[str, Any]] = None,
    adjoint_rtol: Optional[Tol] = None,
    adjoint_atol: Optional[Tol] = None,
    adjoint_method: Method = None,
    adjoint_options: Optional[Mapping[str, Any]] = None,
    adjoint_params: Optional[Iterable[torch.Tensor]] = None,
    event_fn: Optional[EventFn] = None,
) -> Any:
    """torchdiffeq's ``odeint_adjoint``: :func:`odeint` with gradients by the continuous adjoint.

    As in torchdiffeq, ``func`` must be an ``nn.Module`` (whose parameters get gradients) unless
    ``adjoint_params`` names the tensors to differentiate (``()`` for none); the adjoint
    tolerances and method default to the forward ones, and ``adjoint_options`` to ``options``
    when the method is the same. ``adjoint_options={"norm": "seminorm"}`` (torchdiffeq's
    spelling) is ``solve(..., seminorm=True)``. ``event_fn``: as in :func:`odeint`.
    """
    if adjoint_params is None and not isinstance(func, torch.nn.Module):
        raise ValueError(
            "func must be an instance of nn.Module to specify the adjoint parameters; alternatively "
            "they can be specified explicitly via the `adjoint_params` argument. If there are no "
            "parameters then it is allowable to set `adjoint_params=()`."
        )
    seminorm, norm = False, None
    if adjoint_options is not None and "norm" in adjoint_options:
        adjoint_options = dict(adjoint_options)
        norm = adjoint_options.pop("norm")
        if norm == "seminorm":
            seminorm, norm = True, None
        elif not callable(norm):
            raise InvalidOptionError(
                f"adjoint_options['norm'] must be 'seminorm' or a callable, got {norm!r}: a callable is given the "
                "tuple (t, y, adj_y, *adj_params) of scaled errors, as in torchdiffeq; leave it out for the default "
                "mixed norm (the largest RMS norm of y, adj_y and each parameter's)",
                key="norm",
            )
    adjoint = Adjoint(rtol=adjoint_rtol, atol=adjoint_atol, method=adjoint_method, options=adjoint_options,
                      params=adjoint_params, seminorm=seminorm, norm=norm)
    if event_fn is not None:
        return _until_event(func, y0, t, event_fn, method=method, rtol=rtol, atol=atol, options=options,
                            gradient=adjoint)
    return solve(func, y0, t, method=method, rtol=rtol, atol=atol, options=options, gradient=adjoint).ys


def solve(
    func: Func,
    y0: torch.Tensor,
    t: Union[torch.Tensor, Sequence[float]],
    *,
    method: Method = None,
    rtol: Tol = 1e-7,
    atol: Tol = 1e-9,
    options: Union[Mapping[str, Any], SolverOptions, None] = None,
    return_on_failure: bool = False,
    gradient: Union[str, GradientConfig, GradientMethod] = "backprop",
) -> Solution:
    """Like :func:`odeint` but returns a :class:`Solution` with statistics, and chooses how
    gradients flow.

    ``options`` may also be the integrator's parsed options (as
    :meth:`~odespec.solvers.config.SolverConfig.integration_options` gives them), which skips
    parsing them again on every call.

    With ``return_on_failure=True`` a failed solve returns the outputs reached, the last accepted
    state and ``stats.status`` set to the failure reason instead of raising.

    ``gradient``: how gradients flow, as a name with default options (``"backprop"``, the
    default, ``"adjoint"``, ``"checkpoint"``), a :class:`~odespec.solvers.config.GradientConfig`
    (``GradientConfig.of("adjoint", seminorm=True)``) or a configured
    :class:`~odespec.solvers.gradient.GradientMethod` instance (``Adjoint(rtol=1e-6,
    params=...)``, ``Checkpoint(checkpoints=8)``); an unknown name raises
    :class:`~odespec.solvers.config.UnknownGradientMethodError` with a did-you-mean. The backward
    pass's work is readable in ``stats.backward`` after ``.backward()``. Gradients reach the
    outputs ``ys`` (and, on success, ``y_last``, which is ``ys[-1]``), and, when ``t`` requires
    grad, the times: ``dL/dt_i = <dL/dy_i, f(t_i, y_i)>`` for ``i >= 1`` and ``dL/dt_0 =
    -<a_0, f(t_0, y0)>`` with ``a_0`` the gradient reaching ``y0`` through the solve, for every
    gradient method (one more evaluation of ``func`` per output in the backward pass).
    """
    grad = make_gradient(gradient).for_function(func)
    tableau = _resolve_method(method)
    if isinstance(y0, (tuple, list)):
        packed = _TupleState(func, y0, rtol, atol)
        if isinstance(grad, Adjoint) and grad.norm is not None:
            grad = grad.replace(norm=packed.adjoint_norm(grad.norm))
        sol = solve(packed.func, packed.y0, t, method=tableau, rtol=packed.rtol, atol=packed.atol,
                    options=packed.options(options), return_on_failure=return_on_failure, gradient=grad)
        return packed.unpack(sol)
    setup = make_setup(tableau, options, rtol, atol)
    # SciPy's solver calls none of func's callbacks
    warn_unsupported(func, tableau.name, setup.fixed, () if isinstance(setup.opts, ScipyOptions) else None)
    if not setup.fixed:
        _refuse_tracing(tableau)  # first: the checks below read tensor values, which torch.export cannot
    y0 = check_state(y0)
    t = check_times(t, y0)
    times = t.tolist()
    if len(times) > 1:
        check_monotonic(times)
    if not setup.fixed:
        check_tolerance("rtol", rtol, y0)
        check_tolerance("atol", atol, y0)
    backward = BackwardStats()
    # the integrators see time as floats: the gradient to t is added around the solve
    timegrad = TimeGradient(func, t, backward) if TimeGradient.wanted(t) else None
    y0_in = y0 if timegrad is None else timegrad.input(y0)
    solved = grad.solve(Problem(func, y0_in, t.detach(), times, setup, options), backward)
    outcome = solved.outcome
    if outcome.error is not None and not return_on_failure:
        raise outcome.error
    ys = solved.ys if timegrad is None else timegrad.output(solved.ys, y0)
    return _solution(outcome, ys, tableau, t, solved.nfe, grad.name, backward)


def _tracer() -> Optional[str]:
    """The tracer running this call, by torch's public predicates; None outside one."""
    if torch.onnx.is_in_onnx_export():
        return "torch.onnx.export"
    if torch.jit.is_tracing():
        return "torch.jit.trace"
    if torch.compiler.is_exporting():
        return "torch.export"
    return None


def _refuse_tracing(tableau: AnyMethod) -> None:
    """Raise :class:`TracedAdaptiveSolveError` for an adaptive solve under a tracer.

    Why: the tracer records the steps the example input took (the step-size control runs in
    Python), so the graph "exports" with a few TracerWarnings and is wrong, NaN even, at another
    input. A fixed-step solve traces into the same computation for every input and keeps
    exporting. ``torch.compile`` is not refused: it runs what it cannot capture in Python.
    """
    tracer = _tracer()
    if tracer is None:
        return
    raise TracedAdaptiveSolveError(
        f"an adaptive solve ({tableau.name}) cannot be traced by {tracer}: its step sizes depend on the input, "
        "so the traced graph would repeat the example input's steps and be wrong at other inputs",
        "trace a fixed-step solve instead, e.g. odeint(func, y0, t, method='rk4', options={'steps': 32}) "
        "(or {'step_size': h}); for an odespec model, `odespec export SPEC --weights FILE` writes the fixed-step "
        "ONNX graph and measures its error against the adaptive solve",
    )


def _solution(outcome: Outcome, ys: torch.Tensor, tableau: AnyMethod, t: torch.Tensor, nfe: int,
              gradient: str, backward: BackwardStats) -> Solution:
    n = ys.shape[0]
    stats = SolveStats(
        method=tableau.name,
        nfe=nfe,
        n_steps=outcome.n_steps,
        n_accepted=outcome.n_accepted,
        n_rejected=outcome.n_rejected,
        final_step_size=float(outcome.step_size),
        status="success" if outcome.error is None else outcome.error.reason,
        gradient=gradient,
        backward=backward,
    )
    # on success y_last is the last output: take it from ys, so gradients reach it whatever
    # the gradient method (after a failure it may lie past the last output, outside ys)
    y_last = ys[-1] if outcome.error is None else outcome.y_last
    return Solution(
        ts=t[:n],
        ys=ys,
        stats=stats,
        t_last=float(outcome.t_last),
        y_last=y_last,
        error=outcome.error,
    )


class _TupleState:
    """A tuple of state tensors solved as one flat tensor (as torchdiffeq does): one shared
    step size, one error norm over all components."""

    def __init__(self, func: Callable, y0: Sequence[torch.Tensor], rtol: Any, atol: Any):
        if not y0 or not all(isinstance(y, torch.Tensor) for y in y0):
            raise TypeError("a tuple y0 must hold at least one tensor, and only tensors")
        dtypes = {y.dtype for y in y0}
        if len(dtypes) != 1 or len({y.device for y in y0}) != 1:
            raise TypeError(f"all tensors of a tuple y0 must share dtype and device, got {sorted(map(str, dtypes))}")
        self.shapes = [y.shape for y in y0]
        self.sizes = [y.numel() for y in y0]
        self.y0 = torch.cat([y.reshape(-1) for y in y0])
        self.rtol = self._tol(rtol)
        self.atol = self._tol(atol)

        def flat_func(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = func(t, self._split(y))
            return torch.cat([o.reshape(-1) for o in out])

        # the solver callbacks see the state as the user does (a tuple); the adjoint's see the
        # augmented state, as torchdiffeq's do
        for name in CALLBACK_NAMES:
            callback = getattr(func, name, None)
            if callable(callback):
                setattr(flat_func, name, self._tupled(callback))
            adjoint_callback = getattr(func, name + "_adjoint", None)
            if callable(adjoint_callback):
                setattr(flat_func, name + "_adjoint", adjoint_callback)
        self.func = flat_func

    def _tupled(self, fn: Callable) -> Callable:
        """``fn`` (a norm, a callback) given the flat state's parts as the tuple of tensors."""
        def tupled(*args: Any) -> Any:
            return fn(*args[:-2], self._split(args[-2]), args[-1]) if len(args) == 3 else fn(self._split(args[0]))

        return tupled

    def adjoint_norm(self, norm: Callable[[tuple[torch.Tensor, ...]], Any]) -> Callable[[tuple[torch.Tensor, ...]], Any]:
        """A callable adjoint norm given the tuple's parts, as torchdiffeq gives it: ``(t, *y,
        *adj_y, *adj_params)`` for the flat ``(t, y, adj_y, *adj_params)``."""
        def tupled(channels: tuple[torch.Tensor, ...]) -> Any:
            t, y, adj_y, *params = channels
            return norm((t, *self._split(y), *self._split(adj_y), *params))

        return tupled

    def options(self, options: Union[Mapping[str, Any], SolverOptions, None]) -> Union[Mapping[str, Any],
                                                                                        SolverOptions, None]:
        """``options`` with a ``norm`` made to take the flat state (it is given the tuple)."""
        if isinstance(options, AdaptiveOptions):
            return options if options.norm is None else dataclasses.replace(options, norm=self._tupled(options.norm))
        if not isinstance(options, Mapping) or not callable(options.get("norm")):
            return options
        return {**options, "norm": self._tupled(options["norm"])}

    def _split(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        lead = flat.shape[:-1]
        # reshape((...)), not reshape(...): a 0-d part of an unbatched state has no sizes at all
        return tuple(p.reshape((*lead, *s)) for p, s in zip(flat.split(self.sizes, dim=-1), self.shapes, strict=True))

    def _tol(self, tol: Any) -> Any:
        if not isinstance(tol, (tuple, list)):
            return tol
        if len(tol) != len(self.sizes):
            raise InvalidOptionError(f"a tuple tolerance needs {len(self.sizes)} entries, got {len(tol)}")
        return torch.cat([torch.as_tensor(x, dtype=self.y0.abs().dtype).expand(s).reshape(-1)
                          for x, s in zip(tol, self.shapes, strict=True)])

    def unpack(self, sol: Solution) -> Solution:
        # as torchdiffeq does, a tuple state's solution holds tuples where Solution declares the
        # tensors of the usual state
        ys, y_last = self._split(sol.ys), self._split(sol.y_last)
        return dataclasses.replace(sol, ys=ys, y_last=y_last)  # type: ignore[arg-type]


def _resolve_method(method: Method) -> AnyMethod:
    if method is None:
        return get_tableau(DEFAULT_METHOD)
    if isinstance(method, (ButcherTableau, OtherMethod)):
        return method
    if isinstance(method, str):
        return other_method(method) or get_tableau(method)
    raise TypeError(f"method must be a name or a ButcherTableau, got {type(method).__name__}")


def _until_event(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    # imported on use: the events module builds on solve
    from odespec.solvers.events import solve_until_event

    return solve_until_event(*args, **kwargs)
