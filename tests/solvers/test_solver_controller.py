"""Adaptive step-size control: the controllers' rules, and the exact step sequence of one solve
per controller."""

from __future__ import annotations

import math

import pytest
import torch

from odespec.solvers import solve
from odespec.solvers.controller import IController, PIController, StepSizeController, make_controller
from odespec.solvers.options import CONTROLLERS, parse_options
from odespec.solvers.tableaus import DOPRI5

F64 = torch.float64

# The end time ``t + h`` of every step attempted (accepted or rejected) by dopri5 on van der Pol
# (mu = 3) from (2, 0) over [0, 4] with an output at 1, rtol 1e-5, atol 1e-7, float64, no autograd.
# Compared exactly: a controller that rounds differently anywhere shows up here, which the
# solver's tolerance-based tests cannot see. The values are float64 results of torch's CPU
# kernels, so a torch build whose kernels round differently would move them as well.
_ATTEMPT_ENDS = {
    "pi": (
        0.004975124378109453, 0.01942558209518165, 0.039123937820407365, 0.06653983107848302,
        0.09922270730994681, 0.13736523602975562, 0.18031787719962403, 0.2283418767156453,
        0.2817409423692429, 0.3412527715802037, 0.4078971035443789, 0.4831658959939381,
        0.5691848321243672, 0.6691930148884465, 0.7888216650124973, 0.9424073108852034,
        1.1452033780087567, 1.318672329980199, 1.5061589873455197, 1.6929050798028484,
        1.8869801082489808, 2.0871704164044393, 2.2966632243852243, 2.5175877760982557,
        2.7525779987560934, 3.00205912830751, 3.2530293830251478, 3.198423028333005,
        3.3855909162148823, 3.350618984284633, 3.495642373123607, 3.4766717840540866,
        3.5970971158822245, 3.7122801976570465, 3.6861337207993, 3.7688992514094353,
        3.8549800434609023, 3.9296968672825257, 3.92070514385634, 3.9850149498207803, 4.0,
    ),
    "i": (
        0.004975124378109453, 0.032385269580566416, 0.06703711138264856, 0.10715462902644522,
        0.1523233993852745, 0.20274353269094642, 0.25899784615102334, 0.3220240944879037,
        0.3931795062623405, 0.47439984810565183, 0.568520707253242, 0.6799984928101063,
        0.8170740030375615, 1.0045015422899992, 1.2241905917772888, 1.1985438512877624,
        1.3925861602855256, 1.5898786870336654, 1.7928393521582102, 2.0034988362254174,
        2.2242981740763335, 2.4586055710057257, 2.710405920642653, 2.982011847419632,
        3.262111468700127, 3.176356676011381, 3.3707015046031295, 3.330029889143159,
        3.4837031022749367, 3.458133535998158, 3.586237182853157, 3.7143408297081564,
        3.6740028409910197, 3.7617684991288822, 3.8495341572667447, 3.9372998154046073,
        3.9149616555023963, 3.980389153738048, 4.0,
    ),
}
# nfe, accepted, rejected, final step size, outputs at t = 1 and t = 4
_RESULT = {
    "pi": (248, 36, 5, 0.07824392266283825,
           (1.7883056544614628, -0.26137167841279996, -1.6903869676340415, -3.083741739166051)),
    "i": (236, 33, 6, 0.087492679303429,
          (1.7883059510631722, -0.2613735702505237, -1.6903903617322897, -3.0837169750384734)),
}


def _van_der_pol(t, y, mu=3.0):
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, mu * (1 - x * x) * v - x], dim=-1)


@pytest.mark.parametrize("controller", ["pi", "i"])
def test_exact_step_sequence(controller):
    seen = []

    def f(t, y):
        seen.append(t.item())
        return _van_der_pol(t, y)

    with torch.no_grad():
        sol = solve(f, torch.tensor([2.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0, 4.0], dtype=F64),
                    rtol=1e-5, atol=1e-7, options={"controller": controller})
    # k1 and the initial-step probe, then six evaluations per attempt (FSAL), the last at t + h
    assert (len(seen) - 2) % 6 == 0
    assert tuple(seen[2 + 5 :: 6]) == _ATTEMPT_ENDS[controller]
    nfe, accepted, rejected, final_h, outputs = _RESULT[controller]
    st = sol.stats
    assert (st.nfe, st.n_accepted, st.n_rejected) == (nfe, accepted, rejected)
    assert st.final_step_size == final_h
    assert tuple(sol.ys[1:].reshape(-1).tolist()) == outputs


def _controller(**options):
    return make_controller(parse_options(DOPRI5, {"controller": "pi", **options}), DOPRI5.order)


def test_every_controller_option_names_a_kind():
    for name in CONTROLLERS:
        c = make_controller(parse_options(DOPRI5, {"controller": name}), DOPRI5.order)
        assert isinstance(c, StepSizeController) and c.name == name
    assert isinstance(make_controller(parse_options(DOPRI5, {}), 5), PIController)
    assert isinstance(make_controller(parse_options(DOPRI5, {"controller": "i"}), 5), IController)


def test_init_takes_first_step_or_the_estimate_within_bounds():
    c = _controller(max_step=0.5)
    assert c.init(10.0, lambda: 0.01) == 0.01
    assert c.init(10.0, lambda: 3.0) == 0.5  # max_step
    assert c.init(0.2, lambda: 3.0) == 0.2  # the span
    assert math.isnan(c.init(10.0, lambda: math.nan))

    def unused() -> float:
        raise AssertionError("first_step given: no estimate")

    assert _controller(first_step=0.125).init(10.0, unused) == 0.125
    assert _controller(min_step=0.1).init(10.0, lambda: 1e-3) == 0.1


def test_accept_reject_decision():
    c = _controller()
    assert c.accepts(1.0) and c.accepts(0.0) and not c.accepts(1.0 + 1e-12)


@pytest.mark.parametrize("controller", ["pi", "i"])
def test_accepted_step_grows_within_the_factors(controller):
    c = make_controller(parse_options(DOPRI5, {"controller": controller}), DOPRI5.order)
    c.init(10.0, lambda: 0.1)
    assert c.accepted(0.0, 0.1, 0.1, False) == pytest.approx(0.1 * c.ifactor)  # exact estimate
    assert c.accepted(1e-30, 0.1, 0.1, False) == pytest.approx(0.1 * c.ifactor)  # capped
    c.accepted(1.0, 0.1, 0.1, False)
    # after a step at the tolerance, another one: the PI controller shrinks by the safety factor
    # (its memory of the last ratio is then neutral), the I controller keeps the size
    h = c.accepted(1.0, 0.1, 0.1, False)
    assert h == (0.1 if controller == "i" else pytest.approx(0.1 * c.safety))


def test_no_growth_right_after_a_rejection():
    c = _controller()
    c.init(10.0, lambda: 0.1)
    h = c.rejected(4.0, 0.1)
    assert h is not None and 0.1 * c.dfactor <= h < 0.1
    assert c.accepted(1e-6, h, h, False) == h  # accurate, but the last attempt was rejected
    assert c.accepted(1e-6, h, h, False) > h


def test_clipped_step_keeps_the_planned_size():
    c = _controller()
    c.init(10.0, lambda: 0.1)
    # a short step (0.01) onto an output, accurate: the next step returns to the plan (0.1)
    assert c.accepted(1e-3, 0.01, 0.1, True) == 0.1
    # not clipped: the step grows from its own size
    assert 0.01 < c.accepted(1e-3, 0.01, 0.1, False) < 0.1


def test_i_controller_never_shrinks_after_an_accepted_step():
    c = make_controller(parse_options(DOPRI5, {"controller": "i"}), DOPRI5.order)
    c.init(10.0, lambda: 0.1)
    assert c.accepted(0.99, 0.1, 0.1, False) == 0.1
    p = _controller()
    p.init(10.0, lambda: 0.1)
    assert p.accepted(0.99, 0.1, 0.1, False) < 0.1


def test_min_step_ends_the_shrinking():
    c = _controller(min_step=0.01)
    c.init(10.0, lambda: 0.1)
    assert c.rejected(1e6, 0.02) == 0.01  # floored at min_step
    assert c.rejected(1e6, 0.01) is None  # already there: the solve fails
    assert c.nonfinite(0.1) == pytest.approx(0.1 * c.dfactor)
    assert c.nonfinite(0.04) is None
