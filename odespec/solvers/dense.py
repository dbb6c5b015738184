"""Dense-output weights: ``y(t + theta*h) = y + h * sum_i w_i(theta) * k_i``.

Pure Python (no torch). A method with its own interpolant (DOPRI5, Tsit5: 4th order; DOP853:
7th order) uses it; any other method falls back to cubic Hermite interpolation between
``(y, f(t, y))`` and ``(y_next, f(t + h, y_next))``, written in the same linear-in-k form so the
one combiner evaluates every interpolant.
"""

from __future__ import annotations

from odespec.solvers.tableau import ButcherTableau

__all__ = ["needs_end_derivative", "dense_weights", "dense_order"]


def needs_end_derivative(tableau: ButcherTableau) -> bool:
    """True when the weights refer to ``f(t + h, y_next)`` *after* the stages (index ``s``).

    That is the Hermite fallback for a non-FSAL method; an FSAL method already has that
    derivative as its last stage.
    """
    return tableau.interpolant is None and not tableau.fsal


def dense_order(tableau: ButcherTableau) -> int:
    """Order of accuracy of the dense output."""
    if tableau.interpolant is not None:
        return tableau.interpolant.order
    return min(3, tableau.order)


def dense_weights(tableau: ButcherTableau, theta: float) -> tuple[float, ...]:
    """Weights over the k's the interpolant uses at ``theta`` in [0, 1].

    The k's are: the method's stages; then, for a tableau interpolant, its extra stages (see
    :func:`odespec.solvers.step.dense_stages`); or, for the Hermite fallback of a non-FSAL
    method, ``f(t + h, y_next)`` appended as index ``s`` (an implicit method: ``f(t, y)`` at
    index ``s``, ``f(t + h, y_next)`` at ``s + 1``).
    """
    if tableau.interpolant is not None:
        return tableau.interpolant.weights(theta)
    th2 = theta * theta
    th3 = th2 * theta
    # Hermite basis: y(theta) = y0 + (3th^2 - 2th^3) (y1 - y0) + h (th^3 - 2th^2 + th) f0
    #                              + h (th^3 - th^2) f1,   with y1 - y0 = h sum b_i k_i
    w_delta = 3.0 * th2 - 2.0 * th3
    s = tableau.stages
    if tableau.implicit:
        # an implicit step's k's are its stages, then f(t, y), then f(t + h, y_next)
        return (*[w_delta * bi for bi in tableau.b], th3 - 2.0 * th2 + theta, th3 - th2)
    weights = [w_delta * bi for bi in tableau.b]
    if not tableau.fsal:
        weights.append(0.0)
    weights[0] += th3 - 2.0 * th2 + theta
    end = s - 1 if tableau.fsal else s
    weights[end] += th3 - th2
    return tuple(weights)
