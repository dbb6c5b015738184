"""Butcher tableaus: invariants, the order conditions of every built-in method, the registry."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from functools import lru_cache

import pytest

from odespec.errors import OdespecError
from odespec.solvers.tableau import ButcherTableau, Interpolant
from odespec.solvers.tableaus import (
    UnknownMethodError,
    get_tableau,
    is_adaptive,
    method_names,
    register_tableau,
    unregister_tableau,
)

BUILTINS = {
    # name: (order, adaptive, fsal, stages)
    "euler": (1, False, False, 1),
    "midpoint": (2, False, False, 2),
    "heun": (2, False, False, 2),
    "heun3": (3, False, False, 3),
    "ralston": (2, False, False, 2),
    "rk4": (4, False, False, 4),
    "rk4_38": (4, False, False, 4),
    "bosh3": (3, True, True, 4),
    "dopri5": (5, True, True, 7),
    "tsit5": (5, True, True, 7),
    "dopri8": (8, True, True, 13),
}
# order of b_hat = b - b_err (and of b - b_err_aux for DOP853)
EMBEDDED_ORDER = {"bosh3": 2, "dopri5": 4, "tsit5": 4, "dopri8": 5}


def test_builtin_methods_registered():
    assert set(BUILTINS) <= set(method_names())
    for name, (order, adaptive, fsal, stages) in BUILTINS.items():
        tab = get_tableau(name)
        assert (tab.order, tab.adaptive, tab.fsal, tab.stages) == (order, adaptive, fsal, stages), name
        assert is_adaptive(name) is adaptive


def test_aliases_resolve():
    assert get_tableau("dop853") is get_tableau("dopri8")
    assert get_tableau("rk45") is get_tableau("dopri5")
    assert get_tableau("rk23") is get_tableau("bosh3")


# --------------------------------------------------------------------- order conditions


def _size(t) -> int:
    return 1 + sum(_size(u) for u in t)


@lru_cache(None)
def _trees(n: int) -> tuple:
    """All rooted trees with n nodes, each a sorted tuple of its subtrees."""
    if n == 1:
        return ((),)
    return tuple(_forests(n - 1, None))


def _forests(m: int, bound):
    if m == 0:
        yield ()
        return
    for k in range(m, 0, -1):
        for t in _trees(k):
            if bound is not None and (_size(t), t) > (_size(bound), bound):
                continue
            for rest in _forests(m - k, t):
                yield (t,) + rest


def _gamma(t) -> int:
    return _size(t) * math.prod(_gamma(u) for u in t)


def _elementary_weights(a):
    s = len(a)

    @lru_cache(None)
    def g(t):
        v = [1.0] * s
        for u in t:
            gu = g(u)
            agu = [math.fsum(a[i][j] * gu[j] for j in range(s)) for i in range(s)]
            v = [v[i] * agu[i] for i in range(s)]
        return tuple(v)

    return g


def _max_residual(a, weights, order: int, theta: float = 1.0) -> dict[int, float]:
    g = _elementary_weights(a)
    return {
        n: max(
            abs(math.fsum(w * x for w, x in zip(weights, g(t))) - theta**n / _gamma(t))
            for t in _trees(n)
        )
        for n in range(1, order + 1)
    }


def test_tree_enumeration():
    # OEIS A000081
    assert [len(_trees(n)) for n in range(1, 9)] == [1, 1, 2, 4, 9, 20, 48, 115]


@pytest.mark.parametrize("name", list(BUILTINS))
def test_order_conditions(name):
    """b satisfies every order condition up to the stated order, and fails the next one (so
    the stated order is exact)."""
    tab = get_tableau(name)
    res = _max_residual(tab.a, tab.b, tab.order + 1)
    for n in range(1, tab.order + 1):
        assert res[n] < 1e-13, (name, n, res[n])
    assert res[tab.order + 1] > 1e-6


@pytest.mark.parametrize("name", list(EMBEDDED_ORDER))
def test_embedded_order(name):
    tab = get_tableau(name)
    order = EMBEDDED_ORDER[name]
    b_hat = [x - y for x, y in zip(tab.b, tab.b_err)]
    res = _max_residual(tab.a, b_hat, order + 1)
    assert all(res[n] < 1e-13 for n in range(1, order + 1)), res
    assert res[order + 1] > 1e-6
    if tab.b_err_aux is not None:  # DOP853's 3rd-order companion
        b3 = [x - y for x, y in zip(tab.b, tab.b_err_aux)]
        res = _max_residual(tab.a, b3, 4)
        assert all(res[n] < 1e-13 for n in range(1, 4)) and res[4] > 1e-6


@pytest.mark.parametrize("name", ["dopri5", "tsit5", "dopri8"])
@pytest.mark.parametrize("theta", [0.25, 0.5, 0.9])
def test_interpolant_order_conditions(name, theta):
    """Continuous order conditions: sum_i w_i(theta) Phi_i(t) = theta^|t| / gamma(t)."""
    tab = get_tableau(name)
    interp = tab.interpolant
    s = tab.stages
    n_all = s + len(interp.extra_c)
    a_ext = [list(row) + [0.0] * (n_all - s) for row in tab.a]
    for row in interp.extra_a:
        a_ext.append(list(row) + [0.0] * (n_all - len(row)))
    res = _max_residual(a_ext, interp.weights(theta), interp.order, theta)
    assert max(res.values()) < 1e-12, res


# --------------------------------------------------------------------- invariants

GOOD = dict(name="good", order=2, a=((), (Fraction(1, 2),)), b=(0, 1), c=(0, Fraction(1, 2)))


def test_good_tableau_and_forms():
    tab = ButcherTableau(**GOOD)
    square = ButcherTableau(**{**GOOD, "a": ((0, 0), (0.5, 0))})
    assert tab.a == square.a == ((0.0, 0.0), (0.5, 0.0))
    assert tab.b == (0.0, 1.0) and all(isinstance(x, float) for x in tab.b)
    assert tab == square
    with pytest.raises(dataclasses.FrozenInstanceError):
        tab.order = 3  # type: ignore[misc]
    assert ButcherTableau(**{**GOOD, "a": ((), ("1/2",)), "c": (0, "0.5")}) == tab


@pytest.mark.parametrize(
    "change, match",
    [
        ({"b": (0.5, 0.6)}, "sum to 1"),
        ({"c": (0, 0.4)}, "row 1 of a sums"),
        ({"a": ((0, 1), (0.5, 0))}, "strictly lower triangular"),
        ({"a": ((0, 0), (0.25, 0.25))}, "strictly lower triangular"),
        ({"a": ((),)}, "a has 1 rows"),
        ({"c": (0,)}, "c has 1 entries"),
        ({"b": ()}, "b is empty"),
        ({"b_err": (0.1, 0.1)}, "must sum to 0"),
        ({"b_err": (0.1, -0.1, 0.0)}, "b_err has 3 entries"),
        ({"b_err_aux": (0.1, -0.1)}, "b_err_aux needs b_err"),
        ({"order": 0}, "order must be a positive int"),
        ({"name": ""}, "non-empty"),
        ({"fsal": True}, "fsal needs"),
        ({"interpolant": Interpolant(order=2, coeffs=((1, 0), (0, 0)))}, "at theta=1"),
        ({"interpolant": Interpolant(order=2, coeffs=((1,),))}, "coefficient rows"),
    ],
)
def test_broken_tableau_refused(change, match):
    with pytest.raises(ValueError, match=match):
        ButcherTableau(**{**GOOD, **change})


def test_fsal_requires_last_row_equal_b():
    with pytest.raises(ValueError, match="last row of a to equal b"):
        ButcherTableau(
            name="bad_fsal", order=1, a=((), (1,), (0.6, 0.4)), b=(0.5, 0.5, 0), c=(0, 1, 1),
            b_err=(0.5, -0.5, 0), fsal=True,
        )


def test_near_miss_coefficient_refused():
    """A typo in the 10th digit of a coefficient must not slip through."""
    bad_b = (Fraction(1, 6), Fraction(1, 3) + Fraction(1, 10**10), Fraction(1, 3), Fraction(1, 6))
    with pytest.raises(ValueError, match="sum to 1"):
        ButcherTableau(name="rk4bad", order=4, a=get_tableau("rk4").a, b=bad_b, c=(0, 0.5, 0.5, 1))


# --------------------------------------------------------------------- registry


def test_duplicate_registration_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_tableau(get_tableau("dopri5"))
    clash = ButcherTableau(**{**GOOD, "name": "my_mid", "aliases": ("rk4",)})
    with pytest.raises(ValueError, match="already used by 'rk4'"):
        register_tableau(clash)
    assert "my_mid" not in method_names()
    alias_as_name = ButcherTableau(**{**GOOD, "name": "rk45"})
    with pytest.raises(ValueError, match="alias of 'dopri5'"):
        register_tableau(alias_as_name)


def test_user_registered_tableau_is_usable():
    import torch

    from odespec.solvers import odeint

    # Heun-Euler 2(1): a user-defined adaptive pair
    heun_euler = ButcherTableau(
        name="heun_euler", order=2, a=((), (1,)), b=(0.5, 0.5), c=(0, 1), b_err=(-0.5, 0.5),
        aliases=("he21",),
    )
    register_tableau(heun_euler)
    try:
        assert get_tableau("he21") is heun_euler and is_adaptive("heun_euler")
        with pytest.raises(ValueError):
            register_tableau(heun_euler)
        replacement = dataclasses.replace(heun_euler, aliases=())
        with pytest.raises(ValueError, match="already registered"):
            register_tableau(replacement)
        unregister_tableau("heun_euler")
        register_tableau(replacement)
        assert get_tableau("heun_euler") is replacement
        with pytest.raises(UnknownMethodError):
            get_tableau("he21")
        y0 = torch.tensor([1.0], dtype=torch.float64)
        t = torch.linspace(0, 1, 5, dtype=torch.float64)
        ys = odeint(lambda t, y: -y, y0, t, method="heun_euler", rtol=1e-8, atol=1e-10)
        assert torch.allclose(ys[:, 0], torch.exp(-t), atol=1e-6)
    finally:
        unregister_tableau("heun_euler")
    assert "heun_euler" not in method_names()


def test_unknown_method_did_you_mean():
    with pytest.raises(UnknownMethodError) as info:
        get_tableau("dopri6")
    err = info.value
    assert isinstance(err, KeyError) and isinstance(err, OdespecError)
    assert "did you mean" in str(err) and "'dopri5'" in str(err)
    assert err.suggestions[0] in ("dopri5", "dopri8")
    with pytest.raises(UnknownMethodError, match="did you mean 'rk4'"):
        get_tableau("RK4")
    with pytest.raises(UnknownMethodError) as info:
        get_tableau("zzzzzz")
    assert info.value.suggestions == () and "known methods" in str(info.value)
