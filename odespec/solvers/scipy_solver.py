"""``method="scipy_solver"``: ``scipy.integrate.solve_ivp`` behind ``odeint``, as torchdiffeq's.

SciPy is an optional extra (``pip install 'odespec[scipy]'``). The state goes to NumPy as one
flat float64 vector, ``func`` is called without autograd on tensors of the state's dtype and
device, and the outputs come back in the state's dtype. As in torchdiffeq, no gradient flows
through this forward solve (the outputs are new tensors); ``odeint_adjoint`` does give
gradients, by solving the adjoint system with SciPy too. Complex states are refused (SciPy's
Radau and LSODA cannot take them; torchdiffeq's tests skip them).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

from odespec.errors import OdespecError
from odespec.solvers.common import Outcome, TimedFunc, solver_error
from odespec.solvers.norms import Tol
from odespec.solvers.options import ScipyOptions

__all__ = ["integrate_scipy", "ScipyMissingError"]


class ScipyMissingError(OdespecError, ImportError):
    """``method="scipy_solver"`` without SciPy installed."""


def _solve_ivp() -> Callable[..., Any]:
    try:
        module = importlib.import_module("scipy.integrate")
    except ImportError as e:
        raise ScipyMissingError(
            "method='scipy_solver' runs scipy.integrate.solve_ivp, and SciPy is not installed: "
            "pip install 'odespec[scipy]' (or pip install scipy), or use one of odespec's own methods "
            "(dopri5; radauIIA5 or trbdf2 for stiff problems)") from e
    return module.solve_ivp


def _tol(tol: Tol) -> Any:
    if isinstance(tol, torch.Tensor):
        return tol.detach().cpu().double().reshape(-1).numpy() if tol.ndim else float(tol)
    return tol


def integrate_scipy(f: TimedFunc, y0: torch.Tensor, times: list[float], opts: ScipyOptions, rtol: Tol,
                    atol: Tol) -> Outcome:
    """Solve through ``times`` (monotonic, either direction) with ``solve_ivp``; a failure of
    SciPy's comes back in the outcome."""
    solve_ivp = _solve_ivp()
    outcome = Outcome(outs=[y0], t_last=times[0], y_last=y0)
    if len(times) < 2:  # nothing to solve: y0 itself, as every method returns it
        return outcome
    if y0.is_complex():
        raise OdespecError("method='scipy_solver' takes real states only (SciPy's Radau and LSODA refuse complex "
                           "ones): use an odespec method such as dopri5")
    shape, dtype, device = y0.shape, y0.dtype, y0.device
    # SciPy calls rhs hundreds of times (Radau and BDF once per column for a finite-difference
    # Jacobian), so it does as little as it can: a float64 CPU state comes from NumPy without a
    # copy or a conversion (and goes back so: those calls return the tensor itself), and
    # autograd is off around the whole solve
    native = dtype == torch.float64 and device.type == "cpu"

    def rhs(t: float, y: Any) -> Any:
        state = torch.from_numpy(y) if native else torch.as_tensor(y, dtype=dtype, device=device)
        return f(float(t), state.reshape(shape)).detach().reshape(-1).double().cpu().numpy()

    extra: dict[str, float] = {"min_step": opts.min_step} if opts.solver == "LSODA" else {}
    if opts.max_step != float("inf"):  # SciPy's default
        extra["max_step"] = opts.max_step
    with torch.no_grad():
        sol = solve_ivp(rhs, (times[0], times[-1]), y0.detach().reshape(-1).double().cpu().numpy(),
                        method=opts.solver, t_eval=times, rtol=_tol(rtol), atol=_tol(atol), **extra)
    outs = torch.as_tensor(sol.y.T, dtype=dtype, device=device).reshape(-1, *shape)
    # every output SciPy's, y0's row too (its value): as in torchdiffeq no output carries autograd
    # history, so a loss on them fails loudly in backward() instead of getting zero gradients
    outcome.outs = [y0.detach()] + list(outs[1:])
    outcome.n_steps = outcome.n_accepted = int(sol.t.shape[0])
    outcome.t_last, outcome.y_last = times[len(outcome.outs) - 1], outcome.outs[-1]
    if not sol.success or len(outcome.outs) < len(times):
        outcome.error = solver_error("step-size-underflow", outcome.t_last, 0.0,
                                     f"scipy.integrate.solve_ivp ({opts.solver}) failed: {sol.message}")
    return outcome
