"""The Butcher tableau: pure data describing one Runge-Kutta method, explicit or implicit.

This module must stay free of torch and numpy: the spec validator imports it (through
``odespec.solvers.tableaus``) only to learn method names, orders and whether a method is
adaptive, and ``odespec validate`` has to start fast.

Conventions
-----------
A method with ``s`` stages computes ``k_i = f(t + c_i h, y + h * sum_j a_ij k_j)`` and
``y_next = y + h * sum_i b_i k_i``. An embedded pair also carries ``b_err = b - b_hat``, so the
local error estimate is ``h * sum_i b_err_i k_i``. Dense output is written in the same "linear
in the k's" form: ``y(t + theta h) = y + h * sum_i w_i(theta) k_i``. Keeping every formula in
that form is what lets a single generic step (``step.py``) and a single pluggable combiner
serve torch, ONNX export and anything else.

An *implicit* method (``implicit=True``) has a full stage matrix: ``k_i`` appears on both sides of
its stage equation, so a step solves the stage equations by Newton's method
(:mod:`odespec.solvers.implicit`). Implicit methods are fixed-step here (no error estimator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional, Sequence, Union

__all__ = ["ButcherTableau", "Interpolant", "Number"]

#: what the constructors accept for a coefficient; everything is stored as ``float``
Number = Union[int, float, Fraction, str]

# Coefficients come from the literature with 16-30 significant digits. Invariants are therefore
# checked with a tolerance relative to the magnitude of the terms summed (DOP853's rows hold
# entries near 40 that cancel down to c_i < 1).
_RTOL = 1e-12


def _num(x: Number) -> float:
    """One coefficient as a float; strings allow exact decimal or rational literals ("1/3")."""
    if isinstance(x, bool):
        raise ValueError(f"coefficient {x!r} is a bool, not a number")
    if isinstance(x, str):
        return float(Fraction(x))
    return float(x)


def _vec(xs: Sequence[Number]) -> tuple[float, ...]:
    return tuple(_num(x) for x in xs)


def _close(total: float, target: float, scale: float) -> bool:
    return abs(total - target) <= _RTOL * max(1.0, scale)


def _fsum_checked(values: Sequence[float]) -> tuple[float, float]:
    """(sum, sum of magnitudes): the second scales the tolerance of the invariant checks."""
    return math.fsum(values), math.fsum(abs(v) for v in values)


@dataclass(frozen=True, init=False)
class Interpolant:
    """Dense-output coefficients of a method.

    ``y(t + theta*h) = y + h * sum_i w_i(theta) * k_i`` with
    ``w_i(theta) = sum_j coeffs[i][j] * theta**(j + 1)``.

    The ``k_i`` are the method's stages followed by ``len(extra_c)`` *extra* stages that are
    evaluated only when an output time falls inside a step (DOP853 needs three for its
    7th-order interpolant). Extra stage ``m`` is ``f(t + extra_c[m]*h, y + h*sum_j
    extra_a[m][j] k_j)`` where ``j`` runs over all stages before it.
    """

    order: int
    coeffs: tuple[tuple[float, ...], ...]
    extra_a: tuple[tuple[float, ...], ...] = ()
    extra_c: tuple[float, ...] = ()

    # the coefficients are given as any Number (exact Fractions and strings from the literature)
    # and stored as floats, so the constructor's types differ from the fields'
    def __init__(
        self,
        order: int,
        coeffs: Sequence[Sequence[Number]],
        extra_a: Sequence[Sequence[Number]] = (),
        extra_c: Sequence[Number] = (),
    ) -> None:
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "coeffs", tuple(_vec(row) for row in coeffs))
        object.__setattr__(self, "extra_a", tuple(_vec(row) for row in extra_a))
        object.__setattr__(self, "extra_c", _vec(extra_c))
        if self.order < 1:
            raise ValueError(f"interpolant order must be >= 1, got {self.order}")
        if not self.coeffs:
            raise ValueError("interpolant needs at least one row of coefficients")
        degree = len(self.coeffs[0])
        if degree < 1 or any(len(row) != degree for row in self.coeffs):
            raise ValueError("interpolant coefficient rows must all have the same, nonzero length")
        if len(self.extra_a) != len(self.extra_c):
            raise ValueError(
                f"interpolant has {len(self.extra_a)} extra_a rows but {len(self.extra_c)} extra_c"
            )

    @property
    def degree(self) -> int:
        """Polynomial degree in theta."""
        return len(self.coeffs[0])

    def weights(self, theta: float) -> tuple[float, ...]:
        """``w_i(theta)`` for every stage (method stages, then extra stages)."""
        out = []
        for row in self.coeffs:
            # Horner on sum_j row[j] * theta**(j+1)
            acc = 0.0
            for coef in reversed(row):
                acc = (acc + coef) * theta
            out.append(acc)
        return tuple(out)


@dataclass(frozen=True, init=False)
class ButcherTableau:
    """A Runge-Kutta method as data (explicit, or implicit with ``implicit=True``). Immutable; invariants checked on construction.

    Parameters
    ----------
    name:
        Registry name, e.g. ``"dopri5"``.
    order:
        Order of the propagated solution (``b``).
    a:
        Stage matrix. Explicit methods: strictly lower triangular, either square ``s x s`` (zeros
        on and above the diagonal) or ragged, row ``i`` holding its ``i`` entries below the
        diagonal. Implicit methods: square, with some entry on or above the diagonal. Stored square.
    b, c:
        Solution weights and stage nodes, ``s`` entries each.
    b_err:
        Error weights ``b - b_hat`` of an embedded pair (they sum to zero), or ``None`` for a
        method without error estimator (then it is fixed-step only).
    b_err_aux, aux_weight:
        A second error estimator combined with the first as in Hairer's DOP853:
        ``err = E**2 / sqrt(E**2 + aux_weight * E_aux**2)`` (E, E_aux the scaled RMS norms).
    fsal:
        First Same As Last: the last stage is ``f(t + h, y_next)`` and is reused as the next
        step's first stage. Requires ``a[-1] == b``, ``b[-1] == 0`` and ``c[-1] == 1``.
    interpolant:
        Optional dense output of the method's own accuracy; without it solvers use cubic
        Hermite interpolation.
    aliases:
        Other names under which the registry finds this method.
    implicit:
        The stage equations are implicit (``a`` is not strictly lower triangular): a step solves
        them by Newton's method. No error estimator, FSAL or interpolant (fixed steps only).
    """

    name: str
    order: int
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    b_err: Optional[tuple[float, ...]] = None
    b_err_aux: Optional[tuple[float, ...]] = None
    aux_weight: float = 0.01
    fsal: bool = False
    interpolant: Optional[Interpolant] = None
    aliases: tuple[str, ...] = ()
    implicit: bool = False
    # Sparse views (index, coefficient) with exact zeros dropped, computed once here so that a
    # step does not re-scan the matrix: the combiner is only ever handed non-zero terms.
    a_terms: tuple[tuple[tuple[int, float], ...], ...] = field(
        init=False, repr=False, compare=False
    )
    b_terms: tuple[tuple[int, float], ...] = field(init=False, repr=False, compare=False)
    err_terms: Optional[tuple[tuple[int, float], ...]] = field(
        init=False, repr=False, compare=False
    )
    err_aux_terms: Optional[tuple[tuple[int, float], ...]] = field(
        init=False, repr=False, compare=False
    )

    # the coefficients are given as any Number (exact Fractions and strings from the literature)
    # and stored as floats, so the constructor's types differ from the fields'
    def __init__(
        self,
        name: str,
        order: int,
        a: Sequence[Sequence[Number]],
        b: Sequence[Number],
        c: Sequence[Number],
        b_err: Optional[Sequence[Number]] = None,
        b_err_aux: Optional[Sequence[Number]] = None,
        aux_weight: float = 0.01,
        fsal: bool = False,
        interpolant: Optional[Interpolant] = None,
        aliases: Sequence[str] = (),
        implicit: bool = False,
    ) -> None:
        set_ = object.__setattr__
        if not isinstance(name, str) or not name:
            raise ValueError("tableau name must be a non-empty string")
        where = f"tableau {name!r}"
        if not isinstance(order, int) or isinstance(order, bool) or order < 1:
            raise ValueError(f"{where}: order must be a positive int, got {order!r}")
        if not isinstance(implicit, bool):
            raise ValueError(f"{where}: implicit must be a bool, got {implicit!r}")
        for attr, value in (("name", name), ("order", order), ("fsal", fsal), ("interpolant", interpolant),
                            ("implicit", implicit)):
            set_(self, attr, value)

        b_ = _vec(b)
        c_ = _vec(c)
        s = len(b_)
        if s == 0:
            raise ValueError(f"{where}: b is empty")
        if len(c_) != s:
            raise ValueError(f"{where}: c has {len(c_)} entries but b has {s}")
        set_(self, "a", self._square(a, s, where, implicit))
        set_(self, "b", b_)
        set_(self, "c", c_)
        set_(self, "aliases", tuple(aliases))
        set_(self, "aux_weight", float(aux_weight))
        self._check(where, b_err, b_err_aux)

    def _check(self, where: str, b_err: Optional[Sequence[Number]], b_err_aux: Optional[Sequence[Number]]) -> None:
        """The invariants of an explicit RK method (``a``, ``b``, ``c`` set); sets the error
        weights and the sparse views."""
        set_ = object.__setattr__
        a, b, c, s = self.a, self.b, self.c, self.stages

        total, scale = _fsum_checked(b)
        if not _close(total, 1.0, scale):
            raise ValueError(f"{where}: weights b must sum to 1, they sum to {total!r}")
        for i in range(s):
            total, scale = _fsum_checked(a[i])
            if not _close(total, c[i], scale):
                raise ValueError(
                    f"{where}: row {i} of a sums to {total!r} but c[{i}] = {c[i]!r} "
                    "(a Runge-Kutta method needs sum_j a_ij == c_i)"
                )

        for attr, given in (("b_err", b_err), ("b_err_aux", b_err_aux)):
            weights = None if given is None else _vec(given)
            if weights is not None:
                if len(weights) != s:
                    raise ValueError(f"{where}: {attr} has {len(weights)} entries but b has {s}")
                total, scale = _fsum_checked(weights)
                if not _close(total, 0.0, scale):
                    raise ValueError(f"{where}: {attr} (= b - b_hat) must sum to 0, sums to {total!r}")
            set_(self, attr, weights)
        if self.b_err_aux is not None and self.b_err is None:
            raise ValueError(f"{where}: b_err_aux needs b_err")

        if self.fsal:
            if s < 2 or c[-1] != 1.0 or b[-1] != 0.0:
                raise ValueError(f"{where}: fsal needs c[-1] == 1 and b[-1] == 0")
            if any(not _close(a[-1][j], b[j], abs(b[j])) for j in range(s)):
                raise ValueError(f"{where}: fsal needs the last row of a to equal b")

        if self.implicit and (self.b_err is not None or self.fsal or self.interpolant is not None):
            raise ValueError(f"{where}: an implicit method takes fixed steps here: no b_err, fsal or interpolant")
        if self.interpolant is not None:
            self._check_interpolant(self.interpolant, a, b, where)

        # an implicit method's stage i sums over every stage
        set_(self, "a_terms", tuple(_terms(row if self.implicit else row[:i]) for i, row in enumerate(a)))
        set_(self, "b_terms", _terms(b))
        set_(self, "err_terms", None if self.b_err is None else _terms(self.b_err))
        set_(self, "err_aux_terms", None if self.b_err_aux is None else _terms(self.b_err_aux))

    @staticmethod
    def _square(rows: Sequence[Sequence[Number]], s: int, where: str,
                implicit: bool) -> tuple[tuple[float, ...], ...]:
        if len(rows) != s:
            raise ValueError(f"{where}: a has {len(rows)} rows but b has {s} entries")
        out = []
        for i, row in enumerate(rows):
            vals = _vec(row)
            if implicit:
                if len(vals) != s:
                    raise ValueError(f"{where}: row {i} of a has {len(vals)} entries; an implicit method's "
                                     f"stage matrix is square ({s} entries a row)")
            elif len(vals) == s:
                if any(v != 0.0 for v in vals[i:]):
                    raise ValueError(
                        f"{where}: a must be strictly lower triangular (explicit method); "
                        f"row {i} has a nonzero entry on or above the diagonal (an implicit method "
                        "says implicit=True)"
                    )
            elif len(vals) <= i:
                # ragged form: the entries below the diagonal, missing trailing ones are zero
                vals = vals + (0.0,) * (s - len(vals))
            else:
                raise ValueError(
                    f"{where}: row {i} of a has {len(vals)} entries; expected at most {i} "
                    f"(below the diagonal) or exactly {s} (square form)"
                )
            out.append(vals)
        if implicit and all(v == 0.0 for i, row in enumerate(out) for v in row[i:]):
            raise ValueError(f"{where}: implicit=True, but a is strictly lower triangular: the method is "
                             "explicit (leave implicit False)")
        return tuple(out)

    @staticmethod
    def _check_interpolant(
        interp: Interpolant, a: tuple[tuple[float, ...], ...], b: tuple[float, ...], where: str
    ) -> None:
        s = len(b)
        n_extra = len(interp.extra_c)
        if len(interp.coeffs) != s + n_extra:
            raise ValueError(
                f"{where}: interpolant has {len(interp.coeffs)} coefficient rows, "
                f"expected {s} stages + {n_extra} extra stages"
            )
        for m, (row, cm) in enumerate(zip(interp.extra_a, interp.extra_c, strict=True)):
            if len(row) != s + m:
                raise ValueError(
                    f"{where}: interpolant extra stage {m} has {len(row)} entries in extra_a, "
                    f"expected {s + m} (all previous stages)"
                )
            total, scale = _fsum_checked(row)
            if not _close(total, cm, scale):
                raise ValueError(f"{where}: interpolant extra stage {m}: row sums to {total!r}, c = {cm!r}")
        # At theta = 1 the interpolant must reproduce the step's own solution y + h*sum b_i k_i;
        # this catches a mistyped coefficient row immediately.
        at_one = [math.fsum(row) for row in interp.coeffs]
        for i in range(s + n_extra):
            target = b[i] if i < s else 0.0
            scale = math.fsum(abs(v) for v in interp.coeffs[i])
            if not _close(at_one[i], target, scale):
                raise ValueError(
                    f"{where}: interpolant weight {i} at theta=1 is {at_one[i]!r}, expected {target!r}"
                )

    # ------------------------------------------------------------------ derived properties
    @property
    def stages(self) -> int:
        """Number of stages ``s`` (including an FSAL stage)."""
        return len(self.b)

    @property
    def adaptive(self) -> bool:
        """True when the method carries an error estimator (so it can choose its own steps)."""
        return self.b_err is not None

    @property
    def evals_per_step(self) -> int:
        """Function evaluations per step once running (FSAL saves one)."""
        return self.stages - 1 if self.fsal else self.stages

    @property
    def diagonally_implicit(self) -> bool:
        """An implicit method whose stage matrix is lower triangular (DIRK: each stage's equation
        involves only itself and earlier stages)."""
        return self.implicit and all(v == 0.0 for i, row in enumerate(self.a) for v in row[i + 1:])

    @property
    def explicit_stages(self) -> tuple[int, ...]:
        """The stages whose row of ``a`` is all zero: ``k_i = f(t + c_i h, y)``, no equation to solve
        (trapezoid's and TR-BDF2's first stage)."""
        return tuple(i for i, row in enumerate(self.a) if all(v == 0.0 for v in row))

    @property
    def names(self) -> tuple[str, ...]:
        """The canonical name followed by the aliases."""
        return (self.name,) + self.aliases

    def fixed_step(self) -> "ButcherTableau":
        """This method without its error estimator, named ``NAME_fixed``: a fixed-step method
        (``steps``/``step_size``) with the same stages, FSAL and dense output. Adaptive methods
        refuse fixed-step options; this says explicitly that the error estimate is not wanted,
        e.g. ``odeint(f, y0, t, method=get_tableau("dopri5").fixed_step(), options={"steps": 8})``.
        """
        import dataclasses

        return dataclasses.replace(self, name=f"{self.name}_fixed", b_err=None, b_err_aux=None, aliases=())


def _terms(coefs: Sequence[float]) -> tuple[tuple[int, float], ...]:
    return tuple((j, v) for j, v in enumerate(coefs) if v != 0.0)
