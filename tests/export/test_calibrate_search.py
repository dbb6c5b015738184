"""The pieces of the calibration search, on made-up error curves."""

from __future__ import annotations

import math
from typing import Callable

import pytest

from odespec.errors import ExportError
from odespec.export.calibrate import Candidate, _choose, _double, _levels_off, _search_method, _Search


class _Curve(_Search):
    """A search whose error and f-evaluations follow formulas instead of solving."""

    def __init__(self, curve: Callable[[int], float], *, match_tol: float, cap: int = 64, stages: int = 4):
        super().__init__(model=None, inputs=None, want=[], match_tol=match_tol, cap=cap)  # type: ignore[arg-type]
        self.curve = curve
        self.stages = stages

    def error(self, method: str, steps: int) -> float:
        if (method, steps) not in self.errors:
            self.errors[method, steps] = self.curve(steps)
            self.evaluations.append((method, steps, self.errors[method, steps]))
        return self.errors[method, steps]

    def nfe(self, method: str, steps: int) -> int:
        return self.stages * steps


def test_doubling_then_bisection_to_the_smallest_passing_count():
    s = _Curve(lambda n: 1.0 / n, match_tol=0.1)
    c = _search_method(s, "rk4")
    assert (c.steps, c.nfe, c.passed, c.status) == (10, 40, True, "ok")
    assert c.error == pytest.approx(0.1) and c.error_one_fewer == pytest.approx(1 / 9)
    assert [n for _, n, _ in s.evaluations] == [1, 2, 4, 8, 16, 12, 10, 9]


def test_a_method_stops_once_it_costs_more_than_the_best():
    s = _Curve(lambda n: 1.0 / n, match_tol=0.01)
    s.best = Candidate("other", 5, 20, 0.0, True)
    lo, hi, status = _double(s, "rk4")  # 4 stages: 5 steps cost as much as the best
    assert (lo, hi, status) == (5, None, "stopped: more f-evaluations than the best")
    assert [n for _, n, _ in s.evaluations] == [1, 2, 4, 5]


def test_a_levelling_error_sets_the_floor():
    s = _Curve(lambda n: 0.5 + 0.1 / n, match_tol=0.1)
    c = _search_method(s, "euler")
    assert not c.passed and c.status == "stopped: error levels off" and c.steps == 8
    assert s.floor == ("euler", pytest.approx(0.5125))


def test_the_cap_ends_the_doubling():
    s = _Curve(lambda n: 1.0 / n, match_tol=1e-3, cap=6)
    c = _search_method(s, "rk4")
    assert not c.passed and c.status == "over tolerance" and c.steps == 6
    assert [n for _, n, _ in s.evaluations] == [1, 2, 4, 6]


def test_levels_off_needs_eight_steps_and_two_weak_doublings():
    assert not _levels_off(4, [1.0, 0.9, 0.85])
    assert _levels_off(8, [1.0, 0.9, 0.85])
    assert not _levels_off(8, [1.0, 0.5, 0.45])
    assert not _levels_off(8, [math.inf, 1.0, 0.9])


def test_choose_takes_the_cheapest_and_sorts_the_rows():
    rows = [Candidate("rk4_38", 3, 60, 1e-6, True), Candidate("euler", 12, 0, math.inf, False, "over tolerance"),
            Candidate("rk4", 3, 60, 2e-6, True), Candidate("midpoint", 40, 80, 1e-6, True)]
    chosen = _choose(_Curve(lambda n: 0.0, match_tol=1.0), rows)
    # equal f-evaluations: rk4 has fewer nonzero Butcher coefficients than rk4_38
    assert chosen.method == "rk4" and chosen.status == "chosen"
    assert [r.method for r in rows] == ["rk4", "rk4_38", "midpoint", "euler"]


def test_choose_without_a_passing_row_names_the_closest_evaluation():
    class _Model:  # an ODENet with no ODE blocks or encoders
        ode_blocks: list = []

        def __iter__(self):
            return iter(())

    s = _Curve(lambda n: 1.0 / n, match_tol=1e-3, cap=4)
    s.model = _Model()  # type: ignore[assignment]
    _search_method(s, "rk4")
    with pytest.raises(ExportError, match=r"none passed with at most 4 steps.*closest was rk4 x 4 steps, max abs "
                                          r"error 0\.25"):
        _choose(s, [Candidate("rk4", 4, 16, 0.25, False)])
