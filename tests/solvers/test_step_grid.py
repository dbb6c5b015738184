"""Non-uniform step grids (odespec.solvers.grid.StepGrid) and their generic walk
(odespec.solvers.grid_solve): invariants over random grids and output times, and agreement with
the integrator's grid_constructor path (interp='cubic'), which computes the same solve."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from odespec.solvers import odeint
from odespec.solvers.grid import StepGrid, fixed_nfe, hermite_weights
from odespec.solvers.grid_solve import grid_solve
from odespec.solvers.options import FixedStepOptions
from odespec.solvers.step import torch_combine
from odespec.solvers.tableaus import get_tableau

METHODS = ("euler", "midpoint", "rk4", "dopri5", "bosh3")


@st.composite
def times_and_grid(draw: st.DrawFn) -> tuple[list[float], StepGrid]:
    """Increasing (or decreasing) output times and a grid over their span with random inner points."""
    gaps = draw(st.lists(st.floats(0.01, 2.0), min_size=1, max_size=6))
    start = draw(st.floats(-3.0, 3.0))
    sign = draw(st.sampled_from([1.0, -1.0]))
    times = [start]
    for g in gaps:
        times.append(times[-1] + sign * g)
    fractions = draw(st.lists(st.floats(0.05, 1.0), min_size=1, max_size=8))
    return times, StepGrid.from_widths(times[0], times[-1], fractions)


@settings(max_examples=200, deadline=None)
@given(times_and_grid())
def test_walk_reaches_every_output_once_in_the_step_that_holds_it(case):
    times, grid = case
    assert grid.covers(times) and grid.steps == len(grid.points) - 1
    walk = grid.walk(times)
    assert [s.index for s in walk] == list(range(grid.steps))
    reached = [j for s in walk for j, _ in s.outputs]
    assert reached == list(range(1, len(times)))  # each output once, in order
    direction = 1.0 if times[-1] > times[0] else -1.0
    for s in walk:
        t0, t1 = grid.points[s.index], grid.points[s.index + 1]
        for j, at_end in s.outputs:
            assert direction * (times[j] - t0) > 0 and direction * (times[j] - t1) <= 0
            assert at_end == (times[j] == t1)
    # the last step always ends at the last output
    assert walk[-1].outputs and walk[-1].outputs[-1] == (len(times) - 1, True)


@settings(max_examples=200, deadline=None)
@given(times_and_grid(), st.sampled_from(METHODS))
def test_nfe_counts_every_stage_and_the_last_steps_interpolation(case, method):
    times, grid = case
    tab = get_tableau(method)
    n = grid.steps
    extra = 1 if grid.walk(times)[-1].interpolates and not tab.fsal else 0
    assert grid.nfe(times, tab) == n * tab.stages - (n - 1 if tab.fsal else 0) + extra


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.01, 2.0), min_size=1, max_size=5), st.integers(1, 6), st.sampled_from(METHODS))
def test_uniform_is_the_fixed_grid(gaps, steps, method):
    times = [0.0]
    for g in gaps:
        times.append(times[-1] + g)
    grid = StepGrid.uniform(times, steps)
    assert grid.steps == steps * len(gaps)
    walk = grid.walk(times)
    assert all(at_end for s in walk for _, at_end in s.outputs)  # nothing interpolated
    assert grid.nfe(times, get_tableau(method)) == fixed_nfe(times, FixedStepOptions(steps=steps), get_tableau(method))


@pytest.mark.parametrize("points", [(0.0,), (0.0, 0.5, 0.5, 1.0), (0.0, 0.7, 0.3, 1.0), (0.0, math.nan, 1.0)])
def test_invalid_grids_are_refused(points):
    with pytest.raises(ValueError):
        StepGrid(points)


def test_walk_refuses_a_grid_that_does_not_span_the_times():
    with pytest.raises(ValueError, match="does not run from"):
        StepGrid((0.0, 0.5, 0.9)).walk([0.0, 1.0])


@settings(max_examples=100, deadline=None)
@given(st.floats(-2, 2), st.floats(0.1, 3), st.floats(0, 1), st.lists(st.floats(-2, 2), min_size=4, max_size=4))
def test_hermite_weights_reproduce_a_cubic(t0, span, s, coeffs):
    a, b, c, d = coeffs
    p = lambda t: a + b * t + c * t * t + d * t ** 3  # noqa: E731
    dp = lambda t: b + 2 * c * t + 3 * d * t * t  # noqa: E731
    t1 = t0 + span
    t = t0 + s * span
    w0, v0, w1, v1 = hermite_weights(t0, t1, t)
    assert w0 * p(t0) + v0 * dp(t0) + w1 * p(t1) + v1 * dp(t1) == pytest.approx(p(t), abs=1e-9, rel=1e-9)


@settings(max_examples=30, deadline=None)
@given(times_and_grid(), st.sampled_from(("euler", "midpoint", "heun3", "rk4")))
def test_grid_solve_matches_the_grid_constructor_integrator(case, method):
    times, grid = case
    a = torch.tensor([[-0.5, 1.0], [-1.0, -0.3]], dtype=torch.float64)
    f = lambda t, y: torch.tanh(y @ a.T) * (1 + 0.1 * t)  # noqa: E731
    y0 = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=torch.float64)
    tab = get_tableau(method)
    got = grid_solve(f, y0, times, grid.points, grid.walk(times), tab, torch_combine)
    want = odeint(f, y0, torch.tensor(times, dtype=torch.float64), method=method,
                  options={"grid_constructor": lambda func, y, t: torch.tensor(grid.points, dtype=torch.float64),
                           "interp": "cubic"})
    torch.testing.assert_close(torch.stack(got), want, rtol=1e-12, atol=1e-12)
