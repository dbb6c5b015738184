"""Empirical order of convergence of every built-in method (fixed steps, float64).

The harmonic oscillator over [0, 8] has no order reduction or super-convergence; the nonlinear
order conditions are checked exactly in test_solver_tableaus.py (rooted trees). Step counts are
chosen per order so that the errors stay in the asymptotic range and far above round-off.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from solver_problems import harmonic

from odespec.solvers import solve
from odespec.solvers.tableaus import get_tableau, method_names

T_END = 8.0
STEPS = {1: [100, 200, 400, 800], 2: [50, 100, 200, 400], 3: [40, 80, 160, 320],
         4: [20, 40, 80, 160], 5: [40, 80, 120, 160], 6: [16, 24, 32, 48], 8: [8, 12, 16, 24]}


def _observed_order(method: str) -> float:
    tab = get_tableau(method)
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    exact = torch.tensor([math.cos(T_END), -math.sin(T_END)], dtype=torch.float64)
    ts = torch.tensor([0.0, T_END], dtype=torch.float64)
    hs, errs = [], []
    for n in STEPS[tab.order]:
        # adaptive methods take fixed steps in their fixed-step form
        ys = solve(harmonic, y0, ts, method=tab.fixed_step() if tab.adaptive else tab, options={"steps": n}).ys
        errs.append((ys[-1] - exact).abs().max().item())
        hs.append(T_END / n)
    assert min(errs) > 1e-13, "errors reached round-off: the fit would be meaningless"
    return float(np.polyfit(np.log(hs), np.log(errs), 1)[0])


@pytest.mark.parametrize("method", method_names())
def test_convergence_order(method):
    order = get_tableau(method).order
    observed = _observed_order(method)
    assert abs(observed - order) <= 0.3, (method, order, observed)


def test_adaptive_error_scales_with_tolerance():
    """Tightening rtol by 1000x must reduce the global error by roughly that much."""
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    ts = torch.linspace(0, 10, 11, dtype=torch.float64)
    exact = torch.stack([torch.cos(ts), -torch.sin(ts)], dim=-1)
    errs = []
    for rtol in (1e-5, 1e-8):
        ys = solve(harmonic, y0, ts, method="dopri5", rtol=rtol, atol=rtol * 1e-2).ys
        errs.append((ys - exact).abs().max().item())
    assert 100 < errs[0] / errs[1] < 10_000
