"""Reference problems shared by the solver tests: torch right-hand sides, numpy twins for SciPy,
and exact solutions where they exist."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.integrate import solve_ivp

DEMO_A = [[-0.1, 2.0], [-2.0, -0.1]]


def decay(t, y):
    return -y


def harmonic(t, y):
    return torch.stack([y[..., 1], -y[..., 0]], dim=-1)


def harmonic_exact(ts: torch.Tensor, y0=(1.0, 0.0)) -> torch.Tensor:
    c, s = torch.cos(ts), torch.sin(ts)
    return torch.stack([y0[0] * c + y0[1] * s, -y0[0] * s + y0[1] * c], dim=-1)


def van_der_pol(t, y, mu=1.0):
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, mu * (1 - x * x) * v - x], dim=-1)


def van_der_pol_np(t, y, mu=1.0):
    return [y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]]


def lotka_volterra(t, y):
    x, z = y[..., 0], y[..., 1]
    return torch.stack([1.5 * x - x * z, -3.0 * z + x * z], dim=-1)


def lotka_volterra_np(t, y):
    return [1.5 * y[0] - y[0] * y[1], -3.0 * y[1] + y[0] * y[1]]


def make_demo(dtype=torch.float64):
    """torchdiffeq's ode_demo dynamics dy/dt = (y**3) @ A."""
    a = torch.tensor(DEMO_A, dtype=dtype)

    def demo(t, y):
        return (y**3) @ a

    return demo


def demo_np(t, y):
    return (np.asarray(y) ** 3) @ np.asarray(DEMO_A)


def scipy_reference(f_np, y0, ts) -> torch.Tensor:
    """DOP853 at rtol = atol = 1e-12 on the given output times (float64)."""
    ts = np.asarray(ts, dtype=np.float64)
    sol = solve_ivp(f_np, (ts[0], ts[-1]), np.asarray(y0, dtype=np.float64), method="DOP853",
                    rtol=1e-12, atol=1e-12, t_eval=ts)
    assert sol.success, sol.message
    return torch.from_numpy(sol.y.T.copy())


def logistic_exact(t: float, y0: float = 0.1) -> float:
    return 1.0 / (1.0 + (1.0 / y0 - 1.0) * math.exp(-t))
