"""Where the simplified Newton iteration of an implicit step starts: ``(I - h A (x) J)^-1 f(t, y)``
in every stage, close on a stiff problem where ``k = f(t, y)`` is off by about ``h * lambda``."""

from __future__ import annotations

import pytest
import torch

from odespec.solvers.implicit import implicit_step
from odespec.solvers.tableaus import get_tableau


def _step(method: str, func, y: torch.Tensor, h: float, iters: int, tol: float = 0.0):
    return implicit_step(func, 0.0, y, h, None, tableau=get_tableau(method), max_iters=iters, newton_tol=tol,
                         jacobian="batch")


@pytest.mark.parametrize("method", ["radauIIA5", "radauIIA3", "gl4", "sdirk2", "implicit_euler"])
def test_a_stiff_nonlinear_step_is_close_after_two_iterations(method: str):
    """y' = -1e5 (y - cos t) - y^3, h = 0.05: from k = f(t, y) the stage values are an explicit
    Euler step 5000 times too long, and the simplified iteration diverged (1e7 off after one
    iteration, 1e16 after two); from the linear start it is 1e-7 off after one, 1e-11 after two."""
    y = torch.tensor([[2.0], [-1.0], [0.3]], dtype=torch.float64)

    def func(t, x):
        return -1e5 * (x - torch.cos(torch.as_tensor(t, dtype=x.dtype))) - x ** 3

    converged = _step(method, func, y, 0.05, 50, tol=1e-14).y_next
    one, two = _step(method, func, y, 0.05, 1).y_next, _step(method, func, y, 0.05, 2).y_next
    assert float((one - converged).abs().max()) < 1e-5
    assert float((two - converged).abs().max()) < 1e-9
